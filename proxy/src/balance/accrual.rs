//! Failure accrual and probes: what a pick reports back when its request
//! ends. A success feeds the latency estimate and clears a failing streak;
//! a failure is charged a latency penalty, and enough of them in a row eject
//! the endpoint for a backoff that doubles with each ejection. A failing or
//! ejected endpoint is probed (sent one request whatever its cost) once its
//! backoff is over.

use super::{AccrualConfig, EndpointState, peak_ewma::PeakEwma};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

/// Latency charged to an endpoint for a request that failed without an
/// answer (connection refused, reset), so a failing endpoint that fails
/// fast does not look like the fastest one.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// What every pick of one balancer reports back into: the settings and
/// clocks that failure accrual needs, shared rather than copied per pick.
#[derive(Debug)]
pub(super) struct Feedback {
    pub(super) service: Arc<str>,
    pub(super) decay: Duration,
    pub(super) accrual: AccrualConfig,
    /// Ejection deadlines count from here.
    pub(super) epoch: Instant,
    /// The earliest moment an ejected endpoint is due for its probe, in
    /// nanoseconds since `epoch`; `u64::MAX` when none is ejected. One
    /// atomic read per pick tells whether a probe is due, so picks stay
    /// O(1) in the number of endpoints.
    pub(super) probe_due: AtomicU64,
}

impl Feedback {
    /// `at` in nanoseconds since the epoch.
    pub(super) fn ns_since_epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.ns_since_epoch(Instant::now())
    }

    /// A failing or ejected endpoint whose backoff is over, claimed as this
    /// request's probe (so it is probed even when its latency penalty would
    /// keep the balancer from choosing it); resets when the next probe is
    /// due. Runs only when a probe is due, so its scan is rare.
    pub(super) fn claim_probe(
        &self,
        endpoints: &[Arc<EndpointState>],
        tried: &[Arc<EndpointState>],
        now_ns: u64,
    ) -> Option<Arc<EndpointState>> {
        let due = self.probe_due.load(Ordering::Relaxed);
        let mut claimed = None;
        let mut next_due = u64::MAX;
        for state in endpoints {
            let at = state.probe_at.load(Ordering::Relaxed);
            if at == 0 {
                continue;
            }
            let probe_now = at <= now_ns
                && claimed.is_none()
                && !tried.iter().any(|t| Arc::ptr_eq(t, state))
                && state
                    .probe_at
                    .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            if probe_now {
                state.ejected_until.store(0, Ordering::Relaxed);
                claimed = Some(state.clone());
            } else {
                next_due = next_due.min(at);
            }
        }
        // An ejection that raced with this scan lowered `probe_due` itself;
        // keep the lower of the two.
        if self
            .probe_due
            .compare_exchange(due, next_due, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.probe_due.fetch_min(next_due, Ordering::Relaxed);
        }
        if let Some(state) = &claimed {
            tracing::debug!(service = %self.service, endpoint = %state.addr_label, "probing an ejected endpoint");
        }
        claimed
    }
}

/// A picked endpoint with its in-flight count held until completion.
#[derive(Debug)]
pub struct Picked {
    pub(super) state: Arc<EndpointState>,
    pub(super) feedback: Arc<Feedback>,
    pub(super) started: Instant,
    pub(super) done: bool,
}

impl Picked {
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// The endpoint answered (response headers arrived).
    pub fn succeeded(mut self) {
        let now = Instant::now();
        let rtt = now - self.started;
        // Plain loads first: the common case (healthy) writes nothing.
        let was_failing = self.state.consecutive_failures.load(Ordering::Relaxed) > 0
            && self.state.consecutive_failures.swap(0, Ordering::Relaxed) > 0;
        let recovered = self.state.ejections.load(Ordering::Relaxed) > 0
            && self.state.ejections.swap(0, Ordering::Relaxed) > 0;
        // A sample replaces what being passed over assumed.
        if self.state.passed_over.load(Ordering::Relaxed) > 0 {
            self.state.passed_over.store(0, Ordering::Relaxed);
        }
        {
            let mut ewma = self.state.rtt.lock().expect("ewma lock is never poisoned");
            if was_failing {
                // Its failures charged a penalty that would keep it unused
                // long after it is healthy again; start from what it did now.
                *ewma = PeakEwma::new(rtt, now);
            } else {
                ewma.observe(rtt, now, self.feedback.decay);
            }
        }
        if was_failing {
            self.state.probe_at.store(0, Ordering::Relaxed);
        }
        self.state.served.fetch_add(1, Ordering::Relaxed);
        if recovered {
            tracing::info!(service = %self.feedback.service, endpoint = %self.state.addr_label, "endpoint recovered");
        }
        self.finish();
    }

    /// The endpoint did not serve the request: no answer (refused, reset,
    /// timed out) or an answer the retry policy counts as a failure.
    pub fn failed(mut self, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        let rtt = (now - self.started).max(FAILURE_PENALTY);
        self.state.passed_over.store(0, Ordering::Relaxed);
        self.state
            .rtt
            .lock()
            .expect("ewma lock is never poisoned")
            .observe(rtt, now, self.feedback.decay);
        self.state.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .state
            .last_error
            .lock()
            .expect("error lock is never poisoned") = Some(error.to_string());
        let failures = self
            .state
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let accrual = self.feedback.accrual;
        // Requests already in flight when it was ejected fail too; they
        // must not stretch the backoff it is serving.
        if accrual.failures > 0
            && failures >= u64::from(accrual.failures)
            && !self.state.ejected(self.feedback.now_ns())
        {
            self.eject(now);
        } else {
            // Its penalty keeps the balancer away from it; a probe after
            // the minimum backoff tells when it is healthy again.
            self.schedule_probe(now + accrual.min_backoff.mul_f64(1.0 - 0.25 * fastrand::f64()));
        }
        self.finish();
    }

    /// Sends the endpoint one request at `at` (the next pick after it).
    fn schedule_probe(&self, at: Instant) {
        let at = self.feedback.ns_since_epoch(at).max(1);
        self.state.probe_at.store(at, Ordering::Relaxed);
        self.feedback.probe_due.fetch_min(at, Ordering::Relaxed);
    }

    /// Takes the endpoint out of the balancer for a backoff that doubles
    /// with each ejection in a row, with up to 25% jitter so endpoints that
    /// failed together are not probed together.
    fn eject(&self, now: Instant) {
        let accrual = self.feedback.accrual;
        let ejections = self.state.ejections.fetch_add(1, Ordering::Relaxed);
        self.state.ejections_total.fetch_add(1, Ordering::Relaxed);
        let backoff = accrual
            .min_backoff
            .saturating_mul(1 << ejections.min(16))
            .min(accrual.max_backoff);
        let backoff = backoff.mul_f64(1.0 - 0.25 * fastrand::f64());
        let until = self.feedback.ns_since_epoch(now + backoff).max(1);
        self.state.ejected_until.store(until, Ordering::Relaxed);
        self.schedule_probe(now + backoff);
        tracing::warn!(
            service = %self.feedback.service,
            endpoint = %self.state.addr_label,
            ?backoff,
            "endpoint ejected after consecutive failures"
        );
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Picked {
    /// A request cancelled before its answer only gives its slot back.
    fn drop(&mut self) {
        self.finish();
    }
}
