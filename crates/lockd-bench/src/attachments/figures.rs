//! The arithmetic of the attachments report: payload sizes, MiB/s,
//! medians and ratios to the raw-disk baseline. Pure functions, tested
//! here.

use std::time::Duration;

use serde::Serialize;

/// One MiB.
pub const MIB: f64 = 1024.0 * 1024.0;

/// Parses a payload size (`1MiB`, `64MiB`, `100MB`, `4096`, the server's
/// own syntax); zero is refused (a throughput of nothing means nothing).
pub fn parse_payload_size(s: &str) -> Result<u64, String> {
    match lockd_server::config::parse_size(s)? {
        0 => Err(format!("payload size {s:?} is zero")),
        n => Ok(n),
    }
}

/// `64MiB`, `100MB`, `1000`.
pub fn fmt_size(n: u64) -> String {
    lockd_server::config::format_size(n)
}

/// MiB per second for `bytes` moved in `d` (`NaN` for a zero duration).
pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        bytes as f64 / MIB / s
    } else {
        f64::NAN
    }
}

/// Median of `v` (mean of the middle two for an even count); `NaN` when
/// empty. Sorts `v`; `NaN` samples sort last.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// `a ÷ b` when both are finite and `b > 0`.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// Throughput of one measured figure over the iterations, MiB/s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Throughput {
    /// Median.
    pub median_mib_s: f64,
    /// Slowest iteration.
    pub min_mib_s: f64,
    /// Fastest iteration.
    pub max_mib_s: f64,
}

impl Throughput {
    /// The throughput of moving `bytes` in each of `times`.
    pub fn of(bytes: u64, times: &[Duration]) -> Throughput {
        let mut rates: Vec<f64> = times.iter().map(|d| mib_per_s(bytes, *d)).collect();
        let median_mib_s = median(&mut rates);
        Throughput {
            median_mib_s,
            min_mib_s: rates.first().copied().unwrap_or(f64::NAN),
            max_mib_s: rates.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Median of durations, in milliseconds.
pub fn median_ms(times: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    median(&mut ms)
}

/// `0.62×`, or `n/a`.
pub fn fmt_times(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| {
        format!("{}×", crate::report::fmt_ratio(r))
    })
}

/// `812 MiB/s`, `3.4 MiB/s`, `0.21 MiB/s`.
pub fn fmt_mib_s(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 100.0 {
        format!("{} MiB/s", crate::report::group(v))
    } else if v >= 1.0 {
        format!("{v:.1} MiB/s")
    } else {
        format!("{v:.2} MiB/s")
    }
}

/// `12.3 MiB`, with a sign when `signed` (`+4.0 MiB`).
pub fn fmt_mib(bytes: i64, signed: bool) -> String {
    let v = bytes as f64 / MIB;
    if signed {
        format!("{v:+.1} MiB")
    } else {
        format!("{v:.1} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_the_servers_syntax() {
        assert_eq!(parse_payload_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_payload_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_payload_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_payload_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_payload_size(" 4096 "), Ok(4096));
        assert_eq!(parse_payload_size("64KiB"), Ok(64 << 10));
        for bad in ["0", "0MiB", "", "MiB", "-1MiB", "12parsecs"] {
            assert!(parse_payload_size(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(fmt_size(64 << 20), "64MiB");
        assert_eq!(fmt_size(1 << 30), "1GiB");
        assert_eq!(fmt_size(100_000_000), "100MB");
    }

    #[test]
    fn throughput_and_ratios() {
        assert!((mib_per_s(64 << 20, Duration::from_millis(500)) - 128.0).abs() < 1e-9);
        assert!(mib_per_s(1, Duration::ZERO).is_nan());

        assert!(median(&mut []).is_nan());
        assert_eq!(median(&mut [3.0]), 3.0);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [f64::NAN, 1.0, 2.0]), 2.0);

        // 1 MiB in 10, 20, 40 ms: 100, 50, 25 MiB/s.
        let t = Throughput::of(
            1 << 20,
            &[
                Duration::from_millis(20),
                Duration::from_millis(10),
                Duration::from_millis(40),
            ],
        );
        assert!((t.median_mib_s - 50.0).abs() < 1e-9);
        assert!((t.min_mib_s - 25.0).abs() < 1e-9);
        assert!((t.max_mib_s - 100.0).abs() < 1e-9);
        assert!(Throughput::of(1, &[]).median_mib_s.is_nan());

        assert_eq!(
            median_ms(&[Duration::from_millis(3), Duration::from_millis(1)]),
            2.0
        );

        assert_eq!(ratio(62.0, 100.0), Some(0.62));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(ratio(1.0, f64::INFINITY), None);
        assert_eq!(fmt_times(ratio(62.0, 100.0)), "0.62×");
        assert_eq!(fmt_times(None), "n/a");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_mib_s(1234.4), "1 234 MiB/s");
        assert_eq!(fmt_mib_s(12.34), "12.3 MiB/s");
        assert_eq!(fmt_mib_s(0.213), "0.21 MiB/s");
        assert_eq!(fmt_mib_s(f64::NAN), "n/a");
        assert_eq!(fmt_mib(3 << 20, true), "+3.0 MiB");
        assert_eq!(fmt_mib(-(1 << 19), true), "-0.5 MiB");
        assert_eq!(fmt_mib(10 << 20, false), "10.0 MiB");
    }
}
