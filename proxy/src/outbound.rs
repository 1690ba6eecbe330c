//! Outbound: the local app's traffic to other services.
//!
//! ```text
//! app -> outbound listener (target service) -> detect
//!          HTTP/1, HTTP/2: per request: route(:authority or target) -> balance -> endpoint
//!          opaque TCP:     per connection: balance -> endpoint
//! ```
//!
//! The listener hands the router a target service; where that came from (a
//! port mapped to a service today, the original destination of an
//! intercepted connection later) is the listener's business.

use crate::{
    balance::Balancer,
    body::{ProxyBody, Recorder},
    detect::{Prefixed, Protocol},
    errors,
    http::{Upstream, set_authority, strip_hop_by_hop},
    metrics::{Direction, Metrics, RouteLabels},
    tcp,
};
use hyper::body::Incoming;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};
use stockkube_proto::headers::MESH_ENDPOINT;
use tokio::net::TcpStream;

/// The outbound side of one proxy: its services' balancers and clients.
#[derive(Debug)]
pub struct Outbound {
    services: HashMap<Arc<str>, Arc<Balancer>>,
    timeouts: HashMap<Arc<str>, Duration>,
    upstream: Upstream,
    metrics: Arc<Metrics>,
}

impl Outbound {
    pub fn new(
        balancers: impl IntoIterator<Item = Arc<Balancer>>,
        timeouts: &std::collections::BTreeMap<String, Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            services: balancers
                .into_iter()
                .map(|b| (b.service().clone(), b))
                .collect(),
            timeouts: timeouts
                .iter()
                .map(|(service, timeout)| (Arc::from(service.as_str()), *timeout))
                .collect(),
            upstream: Upstream::default(),
            metrics,
        }
    }

    pub fn balancer(&self, service: &str) -> Option<&Arc<Balancer>> {
        self.services.get(service)
    }

    /// The balancer for a request: the service its `:authority`/`Host` names,
    /// if the proxy knows that service; else the listener's target.
    fn route<'a>(
        &'a self,
        request: &http::Request<Incoming>,
        target: &'a Arc<Balancer>,
    ) -> &'a Arc<Balancer> {
        let host = request.uri().host().or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host))
        });
        host.and_then(|host| self.services.get(host))
            .unwrap_or(target)
    }

    /// Forwards one HTTP request to an endpoint of its service.
    pub async fn proxy_http(
        &self,
        protocol: Protocol,
        target: &Arc<Balancer>,
        mut request: http::Request<Incoming>,
    ) -> http::Response<ProxyBody> {
        let started = Instant::now();
        let grpc = errors::is_grpc(&request);
        let balancer = self.route(&request, target);
        let picked = match balancer.pick().await {
            Ok(picked) => picked,
            Err(err) => {
                tracing::debug!(%err, "no endpoint");
                return errors::response(
                    grpc,
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    tonic::Code::Unavailable,
                    &err.to_string(),
                );
            }
        };
        let endpoint = picked.endpoint().clone();
        let route = RouteLabels {
            direction: Direction::Outbound,
            target: balancer.service().clone(),
            endpoint: endpoint.addr_label.clone(),
        };
        let mut recorder = Recorder::new(self.metrics.clone(), route, started);

        set_authority(&mut request, endpoint.authority.clone());
        if protocol == Protocol::Http1 {
            strip_hop_by_hop(request.headers_mut());
        }
        // The service's timeout or the client's grpc-timeout, the shorter;
        // the time already spent waiting for an endpoint counts.
        let deadline = [
            self.timeouts.get(balancer.service()).copied(),
            errors::grpc_timeout(request.headers()),
        ]
        .into_iter()
        .flatten()
        .min();
        let sent = self.upstream.send(protocol, request);
        let outcome = match deadline {
            None => sent.await,
            Some(deadline) => {
                match tokio::time::timeout_at((started + deadline).into(), sent).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        // Dropping the send cancels the upstream stream (RST_STREAM
                        // on HTTP/2); the endpoint is not blamed for the client's
                        // deadline.
                        drop(picked);
                        let message = format!(
                            "mesh-proxy: {} did not answer within {deadline:?}",
                            balancer.service()
                        );
                        let mut response = errors::recorded(
                            recorder,
                            grpc,
                            http::StatusCode::GATEWAY_TIMEOUT,
                            tonic::Code::DeadlineExceeded,
                            &message,
                        );
                        response
                            .headers_mut()
                            .insert(MESH_ENDPOINT, endpoint.header.clone());
                        return response;
                    }
                }
            }
        };
        match outcome {
            Ok(response) => {
                picked.succeeded();
                let (mut parts, body) = response.into_parts();
                if protocol == Protocol::Http1 {
                    strip_hop_by_hop(&mut parts.headers);
                }
                parts.headers.insert(MESH_ENDPOINT, endpoint.header.clone());
                recorder.head(parts.status, &parts.headers);
                http::Response::from_parts(parts, ProxyBody::upstream(body, recorder))
            }
            Err(err) => {
                let message = format!(
                    "endpoint {} of {} failed: {}",
                    endpoint.addr_label,
                    balancer.service(),
                    error_chain(&err)
                );
                tracing::debug!(%message);
                picked.failed(&error_chain(&err));
                let mut response = errors::recorded(
                    recorder,
                    grpc,
                    http::StatusCode::BAD_GATEWAY,
                    tonic::Code::Unavailable,
                    &message,
                );
                response
                    .headers_mut()
                    .insert(MESH_ENDPOINT, endpoint.header.clone());
                response
            }
        }
    }

    /// Forwards one opaque connection to an endpoint of `target`.
    pub async fn proxy_tcp(&self, target: &Arc<Balancer>, client: Prefixed<TcpStream>) {
        let picked = match target.pick().await {
            Ok(picked) => picked,
            Err(err) => {
                tracing::debug!(%err, "no endpoint for an opaque connection");
                return;
            }
        };
        let endpoint = picked.endpoint().clone();
        self.metrics.tcp_connection(&RouteLabels {
            direction: Direction::Outbound,
            target: target.service().clone(),
            endpoint: endpoint.addr_label.clone(),
        });
        picked.succeeded();
        if let Err(err) = tcp::forward(client, endpoint.endpoint.addr).await {
            tracing::debug!(%err, endpoint = %endpoint.addr_label, "opaque connection ended with an error");
        }
    }
}

/// An error and its causes on one line: hyper's client errors say little at
/// the top ("client error (Connect)") and the reason underneath.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
