//! The attempt loop: pick an endpoint, send, classify what came back, feed
//! the outcome back to the balancer, and decide whether to try again.
//!
//! ```text
//! loop: pick (not an endpoint already tried) -> send (until the deadline)
//!       -> classify (response | retryable status | ProxyError)
//!       -> feedback (the error's blame decides who is charged)
//!       -> decide: done | retry (attempts, replayable body, budget) | skip
//! ```
//!
//! Upstream sending is behind [`SendRequest`], so the loop and its retry
//! decisions are tested here without sockets.

use super::{Deadline, Service};
use crate::{
    balance::{EndpointState, Picked},
    body::Recorder,
    detect::Protocol,
    errors::{Blame, ProxyError},
    http::{Upstream, UpstreamError, set_authority},
    metrics::{Metrics, RouteMetrics},
    retry::{RetryConfig, replay::ReplayBody},
    tls::PeerTls,
};
use std::{future::Future, net::SocketAddr, sync::Arc};
use tokio::time::Instant;

/// Sends one attempt's request to the endpoint its URI names: the proxy's
/// HTTP clients, or a test's script.
pub trait SendRequest<B>: Sync {
    /// The response body.
    type Body: Send;

    /// Sends to `addr` (the address the request's URI names) over mTLS to
    /// a server proving `server_id`, when given and the proxy has the
    /// mesh's TLS.
    fn send(
        &self,
        protocol: Protocol,
        addr: SocketAddr,
        request: http::Request<B>,
        server_id: Option<&Arc<str>>,
    ) -> impl Future<Output = Result<http::Response<Self::Body>, UpstreamError>> + Send;

    /// What a call to an endpoint proving `server_id` is (for metrics).
    fn peer_tls(&self, server_id: Option<&Arc<str>>) -> PeerTls;
}

impl<B> SendRequest<B> for Upstream<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::retry::replay::BoxError>,
{
    type Body = crate::body::Received;

    fn send(
        &self,
        protocol: Protocol,
        addr: SocketAddr,
        request: http::Request<B>,
        server_id: Option<&Arc<str>>,
    ) -> impl Future<Output = Result<http::Response<Self::Body>, UpstreamError>> + Send {
        Upstream::send(self, protocol, addr, request, server_id)
    }

    fn peer_tls(&self, server_id: Option<&Arc<str>>) -> PeerTls {
        Upstream::peer_tls(self, server_id)
    }
}

/// The last attempt of a request: its metrics, endpoint and number.
#[derive(Debug)]
pub struct Attempt {
    pub recorder: Recorder,
    pub endpoint: Arc<EndpointState>,
    pub number: u32,
}

/// How a request's attempts ended.
#[derive(Debug)]
pub enum Outcome<R> {
    /// No endpoint to send it to: nothing was sent or recorded.
    NotSent(ProxyError),
    /// A response to pass on: a success, or a failure not retried.
    Answered(http::Response<R>, Attempt),
    /// No response; the proxy answers for it.
    Failed(ProxyError, Attempt),
}

/// What one attempt got.
#[derive(Debug)]
pub enum Classified<R> {
    /// A response the retry policy does not name.
    Response(http::Response<R>),
    /// A response whose status the retry policy names (UNAVAILABLE, 503).
    RetryableStatus(http::Response<R>),
    /// No response.
    Failed(ProxyError),
}

impl<R> Classified<R> {
    /// Why it would be retried (the `reason` label of `mesh_retries_total`),
    /// or `None` when it is final.
    fn retry_reason(&self) -> Option<&'static str> {
        match self {
            Classified::Response(_) => None,
            Classified::RetryableStatus(_) => Some("status"),
            Classified::Failed(err) => err.retryable().then_some("error"),
        }
    }
}

/// Whether a failed attempt is followed by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Final: a success, or a failure no retry could help.
    Done,
    /// Retry, for this reason.
    Retry(&'static str),
    /// Worth a retry, but not allowed: `attempts`, `body` or `budget`
    /// (the `reason` label of `mesh_retries_skipped_total`).
    Skip(&'static str),
}

/// The retry decision: the attempt must be worth retrying, the request must
/// have attempts left, its body must be replayable, and then the budget must
/// grant it (asked last, as asking spends it).
pub fn decide(
    retry_reason: Option<&'static str>,
    attempt: u32,
    max_attempts: u32,
    replayable: bool,
    withdraw_budget: impl FnOnce() -> bool,
) -> Decision {
    let Some(reason) = retry_reason else {
        return Decision::Done;
    };
    if attempt >= max_attempts {
        Decision::Skip("attempts")
    } else if !replayable {
        Decision::Skip("body")
    } else if !withdraw_budget() {
        Decision::Skip("budget")
    } else {
        Decision::Retry(reason)
    }
}

/// Everything the attempts of one request use.
pub struct Attempts<'a, U> {
    pub upstream: &'a U,
    pub service: &'a Service,
    pub retry: &'a RetryConfig,
    pub metrics: &'a Arc<Metrics>,
}

impl<U> Attempts<'_, U> {
    /// Sends the request until an attempt gives a final outcome.
    pub async fn run<B>(
        &self,
        protocol: Protocol,
        grpc: bool,
        head: &http::request::Parts,
        replay: &ReplayBody<B>,
        deadline: Option<Deadline>,
    ) -> Outcome<U::Body>
    where
        U: SendRequest<ReplayBody<B>>,
    {
        let mut body = replay
            .retry()
            .expect("a body nothing has read yet can be replayed");
        let mut tried: Vec<Arc<EndpointState>> = Vec::new();
        let mut number: u32 = 1;
        loop {
            let picked = match self.pick(&tried).await {
                Ok(picked) => picked,
                Err(err) => {
                    tracing::debug!(%err, "no endpoint");
                    return Outcome::NotSent(err);
                }
            };
            let endpoint = picked.endpoint().clone();
            let metrics = self.endpoint_metrics(&endpoint, || {
                self.upstream.peer_tls(endpoint.endpoint.identity.as_ref())
            });
            let attempt = Attempt {
                recorder: Recorder::new(metrics.clone(), Instant::now()),
                endpoint,
                number,
            };
            let sent = self.send(protocol, head, body, &attempt, deadline).await;
            let classified = self.classify(sent, replay, &attempt);
            feedback(picked, &classified);

            let route = metrics.route();
            let reason = classified.retry_reason();
            // The replay buffer's lock is taken only for a failure worth
            // retrying: a success (nearly every request) never asks.
            let replayable = reason.is_some() && replay.can_replay();
            match decide(reason, number, self.retry.max_attempts, replayable, || {
                self.service.budget.withdraw()
            }) {
                Decision::Done => return final_outcome(classified, attempt),
                Decision::Skip(why) => {
                    self.metrics.retry_skipped(route, why);
                    if let Classified::Failed(err) = &classified {
                        tracing::debug!(err = %err.message(), number, not_retried = why);
                    }
                    return final_outcome(classified, attempt);
                }
                Decision::Retry(reason) => {
                    let Some(next) = replay.retry() else {
                        self.metrics.retry_skipped(route, "body");
                        return final_outcome(classified, attempt);
                    };
                    self.metrics.retry(route, reason);
                    let Attempt {
                        mut recorder,
                        endpoint,
                        ..
                    } = attempt;
                    match classified {
                        Classified::RetryableStatus(response) => {
                            recorder.head(response.status(), response.headers());
                            recorder.finish(true);
                        }
                        Classified::Failed(err) => {
                            tracing::debug!(err = %err.message(), number, "retrying");
                            err.recorded(recorder, grpc);
                        }
                        Classified::Response(_) => unreachable!("a response is final"),
                    }
                    tried.push(endpoint);
                    body = next;
                    number += 1;
                }
            }
        }
    }

    /// Pick: an endpoint not tried yet, unless no other exists.
    async fn pick(&self, tried: &[Arc<EndpointState>]) -> Result<Picked, ProxyError> {
        let balancer = &self.service.balancer;
        match balancer.try_pick(tried) {
            Some(picked) => Ok(picked),
            // Boxed: waiting for endpoints is rare, and would otherwise
            // make every request's future larger.
            None => Box::pin(balancer.pick_excluding(tried))
                .await
                .map_err(|none| ProxyError::NoEndpoints {
                    service: none.service,
                }),
        }
    }

    /// The endpoint's metric handles, resolved on its first request.
    fn endpoint_metrics(
        &self,
        endpoint: &EndpointState,
        tls: impl FnOnce() -> PeerTls,
    ) -> Arc<RouteMetrics> {
        super::endpoint_metrics(self.metrics, self.service.balancer.service(), endpoint, tls)
            .clone()
    }

    /// Send: this attempt's copy of the request to its endpoint, waiting for
    /// response headers until the deadline. A timeout drops the send, which
    /// cancels the upstream stream (RST_STREAM on HTTP/2).
    async fn send<B>(
        &self,
        protocol: Protocol,
        head: &http::request::Parts,
        body: ReplayBody<B>,
        attempt: &Attempt,
        deadline: Option<Deadline>,
    ) -> Result<Result<http::Response<U::Body>, UpstreamError>, ProxyError>
    where
        U: SendRequest<ReplayBody<B>>,
    {
        let mut request = copy_head(head, body);
        set_authority(&mut request, attempt.endpoint.authority.clone());
        let endpoint = &attempt.endpoint.endpoint;
        let sent = self
            .upstream
            .send(protocol, endpoint.addr, request, endpoint.identity.as_ref());
        match deadline {
            None => Ok(sent.await),
            Some(deadline) => match tokio::time::timeout_at(deadline.at, sent).await {
                Ok(sent) => Ok(sent),
                Err(_) => {
                    let target = self.service.balancer.service();
                    self.metrics.timeout(attempt.recorder.route());
                    Err(deadline.expired(target))
                }
            },
        }
    }

    /// Classify: what the attempt got, in the terms the rest of the loop
    /// decides on.
    fn classify<B>(
        &self,
        sent: Result<Result<http::Response<U::Body>, UpstreamError>, ProxyError>,
        replay: &ReplayBody<B>,
        attempt: &Attempt,
    ) -> Classified<U::Body>
    where
        U: SendRequest<ReplayBody<B>>,
    {
        match sent {
            Err(timeout) => Classified::Failed(timeout),
            Ok(Ok(response)) => {
                if self
                    .service
                    .retry_policy
                    .retries(response.status(), response.headers())
                {
                    Classified::RetryableStatus(response)
                } else {
                    Classified::Response(response)
                }
            }
            // The client broke off its own request (reset the stream, went
            // away) while its body was on the way: nothing the endpoint did.
            Ok(Err(err)) if replay.source_failed() => {
                Classified::Failed(ProxyError::ClientCancelled(err))
            }
            Ok(Err(source)) => Classified::Failed(ProxyError::Upstream {
                target: self.service.balancer.service().clone(),
                endpoint: attempt.endpoint.addr_label.clone(),
                source,
            }),
        }
    }
}

/// Feedback: what the balancer learns from one attempt. A failure is
/// charged to the endpoint only when the error blames it.
fn feedback<R>(picked: Picked, classified: &Classified<R>) {
    match classified {
        Classified::Response(_) => picked.succeeded(),
        Classified::RetryableStatus(response) => picked.failed(&format_args!(
            "answered {} {}",
            response.status(),
            response
                .headers()
                .get(crate::names::GRPC_STATUS)
                .map_or(String::new(), |v| format!("grpc-status {v:?}"))
        )),
        Classified::Failed(err) if err.blame() == Blame::Endpoint => {
            picked.failed(&err.endpoint_fault())
        }
        // Only its in-flight slot is given back.
        Classified::Failed(_) => drop(picked),
    }
}

fn final_outcome<R>(classified: Classified<R>, attempt: Attempt) -> Outcome<R> {
    match classified {
        Classified::Response(response) | Classified::RetryableStatus(response) => {
            Outcome::Answered(response, attempt)
        }
        Classified::Failed(err) => Outcome::Failed(err, attempt),
    }
}

/// One attempt's request: the client's head (copied, so later attempts
/// have it too) with this attempt's body.
fn copy_head<B>(head: &http::request::Parts, body: B) -> http::Request<B> {
    let mut request = http::Request::new(body);
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request
}

#[cfg(test)]
mod tests;
