//! Memory figures of a process from `/proc/<pid>/status` (Linux): `VmRSS`
//! (resident now) and `VmHWM` (the resident peak since it started). The
//! overload monitor reads this process's; `attachment-rss` and `mutate-rss`
//! a child `lockd`'s.

/// Which process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// This process (`/proc/self`).
    Current,
    /// Another process by id.
    Pid(u32),
}

/// A `/proc/<pid>/status` line holding a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `VmRSS`: resident set size now.
    Rss,
    /// `VmHWM`: the largest resident set size so far.
    Hwm,
}

impl Field {
    fn prefix(self) -> &'static str {
        match self {
            Field::Rss => "VmRSS:",
            Field::Hwm => "VmHWM:",
        }
    }
}

/// `field` of the status text `status` (`VmRSS:  N kB`), in bytes.
pub fn status_bytes(status: &str, field: Field) -> Option<u64> {
    let prefix = field.prefix();
    let line = status.lines().find(|l| l.starts_with(prefix))?;
    let mut it = line[prefix.len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let unit = it.next().unwrap_or("kB");
    let mult = match unit {
        "kB" | "KB" | "kb" => 1024,
        "mB" | "MB" => 1024 * 1024,
        _ => 1,
    };
    Some(n.saturating_mul(mult))
}

/// Reads `field` of `proc` now (`None` off Linux or once it has exited).
pub fn read(proc: Proc, field: Field) -> Option<u64> {
    let path = match proc {
        Proc::Current => "/proc/self/status".to_string(),
        Proc::Pid(pid) => format!("/proc/{pid}/status"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    status_bytes(&text, field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sizes_from_status_text() {
        let status = "Name:\tlockd\nVmHWM:\t  409600 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_bytes(status, Field::Rss), Some(2048 * 1024));
        assert_eq!(status_bytes(status, Field::Hwm), Some(409_600 * 1024));
        assert_eq!(status_bytes("Name: x\n", Field::Rss), None);
        assert_eq!(status_bytes("VmRSS: lots kB\n", Field::Rss), None);
    }

    #[test]
    fn reads_this_process() {
        if std::path::Path::new("/proc/self/status").exists() {
            let rss = read(Proc::Current, Field::Rss).expect("VmRSS");
            let hwm = read(Proc::Current, Field::Hwm).expect("VmHWM");
            assert!(rss > 0 && hwm >= rss, "rss {rss} hwm {hwm}");
        }
    }
}
