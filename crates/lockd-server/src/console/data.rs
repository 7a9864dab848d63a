//! What the console's JSON routes answer, built from the engine, the
//! queues and the controls.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::{Access, Console, ConsoleError, DEAD_LETTERS_SHOWN, DOCUMENT_SHOWN};
use crate::control::Sample;
use crate::core::queue::QueueGauge;
use crate::obs::{endpoint_label, ENDPOINT_SLOTS};

/// How often the event stream sends an overview.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long the costly figures of an overview serve every open page.
const FRESH: Duration = Duration::from_millis(900);

/// The costly figures of an overview: counting leases walks every key in
/// memory, queue figures every message. Taken at most once per [`FRESH`]
/// however many pages are open.
struct Costly {
    taken: std::time::Instant,
    leases: LeaseView,
    gauges: Vec<QueueGauge>,
}

/// The latest [`Costly`] figures, shared by the console's streams.
#[derive(Default)]
pub struct Shared(std::sync::Mutex<Option<Arc<Costly>>>);

impl Shared {
    fn get(&self, c: &Console) -> Arc<Costly> {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = last.as_ref().filter(|f| f.taken.elapsed() < FRESH) {
            return f.clone();
        }
        let fresh = Arc::new(Costly {
            taken: std::time::Instant::now(),
            leases: LeaseView {
                held: c.engine.live_leases(),
                waiters: c.engine.waiting_acquirers(),
                keys_cached: c.engine.cached_keys(),
            },
            gauges: c.queues.gauges(),
        });
        *last = Some(fresh.clone());
        fresh
    }
}

/// The overview: what a person on call looks at first.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Unix milliseconds when it was taken.
    pub at_unix_ms: i64,
    /// The server and who is looking.
    pub server: ServerView,
    /// Requests per second by endpoint since the previous overview of the
    /// same stream (empty in a one-off snapshot), busiest first.
    pub rates: Vec<Rate>,
    /// Requests answered since start, by endpoint (those seen).
    pub requests: Vec<Count>,
    /// Leases and waiters.
    pub leases: LeaseView,
    /// Queue figures over every queue in memory.
    pub queues: QueueTotals,
    /// Requests being served, by kind.
    pub inflight: InflightView,
    /// QRF posture, its recent transitions and the latest LSF sample.
    pub qrf: QrfView,
}

/// The server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub version: &'static str,
    pub store: String,
    pub node_id: String,
    /// The namespace of requests that name none.
    pub default_namespace: String,
    /// `active`, or `passive` (another node serves writes).
    pub ha_role: &'static str,
    pub draining: bool,
    /// Milliseconds left in the drain window (0 when not draining).
    pub drain_remaining_ms: u64,
    pub mtls: bool,
    /// Who is looking: `read_only`, or `certificate` with the identity.
    pub access: serde_json::Value,
}

/// Requests per second of one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub endpoint: &'static str,
    pub per_second: f64,
}

/// Requests answered by one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Count {
    pub endpoint: &'static str,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    pub held: usize,
    pub waiters: usize,
    pub keys_cached: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueTotals {
    pub queues: usize,
    pub messages: usize,
    pub ready: usize,
    pub in_flight: usize,
    pub waiting_consumers: usize,
    /// Dead-lettered by this process since it started.
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InflightView {
    pub producers: i64,
    pub consumers: i64,
    pub acks: i64,
    pub locks: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QrfView {
    pub state: &'static str,
    pub transitions: Vec<TransitionView>,
    /// The latest LSF sample (`null` before the first, or with QRF off).
    pub sample: Option<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransitionView {
    pub at_unix_ms: i64,
    pub from: &'static str,
    pub to: &'static str,
    pub reason: String,
    pub sample: Sample,
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Requests answered so far, per endpoint slot.
fn totals(c: &Console) -> Vec<u64> {
    (0..ENDPOINT_SLOTS).map(|slot| c.http.total(slot)).collect()
}

/// The overview; `before` is the previous one's request totals and when
/// they were taken, for the rates.
pub(super) fn overview(
    c: &Console,
    access: &Access,
    before: Option<(&[u64], std::time::Instant)>,
) -> Overview {
    let now_totals = totals(c);
    let rates = match before {
        Some((prev, at)) => {
            let secs = at.elapsed().as_secs_f64().max(0.001);
            let mut r: Vec<Rate> = now_totals
                .iter()
                .zip(prev)
                .enumerate()
                .filter(|(_, (n, p))| n > p)
                .map(|(slot, (n, p))| Rate {
                    endpoint: endpoint_label(slot),
                    per_second: ((n - p) as f64 / secs * 10.0).round() / 10.0,
                })
                .collect();
            r.sort_by(|a, b| b.per_second.total_cmp(&a.per_second));
            r
        }
        None => Vec::new(),
    };
    let requests = now_totals
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(slot, n)| Count {
            endpoint: endpoint_label(slot),
            total: *n,
        })
        .collect();
    let costly = c.shared.get(c);
    let visible = costly
        .gauges
        .iter()
        .filter(|g| access.may_read(&g.namespace));
    let queues = visible.fold(
        QueueTotals {
            queues: 0,
            messages: 0,
            ready: 0,
            in_flight: 0,
            waiting_consumers: 0,
            dead_lettered: 0,
        },
        |mut t, g| {
            t.queues += 1;
            t.messages += g.messages;
            t.ready += g.ready;
            t.in_flight += g.in_flight;
            t.waiting_consumers += g.waiting_consumers;
            t.dead_lettered += g.dead_lettered;
            t
        },
    );
    let ctl = &c.control;
    let inflight = InflightView {
        producers: ctl.inflight.producers.load(Ordering::Relaxed),
        consumers: ctl.inflight.consumers.load(Ordering::Relaxed),
        acks: ctl.inflight.acks.load(Ordering::Relaxed),
        locks: ctl.inflight.locks.load(Ordering::Relaxed),
    };
    let (sample, _) = ctl.last_sample();
    let transitions = ctl
        .qrf
        .transitions()
        .into_iter()
        .map(|t| TransitionView {
            at_unix_ms: t.at_unix_ms,
            from: t.from.as_str(),
            to: t.to.as_str(),
            reason: t.reason,
            sample: t.sample,
        })
        .collect();
    let draining = ctl.drain.is_draining();
    Overview {
        at_unix_ms: now_unix_ms(),
        server: ServerView {
            version: env!("CARGO_PKG_VERSION"),
            store: c.store.clone(),
            node_id: c.ha.node_id().to_string(),
            default_namespace: c.default_namespace.clone(),
            ha_role: if c.ha.is_active() {
                "active"
            } else {
                "passive"
            },
            draining,
            drain_remaining_ms: if draining {
                u64::try_from(ctl.drain.remaining().as_millis()).unwrap_or(u64::MAX)
            } else {
                0
            },
            mtls: c.mtls,
            access: access.describe(c.read_only),
        },
        rates,
        requests,
        leases: costly.leases.clone(),
        queues,
        inflight,
        qrf: QrfView {
            state: ctl.qrf.state().as_str(),
            transitions,
            sample,
        },
    }
}

/// The event stream: an `overview` event at once and then every
/// [`EVERY`], until the client goes or the server stops.
pub(super) fn events(
    c: Arc<Console>,
    access: Access,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    struct Tick {
        c: Arc<Console>,
        access: Access,
        prev: Option<(Vec<u64>, std::time::Instant)>,
        interval: tokio::time::Interval,
    }
    let mut interval = tokio::time::interval(EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tick = Tick {
        c,
        access,
        prev: None,
        interval,
    };
    futures_util::stream::unfold(tick, |mut t| async move {
        let mut stopped = t.c.stopped.clone();
        tokio::select! {
            _ = t.interval.tick() => {}
            _ = stopped.wait_for(|s| *s) => return None,
        }
        let taken = std::time::Instant::now();
        let view = overview(
            &t.c,
            &t.access,
            t.prev.as_ref().map(|(p, at)| (p.as_slice(), *at)),
        );
        t.prev = Some((totals(&t.c), taken));
        let json = serde_json::to_string(&view).unwrap_or_else(|_| "{}".into());
        let event = Bytes::from(format!("event: overview\ndata: {json}\n\n"));
        Some((Ok(event), t))
    })
}

/// One key in a page of keys.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub key: String,
    pub lease: Option<LeaseInfo>,
    pub version: i64,
    pub etag: String,
    pub updated_at_unix: i64,
}

/// A key's lease.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseInfo {
    pub owner: String,
    pub lease_id: String,
    pub txn_id: String,
    pub fencing_token: i64,
    pub expires_at_unix_ms: i64,
    /// Milliseconds left (0 once expired and not yet swept).
    pub expires_in_ms: i64,
}

/// A page of keys.
#[derive(Debug, Clone, Serialize)]
pub struct KeysPage {
    pub namespace: String,
    pub prefix: String,
    pub keys: Vec<KeyRow>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next: Option<String>,
}

fn lease_info(c: &Console, rec: &crate::core::record::MetaRecord) -> Option<LeaseInfo> {
    let now = c.engine.clock().now_ms();
    rec.lease.as_ref().map(|l| LeaseInfo {
        owner: l.owner.to_string(),
        lease_id: l.id.to_string(),
        txn_id: l.txn_id.to_string(),
        fencing_token: l.fencing_token,
        expires_at_unix_ms: l.expires_ms(),
        expires_in_ms: l.expires_ms().saturating_sub(now).max(0),
    })
}

pub(super) async fn keys(
    c: &Console,
    ns: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<KeysPage, ConsoleError> {
    // One more than a page tells whether another page follows.
    let mut listed = c
        .engine
        .list_keys(ns, prefix, after, limit.saturating_add(1))
        .await?;
    let more = listed.len() > limit;
    listed.truncate(limit);
    let next = more.then(|| listed.last().cloned()).flatten();
    let mut keys = Vec::with_capacity(listed.len());
    for key in listed {
        let rec = c.engine.describe(ns, &key).await?;
        let row = match rec {
            Some(rec) => KeyRow {
                lease: lease_info(c, &rec),
                version: rec.version,
                etag: rec.state_etag.clone(),
                updated_at_unix: rec.updated_at_unix,
                key,
            },
            None => KeyRow {
                key,
                lease: None,
                version: 0,
                etag: String::new(),
                updated_at_unix: 0,
            },
        };
        keys.push(row);
    }
    Ok(KeysPage {
        namespace: ns.to_string(),
        prefix: prefix.to_string(),
        keys,
        next,
    })
}

/// One key in full.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub namespace: String,
    pub key: String,
    /// Whether the key has a record at all.
    pub exists: bool,
    pub lease: Option<LeaseInfo>,
    /// The key's fencing counter: the token of the last grant.
    pub fencing_counter: i64,
    pub version: i64,
    pub etag: String,
    pub updated_at_unix: i64,
    /// Whether a holder has changes staged and not yet committed.
    pub staged: bool,
    pub attachments: Vec<AttachmentView>,
    pub document: Option<DocumentView>,
    /// Why the document could not be shown (e.g. not yet published).
    pub document_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttachmentView {
    pub name: String,
    pub size: i64,
    pub content_type: String,
    pub sha256: String,
}

/// A committed document, pretty-printed and cut at [`DOCUMENT_SHOWN`].
#[derive(Debug, Clone, Serialize)]
pub struct DocumentView {
    pub etag: String,
    pub version: i64,
    /// Its size as stored.
    pub bytes: usize,
    /// Pretty JSON (or the stored text, when it is too large to format).
    pub text: String,
    /// Whether `text` stops short; the whole is at `/api/key/document`.
    pub truncated: bool,
}

/// Indents JSON text two spaces a level, token by token: keys keep their
/// order and numbers their digits (a parse into values would sort the one
/// and round the other).
fn pretty(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if in_string {
            out.push(ch);
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => {
                in_string = true;
                out.push(ch);
            }
            '{' | '[' => {
                out.push(ch);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if let Some(&close) = chars.peek().filter(|c| matches!(c, '}' | ']')) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(ch);
            }
            ',' => {
                out.push(ch);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

fn show_document(body: &[u8]) -> (String, bool) {
    if body.len() <= DOCUMENT_SHOWN {
        if let Ok(text) = std::str::from_utf8(body) {
            let p = pretty(text);
            if p.len() <= DOCUMENT_SHOWN {
                return (p, false);
            }
        }
    }
    let mut cut = body.len().min(DOCUMENT_SHOWN);
    // Cut before a character, not inside one (stored documents are UTF-8).
    while cut > 0 && cut < body.len() && body[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    let text = String::from_utf8_lossy(&body[..cut]).into_owned();
    (text, cut < body.len())
}

pub(super) async fn key(c: &Console, ns: &str, key: &str) -> Result<KeyView, ConsoleError> {
    let rec = c.engine.describe(ns, key).await?;
    let mut view = KeyView {
        namespace: ns.to_string(),
        key: key.to_string(),
        exists: rec.is_some(),
        lease: None,
        fencing_counter: 0,
        version: 0,
        etag: String::new(),
        updated_at_unix: 0,
        staged: false,
        attachments: Vec::new(),
        document: None,
        document_error: None,
    };
    let Some(rec) = rec else {
        return Ok(view);
    };
    view.lease = lease_info(c, &rec);
    view.fencing_counter = rec.fencing_token;
    view.version = rec.version;
    view.etag = rec.state_etag.clone();
    view.updated_at_unix = rec.updated_at_unix;
    view.staged = rec.staged.is_some();
    view.attachments = rec
        .attachments
        .iter()
        .map(|a| AttachmentView {
            name: a.name.clone(),
            size: a.size,
            content_type: a.content_type.clone(),
            sha256: a.sha256.clone(),
        })
        .collect();
    match c.engine.get_public(ns, key).await {
        Ok(Some(doc)) => {
            let (text, truncated) = show_document(&doc.body);
            view.document = Some(DocumentView {
                etag: doc.etag,
                version: doc.version,
                bytes: doc.body.len(),
                text,
                truncated,
            });
        }
        Ok(None) => {}
        Err(e) => view.document_error = Some(e.to_string()),
    }
    Ok(view)
}

fn rows(c: &Console, access: &Access) -> Vec<QueueGauge> {
    let mut rows: Vec<QueueGauge> = c
        .queues
        .gauges()
        .into_iter()
        .filter(|g| access.may_read(&g.namespace))
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.queue).cmp(&(&b.namespace, &b.queue)));
    rows
}

/// The queues this server has in memory.
#[derive(Debug, Clone, Serialize)]
pub struct QueuesView {
    pub queues: Vec<QueueGauge>,
}

pub(super) fn queues(c: &Console, access: &Access) -> QueuesView {
    QueuesView {
        queues: rows(c, access),
    }
}

/// One queue: figures, head and dead letters.
#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    pub namespace: String,
    pub queue: String,
    pub messages: usize,
    pub ready: usize,
    pub in_flight: usize,
    pub waiting_consumers: usize,
    /// The visible head: its id and when it was enqueued (Unix seconds).
    pub head: Option<HeadView>,
    /// Whether this node holds the queue in memory (the figures above are
    /// live only then).
    pub in_memory: bool,
    pub dead_letters: Vec<DeadLetter>,
    /// Whether there are more dead letters than listed.
    pub more_dead_letters: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeadView {
    pub id: String,
    pub enqueued_at_unix: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub attempts: i64,
    pub failure_attempts: i64,
    pub max_attempts: i64,
    pub enqueued_at_unix: i64,
    pub dead_lettered_at_unix: i64,
    pub payload_bytes: i64,
    pub last_error: Option<serde_json::Value>,
}

pub(super) async fn queue(c: &Console, ns: &str, name: &str) -> Result<QueueView, ConsoleError> {
    // Only queues in memory have live figures; looking at another one
    // loads nothing (its dead letters are read from the store).
    let loaded = c.queues.loaded_snapshot(ns, name);
    let in_memory = loaded.is_some();
    let snap = loaded.unwrap_or_default();
    let gauge = c.queues.loaded_gauge(ns, name);
    let mut dead = c
        .queues
        .dlq_list(ns, name, None, DEAD_LETTERS_SHOWN + 1)
        .await?;
    let more = dead.len() > DEAD_LETTERS_SHOWN;
    dead.truncate(DEAD_LETTERS_SHOWN);
    Ok(QueueView {
        namespace: ns.to_string(),
        queue: name.to_string(),
        messages: gauge.as_ref().map_or(0, |g| g.messages),
        ready: snap.ready,
        in_flight: gauge.as_ref().map_or(0, |g| g.in_flight),
        waiting_consumers: snap.waiting_consumers,
        head: snap.head.map(|(id, enqueued, _)| HeadView {
            id,
            enqueued_at_unix: enqueued,
        }),
        dead_letters: dead
            .into_iter()
            .map(|m| DeadLetter {
                id: m.id,
                attempts: m.attempts,
                failure_attempts: m.failure_attempts,
                max_attempts: m.max_attempts,
                enqueued_at_unix: m.enqueued_at_unix,
                dead_lettered_at_unix: m.dead_lettered_at_unix,
                payload_bytes: m.payload_bytes,
                last_error: m.last_error,
            })
            .collect(),
        more_dead_letters: more,
        in_memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_keeps_order_digits_and_strings() {
        let doc = r#"{"z":1,"a":[12345678901234567890123,{},[]],"s":"x,{\"y\":[1]}"}"#;
        assert_eq!(
            pretty(doc),
            "{\n  \"z\": 1,\n  \"a\": [\n    12345678901234567890123,\n    {},\n    []\n  ],\n  \"s\": \"x,{\\\"y\\\":[1]}\"\n}"
        );
    }

    #[test]
    fn documents_are_cut_between_characters() {
        let small = br#"{"a":1}"#;
        assert_eq!(
            show_document(small),
            ("{\n  \"a\": 1\n}".to_string(), false)
        );
        // "é" is two bytes; put one across the cut.
        let mut big = vec![b'"'; 1];
        big.extend(std::iter::repeat_n(b'x', DOCUMENT_SHOWN - 2));
        big.extend("é and more".as_bytes());
        big.push(b'"');
        let (text, cut) = show_document(&big);
        assert!(cut);
        assert_eq!(text.len(), DOCUMENT_SHOWN - 1);
        assert!(!text.contains('\u{FFFD}'));
    }
}
