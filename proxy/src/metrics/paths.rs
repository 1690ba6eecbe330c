//! Per-route metrics: requests, responses by status and latency per request
//! path (a gRPC method is its path, `/StockData.Stocks/Get`), per direction
//! and target, counted once per request as the client saw it (retries
//! included in its latency, its last answer's status).
//!
//! The route labels are bounded: each target keeps the first `max` distinct
//! paths it sees (`--max-routes`), and every other request, like one whose
//! path is too long or has characters a label should not carry, counts under
//! the route `other` (no real path has that name: paths start with `/`). A
//! client sending random paths grows `/metrics` by at most `max` routes per
//! target.

use super::{Classification, Direction, classify, latency_histogram};
use crate::{
    tap::{Tapped, Taps},
    tls::PeerTls,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};
use std::sync::{Arc, Mutex, OnceLock};
use stockkube_proto::metrics::labels::OTHER_ROUTE;
use tokio::time::Instant;

/// Distinct routes per target with series of their own, unless configured.
pub const DEFAULT_MAX_ROUTES: usize = 100;

/// Longer paths count as `other`: a label that long is noise, not a route.
const MAX_ROUTE_LEN: usize = 200;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub direction: Direction,
    pub target: Arc<str>,
    pub route: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathResponseLabels {
    #[prometheus(flatten)]
    pub path: PathLabels,
    pub status_code: u16,
    pub grpc_status: Option<u8>,
    pub classification: Classification,
}

type LatencyFamily = Family<PathLabels, Histogram, fn() -> Histogram>;

/// The three per-route families, registered once by [`super::Metrics`].
#[derive(Debug, Clone)]
pub struct PathFamilies {
    pub requests: Family<PathLabels, Counter>,
    pub responses: Family<PathResponseLabels, Counter>,
    pub latency: LatencyFamily,
}

impl Default for PathFamilies {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

/// One target's routes: the bounded set of paths with series of their own.
#[derive(Debug)]
pub struct PathRoutes {
    families: PathFamilies,
    taps: Arc<Taps>,
    direction: Direction,
    target: Arc<str>,
    max: usize,
    /// Looked up on every request, so hashed with foldhash (keyed per
    /// process, and the set is bounded by `max`), not SipHash.
    known: Mutex<foldhash::HashMap<Arc<str>, Arc<PathMetrics>>>,
    /// Made with the first request past the bound: until then `other` has
    /// no series.
    other: OnceLock<Arc<PathMetrics>>,
}

impl PathRoutes {
    pub fn new(
        families: PathFamilies,
        taps: Arc<Taps>,
        direction: Direction,
        target: Arc<str>,
        max: usize,
    ) -> Self {
        Self {
            families,
            taps,
            direction,
            target,
            max,
            known: Mutex::default(),
            other: OnceLock::new(),
        }
    }

    fn other(&self) -> Arc<PathMetrics> {
        self.other
            .get_or_init(|| Arc::new(self.route(OTHER_ROUTE.into())))
            .clone()
    }

    fn route(&self, route: Arc<str>) -> PathMetrics {
        PathMetrics::new(
            &self.families,
            PathLabels {
                direction: self.direction,
                target: self.target.clone(),
                route,
            },
        )
    }

    /// The metric handles a request for `path` counts into.
    pub fn of(&self, path: &str) -> Arc<PathMetrics> {
        let mut known = self.known.lock().expect("routes lock is never poisoned");
        if let Some(route) = known.get(path) {
            return route.clone();
        }
        // Only a path not seen yet is looked at: those kept passed already.
        if known.len() >= self.max || !labelable(path) {
            drop(known);
            return self.other();
        }
        let route: Arc<str> = path.into();
        let metrics = Arc::new(self.route(route.clone()));
        known.insert(route, metrics.clone());
        metrics
    }

    /// `request` from `source`, arrived at `arrived`: counted on its route
    /// now (and recorded for the taps that want it), answered through the
    /// returned call.
    pub fn call<B>(
        &self,
        request: &http::Request<B>,
        arrived: Instant,
        source: std::net::IpAddr,
    ) -> Call {
        let route = self.of(request.uri().path());
        route.requests.inc();
        Call {
            route,
            arrived,
            tapped: self
                .taps
                .start(self.direction, &self.target, request, source),
        }
    }
}

/// Whether `path` can be a route label as it is: short, and printable
/// ASCII without the characters a label value must escape.
fn labelable(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= MAX_ROUTE_LEN
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// One route's handles, resolved when the route is first seen; the common
/// answers (gRPC OK, HTTP 200) keep theirs once they happen, others go
/// through the label lookup.
#[derive(Debug)]
pub struct PathMetrics {
    responses: Family<PathResponseLabels, Counter>,
    labels: PathLabels,
    requests: Counter,
    latency: Histogram,
    grpc_ok: OnceLock<Counter>,
    http_ok: OnceLock<Counter>,
}

impl PathMetrics {
    fn new(families: &PathFamilies, labels: PathLabels) -> Self {
        Self {
            requests: families.requests.get_or_create(&labels).clone(),
            latency: families.latency.get_or_create(&labels).clone(),
            grpc_ok: OnceLock::new(),
            http_ok: OnceLock::new(),
            responses: families.responses.clone(),
            labels,
        }
    }

    fn counter(&self, status_code: u16, grpc_status: Option<u8>, complete: bool) -> Counter {
        self.responses
            .get_or_create(&PathResponseLabels {
                path: self.labels.clone(),
                status_code,
                grpc_status,
                classification: classify(status_code, grpc_status, complete),
            })
            .clone()
    }

    fn response(&self, status_code: u16, grpc_status: Option<u8>, complete: bool, seconds: f64) {
        match (complete, status_code, grpc_status) {
            (true, 200, Some(0)) => {
                self.grpc_ok
                    .get_or_init(|| self.counter(200, Some(0), true))
                    .inc();
            }
            (true, 200, None) => {
                self.http_ok
                    .get_or_init(|| self.counter(200, None, true))
                    .inc();
            }
            _ => {
                self.counter(status_code, grpc_status, complete).inc();
            }
        }
        self.latency.observe(seconds);
    }
}

/// One request on its route, from its arrival to the end of its answer.
#[derive(Debug)]
pub struct Call {
    route: Arc<PathMetrics>,
    arrived: Instant,
    /// When a tap wants it.
    tapped: Option<Box<Tapped>>,
}

impl Call {
    /// Who served it (an endpoint, or the app), after how many attempts,
    /// over what: for the taps, when one wants it.
    pub fn served_by(
        &mut self,
        endpoint: &Arc<str>,
        instance: Option<&Arc<str>>,
        attempts: u32,
        tls: &PeerTls,
    ) {
        if let Some(tapped) = &mut self.tapped {
            tapped.served_by(endpoint, instance, attempts, tls);
        }
    }

    /// The answer ended (`complete`, or cut short) with this status.
    pub fn answered(self, status_code: u16, grpc_status: Option<u8>, complete: bool) {
        let elapsed = self.arrived.elapsed();
        self.route
            .response(status_code, grpc_status, complete, elapsed.as_secs_f64());
        if let Some(tapped) = self.tapped {
            tapped.answered(status_code, grpc_status, complete, elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn get(path: &str) -> http::Request<()> {
        http::Request::get(path).body(()).unwrap()
    }

    fn lines(metrics: &Metrics, prefix: &str) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn each_target_keeps_its_first_routes_and_counts_the_rest_as_other() {
        let metrics = Metrics::default().with_max_routes(3);
        let routes = metrics.paths(Direction::Outbound, "stockdata".into());
        let now = Instant::now();
        for path in ["/StockData.Stocks/Get", "/a", "/b", "/c", "/d", "/a"] {
            routes
                .call(&get(path), now, CLIENT)
                .answered(200, Some(0), true);
        }
        // Not labels as they are: counted as other.
        for path in [
            "/%22quoted%22",
            &format!("/{}", "x".repeat(300)),
            "*",
            "/{x}",
        ] {
            routes
                .call(&get(path), now, CLIENT)
                .answered(404, None, true);
        }
        for bad in ["/\"quoted\"", "/back\\slash", "/tab\t", "/é", ""] {
            assert!(!labelable(bad), "{bad:?}");
        }
        let requests = lines(&metrics, "mesh_route_requests_total{");
        let route = |r: &str| {
            format!(
                r#"mesh_route_requests_total{{direction="outbound",target="stockdata",route="{r}"}}"#
            )
        };
        assert!(
            requests.contains(&format!("{} 1", route("/StockData.Stocks/Get"))),
            "{requests:#?}"
        );
        assert!(
            requests.contains(&format!("{} 2", route("/a"))),
            "{requests:#?}"
        );
        assert!(
            requests.contains(&format!("{} 1", route("/b"))),
            "{requests:#?}"
        );
        assert!(
            requests.contains(&format!("{} 6", route("other"))),
            "{requests:#?}"
        );
        assert_eq!(requests.len(), 4, "{requests:#?}");
        // A target whose routes all fit has no `other` series.
        let fits = metrics.paths(Direction::Inbound, "app".into());
        fits.call(&get("/a"), now, CLIENT).answered(200, None, true);
        assert!(!metrics.encode().contains(r#"target="app",route="other""#));
        let other_404 = lines(&metrics, "mesh_route_responses_total{")
            .into_iter()
            .filter(|l| l.contains(r#"route="other",status_code="404""#))
            .collect::<Vec<_>>();
        assert_eq!(other_404.len(), 1, "{other_404:?}");
        assert!(
            other_404[0].ends_with(r#"classification="success"} 4"#),
            "{other_404:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_counts_its_status_and_its_whole_latency() {
        let metrics = Metrics::default();
        let routes = metrics.paths(Direction::Inbound, "app".into());
        let call = routes.call(&get("/StockData.Stocks/Get"), Instant::now(), CLIENT);
        tokio::time::advance(std::time::Duration::from_millis(300)).await;
        call.answered(200, Some(14), true);
        let text = metrics.encode();
        assert!(
            text.contains(r#"mesh_route_responses_total{direction="inbound",target="app",route="/StockData.Stocks/Get",status_code="200",grpc_status="14",classification="failure"} 1"#),
            "{text}"
        );
        // 0.3 s: above the 0.256 s bucket, within the 0.512 s one.
        let bucket = |le: &str| {
            format!(
                r#"mesh_route_response_latency_seconds_bucket{{le="{le}",direction="inbound",target="app",route="/StockData.Stocks/Get"}}"#
            )
        };
        assert!(text.contains(&format!("{} 0", bucket("0.256"))), "{text}");
        assert!(text.contains(&format!("{} 1", bucket("0.512"))), "{text}");
    }
}
