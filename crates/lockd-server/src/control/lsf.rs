//! The Local Security Force (LSF): samples the host and the server's
//! in-flight work, one [`Sample`] per call to [`Sampler::sample`].
//!
//! What is sampled, and how (the rules of the original Go lockd):
//!
//! * **Memory** (`/proc/meminfo`, values in kB): in use, percent, is
//!   `(1 − available / total) × 100`, clamped to `0..=100`. `available` is
//!   `MemAvailable` (the sample then says it includes reclaimable memory);
//!   if `MemAvailable` is absent or 0 it falls back to
//!   `MemFree + Buffers + Cached` and the sample says it does not, so that
//!   the QRF can subtract its strict headroom. Without `MemTotal` (or with
//!   `MemTotal` 0) the file is unusable.
//! * **Swap** (`/proc/meminfo`): in use, percent, is
//!   `(SwapTotal − SwapFree) / SwapTotal × 100` (0 when `SwapTotal` is 0);
//!   `swap_bytes` is the swap in use.
//! * **Load** (`/proc/loadavg`): the 1, 5 and 15 minute averages, plus a
//!   baseline of `load1`: an exponential moving average with alpha 0.05.
//!   The first sample seeds it with `load1` (or 0.1 if `load1 ≤ 0`); each
//!   later sample moves it by `(load1 − baseline) × 0.05`. It never drops
//!   below the floor `max(0.25, 0.05 × CPUs)` (CPUs from
//!   [`std::thread::available_parallelism`]).
//!   `load1_multiplier = load1 / baseline`.
//! * **CPU** (`/proc/stat`, the first `cpu ` line): utilisation between this
//!   sample and the previous one, `Δbusy / Δtotal × 100`, where `total` is
//!   the sum of all fields and `busy = total − idle − iowait`. 0 on the first
//!   sample or when `Δtotal` is 0.
//! * **RSS** (`/proc/self/statm`): the second field (resident pages) times
//!   the page size.
//! * **In flight**: the four counters of [`Inflight`], read with
//!   [`Ordering::Relaxed`].
//!
//! This is Linux-only. When a file cannot be read or parsed, its values are
//! 0 and sampling goes on; the sampler never panics. If `/proc/loadavg` is
//! unreadable the baseline is left as it was (an unreadable file is not a
//! load of 0).

use std::sync::atomic::Ordering;

use super::{Inflight, Sample};

/// Weight of a new `load1` in the baseline's exponential moving average.
const LOAD_BASELINE_ALPHA: f64 = 0.05;
/// The baseline seed when the first `load1` is 0 (or negative).
const LOAD_BASELINE_SEED_MIN: f64 = 0.1;
/// Lowest possible baseline floor, whatever the number of CPUs.
const LOAD_BASELINE_FLOOR_MIN: f64 = 0.25;
/// Baseline floor per CPU.
const LOAD_BASELINE_FLOOR_PER_CPU: f64 = 0.05;
/// Page size used when the real one cannot be read from `/proc/self/auxv`.
const DEFAULT_PAGE_SIZE: u64 = 4096;
/// `AT_PAGESZ`: the auxiliary vector entry holding the page size.
const AT_PAGESZ: u64 = 6;

/// Takes LSF samples; keeps what a sample needs from the previous ones (the
/// `/proc/stat` CPU totals and the load baseline).
#[derive(Debug, Clone)]
pub struct Sampler {
    /// `(busy, total)` CPU jiffies at the previous sample, if it had them.
    prev_cpu: Option<(u64, u64)>,
    /// EWMA baseline of `load1`; `None` until a `load1` has been read.
    load_baseline: Option<f64>,
    /// The baseline's floor, `max(0.25, 0.05 × CPUs)`.
    load_floor: f64,
    /// Bytes per page, for the RSS.
    page_size: u64,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

impl Sampler {
    /// A sampler with no history: the first sample reports 0 CPU and seeds
    /// the load baseline.
    pub fn new() -> Sampler {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Sampler {
            prev_cpu: None,
            load_baseline: None,
            load_floor: load_baseline_floor(cpus),
            page_size: read_page_size(),
        }
    }

    /// Takes one sample: reads `/proc` (Linux-only; a file that cannot be
    /// read or parsed gives 0 values, never a panic) and the in-flight
    /// counters.
    pub fn sample(&mut self, inflight: &Inflight) -> Sample {
        let mut s = Sample::default();

        if let Some(mem) = read_proc("/proc/meminfo").and_then(|t| parse_meminfo(&t)) {
            s.memory_percent = mem.memory_percent();
            s.memory_includes_reclaimable = mem.includes_reclaimable;
            s.swap_percent = mem.swap_percent();
            s.swap_bytes = mem.swap_used_bytes();
        }

        match read_proc("/proc/loadavg").and_then(|t| parse_loadavg(&t)) {
            Some((l1, l5, l15)) => {
                s.load1 = l1;
                s.load5 = l5;
                s.load15 = l15;
                let baseline = next_load_baseline(self.load_baseline, l1, self.load_floor);
                self.load_baseline = Some(baseline);
                s.load1_baseline = baseline;
                s.load1_multiplier = l1 / baseline;
            }
            None => {
                s.load1_baseline = self.load_baseline.unwrap_or(self.load_floor);
            }
        }

        let cpu = read_proc("/proc/stat").and_then(|t| parse_cpu_totals(&t));
        if let (Some(prev), Some(now)) = (self.prev_cpu, cpu) {
            s.cpu_percent = cpu_percent(prev, now);
        }
        // An unreadable /proc/stat keeps the last good totals, so the next
        // good sample measures from them.
        if cpu.is_some() {
            self.prev_cpu = cpu;
        }

        if let Some(pages) = read_proc("/proc/self/statm").and_then(|t| parse_statm_rss_pages(&t)) {
            s.rss_bytes = pages.saturating_mul(self.page_size);
        }

        s.producers = inflight.producers.load(Ordering::Relaxed);
        s.consumers = inflight.consumers.load(Ordering::Relaxed);
        s.acks = inflight.acks.load(Ordering::Relaxed);
        s.locks = inflight.locks.load(Ordering::Relaxed);
        s
    }
}

/// What LSF needs from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`, or `MemFree + Buffers + Cached` without it.
    pub available_bytes: u64,
    /// Whether `available_bytes` is `MemAvailable` (which counts reclaimable
    /// memory) rather than the fallback sum.
    pub includes_reclaimable: bool,
    /// `SwapTotal`.
    pub swap_total_bytes: u64,
    /// `SwapFree`.
    pub swap_free_bytes: u64,
}

impl MemInfo {
    /// Memory in use, percent: `(1 − available / total) × 100`, clamped to
    /// `0..=100`.
    fn memory_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        let used = 1.0 - self.available_bytes as f64 / self.total_bytes as f64;
        (used * 100.0).clamp(0.0, 100.0)
    }

    /// Swap in use, bytes.
    fn swap_used_bytes(&self) -> u64 {
        self.swap_total_bytes.saturating_sub(self.swap_free_bytes)
    }

    /// Swap in use, percent (0 without swap).
    fn swap_percent(&self) -> f64 {
        if self.swap_total_bytes == 0 {
            return 0.0;
        }
        (self.swap_used_bytes() as f64 / self.swap_total_bytes as f64 * 100.0).clamp(0.0, 100.0)
    }
}

/// Parses `/proc/meminfo` (values in kB). `None` when `MemTotal` is missing
/// or 0. Available memory is `MemAvailable`, or `MemFree + Buffers + Cached`
/// when `MemAvailable` is missing or 0 (then `includes_reclaimable` is
/// false). Missing swap lines count as 0.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut total = None;
    let mut available = None;
    let (mut free, mut buffers, mut cached) = (0u64, 0u64, 0u64);
    let (mut swap_total, mut swap_free) = (0u64, 0u64);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(kb) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = kb.saturating_mul(1024);
        match key.trim() {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            "MemFree" => free = bytes,
            "Buffers" => buffers = bytes,
            "Cached" => cached = bytes,
            "SwapTotal" => swap_total = bytes,
            "SwapFree" => swap_free = bytes,
            _ => {}
        }
    }
    let total = total.filter(|&t| t > 0)?;
    let (available_bytes, includes_reclaimable) = match available {
        Some(a) if a > 0 => (a, true),
        _ => (free.saturating_add(buffers).saturating_add(cached), false),
    };
    Some(MemInfo {
        total_bytes: total,
        available_bytes,
        includes_reclaimable,
        swap_total_bytes: swap_total,
        swap_free_bytes: swap_free,
    })
}

/// Parses `/proc/loadavg`: the 1, 5 and 15 minute load averages (its first
/// three fields).
pub fn parse_loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    let l1 = fields.next()??;
    let l5 = fields.next()??;
    let l15 = fields.next()??;
    if [l1, l5, l15].iter().any(|l| !l.is_finite()) {
        return None;
    }
    Some((l1, l5, l15))
}

/// Parses the first `cpu ` line of `/proc/stat` into `(busy, total)`
/// jiffies: `total` is the sum of all its fields, `busy` is `total` minus
/// idle (4th field) and iowait (5th field).
pub fn parse_cpu_totals(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    if fields.len() < 4 {
        return None;
    }
    let total = fields.iter().fold(0u64, |acc, &v| acc.saturating_add(v));
    let idle = fields[3].saturating_add(fields.get(4).copied().unwrap_or(0));
    Some((total.saturating_sub(idle), total))
}

/// Parses `/proc/self/statm`: its second field, the resident set size in
/// pages.
pub fn parse_statm_rss_pages(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// CPU utilisation, percent, between two `(busy, total)` readings; 0 when
/// the total did not move (or went backwards).
fn cpu_percent(prev: (u64, u64), now: (u64, u64)) -> f64 {
    let d_total = now.1.saturating_sub(prev.1);
    if d_total == 0 {
        return 0.0;
    }
    let d_busy = now.0.saturating_sub(prev.0);
    (d_busy as f64 / d_total as f64 * 100.0).clamp(0.0, 100.0)
}

/// The load baseline's floor for `cpus` CPUs: `max(0.25, 0.05 × cpus)`.
fn load_baseline_floor(cpus: usize) -> f64 {
    LOAD_BASELINE_FLOOR_MIN.max(LOAD_BASELINE_FLOOR_PER_CPU * cpus as f64)
}

/// One step of the load baseline: seeds it with `load1` (0.1 if
/// `load1 ≤ 0`) when there is none yet, otherwise moves it towards `load1`
/// by alpha 0.05; never below `floor`.
fn next_load_baseline(prev: Option<f64>, load1: f64, floor: f64) -> f64 {
    let next = match prev {
        None if load1 > 0.0 => load1,
        None => LOAD_BASELINE_SEED_MIN,
        Some(b) => b + (load1 - b) * LOAD_BASELINE_ALPHA,
    };
    next.max(floor)
}

/// The page size from the auxiliary vector (`/proc/self/auxv`, entry
/// `AT_PAGESZ`), which needs neither `unsafe` (`sysconf`) nor a new
/// dependency; 4096 if it cannot be read.
fn read_page_size() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|b| parse_auxv_page_size(&b))
        .unwrap_or(DEFAULT_PAGE_SIZE)
}

/// Finds `AT_PAGESZ` in an auxiliary vector: native-endian pairs of
/// machine words `(type, value)`, ended by type 0.
fn parse_auxv_page_size(auxv: &[u8]) -> Option<u64> {
    const W: usize = std::mem::size_of::<usize>();
    let word = |b: &[u8]| -> Option<u64> {
        let arr: [u8; W] = b.try_into().ok()?;
        u64::try_from(usize::from_ne_bytes(arr)).ok()
    };
    for pair in auxv.chunks_exact(2 * W) {
        let key = word(&pair[..W])?;
        if key == 0 {
            break;
        }
        if key == AT_PAGESZ {
            return word(&pair[W..]).filter(|&p| p > 0);
        }
    }
    None
}

/// Reads a `/proc` file; `None` on any error.
fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "\
MemTotal:       16384000 kB
MemFree:         2048000 kB
MemAvailable:    4096000 kB
Buffers:          512000 kB
Cached:          1024000 kB
SwapCached:            0 kB
SwapTotal:       2000000 kB
SwapFree:        1500000 kB
HugePages_Total:       0
";

    #[test]
    fn meminfo_with_mem_available() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total_bytes, 16_384_000 * 1024);
        assert_eq!(m.available_bytes, 4_096_000 * 1024);
        assert!(m.includes_reclaimable);
        assert_eq!(m.swap_total_bytes, 2_000_000 * 1024);
        assert_eq!(m.swap_free_bytes, 1_500_000 * 1024);
        assert!((m.memory_percent() - 75.0).abs() < 1e-9);
        assert!((m.swap_percent() - 25.0).abs() < 1e-9);
        assert_eq!(m.swap_used_bytes(), 500_000 * 1024);
    }

    #[test]
    fn meminfo_without_mem_available_falls_back() {
        let text = MEMINFO.replace("MemAvailable:    4096000 kB\n", "");
        let m = parse_meminfo(&text).unwrap();
        assert_eq!(m.available_bytes, (2_048_000 + 512_000 + 1_024_000) * 1024);
        assert!(!m.includes_reclaimable);
        // 1 − 3584000/16384000 = 0.78125
        assert!((m.memory_percent() - 78.125).abs() < 1e-9);
    }

    #[test]
    fn meminfo_zero_mem_available_falls_back() {
        let text = MEMINFO.replace("MemAvailable:    4096000 kB", "MemAvailable:          0 kB");
        let m = parse_meminfo(&text).unwrap();
        assert_eq!(m.available_bytes, (2_048_000 + 512_000 + 1_024_000) * 1024);
        assert!(!m.includes_reclaimable);
    }

    #[test]
    fn meminfo_missing_or_zero_mem_total() {
        let text = MEMINFO.replace("MemTotal:       16384000 kB\n", "");
        assert_eq!(parse_meminfo(&text), None);
        let text = MEMINFO.replace("MemTotal:       16384000 kB", "MemTotal: 0 kB");
        assert_eq!(parse_meminfo(&text), None);
        assert_eq!(parse_meminfo(""), None);
    }

    #[test]
    fn meminfo_percent_clamped_and_no_swap() {
        let m = parse_meminfo("MemTotal: 100 kB\nMemAvailable: 200 kB\n").unwrap();
        assert_eq!(m.memory_percent(), 0.0);
        assert_eq!(m.swap_total_bytes, 0);
        assert_eq!(m.swap_percent(), 0.0);
        assert_eq!(m.swap_used_bytes(), 0);
    }

    #[test]
    fn loadavg() {
        assert_eq!(
            parse_loadavg("1.22 1.65 1.62 1/77 25136\n"),
            Some((1.22, 1.65, 1.62))
        );
        assert_eq!(parse_loadavg("0.00 0.01 0.05"), Some((0.0, 0.01, 0.05)));
        assert_eq!(parse_loadavg("1.0 2.0"), None);
        assert_eq!(parse_loadavg("x 1 2"), None);
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn cpu_totals() {
        let stat = "\
cpu  100 10 50 800 40 5 5 0 0 0
cpu0 50 5 25 400 20 2 3 0 0 0
intr 12345
";
        // total = 1010, idle = 800 + 40
        assert_eq!(parse_cpu_totals(stat), Some((170, 1010)));
        // Old kernels: only 4 fields (no iowait).
        assert_eq!(parse_cpu_totals("cpu  1 2 3 4\n"), Some((6, 10)));
        assert_eq!(parse_cpu_totals("cpu0 1 2 3 4 5\n"), None);
        assert_eq!(parse_cpu_totals("cpu  1 2 x 4 5\n"), None);
        assert_eq!(parse_cpu_totals("cpu  1 2\n"), None);
    }

    #[test]
    fn cpu_percent_between_samples() {
        assert!((cpu_percent((170, 1010), (220, 1110)) - 50.0).abs() < 1e-9);
        assert_eq!(cpu_percent((170, 1010), (170, 1010)), 0.0);
        assert_eq!(cpu_percent((170, 1010), (100, 900)), 0.0);
    }

    #[test]
    fn statm() {
        assert_eq!(
            parse_statm_rss_pages("5000 1234 300 10 0 800 0\n"),
            Some(1234)
        );
        assert_eq!(parse_statm_rss_pages("5000"), None);
        assert_eq!(parse_statm_rss_pages("5000 x"), None);
    }

    #[test]
    fn baseline_floor() {
        assert_eq!(load_baseline_floor(1), 0.25);
        assert_eq!(load_baseline_floor(5), 0.25);
        assert!((load_baseline_floor(16) - 0.8).abs() < 1e-9);
    }

    #[test]
    fn baseline_seed_ewma_and_floor() {
        let floor = 0.25;
        // Seeded with load1, or 0.1 (then raised to the floor) if load1 ≤ 0.
        assert_eq!(next_load_baseline(None, 2.0, floor), 2.0);
        assert_eq!(next_load_baseline(None, 0.0, floor), floor);
        assert_eq!(next_load_baseline(None, 0.0, 0.05), 0.1);
        // EWMA with alpha 0.05.
        assert!((next_load_baseline(Some(2.0), 4.0, floor) - 2.1).abs() < 1e-12);
        assert!((next_load_baseline(Some(2.0), 0.0, floor) - 1.9).abs() < 1e-12);
        // Converges towards a steady load1 but never below the floor.
        let mut b = next_load_baseline(None, 3.0, floor);
        for _ in 0..1000 {
            b = next_load_baseline(Some(b), 0.0, floor);
            assert!(b >= floor);
        }
        assert_eq!(b, floor);
        let mut b = next_load_baseline(None, 0.5, floor);
        for _ in 0..1000 {
            b = next_load_baseline(Some(b), 1.0, floor);
        }
        assert!((b - 1.0).abs() < 1e-9);
    }

    #[test]
    fn auxv_page_size() {
        const W: usize = std::mem::size_of::<usize>();
        let mut auxv = Vec::new();
        for (k, v) in [(3usize, 0x40usize), (AT_PAGESZ as usize, 16384), (0, 0)] {
            auxv.extend_from_slice(&k.to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(parse_auxv_page_size(&auxv), Some(16384));
        assert_eq!(parse_auxv_page_size(&auxv[..2 * W]), None);
        assert_eq!(parse_auxv_page_size(&[]), None);
    }

    #[test]
    fn real_samples_are_sane() {
        let inflight = Inflight::default();
        inflight.producers.store(1, Ordering::Relaxed);
        inflight.consumers.store(2, Ordering::Relaxed);
        inflight.acks.store(3, Ordering::Relaxed);
        inflight.locks.store(4, Ordering::Relaxed);

        let mut sampler = Sampler::new();
        let floor = sampler.load_floor;
        assert!(floor >= 0.25);
        assert!(sampler.page_size >= 4096 && sampler.page_size.is_power_of_two());
        let first = sampler.sample(&inflight);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let second = sampler.sample(&inflight);
        eprintln!("floor={floor} page_size={}", sampler.page_size);
        eprintln!("first:  {first:?}");
        eprintln!("second: {second:?}");

        let mem = read_proc("/proc/meminfo").and_then(|t| parse_meminfo(&t));
        assert!(mem.is_some_and(|m| m.total_bytes > 0));
        assert_eq!(first.cpu_percent, 0.0);
        for s in [&first, &second] {
            assert!((0.0..=100.0).contains(&s.memory_percent));
            assert!((0.0..=100.0).contains(&s.swap_percent));
            assert!(s.load1 >= 0.0 && s.load5 >= 0.0 && s.load15 >= 0.0);
            assert!(s.load1_baseline >= floor);
            assert!(s.load1_multiplier >= 0.0);
            assert!((0.0..=100.0).contains(&s.cpu_percent));
            assert!(s.rss_bytes > 1_000_000);
            assert_eq!((s.producers, s.consumers, s.acks, s.locks), (1, 2, 3, 4));
        }
    }
}
