//! Side-by-side rounds: two sides, A and B, measured in turns on one
//! server, alternating which goes first so that neither always runs on a
//! warmer (or more tired) server. Used by `mutate`, `query` and `txn`.

use std::future::Future;

use serde::Serialize;

/// Which side of a side-by-side run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The thing measured (mutate, a transaction, …).
    A,
    /// Its baseline (get + update, independent cycles, …).
    B,
}

impl Side {
    /// `a` or `b`.
    pub fn name(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

/// One round: both sides' results and which ran first.
#[derive(Debug, Clone, PartialEq)]
pub struct AbRound<R> {
    /// 0-based.
    pub round: u32,
    /// A ran first (even rounds).
    pub a_first: bool,
    /// Side A's result.
    pub a: R,
    /// Side B's result.
    pub b: R,
}

impl<R> AbRound<R> {
    /// `a` or `b`: which side ran first, as the reports print it.
    pub fn first(&self) -> &'static str {
        if self.a_first {
            "a"
        } else {
            "b"
        }
    }
}

/// Runs `rounds` rounds of `run(side, round, nth)` on the sides `[a, b]`,
/// A first in even rounds and B first in odd ones (`nth` is 0 for the
/// side that goes first, 1 for the other).
pub async fn alternate<S, R, Fut>(
    rounds: u32,
    sides: [&S; 2],
    mut run: impl FnMut(&S, u32, u64) -> Fut,
) -> Result<Vec<AbRound<R>>, String>
where
    Fut: Future<Output = Result<R, String>>,
{
    let mut out = Vec::with_capacity(rounds as usize);
    for round in 0..rounds {
        let a_first = round % 2 == 0;
        let (first, second) = if a_first {
            (sides[0], sides[1])
        } else {
            (sides[1], sides[0])
        };
        let r1 = run(first, round, 0).await?;
        let r2 = run(second, round, 1).await?;
        let (a, b) = if a_first { (r1, r2) } else { (r2, r1) };
        out.push(AbRound {
            round,
            a_first,
            a,
            b,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sides_alternate_and_results_land_on_their_side() {
        let order = std::sync::Mutex::new(Vec::new());
        let rounds = alternate(3, [&"A", &"B"], |s, round, nth| {
            order.lock().unwrap().push((round, nth, *s));
            let out = format!("{s}{round}");
            async move { Ok::<_, String>(out) }
        })
        .await
        .unwrap();
        assert_eq!(
            *order.lock().unwrap(),
            vec![
                (0, 0, "A"),
                (0, 1, "B"),
                (1, 0, "B"),
                (1, 1, "A"),
                (2, 0, "A"),
                (2, 1, "B")
            ]
        );
        assert_eq!(rounds[1].a, "A1");
        assert_eq!(rounds[1].b, "B1");
        assert_eq!(rounds[1].first(), "b");
        assert_eq!(rounds[2].first(), "a");
        let failed = alternate(2, [&1, &2], |s, _, _| {
            let s = *s;
            async move {
                if s == 2 {
                    Err("b failed".to_string())
                } else {
                    Ok(s)
                }
            }
        })
        .await;
        assert_eq!(failed, Err("b failed".to_string()));
    }
}
