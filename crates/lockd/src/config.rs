//! Config files for the server: `-c/--config FILE`, else
//! `$LOCKD_CONFIG_DIR/config.yaml`, else `~/.lockd/config.yaml` when it
//! exists. Keys are flag names (`listen: 127.0.0.1:9341`); precedence is
//! file < `LOCKD_*` environment < flags, which this achieves by making
//! each value the default of its flag before clap parses (clap itself
//! then prefers the environment and the command line). A key matches the
//! flag whose `LOCKD_*` variable it names (`default-ttl`, `default_ttl`).
//! The format is the flat subset of YAML the original uses: `key: value`
//! lines, `#` comments, optional quotes.

use std::path::{Path, PathBuf};

/// Where the config file is looked for: `--config`/`-c` from the command
/// line, else the default location if it exists.
pub fn locate(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" || a == "-c" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    let dir = match std::env::var_os("LOCKD_CONFIG_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".lockd"),
    };
    let f = dir.join("config.yaml");
    f.exists().then_some(f)
}

/// Parses `key: value` lines into (flag name, value) pairs.
///
/// ```text
/// listen: 127.0.0.1:9341   # comment
/// store: "disk:///var/lib/lockd"
/// ```
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = strip_comment(line).trim();
        if line.is_empty() || line == "---" {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected `key: value`", n + 1))?;
        let k = k.trim();
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("line {}: bad key {k:?}", n + 1));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('#', None) if i == 0 || line[..i].ends_with(' ') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The environment variable of a flag name (`drain-grace` → `LOCKD_DRAIN_GRACE`).
pub fn env_name(key: &str) -> String {
    format!("LOCKD_{}", key.replace('-', "_").to_ascii_uppercase())
}

/// What [`apply`] did with a config file.
#[derive(Debug, Default)]
pub struct Applied {
    /// Keys that became flag defaults.
    pub flags: usize,
    /// `otlp-endpoint` from the file when this build has no such flag
    /// (the server warns that no traces are exported).
    pub otlp_endpoint: Option<String>,
    /// Keys that name no server flag; they are ignored.
    pub unknown: Vec<String>,
}

/// Loads `path` and makes each value the default of the server flag its
/// key names, so that the environment and the command line still win.
/// The first occurrence of a key counts.
pub fn apply(cmd: clap::Command, path: &Path) -> Result<(clap::Command, Applied), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    let pairs = parse(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
    let mut cmd = cmd;
    let mut applied = Applied::default();
    let mut seen = std::collections::HashSet::new();
    for (k, v) in pairs {
        if k == "config" {
            continue;
        }
        let var = env_name(&k);
        if !seen.insert(var.clone()) {
            continue;
        }
        let id = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == var.as_str()))
            .map(|a| a.get_id().clone());
        match id {
            Some(id) => {
                cmd = cmd.mut_arg(id, |a| a.default_value(v));
                applied.flags += 1;
            }
            None if var == "LOCKD_OTLP_ENDPOINT" => applied.otlp_endpoint = Some(v),
            None => applied.unknown.push(k),
        }
    }
    Ok((cmd, applied))
}

/// A commented template of every server setting, for `lockd config gen`.
pub const TEMPLATE: &str = r#"# lockd server configuration (keys are the flag names; flags and LOCKD_*
# environment variables override what is set here).
#
# listen: ":9341"               # host:port, or a socket path with listen-proto unix
# listen-proto: tcp             # tcp, tcp4, tcp6, unix
# store: "disk:///var/lib/lockd" # mem://, disk:///abs/path, s3://host:port/bucket/prefix, aws://bucket/prefix
# bundle: "/etc/lockd/server.pem" # server bundle (default: ~/.lockd/server.pem)
# denylist-path: "/etc/lockd/server.denylist" # extra revoked client serials
# disable-mtls: false           # true: plain HTTP, no client certificates (testing only)
# ha: failover                  # concurrent, failover, single, auto (shared object stores)
# ha-lease-ttl: 10s
# queue-poll-interval: 3s       # shared stores: how often waiters look for other nodes' changes
# queue-poll-jitter: 500ms
# aws-region: eu-west-1         # for aws:// stores
# default-namespace: default
# default-ttl: 30s
# max-ttl: 30m
# acquire-block: 60s
# json-max: 100MB
# sweeper-interval: 5m
# queue-max-payload: 100MB
# queue-original-attempts: false
# queue-subscribe-flow-control: false # at most page_size unacked deliveries per subscribe stream
# http-header-timeout: 10s      # first byte of a request to its complete head
# http-idle-timeout: 2m         # a connection without a request is closed
# http-body-timeout: 30s        # longest pause in a request body
# max-connections: 0            # 0: open-files limit less 256
# connection-reserve: 32        # of those, kept for health checks, acks, releases
# drain-grace: 10s
# shutdown-timeout: 10s
# log-level: info
# log-format: text              # text or json
# metrics-listen: "127.0.0.1:9464" # Prometheus /metrics (off when unset)
# console-listen: "127.0.0.1:9480" # operator console in a browser (off when unset)
# console-read-only: false      # no changes through the console, whoever asks
# otlp-endpoint: "http://127.0.0.1:4318" # OTLP trace export (binaries built with --features otlp)
#
# Perimeter defence (0 disables a limit)
# qrf-disabled: false
# qrf-memory-soft-limit-percent: 80
# qrf-memory-hard-limit-percent: 90
# qrf-load-soft-limit-multiplier: 4
# qrf-load-hard-limit-multiplier: 8
# qrf-queue-backlog-soft-limit: 50000
# qrf-queue-backlog-hard-limit: 100000
# qrf-queue-soft-limit: 0
# qrf-queue-hard-limit: 0
# qrf-cpu-soft-limit: 0
# qrf-cpu-hard-limit: 0
# qrf-max-wait: 5s
# lsf-sample-interval: 200ms
# lsf-log-interval: 15s
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flat_yaml() {
        let pairs = parse(
            "# c\n---\nlisten: 127.0.0.1:9\nstore: \"disk:///x # not a comment\"  # comment\njson-max: '1MB'\n\n",
        )
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("listen".into(), "127.0.0.1:9".into()),
                ("store".into(), "disk:///x # not a comment".into()),
                ("json-max".into(), "1MB".into()),
            ]
        );
        assert!(parse("no colon here").is_err());
        assert_eq!(env_name("drain-grace"), "LOCKD_DRAIN_GRACE");
        // The template is valid (all commented out).
        assert!(parse(TEMPLATE).unwrap().is_empty());
    }

    #[test]
    fn file_values_become_defaults_below_env_and_flags() {
        #[derive(Debug, clap::Parser)]
        struct Flags {
            #[arg(long, env = "LOCKD_TEST_CFG_A", default_value = "a0")]
            alpha: String,
            #[arg(long, env = "LOCKD_TEST_CFG_B", default_value = "b0")]
            beta: String,
            #[arg(long, env = "LOCKD_TEST_CFG_NEVER_SET", default_value_t = false)]
            gamma: bool,
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "test-cfg-a: file\nTEST_CFG_B: file\ntest-cfg-b: second\ntest-cfg-never-set: true\nbogus: 1\n",
        )
        .unwrap();
        let (cmd, applied) = apply(<Flags as clap::CommandFactory>::command(), &file).unwrap();
        assert_eq!(applied.flags, 3);
        assert_eq!(applied.unknown, ["bogus"]);
        let m = cmd.try_get_matches_from(["t", "--beta", "flag"]).unwrap();
        let f = <Flags as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        assert_eq!(
            (f.alpha.as_str(), f.beta.as_str(), f.gamma),
            ("file", "flag", true)
        );
    }
}
