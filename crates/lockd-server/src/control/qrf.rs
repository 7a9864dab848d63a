//! The Quick Reaction Force: a state machine fed by LSF samples that
//! decides, for each request, to admit it, pace it (sleep first) or refuse
//! it with `429 throttled`.
//!
//! States (the strings of `X-Lockd-QRF-State`): `disengaged`, `soft_arm`,
//! `engaged`, `recovery`. A sample with any metric at or above its hard
//! limit engages; one at or above a soft limit arms (or keeps an engaged
//! controller engaged). `recovery_samples` healthy samples in a row (every
//! metric at or below its recovery target: 10 points under a percentage
//! soft limit, half of any other soft limit) move `engaged` to `recovery`,
//! and as many again move `recovery` or `soft_arm` to `disengaged`.
//!
//! Requests that finish work (acks, nacks, extends; work on held leases)
//! are always admitted, so an overloaded server can drain. Consumers are
//! paced only when the consumer limits are breached. Producers and new
//! acquires carry the pressure: paced in `soft_arm` and `recovery`, and in
//! `engaged` paced, or refused once a hard limit is crossed, the delay
//! would exceed `max_wait`, or more than `max_paced` requests already wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{Kind, Sample};

/// Thresholds and delays (flags `--qrf-*`; 0 disables a limit).
#[derive(Debug, Clone, PartialEq)]
pub struct QrfConfig {
    /// Turn QRF (and the LSF sampler) off.
    pub disabled: bool,
    /// In-flight queue operations (all kinds) soft/hard limits.
    pub queue_soft_limit: i64,
    /// See `queue_soft_limit`.
    pub queue_hard_limit: i64,
    /// In-flight consumers soft/hard limits.
    pub queue_consumer_soft_limit: i64,
    /// See `queue_consumer_soft_limit`.
    pub queue_consumer_hard_limit: i64,
    /// Messages held by the queues (backlog) soft/hard limits: the signal
    /// that producers outrun consumers, and the bound on the memory the
    /// queue index uses.
    pub queue_backlog_soft_limit: i64,
    /// See `queue_backlog_soft_limit`.
    pub queue_backlog_hard_limit: i64,
    /// In-flight lock operations soft/hard limits.
    pub lock_soft_limit: i64,
    /// See `lock_soft_limit`.
    pub lock_hard_limit: i64,
    /// Host memory in use, percent.
    pub memory_soft_limit_percent: f64,
    /// See `memory_soft_limit_percent`.
    pub memory_hard_limit_percent: f64,
    /// Subtracted from memory % when the host reports no `MemAvailable`.
    pub memory_strict_headroom_percent: f64,
    /// Process RSS, bytes.
    pub memory_soft_limit_bytes: u64,
    /// See `memory_soft_limit_bytes`.
    pub memory_hard_limit_bytes: u64,
    /// Swap in use, percent.
    pub swap_soft_limit_percent: f64,
    /// See `swap_soft_limit_percent`.
    pub swap_hard_limit_percent: f64,
    /// Host CPU utilisation, percent (off by default: a busy server is
    /// doing its job, not in danger).
    pub cpu_soft_limit: f64,
    /// See `cpu_soft_limit`.
    pub cpu_hard_limit: f64,
    /// 1-minute load as a multiple of its baseline.
    pub load_soft_limit_multiplier: f64,
    /// See `load_soft_limit_multiplier`.
    pub load_hard_limit_multiplier: f64,
    /// Healthy samples before relaxing one step.
    pub recovery_samples: u32,
    /// Base pacing delay in `soft_arm`.
    pub soft_delay: Duration,
    /// Base pacing delay in `engaged`.
    pub engaged_delay: Duration,
    /// Base pacing delay in `recovery`.
    pub recovery_delay: Duration,
    /// Longest pacing delay; beyond it the request gets 429.
    pub max_wait: Duration,
    /// Most requests pacing at once; beyond it new ones get 429.
    pub max_paced: usize,
}

impl Default for QrfConfig {
    fn default() -> Self {
        Self {
            disabled: false,
            queue_soft_limit: 0,
            queue_hard_limit: 0,
            queue_consumer_soft_limit: 0,
            queue_consumer_hard_limit: 0,
            queue_backlog_soft_limit: 50_000,
            queue_backlog_hard_limit: 100_000,
            lock_soft_limit: 0,
            lock_hard_limit: 0,
            memory_soft_limit_percent: 80.0,
            memory_hard_limit_percent: 90.0,
            memory_strict_headroom_percent: 15.0,
            memory_soft_limit_bytes: 0,
            memory_hard_limit_bytes: 0,
            swap_soft_limit_percent: 0.0,
            swap_hard_limit_percent: 0.0,
            cpu_soft_limit: 0.0,
            cpu_hard_limit: 0.0,
            load_soft_limit_multiplier: 4.0,
            load_hard_limit_multiplier: 8.0,
            recovery_samples: 5,
            soft_delay: Duration::from_millis(50),
            engaged_delay: Duration::from_millis(250),
            recovery_delay: Duration::from_millis(200),
            max_wait: Duration::from_secs(5),
            max_paced: 256,
        }
    }
}

/// The controller's posture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Normal operation.
    Disengaged,
    /// A soft limit was crossed: pressure-adding work is paced.
    SoftArm,
    /// A hard limit was crossed: pressure-adding work is paced or refused.
    Engaged,
    /// Recovering from `engaged`.
    Recovery,
}

impl State {
    /// The wire name (`X-Lockd-QRF-State`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Disengaged => "disengaged",
            State::SoftArm => "soft_arm",
            State::Engaged => "engaged",
            State::Recovery => "recovery",
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Serve it now.
    Admit,
    /// Sleep this long, then serve it.
    Pace(Duration),
    /// Answer 429 with this `Retry-After` (whole seconds, ≥ 1).
    Reject {
        /// Seconds to wait before retrying.
        retry_after_secs: u64,
        /// The posture to report.
        state: State,
    },
}

/// Which groups of metrics are past their limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Pressure {
    /// Worst `(value - soft) / (hard - soft)` over breached metrics (≥ 0
    /// when a soft limit is crossed, ≥ 1 at a hard limit), or negative.
    severity: f64,
    hard: bool,
    soft: bool,
    healthy: bool,
    consumers: bool,
}

struct Inner {
    state: State,
    healthy_run: u32,
    pressure: Pressure,
    last_reason: String,
    /// The latest transitions, oldest first, at most [`TRANSITIONS_KEPT`].
    transitions: std::collections::VecDeque<Transition>,
}

/// How many QRF transitions [`Controller::transitions`] keeps.
pub const TRANSITIONS_KEPT: usize = 32;

/// One change of the QRF posture, with the LSF sample that caused it.
#[derive(Debug, Clone)]
pub struct Transition {
    /// When it happened, Unix milliseconds.
    pub at_unix_ms: i64,
    /// The posture before.
    pub from: State,
    /// The posture after.
    pub to: State,
    /// Why, in words (the metric over its limit, or the healthy run).
    pub reason: String,
    /// The sample that tipped it.
    pub sample: super::Sample,
}

/// The QRF controller.
pub struct Controller {
    cfg: QrfConfig,
    inner: Mutex<Inner>,
    paced: AtomicUsize,
}

/// One metric against its limits.
struct Metric {
    name: &'static str,
    value: f64,
    soft: f64,
    hard: f64,
    /// Recovery target (healthy at or below).
    target: f64,
}

fn percent_metric(name: &'static str, value: f64, soft: f64, hard: f64) -> Option<Metric> {
    (soft > 0.0 || hard > 0.0).then(|| Metric {
        name,
        value,
        soft,
        hard,
        target: if soft > 0.0 {
            (soft - 10.0).max(0.0)
        } else {
            (hard - 10.0).max(0.0)
        },
    })
}

fn count_metric(name: &'static str, value: f64, soft: f64, hard: f64) -> Option<Metric> {
    (soft > 0.0 || hard > 0.0).then(|| Metric {
        name,
        value,
        soft,
        hard,
        target: if soft > 0.0 { soft / 2.0 } else { hard / 2.0 },
    })
}

impl Controller {
    /// A controller, `disengaged`.
    pub fn new(cfg: QrfConfig) -> Controller {
        Controller {
            cfg,
            inner: Mutex::new(Inner {
                state: State::Disengaged,
                healthy_run: 0,
                pressure: Pressure {
                    healthy: true,
                    severity: -1.0,
                    ..Pressure::default()
                },
                last_reason: String::new(),
                transitions: std::collections::VecDeque::new(),
            }),
            paced: AtomicUsize::new(0),
        }
    }

    /// The latest posture changes, oldest first (at most
    /// [`TRANSITIONS_KEPT`]), each with the sample that caused it.
    pub fn transitions(&self) -> Vec<Transition> {
        self.lock().transitions.iter().cloned().collect()
    }

    /// The configuration.
    pub fn config(&self) -> &QrfConfig {
        &self.cfg
    }

    /// Requests sleeping in a pacing delay right now.
    pub fn pacing_now(&self) -> usize {
        self.paced.load(Ordering::Relaxed)
    }

    /// The current posture.
    pub fn state(&self) -> State {
        self.lock().state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn metrics(&self, s: &Sample) -> (Vec<Metric>, Vec<Metric>) {
        let c = &self.cfg;
        let memory = if s.memory_includes_reclaimable {
            s.memory_percent
        } else {
            (s.memory_percent - c.memory_strict_headroom_percent).max(0.0)
        };
        let general = [
            percent_metric(
                "memory_percent",
                memory,
                c.memory_soft_limit_percent,
                c.memory_hard_limit_percent,
            ),
            count_metric(
                "rss_bytes",
                s.rss_bytes as f64,
                c.memory_soft_limit_bytes as f64,
                c.memory_hard_limit_bytes as f64,
            ),
            percent_metric(
                "swap_percent",
                s.swap_percent,
                c.swap_soft_limit_percent,
                c.swap_hard_limit_percent,
            ),
            percent_metric(
                "cpu_percent",
                s.cpu_percent,
                c.cpu_soft_limit,
                c.cpu_hard_limit,
            ),
            count_metric(
                "load1_multiplier",
                s.load1_multiplier,
                c.load_soft_limit_multiplier,
                c.load_hard_limit_multiplier,
            ),
            count_metric(
                "queue_inflight",
                (s.producers + s.consumers + s.acks) as f64,
                c.queue_soft_limit as f64,
                c.queue_hard_limit as f64,
            ),
            count_metric(
                "lock_inflight",
                s.locks as f64,
                c.lock_soft_limit as f64,
                c.lock_hard_limit as f64,
            ),
            count_metric(
                "queue_backlog",
                s.queue_backlog as f64,
                c.queue_backlog_soft_limit as f64,
                c.queue_backlog_hard_limit as f64,
            ),
        ];
        let consumers = [count_metric(
            "consumer_inflight",
            s.consumers as f64,
            c.queue_consumer_soft_limit as f64,
            c.queue_consumer_hard_limit as f64,
        )];
        (
            general.into_iter().flatten().collect(),
            consumers.into_iter().flatten().collect(),
        )
    }

    fn assess(metrics: &[Metric]) -> (f64, bool, bool, bool, String) {
        let mut severity = -1.0f64;
        let (mut hard, mut soft, mut healthy) = (false, false, true);
        let mut reason = String::new();
        for m in metrics {
            let hard_hit = m.hard > 0.0 && m.value >= m.hard;
            let soft_hit = m.soft > 0.0 && m.value >= m.soft;
            if hard_hit || soft_hit {
                let span = if m.hard > m.soft && m.soft > 0.0 {
                    m.hard - m.soft
                } else {
                    m.hard.max(m.soft)
                };
                let sev = if m.soft > 0.0 && span > 0.0 {
                    (m.value - m.soft) / span
                } else {
                    1.0
                };
                let sev = if hard_hit { sev.max(1.0) } else { sev.max(0.0) };
                if sev > severity {
                    severity = sev;
                    reason = format!(
                        "{} {:.1} (soft {}, hard {})",
                        m.name, m.value, m.soft, m.hard
                    );
                }
            }
            hard |= hard_hit;
            soft |= soft_hit;
            if m.value > m.target {
                healthy = false;
            }
        }
        (severity, hard, soft, healthy, reason)
    }

    /// Feeds one sample; returns the new posture if it changed.
    pub fn observe(&self, s: &Sample) -> Option<State> {
        if self.cfg.disabled {
            return None;
        }
        let (general, consumers) = self.metrics(s);
        let (sev_g, hard_g, soft_g, healthy_g, reason_g) = Self::assess(&general);
        let (sev_c, hard_c, soft_c, healthy_c, reason_c) = Self::assess(&consumers);
        let pressure = Pressure {
            severity: sev_g.max(sev_c),
            hard: hard_g || hard_c,
            soft: soft_g || soft_c,
            healthy: healthy_g && healthy_c,
            consumers: hard_c || soft_c,
        };
        let reason = if sev_g >= sev_c { reason_g } else { reason_c };
        let mut inner = self.lock();
        inner.pressure = pressure;
        let before = inner.state;
        let n = self.cfg.recovery_samples.max(1);
        if pressure.hard {
            inner.state = State::Engaged;
            inner.healthy_run = 0;
        } else if pressure.soft {
            inner.healthy_run = 0;
            if inner.state == State::Disengaged {
                inner.state = State::SoftArm;
            }
        } else if pressure.healthy {
            inner.healthy_run += 1;
            if inner.healthy_run >= n {
                inner.healthy_run = 0;
                inner.state = match inner.state {
                    State::Engaged => State::Recovery,
                    _ => State::Disengaged,
                };
            }
        } else {
            inner.healthy_run = 0;
        }
        if inner.state != before {
            let why = if reason.is_empty() {
                format!("{n} healthy samples")
            } else {
                reason
            };
            tracing::warn!(from = before.as_str(), to = inner.state.as_str(), reason = %why, "QRF state change");
            if inner.transitions.len() >= TRANSITIONS_KEPT {
                inner.transitions.pop_front();
            }
            let to = inner.state;
            inner.transitions.push_back(Transition {
                at_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                from: before,
                to,
                reason: why.clone(),
                sample: s.clone(),
            });
            inner.last_reason = why;
            return Some(to);
        }
        None
    }

    /// Decides what to do with a request of `kind`.
    pub fn decide(&self, kind: Kind) -> Decision {
        if self.cfg.disabled {
            return Decision::Admit;
        }
        let (state, p) = {
            let inner = self.lock();
            (inner.state, inner.pressure)
        };
        let base = match state {
            State::Disengaged => return Decision::Admit,
            State::SoftArm => self.cfg.soft_delay,
            State::Engaged => self.cfg.engaged_delay,
            State::Recovery => self.cfg.recovery_delay,
        };
        let throttled = match kind {
            Kind::Producer | Kind::Acquire => true,
            Kind::Consumer => p.consumers,
            Kind::Ack | Kind::Lock | Kind::Other => false,
        };
        if !throttled {
            return Decision::Admit;
        }
        // The delay grows from the base at a soft limit to ten times it at
        // a hard limit.
        let scale = 1.0 + 9.0 * p.severity.clamp(0.0, 10.0);
        let delay = base.mul_f64(scale);
        // Retry-After never asks for more than max_wait: the pressure is
        // re-measured every sample, and a long shared wait only makes
        // clients come back as a herd.
        let cap = if self.cfg.max_wait.is_zero() {
            Duration::from_secs(1)
        } else {
            self.cfg.max_wait
        };
        let reject = |delay: Duration| Decision::Reject {
            retry_after_secs: delay.min(cap).as_secs_f64().ceil().max(1.0) as u64,
            state,
        };
        if state == State::Engaged && p.hard && kind != Kind::Consumer {
            return reject(delay);
        }
        if self.cfg.max_wait.is_zero() || delay > self.cfg.max_wait {
            return reject(delay);
        }
        if self.paced.load(Ordering::Relaxed) >= self.cfg.max_paced {
            return reject(delay);
        }
        Decision::Pace(delay)
    }

    /// Counts a request as pacing while the guard lives.
    pub fn pacing(&self) -> PacingGuard<'_> {
        self.paced.fetch_add(1, Ordering::Relaxed);
        PacingGuard { c: &self.paced }
    }
}

/// Decrements the pacing count on drop.
pub struct PacingGuard<'a> {
    c: &'a AtomicUsize,
}

impl Drop for PacingGuard<'_> {
    fn drop(&mut self) {
        self.c.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    //! The state machine under a fixed feed of samples (the one place a
    //! fake input is right: the transitions depend only on the numbers).

    use super::*;

    fn calm() -> Sample {
        Sample {
            memory_percent: 20.0,
            memory_includes_reclaimable: true,
            load1_multiplier: 1.0,
            ..Sample::default()
        }
    }

    fn controller() -> Controller {
        Controller::new(QrfConfig {
            queue_soft_limit: 10,
            queue_hard_limit: 20,
            recovery_samples: 3,
            ..QrfConfig::default()
        })
    }

    #[test]
    fn walks_through_every_state_and_back() {
        let c = controller();
        assert_eq!(c.state(), State::Disengaged);
        assert_eq!(c.decide(Kind::Producer), Decision::Admit);
        let soft = Sample {
            producers: 12,
            ..calm()
        };
        assert_eq!(c.observe(&soft), Some(State::SoftArm));
        assert!(matches!(c.decide(Kind::Producer), Decision::Pace(_)));
        assert_eq!(c.decide(Kind::Ack), Decision::Admit);
        let hard = Sample {
            producers: 25,
            ..calm()
        };
        assert_eq!(c.observe(&hard), Some(State::Engaged));
        assert!(matches!(
            c.decide(Kind::Producer),
            Decision::Reject {
                state: State::Engaged,
                ..
            }
        ));
        assert_eq!(c.decide(Kind::Ack), Decision::Admit);
        assert_eq!(c.decide(Kind::Lock), Decision::Admit);
        // Between the recovery target and the soft limit: not healthy.
        let middling = Sample {
            producers: 8,
            ..calm()
        };
        for _ in 0..5 {
            assert_eq!(c.observe(&middling), None);
        }
        assert_eq!(c.state(), State::Engaged);
        for _ in 0..2 {
            assert_eq!(c.observe(&calm()), None);
        }
        assert_eq!(c.observe(&calm()), Some(State::Recovery));
        assert!(matches!(c.decide(Kind::Producer), Decision::Pace(_)));
        for _ in 0..2 {
            assert_eq!(c.observe(&calm()), None);
        }
        assert_eq!(c.observe(&calm()), Some(State::Disengaged));
        assert_eq!(c.decide(Kind::Producer), Decision::Admit);
    }

    #[test]
    fn transitions_are_kept_with_their_samples_and_bounded() {
        let c = controller();
        assert!(c.transitions().is_empty());
        let hard = Sample {
            producers: 25,
            ..calm()
        };
        c.observe(&hard);
        for _ in 0..3 {
            c.observe(&calm());
        }
        let t = c.transitions();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].from, t[0].to), (State::Disengaged, State::Engaged));
        assert_eq!(t[0].sample.producers, 25);
        assert!(t[0].reason.contains("queue_inflight 25"), "{}", t[0].reason);
        assert_eq!((t[1].from, t[1].to), (State::Engaged, State::Recovery));
        assert_eq!(t[1].sample.producers, 0);
        assert!(t[0].at_unix_ms > 0 && t[1].at_unix_ms >= t[0].at_unix_ms);
        // However long it runs, the oldest go first.
        for _ in 0..TRANSITIONS_KEPT {
            c.observe(&hard);
            for _ in 0..3 {
                c.observe(&calm());
            }
        }
        let t = c.transitions();
        assert_eq!(t.len(), TRANSITIONS_KEPT);
        assert_eq!(t[TRANSITIONS_KEPT - 1].to, State::Recovery);
    }

    #[test]
    fn soft_breach_keeps_engaged_and_resets_recovery() {
        let c = controller();
        c.observe(&Sample {
            producers: 30,
            ..calm()
        });
        c.observe(&calm());
        c.observe(&calm());
        c.observe(&Sample {
            producers: 12,
            ..calm()
        });
        assert_eq!(c.state(), State::Engaged);
        c.observe(&calm());
        c.observe(&calm());
        assert_eq!(c.state(), State::Engaged, "the healthy run restarted");
    }

    #[test]
    fn memory_and_load_defaults_and_headroom() {
        let c = Controller::new(QrfConfig::default());
        let full = Sample {
            memory_percent: 92.0,
            ..calm()
        };
        assert_eq!(c.observe(&full), Some(State::Engaged));
        let c = Controller::new(QrfConfig::default());
        // Without MemAvailable the strict headroom (15) is subtracted.
        let strict = Sample {
            memory_percent: 92.0,
            memory_includes_reclaimable: false,
            ..calm()
        };
        assert_eq!(c.observe(&strict), None);
        let loaded = Sample {
            load1_multiplier: 4.5,
            ..calm()
        };
        assert_eq!(c.observe(&loaded), Some(State::SoftArm));
        // CPU limits are off by default.
        let c = Controller::new(QrfConfig::default());
        assert_eq!(
            c.observe(&Sample {
                cpu_percent: 100.0,
                ..calm()
            }),
            None
        );
    }

    #[test]
    fn pacing_grows_with_severity_and_caps_with_max_wait() {
        let c = Controller::new(QrfConfig {
            queue_soft_limit: 10,
            queue_hard_limit: 20,
            max_wait: Duration::from_millis(300),
            ..QrfConfig::default()
        });
        c.observe(&Sample {
            producers: 10,
            ..calm()
        });
        let Decision::Pace(low) = c.decide(Kind::Producer) else {
            panic!("expected pacing")
        };
        c.observe(&Sample {
            producers: 18,
            ..calm()
        });
        match c.decide(Kind::Producer) {
            Decision::Pace(high) => assert!(high > low),
            Decision::Reject {
                retry_after_secs, ..
            } => assert!(retry_after_secs >= 1),
            Decision::Admit => panic!("must not admit under pressure"),
        }
        // Too many already pacing: refuse.
        let c = Controller::new(QrfConfig {
            queue_soft_limit: 10,
            queue_hard_limit: 20,
            max_paced: 1,
            ..QrfConfig::default()
        });
        c.observe(&Sample {
            producers: 11,
            ..calm()
        });
        let _one = c.pacing();
        assert!(matches!(c.decide(Kind::Producer), Decision::Reject { .. }));
    }

    #[test]
    fn consumers_are_paced_only_for_consumer_limits() {
        let c = Controller::new(QrfConfig {
            queue_soft_limit: 10,
            queue_hard_limit: 20,
            queue_consumer_soft_limit: 4,
            queue_consumer_hard_limit: 8,
            ..QrfConfig::default()
        });
        c.observe(&Sample {
            producers: 25,
            ..calm()
        });
        assert_eq!(c.decide(Kind::Consumer), Decision::Admit);
        c.observe(&Sample {
            consumers: 5,
            producers: 25,
            ..calm()
        });
        assert!(matches!(c.decide(Kind::Consumer), Decision::Pace(_)));
    }

    #[test]
    fn a_growing_backlog_engages_and_retry_after_is_capped() {
        let c = Controller::new(QrfConfig {
            queue_backlog_soft_limit: 100,
            queue_backlog_hard_limit: 200,
            max_wait: Duration::from_secs(2),
            ..QrfConfig::default()
        });
        let soft = Sample {
            queue_backlog: 150,
            ..calm()
        };
        assert_eq!(c.observe(&soft), Some(State::SoftArm));
        let hard = Sample {
            queue_backlog: 5_000,
            ..calm()
        };
        assert_eq!(c.observe(&hard), Some(State::Engaged));
        match c.decide(Kind::Producer) {
            Decision::Reject {
                retry_after_secs, ..
            } => assert_eq!(retry_after_secs, 2),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(c.decide(Kind::Ack), Decision::Admit);
        assert_eq!(c.decide(Kind::Consumer), Decision::Admit);
    }

    #[test]
    fn disabled_admits_everything() {
        let c = Controller::new(QrfConfig {
            disabled: true,
            ..QrfConfig::default()
        });
        assert_eq!(
            c.observe(&Sample {
                memory_percent: 99.0,
                ..calm()
            }),
            None
        );
        assert_eq!(c.decide(Kind::Producer), Decision::Admit);
    }
}
