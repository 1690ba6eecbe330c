//! Round-robin: endpoints in turn.

use super::endpoint::Candidates;

/// The next eligible endpoint in turn from `start`; else any untried one
/// (fail open); else the one at `start`.
pub(super) fn choose(candidates: &Candidates<'_>, start: usize) -> usize {
    let n = candidates.len();
    let in_turn = || (0..n).map(move |k| (start + k) % n);
    in_turn()
        .find(|i| candidates.eligible(*i))
        .or_else(|| in_turn().find(|i| candidates.untried(*i)))
        .unwrap_or(start % n)
}
