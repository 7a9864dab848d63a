//! The delivery check: every enqueue answered `200` must have been acked
//! exactly once under the `message_id` it got, and nothing refused may
//! have been delivered.

use serde::Serialize;

use super::drive::{ConsumerStats, ProducerStats};

/// Result of matching confirmed enqueues against acks.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub(super) struct DeliveryCheck {
    /// Enqueues answered 200.
    pub(super) confirmed: u64,
    /// Confirmed and acked exactly once under their id.
    #[serde(rename = "acked_exactly_once")]
    pub(super) acked_once: u64,
    /// Confirmed, never acked, no ack of unknown outcome.
    pub(super) lost: u64,
    /// Confirmed, not acked, but an ack of unknown outcome was sent.
    #[serde(rename = "ack_outcome_unknown")]
    pub(super) ack_unknown: u64,
    /// Confirmed and acked more than once.
    pub(super) duplicated: u64,
    /// Acked under a different message id than the enqueue returned.
    pub(super) id_mismatch: u64,
    /// Acked although the enqueue got 429 (or another refusal).
    pub(super) delivered_after_refusal: u64,
    /// Acked whose enqueue outcome was unknown (timeout, transport error).
    pub(super) acked_unconfirmed: u64,
    /// Acked with a sequence number never sent.
    #[serde(rename = "unknown_sequence")]
    pub(super) unknown_seq: u64,
    /// First few lost sequence numbers.
    #[serde(skip)]
    pub(super) lost_examples: Vec<u64>,
}

impl DeliveryCheck {
    pub(super) fn verdict(&self) -> &'static str {
        if self.lost > 0
            || self.duplicated > 0
            || self.id_mismatch > 0
            || self.delivered_after_refusal > 0
            || self.unknown_seq > 0
        {
            "FAIL"
        } else if self.ack_unknown > 0 {
            "INCONCLUSIVE"
        } else {
            "PASS"
        }
    }
}

pub(super) fn check_deliveries(p: &ProducerStats, c: &ConsumerStats) -> DeliveryCheck {
    let mut acked = c.acked.clone();
    acked.sort_unstable();
    let mut unknown_acks: Vec<u64> = c.ack_unknown.iter().map(|x| x.0).collect();
    unknown_acks.sort_unstable();
    let mut confirmed = p.confirmed.clone();
    confirmed.sort_unstable();
    let mut refused: Vec<u64> = p.rejected.iter().chain(&p.refused).copied().collect();
    refused.sort_unstable();
    let mut unknown_enq = p.unknown.clone();
    unknown_enq.sort_unstable();

    let mut out = DeliveryCheck {
        confirmed: confirmed.len() as u64,
        ..DeliveryCheck::default()
    };
    let acks_of = |seq: u64| -> &[(u64, u64)] {
        let lo = acked.partition_point(|a| a.0 < seq);
        let hi = acked.partition_point(|a| a.0 <= seq);
        &acked[lo..hi]
    };
    for &(seq, idh) in &confirmed {
        let acks = acks_of(seq);
        match acks.len() {
            0 => {
                if unknown_acks.binary_search(&seq).is_ok() {
                    out.ack_unknown += 1;
                } else {
                    out.lost += 1;
                    if out.lost_examples.len() < 10 {
                        out.lost_examples.push(seq);
                    }
                }
            }
            1 => {
                if acks[0].1 == idh {
                    out.acked_once += 1;
                } else {
                    out.id_mismatch += 1;
                }
            }
            _ => {
                out.duplicated += 1;
                if acks.iter().any(|a| a.1 != idh) {
                    out.id_mismatch += 1;
                }
            }
        }
    }
    // Acks of sequence numbers that were not confirmed.
    let mut i = 0;
    while i < acked.len() {
        let seq = acked[i].0;
        let mut j = i;
        while j < acked.len() && acked[j].0 == seq {
            j += 1;
        }
        if confirmed.binary_search_by_key(&seq, |c| c.0).is_err() {
            if refused.binary_search(&seq).is_ok() {
                out.delivered_after_refusal += 1;
            } else if unknown_enq.binary_search(&seq).is_ok() {
                out.acked_unconfirmed += 1;
            } else {
                out.unknown_seq += 1;
            }
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_check_classifies() {
        let p = ProducerStats {
            confirmed: vec![(1, 11), (2, 12), (3, 13), (4, 14), (5, 15)],
            rejected: vec![6],
            unknown: vec![7],
            ..ProducerStats::default()
        };
        let c = ConsumerStats {
            // 1 once, 2 twice, 3 under another id, 4 unknown ack, 5 lost,
            // 6 delivered after 429, 7 acked unconfirmed, 8 unknown.
            acked: vec![
                (1, 11),
                (2, 12),
                (2, 12),
                (3, 99),
                (6, 16),
                (7, 17),
                (8, 18),
            ],
            ack_unknown: vec![(4, 14)],
            ..ConsumerStats::default()
        };
        let k = check_deliveries(&p, &c);
        assert_eq!(k.confirmed, 5);
        assert_eq!(k.acked_once, 1);
        assert_eq!(k.duplicated, 1);
        assert_eq!(k.id_mismatch, 1);
        assert_eq!(k.ack_unknown, 1);
        assert_eq!(k.lost, 1);
        assert_eq!(k.lost_examples, vec![5]);
        assert_eq!(k.delivered_after_refusal, 1);
        assert_eq!(k.acked_unconfirmed, 1);
        assert_eq!(k.unknown_seq, 1);
        assert_eq!(k.verdict(), "FAIL");
        let clean = ConsumerStats {
            acked: vec![(1, 11), (2, 12), (3, 13), (4, 14), (5, 15)],
            ..ConsumerStats::default()
        };
        assert_eq!(check_deliveries(&p, &clean).verdict(), "PASS");
    }
}
