//! What a balancer knows about one endpoint: its address in the forms the
//! request path needs, its latency estimate and load, and its failure
//! accrual state. Lives as long as the endpoint stays in the set, so a
//! discovery update never resets what was learned.

use super::{EwmaConfig, peak_ewma::PeakEwma};
use crate::discover::Endpoint;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

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
    pub(super) in_flight: AtomicUsize,
    pub(super) served: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) rtt: Mutex<PeakEwma>,
    /// Picks it lost since its last sample (see [`PASSED_OVER_DECAY`]).
    pub(super) passed_over: AtomicU32,
    pub(super) last_error: Mutex<Option<String>>,
    /// Failures since the last success.
    pub(super) consecutive_failures: AtomicU64,
    /// How many times in a row it was ejected; sets the next backoff.
    pub(super) ejections: AtomicU64,
    /// How many times it was ejected, ever.
    pub(super) ejections_total: AtomicU64,
    /// Until when it is ejected, in nanoseconds since the balancer's epoch;
    /// 0 when it is not. Atomic, so a pick reads it without a lock.
    pub(super) ejected_until: AtomicU64,
    /// When a failing endpoint is next sent one request whatever its cost
    /// (its probe), in nanoseconds since the epoch; 0 when it is not failing.
    pub(super) probe_at: AtomicU64,
}

impl EndpointState {
    pub(super) fn new(endpoint: Endpoint, ewma: EwmaConfig) -> Self {
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
            passed_over: AtomicU32::new(0),
            last_error: Mutex::new(None),
            consecutive_failures: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            ejections_total: AtomicU64::new(0),
            probe_at: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    pub(super) fn ejected(&self, now_ns: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ns
    }

    pub(super) fn cost(&self, now: Instant, decay: Duration) -> f64 {
        let rtt = self
            .rtt
            .lock()
            .expect("ewma lock is never poisoned")
            .estimate(now, decay);
        let passed_over = self
            .passed_over
            .load(Ordering::Relaxed)
            .min(MAX_PASSED_OVER);
        rtt * PASSED_OVER_DECAY.powi(passed_over as i32)
            * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    /// It lost a pick to a cheaper endpoint. A failing endpoint is not
    /// decayed so: its probes decide when it is tried again.
    pub(super) fn passed_over(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) == 0 {
            self.passed_over.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How much of an endpoint's latency estimate is left each time it loses a
/// pick, until its next sample. The estimate already decays with time
/// (`--ewma-decay`), but an endpoint that fell behind gets no samples to
/// correct it, and at one request at a time nothing else tells equal
/// endpoints apart: without this, one of two equal replicas can go unused
/// for most of the decay time. So an unused estimate also decays with the
/// traffic that passes it by: 2% per lost pick, so an estimate twice the
/// winner's is tried again after about 35 lost picks, a 50x slower one after
/// about 200 (Linkerd decays only with time).
pub(super) const PASSED_OVER_DECAY: f64 = 0.98;

/// Past this many lost picks the estimate is about a millionth of itself.
const MAX_PASSED_OVER: u32 = 700;

/// The endpoints one pick chooses among, and which of them it may use.
pub(super) struct Candidates<'a> {
    pub endpoints: &'a [Arc<EndpointState>],
    /// Endpoints this request already failed on.
    pub tried: &'a [Arc<EndpointState>],
    /// Now, in nanoseconds since the balancer's epoch.
    pub now_ns: u64,
}

impl Candidates<'_> {
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Not tried by this request yet.
    pub fn untried(&self, i: usize) -> bool {
        !self
            .tried
            .iter()
            .any(|t| Arc::ptr_eq(t, &self.endpoints[i]))
    }

    /// Untried and not ejected.
    pub fn eligible(&self, i: usize) -> bool {
        !self.endpoints[i].ejected(self.now_ns) && self.untried(i)
    }
}
