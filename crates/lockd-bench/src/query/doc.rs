//! The documents of the query workload: about 1 KiB of JSON each,
//! deterministic from the key number `i`, a seed and a revision:
//!
//! ```text
//! {"id":"doc-<i>","bucket":"b<i % buckets>","status":<1 of 8>,"region":<1 of 50>,
//!  "amount":<number>,"created_at":"<RFC 3339>","tags":[3 of 40],
//!  "customer":{"tier":<1 of 5>,"score":<int>},"notes":"<filler to the size>"}
//! ```
//!
//! `buckets` is N / 100 (at least 1), so `eq /bucket = b<x>` matches the
//! keys `i ≡ x (mod buckets)`: about 100 of them, known in advance
//! ([`bucket_keys`]). `id` and `bucket` depend on `i` only; everything
//! else also on the seed and revision (the commit-cost cycles rewrite a
//! key with a new revision each time, so its indexed terms change).

use bytes::Bytes;

/// The size every document is padded to, bytes.
pub const DOC_BYTES: usize = 1024;

const STATUSES: [&str; 8] = [
    "open",
    "pending",
    "active",
    "review",
    "approved",
    "shipped",
    "closed",
    "cancelled",
];

const REGION_AREAS: [&str; 5] = ["us", "eu", "ap", "sa", "me"];

const TAGS: [&str; 40] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "amber", "beige", "coral", "denim",
    "ember", "fern", "garnet", "hazel", "ivory", "jade", "khaki", "lilac", "maroon", "navy",
];

const TIERS: [&str; 5] = ["bronze", "silver", "gold", "platinum", "diamond"];

const FILLER: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod \
    tempor incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud \
    exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat ";

/// 2024-01-01T00:00:00Z, Unix seconds: the earliest `created_at`.
const EPOCH_2024: u64 = 1_704_067_200;

/// The workload's key of document `i`.
pub fn key(i: u64) -> String {
    format!("doc-{i}")
}

/// How many buckets `docs` documents are spread over: N / 100, at least 1.
pub fn buckets(docs: u64) -> u64 {
    (docs / 100).max(1)
}

/// The keys whose `bucket` is `b<x>` among `docs` documents, sorted by
/// bytes (the order a query answers in).
pub fn bucket_keys(docs: u64, x: u64) -> Vec<String> {
    let b = buckets(docs);
    let mut keys: Vec<String> = (x..docs).step_by(b as usize).map(key).collect();
    keys.sort_unstable();
    keys
}

/// splitmix64: a fast, well-mixed 64-bit sequence.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The bucket a query of repetition `rep` asks for (spread pseudo-randomly
/// over all buckets, the same for every run with the same seed).
pub fn query_bucket(seed: u64, docs: u64, rep: u64) -> u64 {
    Mix(seed ^ 0x5eed_0fb0_c7e7 ^ rep.wrapping_mul(0xa076_1d64_78bd_642f)).below(buckets(docs))
}

/// Document `i` of `docs`, revision `rev`, exactly [`DOC_BYTES`] long.
pub fn document(seed: u64, docs: u64, i: u64, rev: u64) -> Bytes {
    let mut m = Mix(seed ^ i.wrapping_mul(0xe703_7ed1_a0b4_28db) ^ rev.rotate_left(32));
    let status = STATUSES[m.below(8) as usize];
    let area = REGION_AREAS[m.below(5) as usize];
    let zone = m.below(10) + 1;
    let cents = m.below(10_000_000);
    let created = rfc3339(EPOCH_2024 + m.below(2 * 365 * 86_400));
    let t0 = m.below(40) as usize;
    let t1 = (t0 + 1 + m.below(39) as usize) % 40;
    let mut t2 = m.below(40) as usize;
    while t2 == t0 || t2 == t1 {
        t2 = (t2 + 1) % 40;
    }
    let tier = TIERS[m.below(5) as usize];
    let score = m.below(1000);
    let mut s = String::with_capacity(DOC_BYTES);
    s.push_str(&format!(
        "{{\"id\":\"doc-{i}\",\"bucket\":\"b{}\",\"status\":\"{status}\",\"region\":\"{area}-{zone:02}\",\
         \"amount\":{}.{:02},\"created_at\":\"{created}\",\"tags\":[\"{}\",\"{}\",\"{}\"],\
         \"customer\":{{\"tier\":\"{tier}\",\"score\":{score}}},\"notes\":\"",
        i % buckets(docs),
        cents / 100,
        cents % 100,
        TAGS[t0],
        TAGS[t1],
        TAGS[t2],
    ));
    let fill = DOC_BYTES.saturating_sub(s.len() + 2);
    let start = m.below(FILLER.len() as u64) as usize;
    s.extend(FILLER.chars().cycle().skip(start).take(fill));
    s.push_str("\"}");
    Bytes::from(s)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
fn rfc3339(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_json_of_the_size_and_shape() {
        for (i, rev) in [(0, 0), (7, 0), (123_456, 3), (999_999, 9)] {
            let d = document(42, 1_000_000, i, rev);
            assert_eq!(d.len(), DOC_BYTES, "doc {i}");
            let v: serde_json::Value = serde_json::from_slice(&d).expect("json");
            assert_eq!(v["id"], format!("doc-{i}"));
            assert_eq!(v["bucket"], format!("b{}", i % 10_000));
            assert!(STATUSES.contains(&v["status"].as_str().expect("status")));
            assert!(v["amount"].is_number());
            let tags = v["tags"].as_array().expect("tags");
            assert_eq!(tags.len(), 3);
            assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2]);
            assert!(v["customer"]["score"].is_u64());
            assert!(v["notes"].as_str().expect("notes").len() > 500);
        }
        assert_eq!(document(1, 100, 5, 0), document(1, 100, 5, 0));
        assert_ne!(document(1, 100, 5, 0), document(1, 100, 5, 1));
        assert_ne!(document(1, 100, 5, 0), document(2, 100, 5, 0));
    }

    #[test]
    fn buckets_hold_about_a_hundred_keys() {
        assert_eq!(buckets(1_000_000), 10_000);
        assert_eq!(buckets(50), 1);
        let keys = bucket_keys(2_000, 3);
        assert_eq!(keys.len(), 100);
        assert!(keys.contains(&"doc-3".to_string()) && keys.contains(&"doc-1983".to_string()));
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(bucket_keys(2_050, 5).len(), 103);
        for rep in 0..50 {
            assert!(query_bucket(9, 2_000, rep) < 20);
        }
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(EPOCH_2024), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
