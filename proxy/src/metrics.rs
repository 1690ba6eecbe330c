//! The proxy's Prometheus metrics: names, labels, and recording. Served by
//! the admin server at `/metrics`: Prometheus text format 0.0.4, or
//! OpenMetrics 1.0 to a scraper that asks for it ([`Format`]).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mesh_requests_total` | counter | direction, target, endpoint |
//! | `mesh_responses_total` | counter | direction, target, endpoint, status_code, grpc_status, classification |
//! | `mesh_response_latency_seconds` | histogram (to the end of the response) | direction, target, endpoint |
//! | `mesh_tcp_connections_total` | counter (opaque TCP, per upstream connection) | direction, target, endpoint |
//! | `mesh_connections_total` | counter (accepted, per detected protocol) | direction, protocol |
//! | `mesh_retries_total` | counter (attempts re-sent, by why the failed one failed) | direction, target, endpoint, reason |
//! | `mesh_retries_skipped_total` | counter (failures that could not be retried) | direction, target, reason |
//! | `mesh_request_timeouts_total` | counter (requests answered DEADLINE_EXCEEDED / 504) | direction, target, endpoint |
//! | `mesh_refused_total` | counter (peers refused by a limit) | direction, reason |
//! | `mesh_resolutions_total` | counter (intercepted connections' original destinations looked up) | result |
//! | `mesh_endpoint_ejected` | gauge (1 while failure accrual keeps it out) | target, endpoint |
//! | `mesh_endpoint_ejections_total` | counter | target, endpoint |
//! | `mesh_identity_certifications_total` | counter (identity certificates asked for; `--identity`) | result (`ok`, `error`) |
//! | `mesh_identity_certificate_expiry_seconds` | gauge (Unix time the certificate in use expires; 0: none) | |
//! | `mesh_route_requests_total` | counter (per request, not per attempt) | direction, target, route |
//! | `mesh_route_responses_total` | counter | direction, target, route, status_code, grpc_status, classification |
//! | `mesh_route_response_latency_seconds` | histogram (arrival to the end of the answer, retries included) | direction, target, route |
//!
//! `route` is the request's path (a gRPC method's is `/package.Service/Method`),
//! bounded per target: see [`paths`].
//!
//! Series with an `endpoint` label live as long as the endpoint: the last
//! handle of a route ([`RouteMetrics`], held by the endpoint's balancer
//! entry and by its requests in flight) removes them when it goes, so
//! `/metrics` follows discovery instead of growing with every endpoint ever
//! seen (counters of an endpoint that comes back start again from zero, a
//! reset Prometheus handles).
//!
//! Requests and responses count attempts: a retried request is one request
//! per endpoint it was sent to. Retry reasons: `error` (no response) or
//! `status` (a status the retry policy names); skip reasons: `budget`
//! (the retry budget is spent), `body` (too large to replay), `attempts`.
//! Refusal reasons are listed in `limits`. Resolution results: `service`
//! (balanced as that service), `unknown` (no service: forwarded to the
//! original destination untouched), `unavailable` (the controller did not
//! answer in time: forwarded untouched too).
//!
//! `direction` is `inbound` or `outbound`; `target` the service (outbound) or
//! `app` (inbound); `endpoint` the `ip:port` that served the request;
//! `grpc_status` the numeric gRPC code from trailers (or trailers-only
//! headers), empty for plain HTTP; `classification` `success` or `failure`
//! (HTTP 5xx, a non-OK gRPC status, or no complete response).

pub mod paths;

use crate::{
    balance::{Balancers, EndpointSnapshot, ServiceSnapshot},
    tls::PeerTls,
};
use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
        LabelSetEncoder, LabelValueEncoder,
    },
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge,
        gauge::Gauge, histogram::Histogram,
    },
    registry::Registry,
};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
};
use stockkube_proto::metrics::{PREFIX, labels, names};

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let name = match self {
            Direction::Inbound => labels::INBOUND,
            Direction::Outbound => labels::OUTBOUND,
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Classification {
    Success,
    Failure,
}

impl EncodeLabelValue for Classification {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let name = match self {
            Classification::Success => labels::SUCCESS,
            Classification::Failure => labels::FAILURE,
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

/// Which traffic a request belongs to. Cloning copies a few `Arc`s.
///
/// Encoded as `direction`, `target`, `endpoint`, `tls` (`true` for mesh
/// mTLS) and, when the other proxy's identity is known, `client_id`
/// (inbound: who called) or `server_id` (outbound: who was called).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RouteLabels {
    pub direction: Direction,
    pub target: Arc<str>,
    pub endpoint: Arc<str>,
    pub tls: PeerTls,
}

impl EncodeLabelSet for RouteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        (labels::DIRECTION, self.direction).encode(encoder.encode_label())?;
        (labels::TARGET, &*self.target).encode(encoder.encode_label())?;
        (labels::ENDPOINT, &*self.endpoint).encode(encoder.encode_label())?;
        (labels::TLS, self.tls.is_tls()).encode(encoder.encode_label())?;
        if let Some(id) = self.tls.id() {
            let key = match self.direction {
                Direction::Inbound => labels::CLIENT_ID,
                Direction::Outbound => labels::SERVER_ID,
            };
            (key, &**id).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub status_code: u16,
    pub grpc_status: Option<u8>,
    pub classification: Classification,
}

impl ResponseLabels {
    fn new(
        route: &RouteLabels,
        status_code: u16,
        grpc_status: Option<u8>,
        classification: Classification,
    ) -> Self {
        Self {
            route: route.clone(),
            status_code,
            grpc_status,
            classification,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub direction: Direction,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub direction: Direction,
    pub target: Arc<str>,
    pub endpoint: Arc<str>,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub direction: Direction,
    pub target: Arc<str>,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric the proxy records; shared by all its tasks.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: HistogramFamily,
    tcp_connections: Family<RouteLabels, Counter>,
    connections: Family<ConnectionLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    retries_skipped: Family<ReasonLabels, Counter>,
    timeouts: Family<RouteLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    resolutions: Family<ResultLabels, Counter>,
    identity_certifications: Family<ResultLabels, Counter>,
    identity_expiry: Gauge,
    paths: paths::PathFamilies,
    /// Routes per target with series of their own (`--max-routes`).
    max_routes: usize,
    /// The taps attached, which every route's calls offer their requests.
    taps: Arc<crate::tap::Taps>,
    /// Routes with live handles, and which of their series exist beyond
    /// the ones every route has, so the last handle can remove them all.
    routes: Mutex<HashMap<RouteLabels, Tracked>>,
}

/// A route's live handles and its series that carry more labels.
#[derive(Debug, Default)]
struct Tracked {
    handles: usize,
    responses: HashSet<(u16, Option<u8>, Classification)>,
    retry_reasons: HashSet<&'static str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A response's classification: a failure is HTTP 5xx, a non-OK gRPC
/// status, or an answer cut short.
fn classify(status_code: u16, grpc_status: Option<u8>, complete: bool) -> Classification {
    let failed = !complete || status_code >= 500 || grpc_status.is_some_and(|code| code != 0);
    if failed {
        Classification::Failure
    } else {
        Classification::Success
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = Family::default();
        let responses = Family::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let tcp_connections = Family::default();
        let connections = Family::default();
        registry.register(names::REQUESTS, "Requests proxied", requests.clone());
        registry.register(
            names::RESPONSES,
            "Responses proxied, by status",
            responses.clone(),
        );
        registry.register(
            names::RESPONSE_LATENCY,
            "Time from a request's arrival to the end of its response",
            latency.clone(),
        );
        registry.register(
            names::TCP_CONNECTIONS,
            "Opaque TCP connections forwarded",
            tcp_connections.clone(),
        );
        registry.register(
            names::CONNECTIONS,
            "Connections accepted, by detected protocol",
            connections.clone(),
        );
        let retries = Family::default();
        let retries_skipped = Family::default();
        let timeouts = Family::default();
        let refused = Family::default();
        let resolutions = Family::default();
        registry.register(
            names::RETRIES,
            "Attempts re-sent after a failed one, by why it failed",
            retries.clone(),
        );
        registry.register(
            names::RETRIES_SKIPPED,
            "Failed attempts that were not retried, by why not",
            retries_skipped.clone(),
        );
        registry.register(
            names::REQUEST_TIMEOUTS,
            "Requests that ran out of time",
            timeouts.clone(),
        );
        registry.register(
            names::REFUSED,
            "Peers refused by a limit, by limit",
            refused.clone(),
        );
        registry.register(
            names::RESOLUTIONS,
            "Original destinations of intercepted connections looked up, by result",
            resolutions.clone(),
        );
        let identity_certifications = Family::default();
        let identity_expiry = Gauge::default();
        registry.register(
            names::IDENTITY_CERTIFICATIONS,
            "Identity certificates asked for, by result",
            identity_certifications.clone(),
        );
        registry.register(
            names::IDENTITY_CERTIFICATE_EXPIRY,
            "When the identity certificate in use expires (Unix time; 0: none)",
            identity_expiry.clone(),
        );
        let paths = paths::PathFamilies::default();
        registry.register(
            names::ROUTE_REQUESTS,
            "Requests per route (path), counted once however many attempts",
            paths.requests.clone(),
        );
        registry.register(
            names::ROUTE_RESPONSES,
            "Answers per route (path), by status",
            paths.responses.clone(),
        );
        registry.register(
            names::ROUTE_RESPONSE_LATENCY,
            "Time from a request's arrival to the end of its answer, per route (path)",
            paths.latency.clone(),
        );
        Self {
            registry,
            requests,
            responses,
            latency,
            tcp_connections,
            connections,
            retries,
            retries_skipped,
            timeouts,
            refused,
            resolutions,
            identity_certifications,
            identity_expiry,
            paths,
            max_routes: paths::DEFAULT_MAX_ROUTES,
            taps: Arc::default(),
            routes: Mutex::default(),
        }
    }
}

/// Failure-accrual state, read from the balancers at each scrape.
#[derive(Debug)]
struct Ejections {
    balancers: Arc<Balancers>,
}

impl Collector for Ejections {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshots = self.balancers.snapshots();
        per_endpoint(
            &mut encoder,
            &snapshots,
            (
                names::ENDPOINT_EJECTED,
                "1 while failure accrual keeps the endpoint out of its balancer",
                MetricType::Gauge,
            ),
            |endpoint| ConstGauge::new(i64::from(endpoint.ejected)),
        )?;
        per_endpoint(
            &mut encoder,
            &snapshots,
            (
                names::ENDPOINT_EJECTIONS,
                "Times failure accrual ejected the endpoint",
                MetricType::Counter,
            ),
            |endpoint| ConstCounter::new(endpoint.ejections),
        )
    }
}

/// One metric family with a sample per endpoint of every service,
/// labelled by target and endpoint.
fn per_endpoint<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    snapshots: &[ServiceSnapshot],
    (name, help, metric_type): (&str, &str, MetricType),
    sample: impl Fn(&EndpointSnapshot) -> M,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for service in snapshots {
        for endpoint in &service.endpoints {
            let labels = [
                (labels::TARGET, service.service.as_str()),
                (labels::ENDPOINT, endpoint.addr.as_str()),
            ];
            sample(endpoint).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// One route's metric handles, resolved once (per endpoint, or per inbound
/// listener) instead of per request: the request counter, the latency
/// histogram, and the counter of the common answer (gRPC OK, or HTTP 200
/// without a gRPC status), made on the first request so that a route used
/// only for opaque TCP has no request series. Other answers go through the
/// label lookup. Dropping the route's last handle removes its series.
#[derive(Debug)]
pub struct RouteMetrics {
    metrics: Arc<Metrics>,
    route: RouteLabels,
    http: OnceLock<HttpHandles>,
}

#[derive(Debug)]
struct HttpHandles {
    requests: Counter,
    latency: Histogram,
    grpc_ok: Counter,
    http_ok: Counter,
}

impl RouteMetrics {
    pub fn route(&self) -> &RouteLabels {
        &self.route
    }

    fn http(&self) -> &HttpHandles {
        self.http.get_or_init(|| {
            let metrics = &self.metrics;
            let route = &self.route;
            let ok = |status_code, grpc_status| {
                let labels =
                    ResponseLabels::new(route, status_code, grpc_status, Classification::Success);
                metrics.responses.get_or_create(&labels).clone()
            };
            HttpHandles {
                requests: metrics.requests.get_or_create(route).clone(),
                latency: metrics.latency.get_or_create(route).clone(),
                grpc_ok: ok(200, Some(0)),
                http_ok: ok(200, None),
            }
        })
    }

    pub fn request(&self) {
        self.http().requests.inc();
    }

    /// An opaque TCP connection forwarded on this route.
    pub fn tcp_connection(&self) {
        self.metrics
            .tcp_connections
            .get_or_create(&self.route)
            .inc();
    }

    pub fn response(
        &self,
        status_code: u16,
        grpc_status: Option<u8>,
        complete: bool,
        latency_seconds: f64,
    ) {
        let http = self.http();
        match (complete, status_code, grpc_status) {
            (true, 200, Some(0)) => {
                http.grpc_ok.inc();
            }
            (true, 200, None) => {
                http.http_ok.inc();
            }
            _ => self
                .metrics
                .count_response(&self.route, status_code, grpc_status, complete),
        }
        http.latency.observe(latency_seconds);
    }
}

impl Drop for RouteMetrics {
    fn drop(&mut self) {
        self.metrics.release(&self.route);
    }
}

impl Metrics {
    /// The handles of one route's metrics; its series stay while any
    /// handle of the route does.
    pub fn route(self: &Arc<Self>, route: RouteLabels) -> RouteMetrics {
        self.tracked(&route, |tracked| tracked.handles += 1);
        RouteMetrics {
            metrics: self.clone(),
            route,
            http: OnceLock::new(),
        }
    }

    /// Applies `note` to `route`'s entry (made if missing).
    fn tracked(&self, route: &RouteLabels, note: impl FnOnce(&mut Tracked)) {
        let mut routes = self.routes.lock().expect("routes lock is never poisoned");
        match routes.get_mut(route) {
            Some(tracked) => note(tracked),
            None => note(routes.entry(route.clone()).or_default()),
        }
    }

    /// One handle of `route` went; with the last, its series go.
    fn release(&self, route: &RouteLabels) {
        // Held while removing, so that a handle made meanwhile for the same
        // route finds the series gone, not removed under it.
        let mut routes = self.routes.lock().expect("routes lock is never poisoned");
        let Some(tracked) = routes.get_mut(route) else {
            return;
        };
        tracked.handles -= 1;
        if tracked.handles > 0 {
            return;
        }
        let tracked = routes.remove(route).expect("just found");
        self.requests.remove(route);
        self.latency.remove(route);
        self.timeouts.remove(route);
        self.tcp_connections.remove(route);
        let ok = [
            (200, Some(0), Classification::Success),
            (200, None, Classification::Success),
        ];
        for (status_code, grpc_status, classification) in tracked.responses.into_iter().chain(ok) {
            self.responses.remove(&ResponseLabels::new(
                route,
                status_code,
                grpc_status,
                classification,
            ));
        }
        for reason in tracked.retry_reasons {
            self.retries.remove(&retry_labels(route, reason));
        }
    }

    /// Metrics that also report the accrual state of `balancers`.
    pub fn with_balancers(balancers: Arc<Balancers>) -> Self {
        let mut metrics = Self::default();
        metrics
            .registry
            .register_collector(Box::new(Ejections { balancers }));
        metrics
    }

    pub fn retry(&self, route: &RouteLabels, reason: &'static str) {
        let labels = retry_labels(route, reason);
        if self.retries.get(&labels).is_none() {
            self.tracked(route, |tracked| {
                tracked.retry_reasons.insert(reason);
            });
        }
        self.retries.get_or_create(&labels).inc();
    }

    pub fn retry_skipped(&self, route: &RouteLabels, reason: &'static str) {
        self.retries_skipped
            .get_or_create(&ReasonLabels {
                direction: route.direction,
                target: route.target.clone(),
                reason,
            })
            .inc();
    }

    pub fn timeout(&self, route: &RouteLabels) {
        self.timeouts.get_or_create(route).inc();
    }

    pub fn refused(&self, direction: Direction, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { direction, reason })
            .inc();
    }

    /// An identity certificate was asked for (`ok` or `error`).
    pub fn identity_certified(&self, result: &'static str) {
        self.identity_certifications
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The identity certificate in use now expires at `until` (or there is
    /// none).
    pub fn identity_expiry(&self, until: Option<std::time::SystemTime>) {
        let secs = until
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        self.identity_expiry.set(secs);
    }

    pub fn resolved(&self, result: &'static str) {
        self.resolutions
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn request(&self, route: &RouteLabels) {
        self.requests.get_or_create(route).inc();
    }

    pub fn response(
        &self,
        route: &RouteLabels,
        status_code: u16,
        grpc_status: Option<u8>,
        complete: bool,
        latency_seconds: f64,
    ) {
        self.count_response(route, status_code, grpc_status, complete);
        self.latency.get_or_create(route).observe(latency_seconds);
    }

    fn count_response(
        &self,
        route: &RouteLabels,
        status_code: u16,
        grpc_status: Option<u8>,
        complete: bool,
    ) {
        let classification = classify(status_code, grpc_status, complete);
        let labels = ResponseLabels::new(route, status_code, grpc_status, classification);
        if self.responses.get(&labels).is_none() {
            self.tracked(route, |tracked| {
                tracked
                    .responses
                    .insert((status_code, grpc_status, classification));
            });
        }
        self.responses.get_or_create(&labels).inc();
    }

    /// An opaque connection on a route without handles (forwarded
    /// untouched): its series stays.
    pub fn tcp_connection(&self, route: &RouteLabels) {
        self.tcp_connections.get_or_create(route).inc();
    }

    pub fn accepted(&self, direction: Direction, protocol: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels {
                direction,
                protocol,
            })
            .inc();
    }

    /// Keeps series for up to `max` routes per target.
    pub fn with_max_routes(mut self, max: usize) -> Self {
        self.max_routes = max;
        self
    }

    /// Offers requests to `taps`.
    pub fn with_taps(mut self, taps: Arc<crate::tap::Taps>) -> Self {
        self.taps = taps;
        self
    }

    pub fn taps(&self) -> &Arc<crate::tap::Taps> {
        &self.taps
    }

    /// The routes of `target` in `direction`.
    pub fn paths(&self, direction: Direction, target: Arc<str>) -> paths::PathRoutes {
        paths::PathRoutes::new(
            self.paths.clone(),
            self.taps.clone(),
            direction,
            target,
            self.max_routes,
        )
    }

    /// The registry in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Text => openmetrics_to_text(&self.encode()),
        }
    }

    /// The registry in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The text format a scrape is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what `curl`, `promtool` and every
    /// scraper read; the answer unless OpenMetrics is asked for.
    Text,
    /// OpenMetrics 1.0 text, to a scraper whose `Accept` prefers it (as
    /// Prometheus's does).
    OpenMetrics,
}

impl Format {
    const OPENMETRICS: &str = "application/openmetrics-text";

    /// The format an `Accept` header asks for: OpenMetrics when it is
    /// acceptable and no less preferred than plain text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or("").split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                Self::OPENMETRICS => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// OpenMetrics text (as `prometheus-client` writes it) in Prometheus text
/// format 0.0.4. The samples are the same; the metadata differs: a counter
/// family is named with its `_total` suffix, `unknown` is `untyped`, there
/// is no `# UNIT` or `# EOF`, and `HELP` does not escape quotes.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    // OpenMetrics puts HELP before TYPE, and only TYPE says the name.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (family.to_owned(), kind),
                "info" => (format!("{family}_info"), "gauge"),
                _ => (family.to_owned(), "untyped"),
            };
            if let Some((of, help)) = help.take().and_then(|h| h.split_once(' '))
                && of == family
            {
                text.push_str(&format!("# HELP {name} {}\n", help.replace("\\\"", "\"")));
            }
            text.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if !line.starts_with("# UNIT ") && line != "# EOF" {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

fn retry_labels(route: &RouteLabels, reason: &'static str) -> RetryLabels {
    RetryLabels {
        direction: route.direction,
        target: route.target.clone(),
        endpoint: route.endpoint.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_series_go_with_its_last_handle() {
        let metrics = Arc::new(Metrics::default());
        let labels = |endpoint: &str| RouteLabels {
            direction: Direction::Outbound,
            target: "stockdata".into(),
            endpoint: endpoint.into(),
            tls: Default::default(),
        };
        let series = |endpoint: &str| {
            let needle = format!(r#"endpoint="{endpoint}""#);
            metrics
                .encode()
                .lines()
                .filter(|line| line.contains(&needle))
                .count()
        };
        let gone = metrics.route(labels("10.0.0.1:80"));
        let stays = Arc::new(metrics.route(labels("10.0.0.2:80")));
        for route in [&gone, &*stays] {
            route.request();
            route.response(200, Some(0), true, 0.001);
            route.response(200, Some(14), true, 0.001);
            route.response(503, None, false, 0.001);
            route.tcp_connection();
            metrics.retry(route.route(), "error");
            metrics.retry(route.route(), "status");
            metrics.timeout(route.route());
        }
        // A second handle of the same route (a request still in flight).
        let in_flight = metrics.route(labels("10.0.0.1:80"));
        assert!(series("10.0.0.1:80") > 10, "{}", metrics.encode());
        let before = series("10.0.0.2:80");
        drop(gone);
        assert_eq!(series("10.0.0.1:80"), series("10.0.0.2:80"));
        drop(in_flight);
        assert_eq!(series("10.0.0.1:80"), 0, "{}", metrics.encode());
        assert_eq!(series("10.0.0.2:80"), before);
        assert!(metrics.routes.lock().unwrap().len() == 1);
        // A route used again later starts afresh.
        let again = metrics.route(labels("10.0.0.1:80"));
        again.request();
        assert!(
            metrics
                .encode()
                .contains(r#"mesh_requests_total{direction="outbound",target="stockdata",endpoint="10.0.0.1:80",tls="false"} 1"#)
        );
    }

    #[test]
    fn scrapers_get_the_format_they_ask_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;q=1, application/openmetrics-text;q=0.5")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text; q=0")),
            Format::Text
        );
    }

    #[test]
    fn the_text_format_names_counters_with_their_suffix_and_has_no_eof() {
        let metrics = Metrics::default();
        metrics.accepted(Direction::Inbound, "http2");
        metrics.identity_expiry(None);
        let route = RouteLabels {
            direction: Direction::Outbound,
            target: "stockdata".into(),
            endpoint: "127.0.0.1:9001".into(),
            tls: Default::default(),
        };
        metrics.response(&route, 200, Some(0), true, 0.002);
        let openmetrics = metrics.encode();
        assert!(
            openmetrics.contains("# TYPE mesh_connections counter"),
            "{openmetrics}"
        );
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        let text = metrics.encode_as(Format::Text);
        assert!(
            text.contains("# HELP mesh_connections_total Connections accepted"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mesh_connections_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"mesh_connections_total{direction="inbound",protocol="http2"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mesh_response_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // The samples are the same lines in both.
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&text), samples(&openmetrics));
        assert_eq!(
            openmetrics_to_text(
                "# HELP x_total a \\\"quoted\\\" help.\n# TYPE x_total unknown\nx_total 1\n# EOF\n"
            ),
            "# HELP x_total a \"quoted\" help.\n# TYPE x_total untyped\nx_total 1\n"
        );
    }

    #[test]
    fn names_labels_and_classification_encode() {
        let metrics = Metrics::default();
        let route = RouteLabels {
            direction: Direction::Outbound,
            target: "stockdata".into(),
            endpoint: "127.0.0.1:9001".into(),
            tls: Default::default(),
        };
        metrics.request(&route);
        metrics.response(&route, 200, Some(0), true, 0.002);
        metrics.response(&route, 200, Some(14), true, 0.002);
        let text = metrics.encode();
        assert!(
            text.contains(r#"mesh_requests_total{direction="outbound",target="stockdata",endpoint="127.0.0.1:9001",tls="false"} 1"#),
            "{text}"
        );
        for (direction, key) in [
            (Direction::Outbound, "server_id"),
            (Direction::Inbound, "client_id"),
        ] {
            let id = "spiffe://cluster.local/ns/stocks/sa/stockdata";
            metrics.request(&RouteLabels {
                direction,
                target: "stockdata".into(),
                endpoint: "127.0.0.1:9002".into(),
                tls: PeerTls::Mesh {
                    id: Some(id.into()),
                },
            });
            let text = metrics.encode();
            let expected = format!(r#"endpoint="127.0.0.1:9002",tls="true",{key}="{id}"}} 1"#);
            assert!(text.contains(&expected), "{expected} in {text}");
        }
        assert!(
            text.contains(r#"grpc_status="0",classification="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"grpc_status="14",classification="failure"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("mesh_response_latency_seconds_count"),
            "{text}"
        );
    }
}
