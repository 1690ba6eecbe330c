//! Outbound: the local app's traffic to other services.
//!
//! ```text
//! app -> outbound listener (target service) -> detect
//!          HTTP/1, HTTP/2: per request: route(:authority or target) -> deadline
//!                          -> attempt: balance -> endpoint
//!                             failed and retryable? -> another attempt, another endpoint
//!          opaque TCP:     per connection: balance -> endpoint
//! ```
//!
//! The listener hands the router a target service; where that came from (a
//! port mapped to a service today, the original destination of an
//! intercepted connection later) is the listener's business.

use crate::{
    balance::{Balancer, EndpointState},
    body::{ProxyBody, Received, Recorder},
    config::Config,
    detect::{Prefixed, Protocol},
    errors,
    http::{Upstream, set_authority, strip_hop_by_hop},
    metrics::{Direction, Metrics, RouteLabels},
    retry::{RetryConfig, RetryPolicy, budget::RetryBudget, replay::ReplayBody},
    tcp,
};
use http::HeaderValue;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};
use stockkube_proto::headers::{MESH_ATTEMPTS, MESH_ENDPOINT};
use tokio::net::TcpStream;

/// One target service: its balancer and the policies its requests follow.
#[derive(Debug)]
pub struct Service {
    pub balancer: Arc<Balancer>,
    timeout: Option<Duration>,
    retry_policy: RetryPolicy,
    budget: RetryBudget,
}

/// The outbound side of one proxy: its services and the upstream clients.
#[derive(Debug)]
pub struct Outbound {
    services: HashMap<Arc<str>, Arc<Service>>,
    retry: RetryConfig,
    upstream: Upstream<ReplayBody<Received>>,
    metrics: Arc<Metrics>,
}

/// Why an attempt did not serve its request.
enum Failure {
    /// A response the retry policy names.
    Status(http::Response<Received>),
    /// No response at all.
    Error(crate::http::UpstreamError),
}

impl Outbound {
    pub fn new(
        balancers: impl IntoIterator<Item = Arc<Balancer>>,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Self {
        let services = balancers
            .into_iter()
            .map(|balancer| {
                let name = balancer.service().clone();
                let service = Service {
                    timeout: config.timeouts.get(&*name).copied(),
                    retry_policy: config
                        .retry_policies
                        .get(&*name)
                        .cloned()
                        .unwrap_or_default(),
                    budget: RetryBudget::new(config.retry.budget),
                    balancer,
                };
                (name, Arc::new(service))
            })
            .collect();
        Self {
            services,
            retry: config.retry.clone(),
            upstream: Upstream::default(),
            metrics,
        }
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// The service a request is for: the one its `:authority`/`Host`
    /// names, if the proxy knows that service; else the listener's target.
    fn route<'a>(
        &'a self,
        request: &http::Request<Received>,
        target: &'a Arc<Service>,
    ) -> &'a Arc<Service> {
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

    /// Forwards one HTTP request to an endpoint of its service, and again
    /// to another one when the attempt failed in a way that may be retried.
    pub async fn proxy_http(
        &self,
        protocol: Protocol,
        target: &Arc<Service>,
        request: http::Request<Received>,
    ) -> http::Response<ProxyBody> {
        let started = Instant::now();
        let grpc = errors::is_grpc(&request);
        let service = self.route(&request, target);
        let (mut head, body) = request.into_parts();
        if protocol == Protocol::Http1 {
            strip_hop_by_hop(&mut head.headers);
        }
        // The service's timeout or the client's grpc-timeout, the shorter,
        // for all attempts together.
        let deadline = [service.timeout, errors::grpc_timeout(&head.headers)]
            .into_iter()
            .flatten()
            .min();
        service.budget.deposit();
        let keep = if self.retry.max_attempts > 1 {
            self.retry.max_body_bytes
        } else {
            0
        };
        let replay = ReplayBody::new(body, keep);
        let mut body = replay
            .retry()
            .expect("a body nothing has read yet can be replayed");
        let mut tried: Vec<Arc<EndpointState>> = Vec::new();
        let mut attempt: u32 = 1;
        loop {
            let picked = match service.balancer.try_pick(&tried) {
                Some(picked) => Ok(picked),
                // Boxed: waiting for endpoints is rare, and would otherwise
                // make every request's future larger.
                None => Box::pin(service.balancer.pick_excluding(&tried)).await,
            };
            let picked = match picked {
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
            let endpoint_metrics = endpoint
                .metrics
                .get_or_init(|| {
                    Arc::new(self.metrics.route(RouteLabels {
                        direction: Direction::Outbound,
                        target: service.balancer.service().clone(),
                        endpoint: endpoint.addr_label.clone(),
                    }))
                })
                .clone();
            let route = endpoint_metrics.route();
            let mut recorder = Recorder::new(endpoint_metrics.clone(), Instant::now());

            let mut request = attempt_request(&head, body);
            set_authority(&mut request, endpoint.authority.clone());
            let sent = self.upstream.send(protocol, request);
            let outcome = match deadline {
                None => sent.await,
                Some(deadline) => {
                    match tokio::time::timeout_at((started + deadline).into(), sent).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            // Dropping the send cancels the upstream stream
                            // (RST_STREAM on HTTP/2). The endpoint is blamed
                            // when the service's own timeout ran out, not for
                            // a client's deadline shorter than that.
                            if service.timeout == Some(deadline) {
                                picked.failed(&format_args!("no answer within {deadline:?}"));
                            }
                            self.metrics.timeout(route);
                            let message = format!(
                                "mesh-proxy: {} did not answer within {deadline:?}",
                                route.target
                            );
                            return answer_failure(
                                recorder,
                                grpc,
                                (
                                    http::StatusCode::GATEWAY_TIMEOUT,
                                    tonic::Code::DeadlineExceeded,
                                ),
                                &message,
                                &endpoint,
                                attempt,
                            );
                        }
                    }
                }
            };
            let failure = match outcome {
                Ok(response)
                    if !service
                        .retry_policy
                        .retries(response.status(), response.headers()) =>
                {
                    picked.succeeded();
                    return forward(protocol, response, recorder, &endpoint, attempt);
                }
                Ok(response) => {
                    picked.failed(&format_args!(
                        "answered {} {}",
                        response.status(),
                        response
                            .headers()
                            .get("grpc-status")
                            .map_or(String::new(), |v| format!("grpc-status {v:?}"))
                    ));
                    Failure::Status(response)
                }
                Err(err) if replay.source_failed() => {
                    // The client broke off its own request (reset the
                    // stream, went away) while its body was on the way:
                    // nothing to retry, and nothing the endpoint did.
                    drop(picked);
                    let message = format!(
                        "the client broke off its request body: {}",
                        error_chain(&err)
                    );
                    tracing::debug!(%message, endpoint = %endpoint.addr_label);
                    return answer_failure(
                        recorder,
                        grpc,
                        (http::StatusCode::BAD_REQUEST, tonic::Code::Cancelled),
                        &message,
                        &endpoint,
                        attempt,
                    );
                }
                Err(err) => {
                    picked.failed(&error_chain(&err));
                    Failure::Error(err)
                }
            };

            // Another attempt, if the request has attempts left, its body can
            // be sent again, and the budget allows.
            let retry = if attempt >= self.retry.max_attempts {
                Err("attempts")
            } else if !replay.can_replay() {
                Err("body")
            } else if !service.budget.withdraw() {
                Err("budget")
            } else {
                replay.retry().ok_or("body")
            };
            let next = match retry {
                Ok(next) => next,
                Err(why) => {
                    self.metrics.retry_skipped(route, why);
                    return match failure {
                        Failure::Status(response) => {
                            forward(protocol, response, recorder, &endpoint, attempt)
                        }
                        Failure::Error(err) => {
                            let message = format!(
                                "endpoint {} of {} failed: {}",
                                endpoint.addr_label,
                                route.target,
                                error_chain(&err)
                            );
                            tracing::debug!(%message, attempt, not_retried = why);
                            answer_failure(
                                recorder,
                                grpc,
                                (http::StatusCode::BAD_GATEWAY, tonic::Code::Unavailable),
                                &message,
                                &endpoint,
                                attempt,
                            )
                        }
                    };
                }
            };
            match failure {
                Failure::Status(response) => {
                    self.metrics.retry(route, "status");
                    recorder.head(response.status(), response.headers());
                    recorder.finish(true);
                }
                Failure::Error(err) => {
                    self.metrics.retry(route, "error");
                    tracing::debug!(endpoint = %endpoint.addr_label, err = %error_chain(&err), attempt, "retrying");
                    errors::recorded(
                        recorder,
                        grpc,
                        http::StatusCode::BAD_GATEWAY,
                        tonic::Code::Unavailable,
                        "",
                    );
                }
            }
            tried.push(endpoint);
            body = next;
            attempt += 1;
        }
    }

    /// Forwards one opaque connection to an endpoint of `target`.
    pub async fn proxy_tcp(&self, target: &Arc<Service>, client: Prefixed<TcpStream>) {
        let balancer = &target.balancer;
        let picked = match balancer.pick().await {
            Ok(picked) => picked,
            Err(err) => {
                tracing::debug!(%err, "no endpoint for an opaque connection");
                return;
            }
        };
        let endpoint = picked.endpoint().clone();
        self.metrics.tcp_connection(&RouteLabels {
            direction: Direction::Outbound,
            target: balancer.service().clone(),
            endpoint: endpoint.addr_label.clone(),
        });
        picked.succeeded();
        if let Err(err) = tcp::forward(client, endpoint.endpoint.addr).await {
            tracing::debug!(%err, endpoint = %endpoint.addr_label, "opaque connection ended with an error");
        }
    }
}

/// One attempt's request: the client's head (copied, so later attempts
/// have it too) with this attempt's body.
fn attempt_request<B>(head: &http::request::Parts, body: B) -> http::Request<B> {
    let mut request = http::Request::new(body);
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request
}

/// An endpoint's response on its way back to the client, observed by
/// `recorder` until its end.
fn forward(
    protocol: Protocol,
    response: http::Response<Received>,
    mut recorder: Recorder,
    endpoint: &EndpointState,
    attempt: u32,
) -> http::Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    if protocol == Protocol::Http1 {
        strip_hop_by_hop(&mut parts.headers);
    }
    recorder.head(parts.status, &parts.headers);
    annotate(
        http::Response::from_parts(parts, ProxyBody::upstream(body, recorder)),
        endpoint,
        attempt,
    )
}

/// The proxy's own answer to a request whose attempt failed: recorded in
/// the attempt's metrics, with the endpoint and attempt headers.
fn answer_failure(
    recorder: Recorder,
    grpc: bool,
    (status, grpc_code): (http::StatusCode, tonic::Code),
    message: &str,
    endpoint: &EndpointState,
    attempt: u32,
) -> http::Response<ProxyBody> {
    let response = errors::recorded(recorder, grpc, status, grpc_code, message);
    annotate(response, endpoint, attempt)
}

/// Adds the headers that tell the client which endpoint answered and after
/// how many attempts.
fn annotate(
    mut response: http::Response<ProxyBody>,
    endpoint: &EndpointState,
    attempt: u32,
) -> http::Response<ProxyBody> {
    let headers = response.headers_mut();
    headers.insert(MESH_ENDPOINT, endpoint.header.clone());
    let attempts = match attempt {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        n => HeaderValue::from(n),
    };
    headers.insert(MESH_ATTEMPTS, attempts);
    response
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
