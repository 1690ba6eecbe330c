//! Power of two choices (Linkerd's): two endpoints at random, the cheaper
//! of the two by `cost` (peak-EWMA latency × (in flight + 1)).

use super::endpoint::Candidates;

/// Two distinct random eligible endpoints, the cheaper one; when most are
/// ejected or tried, any eligible one, else any untried one (fail open),
/// else the cheaper of a random pair. `passed_over` hears of the endpoint
/// that lost a comparison.
pub(super) fn choose(
    candidates: &Candidates<'_>,
    cost: impl Fn(usize) -> f64,
    passed_over: impl FnOnce(usize),
) -> usize {
    let n = candidates.len();
    if n == 1 {
        return 0;
    }
    let eligible = |i: usize| candidates.eligible(i);
    // Found without allocating; a few draws suffice unless most are out.
    let draw = || {
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        (a, b)
    };
    let mut pair = draw();
    for _ in 0..4 {
        if eligible(pair.0) && eligible(pair.1) {
            break;
        }
        pair = draw();
    }
    let (a, b) = match (eligible(pair.0), eligible(pair.1)) {
        (true, true) => pair,
        (true, false) => return pair.0,
        (false, true) => return pair.1,
        (false, false) => {
            match (0..n)
                .find(|i| eligible(*i))
                .or_else(|| (0..n).find(|i| candidates.untried(*i)))
            {
                Some(i) => return i,
                None => pair,
            }
        }
    };
    let (chosen, lost) = if cost(a) <= cost(b) { (a, b) } else { (b, a) };
    passed_over(lost);
    chosen
}
