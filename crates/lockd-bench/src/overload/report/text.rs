//! The text of an overload report.

use super::{Inflight, OverloadReport, ProbeSummary, RssSummary, Shares};
use crate::overload::monitor::{PROBE_EVERY, QRF_EVERY, RSS_EVERY};
use crate::report::{fmt_dur, fmt_ms, group, p50_p99_max_or_na, Report};

/// Timeline rows printed at most.
const TIMELINE_ROWS: usize = 120;
/// QRF transitions in the text at most.
const TRANSITIONS_TEXT: usize = 16;

impl Shares {
    /// `disengaged 80 %, engaged 20 %`, or `n/a` when empty.
    fn text_or_na(&self) -> String {
        if self.0.is_empty() {
            "n/a".into()
        } else {
            self.text()
        }
    }

    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(s, f)| format!("{s} {:.0} %", f * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Inflight {
    fn text(x: Option<Inflight>) -> String {
        x.map_or("n/a".into(), |i| {
            format!("mean {:.1}, max {}", i.mean, i.max)
        })
    }
}

/// `p50 … p99 … max … (N probes, K FAILED)`.
fn probe_text(s: &ProbeSummary) -> String {
    match s.latency {
        Some(l) => {
            let failed = if s.failed > 0 {
                format!(", {} FAILED", s.failed)
            } else {
                String::new()
            };
            format!(
                "p50 {} p99 {} max {} ({} probes{failed})",
                fmt_ms(l.p50),
                fmt_ms(l.p99),
                fmt_ms(l.max),
                s.n
            )
        }
        None if s.n > 0 => format!("all {} probes FAILED", s.n),
        None => "no probes".to_string(),
    }
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0))
}

fn rss_range(s: Option<RssSummary>) -> String {
    s.map_or("n/a".into(), |s| format!("{}–{}", mib(s.min), mib(s.max)))
}

fn short_state(s: &str) -> &'static str {
    match s {
        "disengaged" => "off",
        "soft_arm" => "soft",
        "engaged" => "ENG",
        "recovery" => "rec",
        _ => "?",
    }
}

impl OverloadReport {
    /// The text report.
    pub(in crate::overload) fn render(&self, report: &Report) {
        let cal = &self.calibration;
        let o = &self.overload;
        let dr = &self.drain;
        let k = &self.delivery_check;
        let in_process = self.shares_process_with_server;
        report.line(&format!(
            "lockd-bench overload: {} ({}), {} B payloads, {} tokio worker threads, {} CPUs",
            self.store, self.target, self.payload_bytes, self.worker_threads, self.cpus
        ));
        report.line(&format!("    {}", self.qrf_text));
        if in_process {
            report.line(
                "    note: server, load generator and monitor share this process (and its CPUs); \
                 RSS is the whole process's, client included",
            );
        }
        report.line(&format!(
            "calibration ({} producers, {} consumers, dequeue page_size {}, backlog cap {}, warm-up {}, \
             window {}): R = {} msgs/s end to end, enqueue→ack {}, enqueued {}/s, errors {}",
            self.producers,
            self.consumers,
            self.page_size,
            group(cal.backlog.cap as f64),
            fmt_dur(self.warmup),
            fmt_dur(self.calibrate),
            group(cal.messages_per_s),
            p50_p99_max_or_na(cal.end_to_end_ms),
            group(cal.enqueues_per_s),
            cal.errors,
        ));
        if !cal.qrf_states.0.is_empty() {
            report.line(&format!(
                "    QRF during calibration: {}",
                cal.qrf_states.text()
            ));
        }
        report.line(&format!(
            "overload ({}, factor {} → target {} enqueues/s from {} open-loop producer tasks, \
             {} consumers, no backlog cap):",
            fmt_dur(self.duration),
            self.factor,
            group(o.target_enqueues_per_s),
            self.overload_producers,
            self.consumers
        ));
        let r = cal.messages_per_s.max(1e-9);
        report.line(&format!(
            "    offered {}/s ({:.1}× R; {:.2} of the target): {} sent of {} slots; {} slots skipped \
             (task still waiting for an answer), {} withheld by Retry-After",
            group(o.attempted_per_s),
            o.attempted_per_s / r,
            o.attempted_per_s / o.target_enqueues_per_s.max(1e-9),
            group(o.attempted as f64),
            group(o.intended),
            group(o.skipped_busy as f64),
            group(o.withheld_retry_after as f64),
        ));
        report.line(&format!(
            "    accepted (200) {}/s ({:.2}× R), throttled (429) {} = {:.1} % of attempts, other errors {}",
            group(o.accepted_per_s),
            o.accepted_per_s / r,
            group(o.throttled as f64),
            o.throttled_share * 100.0,
            o.errors
        ));
        report.line(&format!(
            "    enqueue latency: accepted {} | 429 answered {}",
            p50_p99_max_or_na(o.enqueue_latency_ms.accepted),
            p50_p99_max_or_na(o.enqueue_latency_ms.throttled)
        ));
        if !o.throttled_by_qrf_state.is_empty() {
            let st: Vec<String> = o
                .throttled_by_qrf_state
                .iter()
                .map(|(k, v)| format!("{k} {}", group(*v as f64)))
                .collect();
            let ra: Vec<String> = o
                .retry_after_s
                .iter()
                .map(|(k, v)| format!("{k}s ×{}", group(*v as f64)))
                .collect();
            report.line(&format!(
                "    429s by X-Lockd-QRF-State: {}; Retry-After: {}",
                st.join(", "),
                ra.join(", ")
            ));
        }
        if in_process {
            report.line(&format!(
                "    QRF states (polled every {}ms): overload {}; drain {}",
                QRF_EVERY.as_millis(),
                o.qrf_states.text_or_na(),
                dr.qrf_states.text_or_na(),
            ));
            let shown: Vec<String> = self
                .qrf_transitions
                .iter()
                .take(TRANSITIONS_TEXT)
                .map(|t| format!("{:+.1}s {}", t.t_s, t.state))
                .collect();
            let more = if self.transitions_total > TRANSITIONS_TEXT {
                format!(" … ({} changes in all)", self.transitions_total - 1)
            } else {
                String::new()
            };
            report.line(&format!(
                "    QRF transitions (s from overload start): {}{more}",
                shown.join(", ")
            ));
        }
        report.line(&format!(
            "    acks: {}/s during overload vs {}/s in calibration ({:.3}×); slowest whole second {}, \
             seconds without acks {} of {}",
            group(o.acks_per_s),
            group(cal.messages_per_s),
            o.ack_ratio_to_calibration,
            o.acks_per_second
                .iter()
                .min()
                .map_or("n/a".into(), |v| group(*v as f64)),
            o.seconds_without_acks,
            o.acks_per_second.len()
        ));
        if in_process {
            report.line(&format!(
                "    queue in-flight as QRF counts it (enqueues + dequeues + acks inside handlers, \
                 polled every {}ms): calibration {} | overload {}",
                QRF_EVERY.as_millis(),
                Inflight::text(cal.queue_inflight),
                Inflight::text(o.queue_inflight)
            ));
        }
        report.line(&format!(
            "    consumer requests: dequeue {} | ack {}; {} empty polls, {} dequeue errors, \
             {} ack errors, {} acks answered 429, {} dequeues answered 429",
            p50_p99_max_or_na(o.ops_latency_ms.dequeue),
            p50_p99_max_or_na(o.ops_latency_ms.ack),
            o.empty_polls,
            o.dequeue_errors,
            o.ack_errors,
            o.ack_throttled,
            o.dequeue_throttled,
        ));
        report.line(&format!(
            "    /healthz (every {}ms, own thread and connection): idle {} | calibration {} | \
             overload {} | drain {}",
            PROBE_EVERY.as_millis(),
            probe_text(&self.idle.healthz),
            probe_text(&cal.healthz),
            probe_text(&o.healthz),
            probe_text(&dr.healthz),
        ));
        let growth = self.overload.rss_growth_last_quarter_bytes;
        if in_process {
            report.line(&format!(
                "    RSS (VmRSS every {}ms): before {} | calibration {} | overload {} | drain {}{}",
                RSS_EVERY.as_millis(),
                rss_range(self.idle.rss_bytes),
                rss_range(cal.rss_bytes),
                rss_range(o.rss_bytes),
                rss_range(dr.rss_bytes),
                growth.map_or(String::new(), |g| format!(
                    "; last quarter of the overload {:+.1} MiB",
                    g as f64 / (1024.0 * 1024.0)
                ))
            ));
        } else {
            report.line("    RSS: n/a (remote server)");
        }
        report.line(&format!(
            "    backlog (confirmed − acked): {} at the end of the overload, max {}",
            group(o.backlog_end as f64),
            group(o.backlog_max as f64)
        ));
        let ready = match (dr.ready_after, &dr.ready_error) {
            (Some(n), _) => format!("{n} ready in the queue afterwards"),
            (None, Some(e)) => format!("queue stats failed: {e}"),
            _ => String::new(),
        };
        report.line(&format!(
            "drain: producers stopped; {} acked after the window; {} in {:.2}s; {ready}",
            group(dr.acked as f64),
            if dr.completed {
                "everything confirmed was acked"
            } else {
                "DRAIN TIMED OUT"
            },
            dr.took.as_secs_f64(),
        ));
        let c = &k.check;
        report.line(&format!(
            "delivery check: {} enqueues confirmed (200), {} acked exactly once under their id; \
             lost {}, acked twice {}, id mismatches {}, ack outcome unknown {}; delivered although \
             refused (429) {}; acked with unconfirmed enqueue (timeout) {}; unknown sequence {}; \
             redeliveries {}",
            group(c.confirmed as f64),
            group(c.acked_once as f64),
            c.lost,
            c.duplicated,
            c.id_mismatch,
            c.ack_unknown,
            c.delivered_after_refusal,
            c.acked_unconfirmed,
            c.unknown_seq,
            k.redeliveries,
        ));
        if !c.lost_examples.is_empty() {
            report.line(&format!(
                "    lost sequence numbers (first): {:?}",
                c.lost_examples
            ));
        }
        let v = &self.verdict;
        report.line("verdict:");
        report.line(&format!(
            "    /healthz stays low: {} (overload {}; limits p99 ≤ {}, max ≤ {}, no failures)",
            v.healthz_low,
            probe_text(&o.healthz),
            fmt_ms(v.criteria.healthz_p99_ms),
            fmt_ms(v.criteria.healthz_max_ms),
        ));
        report.line(&format!(
            "    memory stays bounded: {}{}",
            v.memory_bounded,
            match (
                growth,
                v.criteria.rss_growth_last_quarter_max_bytes,
                o.rss_bytes
            ) {
                (Some(g), Some(allowed), Some(r)) => format!(
                    " (peak {}; {:+.1} MiB over the last quarter, allowed {})",
                    mib(r.max),
                    g as f64 / (1024.0 * 1024.0),
                    mib(allowed)
                ),
                _ => " (remote server: not sampled)".into(),
            }
        ));
        report.line(&format!(
            "    acks keep flowing: {} ({} of {} whole seconds acked fewer than min({} = 10 % of R, \
             the backlog), {} none; {}/s vs {}/s in calibration)",
            v.acks_flow,
            o.seconds_below_ack_floor,
            o.acks_per_second.len(),
            group(o.ack_floor_per_s as f64),
            o.seconds_without_acks,
            group(o.acks_per_s),
            group(cal.messages_per_s)
        ));
        report.line(&format!(
            "    nothing acknowledged is lost: {} ({} of {} confirmed acked exactly once)",
            v.nothing_lost,
            group(c.acked_once as f64),
            group(c.confirmed as f64)
        ));
        report.line(
            "timeline (s from overload start; sent, 200, 429, err, acks per second; backlog; QRF; RSS; \
             /healthz max):",
        );
        for row in self.timeline.iter().take(TIMELINE_ROWS) {
            let phase = if row.phase == "overload" { ' ' } else { 'd' };
            let st: Vec<&str> = row.states.iter().map(|s| short_state(s)).collect();
            report.line(&format!(
                "  {phase}{:>3}  sent {:>7}  200 {:>7}  429 {:>7}  err {:>4}  acks {:>7}  backlog {:>8}  \
                 qrf {:<14} inflight {:>5}  rss {:>8}  healthz {}{}",
                row.t,
                group(row.sent as f64),
                group(row.accepted as f64),
                group(row.throttled as f64),
                row.errors,
                group(row.acks as f64),
                group(row.backlog.max(0) as f64),
                if st.is_empty() { "-".into() } else { st.join("/") },
                row.inflight_max.map_or("-".into(), |n| n.to_string()),
                row.rss.map_or("-".into(), mib),
                row.healthz_max.map_or("-".into(), fmt_ms),
                if row.healthz_failed > 0 {
                    format!(" ({} failed)", row.healthz_failed)
                } else {
                    String::new()
                }
            ));
        }
        for e in &self.probe_errors {
            report.line(&format!("    probe error: {e}"));
        }
    }
}
