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
    in_flight: AtomicUsize,
    served: AtomicU64,
    failed: AtomicU64,
    rtt: Mutex<PeakEwma>,
    last_error: Mutex<Option<String>>,
}

impl EndpointState {
    fn new(endpoint: Endpoint, ewma: EwmaConfig) -> Self {
        let addr = endpoint.addr.to_string();
        Self {
            authority: addr.parse().expect("a socket address is a valid authority"),
            header: http::HeaderValue::from_str(&addr)
                .expect("a socket address is a valid header value"),
            addr_label: addr.into(),
            endpoint,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rtt: Mutex::new(PeakEwma::new(ewma.default_rtt, Instant::now())),
            last_error: Mutex::new(None),
        }
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

/// A picked endpoint with its in-flight count held until completion.
#[derive(Debug)]
pub struct Picked {
    state: Arc<EndpointState>,
    decay: Duration,
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
        self.state
            .rtt
            .lock()
            .expect("ewma lock is never poisoned")
            .observe(now - self.started, now, self.decay);
        self.state.served.fetch_add(1, Ordering::Relaxed);
        self.finish();
    }

    /// The endpoint gave no answer.
    pub fn failed(mut self, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        let rtt = (now - self.started).max(FAILURE_PENALTY);
        self.state
            .rtt
            .lock()
            .expect("ewma lock is never poisoned")
            .observe(rtt, now, self.decay);
        self.state.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .state
            .last_error
            .lock()
            .expect("error lock is never poisoned") = Some(error.to_string());
        self.finish();
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
    service: Arc<str>,
    strategy: BalanceStrategy,
    ewma: EwmaConfig,
    failfast: Duration,
    endpoints: watch::Receiver<Arc<[Arc<EndpointState>]>>,
    next: AtomicUsize,
}

impl Balancer {
    /// Follows `discovered` for as long as the balancer lives.
    pub fn new(
        service: &str,
        mut discovered: watch::Receiver<Endpoints>,
        strategy: BalanceStrategy,
        ewma: EwmaConfig,
        failfast: Duration,
    ) -> Arc<Self> {
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
            service,
            strategy,
            ewma,
            failfast,
            endpoints: rx,
            next: AtomicUsize::new(0),
        })
    }

    pub fn service(&self) -> &Arc<str> {
        &self.service
    }

    /// Picks an endpoint for one request. With no endpoints it waits up to
    /// the fail-fast timeout for discovery to find some.
    pub async fn pick(&self) -> Result<Picked, NoEndpoints> {
        let endpoints = self.endpoints.borrow().clone();
        let endpoints = if endpoints.is_empty() {
            let mut rx = self.endpoints.clone();
            match tokio::time::timeout(self.failfast, rx.wait_for(|set| !set.is_empty())).await {
                Ok(Ok(set)) => set.clone(),
                _ => {
                    return Err(NoEndpoints {
                        service: self.service.clone(),
                    });
                }
            }
        } else {
            endpoints
        };
        let state = self.choose(&endpoints);
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Picked {
            state,
            decay: self.ewma.decay,
            started: Instant::now(),
            done: false,
        })
    }

    fn choose(&self, endpoints: &[Arc<EndpointState>]) -> Arc<EndpointState> {
        debug_assert!(!endpoints.is_empty());
        match (self.strategy, endpoints.len()) {
            (_, 1) => endpoints[0].clone(),
            (BalanceStrategy::RoundRobin, n) => {
                endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n].clone()
            }
            (BalanceStrategy::P2cEwma, n) => {
                let a = fastrand::usize(..n);
                // A second index distinct from the first.
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let now = Instant::now();
                let (ca, cb) = (
                    endpoints[a].cost(now, self.ewma.decay),
                    endpoints[b].cost(now, self.ewma.decay),
                );
                endpoints[if ca <= cb { a } else { b }].clone()
            }
        }
    }

    /// The balancer's view, for the admin `/endpoints`.
    pub fn snapshot(&self) -> ServiceSnapshot {
        let now = Instant::now();
        let endpoints = self.endpoints.borrow().clone();
        ServiceSnapshot {
            service: self.service.to_string(),
            balance: self.strategy,
            endpoints: endpoints
                .iter()
                .map(|state| EndpointSnapshot {
                    addr: state.addr_label.to_string(),
                    instance: state.endpoint.instance.to_string(),
                    ewma_ms: state
                        .rtt
                        .lock()
                        .expect("ewma lock is never poisoned")
                        .estimate(now, self.ewma.decay)
                        / 1e6,
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

    fn balancer(
        strategy: BalanceStrategy,
        ports: &[u16],
    ) -> (watch::Sender<Endpoints>, Arc<Balancer>) {
        let (tx, rx) = watch::channel(endpoints(ports));
        let balancer = Balancer::new("svc", rx, strategy, EWMA, Duration::from_millis(200));
        (tx, balancer)
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
        assert!(counts[&2] > 300 && counts[&3] > 300, "{counts:?}");
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
}
