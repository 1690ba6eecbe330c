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
//!   an estimate decays with time and with each pick its endpoint loses, so
//!   an endpoint that fell behind is tried again (`endpoint::PASSED_OVER_DECAY`);
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

mod accrual;
mod endpoint;
mod p2c;
pub mod peak_ewma;
mod round_robin;

pub use accrual::Picked;
pub use endpoint::EndpointState;

use crate::{
    config::BalanceStrategy,
    discover::{Endpoint, Endpoints},
};
use accrual::Feedback;
use endpoint::Candidates;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{sync::watch, time::Instant};

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

/// The service has no endpoints (within the fail-fast timeout).
#[derive(Debug, thiserror::Error)]
#[error("service {service} has no endpoints")]
pub struct NoEndpoints {
    pub service: Arc<str>,
}

/// Every balancer of the proxy: those of its named services, and those made
/// for services found by intercepting connections. Read by `/endpoints` and
/// `/metrics`; grows as new services are found (a lock, but never on the
/// request path).
#[derive(Debug, Default)]
pub struct Balancers(std::sync::RwLock<Vec<Arc<Balancer>>>);

impl Balancers {
    pub fn new(balancers: impl IntoIterator<Item = Arc<Balancer>>) -> Self {
        Self(std::sync::RwLock::new(balancers.into_iter().collect()))
    }

    pub fn add(&self, balancer: Arc<Balancer>) {
        self.0
            .write()
            .expect("balancer list lock is never poisoned")
            .push(balancer);
    }

    /// Every balancer's view, as `/endpoints` shows it.
    pub fn snapshots(&self) -> Vec<ServiceSnapshot> {
        self.0
            .read()
            .expect("balancer list lock is never poisoned")
            .iter()
            .map(|b| b.snapshot())
            .collect()
    }
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
        let now_ns = self.feedback.ns_since_epoch(now);
        // A probe that is due goes first, whatever the strategy.
        if self.feedback.probe_due.load(Ordering::Relaxed) <= now_ns
            && let Some(probe) = self.feedback.claim_probe(endpoints, tried, now_ns)
        {
            return probe;
        }
        let candidates = Candidates {
            endpoints,
            tried,
            now_ns,
        };
        let index = match self.config.strategy {
            BalanceStrategy::RoundRobin => {
                round_robin::choose(&candidates, self.next.fetch_add(1, Ordering::Relaxed))
            }
            BalanceStrategy::P2cEwma => {
                let decay = self.config.ewma.decay;
                p2c::choose(
                    &candidates,
                    |i| endpoints[i].cost(now, decay),
                    |i| endpoints[i].passed_over(),
                )
            }
        };
        endpoints[index].clone()
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
mod tests;
