//! Per-request load balancing over one service's endpoints.
//!
//! The endpoint set comes from discovery and is replaced whole (a `watch`
//! of an `Arc<[...]>`); an endpoint's state (latency estimate, in-flight
//! count) lives as long as the endpoint stays in the set, so a discovery
//! update never resets what the balancer learned, and in-flight requests to
//! a removed endpoint finish undisturbed.
//!
//! Strategies:
//! - power of two choices over peak-EWMA (Linkerd's): pick two endpoints at
//!   random, send to the one with the lower `latency estimate × (in-flight + 1)`;
//! - round-robin.
//!
//! Failures (no answer: refused, reset, timed out; or an answer the retry
//! policy names, such as UNAVAILABLE) are charged to the endpoint's latency
//! estimate as a 1 s penalty, so the balancer steers away from an endpoint
//! that fails fast rather than being drawn to it. A failing endpoint is
//! probed: about a second after a failure, the next request goes to it
//! whatever its cost, and a success wipes the penalty.
//!
//! Failure accrual: an endpoint that fails `failures` requests in a row is
//! ejected, and becomes eligible again after a jittered exponential backoff
//! (1 s doubling up to 60 s). The first request after that is its probe: a
//! success puts it back for good, a failure ejects it again for twice as
//! long. When every endpoint is ejected the balancer uses them all rather
//! than refuse (fail open).

pub mod peak_ewma;

use crate::{
    config::BalanceStrategy,
    discover::{Endpoint, Endpoints},
};
use peak_ewma::PeakEwma;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// Latency charged to an endpoint for a request that failed without an
/// answer (connection refused, reset), so a failing endpoint that fails
/// fast does not look like the fastest one.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Peak-EWMA settings.
#[derive(Debug, Clone, Copy)]
pub struct EwmaConfig {
    pub decay: Duration,
    pub default_rtt: Duration,
}

/// Failure-accrual settings; `failures == 0` turns ejection off.
#[derive(Debug, Clone, Copy)]
pub struct AccrualConfig {
    pub failures: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for AccrualConfig {
    fn default() -> Self {
        Self {
            failures: 7,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Everything a balancer is configured with.
#[derive(Debug, Clone, Copy)]
pub struct BalancerConfig {
    pub strategy: BalanceStrategy,
    pub ewma: EwmaConfig,
    pub accrual: AccrualConfig,
    /// How long a request waits for a service with no endpoints.
    pub failfast: Duration,
}

/// What the balancer knows about one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    pub endpoint: Endpoint,
    /// `ip:port`, kept as a string for metric labels.
    pub addr_label: Arc<str>,
    /// The same, ready to use as a request URI's authority and as the
    /// `x-mesh-endpoint` response header, so no request formats it again.
    pub authority: http::uri::Authority,
    pub header: http::HeaderValue,
    /// Its metric handles, resolved on first use by the outbound side.
    pub metrics: std::sync::OnceLock<Arc<crate::metrics::RouteMetrics>>,
    in_flight: AtomicUsize,
    served: AtomicU64,
    failed: AtomicU64,
    rtt: Mutex<PeakEwma>,
    last_error: Mutex<Option<String>>,
    /// Failures since the last success.
    consecutive_failures: AtomicU64,
    /// How many times in a row it was ejected; sets the next backoff.
    ejections: AtomicU64,
    /// How many times it was ejected, ever.
    ejections_total: AtomicU64,
    /// Until when it is ejected, in nanoseconds since the balancer's epoch;
    /// 0 when it is not. Atomic, so a pick reads it without a lock.
    ejected_until: AtomicU64,
    /// When a failing endpoint is next sent one request whatever its cost
    /// (its probe), in nanoseconds since the epoch; 0 when it is not failing.
    probe_at: AtomicU64,
}

impl EndpointState {
    fn new(endpoint: Endpoint, ewma: EwmaConfig) -> Self {
        let addr = endpoint.addr.to_string();
        Self {
            authority: addr.parse().expect("a socket address is a valid authority"),
            header: http::HeaderValue::from_str(&addr)
                .expect("a socket address is a valid header value"),
            addr_label: addr.into(),
            metrics: std::sync::OnceLock::new(),
            endpoint,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rtt: Mutex::new(PeakEwma::new(ewma.default_rtt, Instant::now())),
            last_error: Mutex::new(None),
            consecutive_failures: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            ejections_total: AtomicU64::new(0),
            probe_at: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    fn ejected(&self, now_ns: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ns
    }

    fn cost(&self, now: Instant, decay: Duration) -> f64 {
        let rtt = self
            .rtt
            .lock()
            .expect("ewma lock is never poisoned")
            .estimate(now, decay);
        rtt * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }
}

/// What every pick of one balancer reports back into: the settings and
/// clocks that failure accrual needs, shared rather than copied per pick.
#[derive(Debug)]
struct Feedback {
    service: Arc<str>,
    decay: Duration,
    accrual: AccrualConfig,
    /// Ejection deadlines count from here.
    epoch: Instant,
    /// The earliest moment an ejected endpoint is due for its probe, in
    /// nanoseconds since `epoch`; `u64::MAX` when none is ejected. One
    /// atomic read per pick tells whether a probe is due, so picks stay
    /// O(1) in the number of endpoints.
    probe_due: AtomicU64,
}

impl Feedback {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// A picked endpoint with its in-flight count held until completion.
#[derive(Debug)]
pub struct Picked {
    state: Arc<EndpointState>,
    feedback: Arc<Feedback>,
    started: Instant,
    done: bool,
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
        let at = (at.saturating_duration_since(self.feedback.epoch).as_nanos() as u64).max(1);
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
        let until = ((now + backoff)
            .saturating_duration_since(self.feedback.epoch)
            .as_nanos() as u64)
            .max(1);
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

/// The service has no endpoints (within the fail-fast timeout).
#[derive(Debug, thiserror::Error)]
#[error("service {service} has no endpoints")]
pub struct NoEndpoints {
    pub service: Arc<str>,
}

/// One service's balancer; shared by every connection that targets it.
#[derive(Debug)]
pub struct Balancer {
    config: BalancerConfig,
    feedback: Arc<Feedback>,
    endpoints: watch::Receiver<Arc<[Arc<EndpointState>]>>,
    next: AtomicUsize,
}

impl Balancer {
    /// Follows `discovered` for as long as the balancer lives.
    pub fn new(
        service: &str,
        mut discovered: watch::Receiver<Endpoints>,
        config: BalancerConfig,
    ) -> Arc<Self> {
        let ewma = config.ewma;
        let initial = rebuild(&[], &discovered.borrow_and_update(), ewma);
        let (tx, rx) = watch::channel(initial);
        let service: Arc<str> = service.into();
        let name = service.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = discovered.changed() => if changed.is_err() { return },
                    // Every balancer handle is gone.
                    _ = tx.closed() => return,
                }
                let next = rebuild(&tx.borrow(), &discovered.borrow_and_update(), ewma);
                tracing::info!(service = %name, endpoints = next.len(), "endpoint set updated");
                tx.send_replace(next);
            }
        });
        Arc::new(Self {
            config,
            feedback: Arc::new(Feedback {
                service,
                decay: config.ewma.decay,
                accrual: config.accrual,
                epoch: Instant::now(),
                probe_due: AtomicU64::new(u64::MAX),
            }),
            endpoints: rx,
            next: AtomicUsize::new(0),
        })
    }

    pub fn service(&self) -> &Arc<str> {
        &self.feedback.service
    }

    /// Picks an endpoint for one request. With no endpoints it waits up to
    /// the fail-fast timeout for discovery to find some.
    pub async fn pick(&self) -> Result<Picked, NoEndpoints> {
        self.pick_excluding(&[]).await
    }

    /// Picks an endpoint other than those in `tried` (the endpoints a retried
    /// request already failed on), unless no other one exists.
    pub async fn pick_excluding(
        &self,
        tried: &[Arc<EndpointState>],
    ) -> Result<Picked, NoEndpoints> {
        if let Some(picked) = self.try_pick(tried) {
            return Ok(picked);
        }
        let endpoints = self.endpoints.borrow().clone();
        let endpoints = if endpoints.is_empty() {
            let mut rx = self.endpoints.clone();
            match tokio::time::timeout(self.config.failfast, rx.wait_for(|set| !set.is_empty()))
                .await
            {
                Ok(Ok(set)) => set.clone(),
                _ => {
                    return Err(NoEndpoints {
                        service: self.service().clone(),
                    });
                }
            }
        } else {
            endpoints
        };
        let now = Instant::now();
        let state = self.choose(&endpoints, tried, now);
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Picked {
            state,
            feedback: self.feedback.clone(),
            started: now,
            done: false,
        })
    }

    /// Picks without waiting; `None` when the service has no endpoints now.
    pub fn try_pick(&self, tried: &[Arc<EndpointState>]) -> Option<Picked> {
        let endpoints = self.endpoints.borrow();
        if endpoints.is_empty() {
            return None;
        }
        // One clock read serves the choice and the latency measurement.
        let now = Instant::now();
        let state = self.choose(&endpoints, tried, now);
        drop(endpoints);
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            state,
            feedback: self.feedback.clone(),
            started: now,
            done: false,
        })
    }

    fn choose(
        &self,
        endpoints: &[Arc<EndpointState>],
        tried: &[Arc<EndpointState>],
        now: Instant,
    ) -> Arc<EndpointState> {
        debug_assert!(!endpoints.is_empty());
        let now_ns = now
            .saturating_duration_since(self.feedback.epoch)
            .as_nanos() as u64;
        if self.feedback.probe_due.load(Ordering::Relaxed) <= now_ns
            && let Some(probe) = self.claim_probe(endpoints, tried, now_ns)
        {
            return probe;
        }
        let n = endpoints.len();
        let untried = |i: usize| !tried.iter().any(|t| Arc::ptr_eq(t, &endpoints[i]));
        let eligible = |i: usize| !endpoints[i].ejected(now_ns) && untried(i);
        match self.config.strategy {
            BalanceStrategy::RoundRobin => {
                // The next eligible endpoint in turn; else any untried one
                // (fail open); else the next one.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let index = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|i| eligible(*i))
                    .or_else(|| (0..n).map(|k| (start + k) % n).find(|i| untried(*i)))
                    .unwrap_or(start % n);
                endpoints[index].clone()
            }
            BalanceStrategy::P2cEwma => {
                if n == 1 {
                    return endpoints[0].clone();
                }
                // Two distinct random eligible endpoints, found without
                // allocating; a few draws suffice unless most are ejected.
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
                    (true, false) => return endpoints[pair.0].clone(),
                    (false, true) => return endpoints[pair.1].clone(),
                    // Many ejected or tried: scan for any eligible one, else
                    // any untried one (fail open), else the pair.
                    (false, false) => {
                        match (0..n)
                            .find(|i| eligible(*i))
                            .or_else(|| (0..n).find(|i| untried(*i)))
                        {
                            Some(i) => return endpoints[i].clone(),
                            None => pair,
                        }
                    }
                };
                let decay = self.config.ewma.decay;
                let (ca, cb) = (endpoints[a].cost(now, decay), endpoints[b].cost(now, decay));
                endpoints[if ca <= cb { a } else { b }].clone()
            }
        }
    }

    /// A failing or ejected endpoint whose backoff is over, claimed as this
    /// request's probe (so it is probed even when its latency penalty would
    /// keep the balancer from choosing it); resets when the next probe is
    /// due. Runs only when a probe is due, so its scan is rare.
    fn claim_probe(
        &self,
        endpoints: &[Arc<EndpointState>],
        tried: &[Arc<EndpointState>],
        now_ns: u64,
    ) -> Option<Arc<EndpointState>> {
        let due = self.feedback.probe_due.load(Ordering::Relaxed);
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
            .feedback
            .probe_due
            .compare_exchange(due, next_due, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.feedback
                .probe_due
                .fetch_min(next_due, Ordering::Relaxed);
        }
        if let Some(state) = &claimed {
            tracing::debug!(service = %self.feedback.service, endpoint = %state.addr_label, "probing an ejected endpoint");
        }
        claimed
    }

    /// The balancer's view, for the admin `/endpoints`.
    pub fn snapshot(&self) -> ServiceSnapshot {
        let now = Instant::now();
        let now_ns = self.feedback.now_ns();
        let endpoints = self.endpoints.borrow().clone();
        ServiceSnapshot {
            service: self.service().to_string(),
            balance: self.config.strategy,
            endpoints: endpoints
                .iter()
                .map(|state| EndpointSnapshot {
                    addr: state.addr_label.to_string(),
                    instance: state.endpoint.instance.to_string(),
                    ewma_ms: state
                        .rtt
                        .lock()
                        .expect("ewma lock is never poisoned")
                        .estimate(now, self.config.ewma.decay)
                        / 1e6,
                    ejected: state.ejected(now_ns),
                    ejections: state.ejections_total.load(Ordering::Relaxed),
                    in_flight: state.in_flight.load(Ordering::Relaxed),
                    served: state.served.load(Ordering::Relaxed),
                    failed: state.failed.load(Ordering::Relaxed),
                    last_error: state
                        .last_error
                        .lock()
                        .expect("error lock is never poisoned")
                        .clone(),
                })
                .collect(),
        }
    }
}

/// The new state list: endpoints still present keep their state.
fn rebuild(
    old: &[Arc<EndpointState>],
    discovered: &[Endpoint],
    ewma: EwmaConfig,
) -> Arc<[Arc<EndpointState>]> {
    discovered
        .iter()
        .map(|endpoint| {
            old.iter()
                .find(|state| state.endpoint == *endpoint)
                .cloned()
                .unwrap_or_else(|| Arc::new(EndpointState::new(endpoint.clone(), ewma)))
        })
        .collect()
}

/// One service as `/endpoints` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceSnapshot {
    pub service: String,
    pub balance: BalanceStrategy,
    pub endpoints: Vec<EndpointSnapshot>,
}

/// One endpoint as `/endpoints` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointSnapshot {
    pub addr: String,
    pub instance: String,
    /// Peak-EWMA latency estimate, in milliseconds.
    pub ewma_ms: f64,
    pub in_flight: usize,
    /// Requests answered, and requests that got no answer.
    pub served: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    /// Taken out of the balancer by failure accrual, for now.
    pub ejected: bool,
    /// How many times failure accrual ejected it.
    pub ejections: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashMap, net::SocketAddr};

    const EWMA: EwmaConfig = EwmaConfig {
        decay: Duration::from_secs(10),
        default_rtt: Duration::from_millis(30),
    };

    fn endpoints(ports: &[u16]) -> Endpoints {
        crate::discover::normalize(
            ports
                .iter()
                .map(|p| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], *p)), ""))
                .collect(),
        )
    }

    fn config(strategy: BalanceStrategy) -> BalancerConfig {
        BalancerConfig {
            strategy,
            ewma: EWMA,
            accrual: AccrualConfig {
                failures: 3,
                min_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_millis(800),
            },
            failfast: Duration::from_millis(200),
        }
    }

    fn balancer(
        strategy: BalanceStrategy,
        ports: &[u16],
    ) -> (watch::Sender<Endpoints>, Arc<Balancer>) {
        let (tx, rx) = watch::channel(endpoints(ports));
        (tx, Balancer::new("svc", rx, config(strategy)))
    }

    #[tokio::test]
    async fn round_robin_takes_turns() {
        let (_tx, balancer) = balancer(BalanceStrategy::RoundRobin, &[1, 2, 3]);
        let mut ports = Vec::new();
        for _ in 0..6 {
            let picked = balancer.pick().await.unwrap();
            ports.push(picked.endpoint().endpoint.addr.port());
            picked.succeeded();
        }
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
    }

    #[tokio::test]
    async fn p2c_prefers_the_endpoint_with_fewer_in_flight() {
        let (_tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[1, 2]);
        // Hold 5 requests on whichever endpoint comes first; with equal
        // latency estimates every later pick must go to the other one.
        let first = balancer.pick().await.unwrap();
        let busy = first.endpoint().endpoint.addr.port();
        let held: Vec<_> = (0..4).map(|_| first.endpoint().clone()).collect();
        for state in &held {
            state.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        for _ in 0..50 {
            let picked = balancer.pick().await.unwrap();
            assert_ne!(picked.endpoint().endpoint.addr.port(), busy);
        }
    }

    #[tokio::test]
    async fn p2c_avoids_a_slow_endpoint() {
        let (_tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[1, 2, 3]);
        // Teach it: port 1 answers in 50 ms, the others in 1 ms.
        for state in balancer.endpoints.borrow().iter() {
            let rtt = if state.endpoint.addr.port() == 1 {
                50
            } else {
                1
            };
            let now = Instant::now();
            state
                .rtt
                .lock()
                .unwrap()
                .observe(Duration::from_millis(rtt), now, EWMA.decay);
        }
        let mut counts: HashMap<u16, usize> = HashMap::new();
        for _ in 0..1000 {
            let picked = balancer.pick().await.unwrap();
            *counts
                .entry(picked.endpoint().endpoint.addr.port())
                .or_default() += 1;
            // Completed at once: no in-flight skew, only latency decides.
            drop(picked);
        }
        assert_eq!(counts.get(&1), None, "{counts:?}");
        // The two fast ones never cost exactly the same (taught a moment
        // apart), so the cheaper wins every pair they share: it expects 2/3
        // of the picks, the other 1/3 (333 ± 15). 300 failed about once in
        // seventy runs; 250 is more than five deviations away.
        assert!(counts[&2] > 250 && counts[&3] > 250, "{counts:?}");
    }

    #[tokio::test]
    async fn updates_keep_state_of_endpoints_that_stay() {
        let (tx, balancer) = balancer(BalanceStrategy::RoundRobin, &[1, 2]);
        let picked = balancer.pick().await.unwrap();
        let kept = picked.endpoint().clone();
        picked.succeeded();
        tx.send_replace(endpoints(&[1, 2, 3]));
        let mut rx = balancer.endpoints.clone();
        rx.wait_for(|set| set.len() == 3).await.unwrap();
        let set = balancer.endpoints.borrow().clone();
        assert!(set.iter().any(|s| Arc::ptr_eq(s, &kept)));
        assert_eq!(kept.served.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn no_endpoints_fails_after_the_failfast_timeout_or_waits_for_some() {
        let (tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[]);
        assert!(balancer.pick().await.is_err());

        let waiting = {
            let balancer = balancer.clone();
            tokio::spawn(async move {
                balancer
                    .pick()
                    .await
                    .map(|p| p.endpoint().endpoint.addr.port())
            })
        };
        tx.send_replace(endpoints(&[7]));
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
    }

    #[tokio::test]
    async fn a_failure_is_charged_and_remembered() {
        let (_tx, balancer) = balancer(BalanceStrategy::RoundRobin, &[1]);
        balancer.pick().await.unwrap().failed(&"connection refused");
        let snapshot = balancer.snapshot();
        let endpoint = &snapshot.endpoints[0];
        assert_eq!(endpoint.failed, 1);
        assert_eq!(endpoint.in_flight, 0);
        assert_eq!(endpoint.last_error.as_deref(), Some("connection refused"));
        assert!(endpoint.ewma_ms >= 990.0, "{}", endpoint.ewma_ms);
    }

    #[tokio::test]
    async fn consecutive_failures_eject_until_a_probe_succeeds() {
        let (_tx, balancer) = balancer(BalanceStrategy::RoundRobin, &[1, 2]);
        let port = |p: &Picked| p.endpoint().endpoint.addr.port();
        // Port 1 fails three times in a row (port 2 answers in between).
        for _ in 0..3 {
            let picked = balancer.pick().await.unwrap();
            assert_eq!(port(&picked), 1);
            picked.failed(&"refused");
            balancer.pick().await.unwrap().succeeded();
        }
        let view = balancer.snapshot();
        assert!(view.endpoints[0].ejected, "{view:?}");
        for _ in 0..10 {
            let picked = balancer.pick().await.unwrap();
            assert_eq!(port(&picked), 2, "ejected endpoints get no traffic");
            picked.succeeded();
        }
        // After the backoff (at most 200 ms) port 1 is probed; it fails again
        // and is ejected at once, for longer.
        let probe = wait_for_probe(&balancer, 1).await;
        probe.failed(&"refused again");
        assert!(balancer.snapshot().endpoints[0].ejected);
        // Next time the probe succeeds: back for good.
        let probe = wait_for_probe(&balancer, 1).await;
        probe.succeeded();
        let view = balancer.snapshot();
        assert!(
            !view.endpoints[0].ejected && view.endpoints[0].failed == 4,
            "{view:?}"
        );
    }

    /// Picks until `port` comes up (within 2 s), completing other picks.
    async fn wait_for_probe(balancer: &Balancer, port: u16) -> Picked {
        let give_up = Instant::now() + Duration::from_secs(2);
        loop {
            let picked = balancer.pick().await.unwrap();
            if picked.endpoint().endpoint.addr.port() == port {
                return picked;
            }
            picked.succeeded();
            assert!(Instant::now() < give_up, "port {port} never probed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_endpoint_is_avoided_then_probed_and_restored() {
        let (_tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[1, 2]);
        let port = |p: &Picked| p.endpoint().endpoint.addr.port();
        // Both measured fast; then port 1 fails once.
        for _ in 0..20 {
            balancer.pick().await.unwrap().succeeded();
        }
        loop {
            let picked = balancer.pick().await.unwrap();
            if port(&picked) == 1 {
                picked.failed(&"reset");
                break;
            }
            picked.succeeded();
        }
        // Its penalty keeps it out of p2c's choices...
        for _ in 0..50 {
            let picked = balancer.pick().await.unwrap();
            assert_eq!(port(&picked), 2, "a penalized endpoint is avoided");
            picked.succeeded();
        }
        // ...until its probe (after at most 200 ms), whose success wipes the
        // penalty: it takes turns again.
        wait_for_probe(&balancer, 1).await.succeeded();
        let mut ones = 0;
        for _ in 0..100 {
            let picked = balancer.pick().await.unwrap();
            ones += usize::from(port(&picked) == 1);
            picked.succeeded();
        }
        assert!(ones >= 20, "restored endpoint got {ones} of 100");
    }

    #[tokio::test]
    async fn all_ejected_fails_open() {
        let (_tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[1, 2]);
        for _ in 0..20 {
            balancer.pick().await.unwrap().failed(&"down");
        }
        assert!(balancer.snapshot().endpoints.iter().all(|e| e.ejected));
        // Still answers with an endpoint rather than refusing.
        assert!(balancer.pick().await.is_ok());
    }
}
