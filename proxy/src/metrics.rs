//! The proxy's Prometheus metrics: names, labels, and recording. Served by
//! the admin server at `/metrics` (OpenMetrics text, which Prometheus reads).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mesh_requests_total` | counter | direction, target, endpoint |
//! | `mesh_responses_total` | counter | direction, target, endpoint, status_code, grpc_status, classification |
//! | `mesh_response_latency_seconds` | histogram (to the end of the response) | direction, target, endpoint |
//! | `mesh_tcp_connections_total` | counter (opaque TCP, per upstream connection) | direction, target, endpoint |
//! | `mesh_connections_total` | counter (accepted, per detected protocol) | direction, protocol |
//!
//! `direction` is `inbound` or `outbound`; `target` the service (outbound) or
//! `app` (inbound); `endpoint` the `ip:port` that served the request;
//! `grpc_status` the numeric gRPC code from trailers (or trailers-only
//! headers), empty for plain HTTP; `classification` `success` or `failure`
//! (HTTP 5xx, a non-OK gRPC status, or no complete response).

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let name = match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
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
            Classification::Success => "success",
            Classification::Failure => "failure",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

/// Which traffic a request belongs to. Cloning copies two `Arc`s.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: Direction,
    pub target: Arc<str>,
    pub endpoint: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: Direction,
    pub target: Arc<str>,
    pub endpoint: Arc<str>,
    pub status_code: u16,
    pub grpc_status: Option<u8>,
    pub classification: Classification,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub direction: Direction,
    pub protocol: &'static str,
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
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mesh");
        let requests = Family::default();
        let responses = Family::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let tcp_connections = Family::default();
        let connections = Family::default();
        registry.register("requests", "Requests proxied", requests.clone());
        registry.register(
            "responses",
            "Responses proxied, by status",
            responses.clone(),
        );
        registry.register(
            "response_latency_seconds",
            "Time from a request's arrival to the end of its response",
            latency.clone(),
        );
        registry.register(
            "tcp_connections",
            "Opaque TCP connections forwarded",
            tcp_connections.clone(),
        );
        registry.register(
            "connections",
            "Connections accepted, by detected protocol",
            connections.clone(),
        );
        Self {
            registry,
            requests,
            responses,
            latency,
            tcp_connections,
            connections,
        }
    }
}

impl Metrics {
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
        let failed = !complete || status_code >= 500 || grpc_status.is_some_and(|code| code != 0);
        self.responses
            .get_or_create(&ResponseLabels {
                direction: route.direction,
                target: route.target.clone(),
                endpoint: route.endpoint.clone(),
                status_code,
                grpc_status,
                classification: if failed {
                    Classification::Failure
                } else {
                    Classification::Success
                },
            })
            .inc();
        self.latency.get_or_create(route).observe(latency_seconds);
    }

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

    /// The registry in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_classification_encode() {
        let metrics = Metrics::default();
        let route = RouteLabels {
            direction: Direction::Outbound,
            target: "stockdata".into(),
            endpoint: "127.0.0.1:9001".into(),
        };
        metrics.request(&route);
        metrics.response(&route, 200, Some(0), true, 0.002);
        metrics.response(&route, 200, Some(14), true, 0.002);
        let text = metrics.encode();
        assert!(
            text.contains(r#"mesh_requests_total{direction="outbound",target="stockdata",endpoint="127.0.0.1:9001"} 1"#),
            "{text}"
        );
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
