//! [`ProxyError`]: every answer the proxy makes itself instead of
//! forwarding one. Each kind knows its HTTP status, its gRPC code, whether
//! the request may be sent again, and whom it blames; it renders its own
//! response (a trailers-only gRPC status for gRPC callers, a plain-text HTTP
//! status for others). No other place chooses a status pair.

use crate::{
    body::{ProxyBody, Recorder},
    http::UpstreamError,
};
use http::{HeaderValue, Response, StatusCode, header};
use mesh_runtime::error_chain;
use std::{net::SocketAddr, sync::Arc, time::Duration};

/// Who caused a failure, which decides what the balancer learns from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The endpoint: charged to its latency estimate and failure accrual.
    Endpoint,
    /// The request's own client: nobody else is charged.
    Client,
    /// Nobody the proxy can charge (no endpoint was involved).
    Nobody,
}

/// A request the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Discovery found no endpoints within the fail-fast timeout.
    #[error("service {service} has no endpoints")]
    NoEndpoints { service: Arc<str> },

    /// The request's deadline passed before response headers arrived; the
    /// upstream stream was cancelled.
    #[error("mesh-proxy: {target} did not answer within {after:?}")]
    Timeout {
        target: Arc<str>,
        after: Duration,
        /// `Endpoint` when the service's own timeout ran out; `Client` for a
        /// client's `grpc-timeout` shorter than that.
        blame: Blame,
    },

    /// The client broke off its own request (reset the stream, went away)
    /// while its body was on the way.
    #[error("the client broke off its request body")]
    ClientCancelled(#[source] UpstreamError),

    /// An endpoint of a service gave no response at all: refused, timed out
    /// connecting, reset, GOAWAY. Nothing came back, so it may be retried.
    #[error("endpoint {endpoint} of {target} failed")]
    Upstream {
        target: Arc<str>,
        endpoint: Arc<str>,
        #[source]
        source: UpstreamError,
    },

    /// The local app behind the inbound listener gave no response.
    #[error("local app at {app} failed")]
    App {
        app: SocketAddr,
        #[source]
        source: UpstreamError,
    },

    /// The request's header block is over `--max-header-bytes`.
    #[error("request headers are {size} bytes, more than the {limit} allowed")]
    HeaderTooLarge { size: usize, limit: usize },

    /// A method the mesh does not proxy: `CONNECT` ([`crate::head`]).
    #[error("mesh-proxy: {method} is not proxied")]
    MethodNotAllowed { method: http::Method },

    /// A request whose authority is not one valid host ([`crate::head`]).
    #[error("mesh-proxy: bad request: {problem}")]
    BadAuthority { problem: &'static str },

    /// The inbound policy does not admit the client ([`crate::policy`]).
    #[error("mesh-proxy: {client} may not call port {port} (policy: {reason})")]
    Forbidden {
        /// The client's identity, or "an unauthenticated client".
        client: String,
        port: u16,
        reason: &'static str,
    },
}

impl ProxyError {
    /// The HTTP status a plain HTTP caller gets, and the gRPC code a gRPC
    /// caller gets.
    pub fn status(&self) -> (StatusCode, tonic::Code) {
        match self {
            ProxyError::NoEndpoints { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable)
            }
            ProxyError::Timeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, tonic::Code::DeadlineExceeded)
            }
            ProxyError::ClientCancelled(_) => (StatusCode::BAD_REQUEST, tonic::Code::Cancelled),
            ProxyError::Upstream { .. } | ProxyError::App { .. } => {
                (StatusCode::BAD_GATEWAY, tonic::Code::Unavailable)
            }
            ProxyError::HeaderTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                tonic::Code::ResourceExhausted,
            ),
            ProxyError::Forbidden { .. } => (StatusCode::FORBIDDEN, tonic::Code::PermissionDenied),
            ProxyError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, tonic::Code::Unimplemented)
            }
            ProxyError::BadAuthority { .. } => {
                (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument)
            }
        }
    }

    /// Whether another attempt may be made: only when nothing came back
    /// from an endpoint. A timeout has spent the request's time; a client
    /// that broke off wants nothing more; no endpoints stays no endpoints.
    pub fn retryable(&self) -> bool {
        matches!(self, ProxyError::Upstream { .. })
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::Upstream { source, .. } if source.is_provoked() => Blame::Nobody,
            ProxyError::Upstream { .. } => Blame::Endpoint,
            ProxyError::Timeout { blame, .. } => *blame,
            ProxyError::ClientCancelled(_)
            | ProxyError::HeaderTooLarge { .. }
            | ProxyError::Forbidden { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::BadAuthority { .. } => Blame::Client,
            ProxyError::NoEndpoints { .. } | ProxyError::App { .. } => Blame::Nobody,
        }
    }

    /// What the endpoint did, as its balancer remembers it (`/endpoints`
    /// shows it beside the endpoint, so the endpoint is not named again).
    pub fn endpoint_fault(&self) -> String {
        match self {
            ProxyError::Upstream { source, .. } | ProxyError::App { source, .. } => {
                error_chain(source)
            }
            ProxyError::Timeout { after, .. } => format!("no answer within {after:?}"),
            other => other.message(),
        }
    }

    /// The error and its causes on one line, as callers read it.
    pub fn message(&self) -> String {
        error_chain(self)
    }

    /// The answer to a caller: gRPC callers get a trailers-only status with
    /// `grpc-message`, others the HTTP status with the message as text.
    pub fn response(&self, grpc: bool) -> Response<ProxyBody> {
        let (status, code) = self.status();
        render(grpc, status, code, &self.message())
    }

    /// The answer to a request already counted by `recorder`, recorded as
    /// finished so that metrics see every failure.
    pub fn recorded(&self, mut recorder: Recorder, grpc: bool) -> Response<ProxyBody> {
        let response = self.response(grpc);
        recorder.head(response.status(), response.headers());
        recorder.finish(true);
        response
    }
}

/// Whether the request is gRPC (its content type says so).
pub fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn render(grpc: bool, status: StatusCode, code: tonic::Code, message: &str) -> Response<ProxyBody> {
    if grpc {
        let mut response = Response::new(ProxyBody::local(""));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(crate::names::GRPC_STATUS, HeaderValue::from(code as i32));
        // grpc-message is percent-encoded; keep it to safe ASCII instead.
        let safe: String = message
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&safe.replace('%', "%25")) {
            headers.insert(crate::names::GRPC_MESSAGE, value);
        }
        response
    } else {
        let mut response = Response::new(ProxyBody::local(format!("{message}\n")));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::ClientError;
    use http_body::Body as _;

    fn upstream_error() -> UpstreamError {
        UpstreamError::Http2(ClientError::ConnectTimeout {
            addr: "127.0.0.1:1".parse().unwrap(),
        })
    }

    /// One of each kind.
    fn every_kind() -> Vec<ProxyError> {
        vec![
            ProxyError::NoEndpoints {
                service: "stockdata".into(),
            },
            ProxyError::Timeout {
                target: "stockdata".into(),
                after: Duration::from_millis(200),
                blame: Blame::Endpoint,
            },
            ProxyError::Timeout {
                target: "stockdata".into(),
                after: Duration::from_millis(100),
                blame: Blame::Client,
            },
            ProxyError::ClientCancelled(upstream_error()),
            ProxyError::Upstream {
                target: "stockdata".into(),
                endpoint: "127.0.0.1:1".into(),
                source: upstream_error(),
            },
            ProxyError::App {
                app: "127.0.0.1:2".parse().unwrap(),
                source: upstream_error(),
            },
            ProxyError::HeaderTooLarge {
                size: 6000,
                limit: 4096,
            },
            ProxyError::Forbidden {
                client: "spiffe://cluster.local/ns/a/sa/b".into(),
                port: 5001,
                reason: "unauthorized",
            },
        ]
    }

    #[test]
    fn each_kind_has_its_status_pair_retry_decision_and_blame() {
        use tonic::Code;
        let table: Vec<_> = every_kind()
            .iter()
            .map(|e| (e.status(), e.retryable(), e.blame()))
            .collect();
        assert_eq!(
            table,
            [
                (
                    (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
                    false,
                    Blame::Nobody
                ),
                (
                    (StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded),
                    false,
                    Blame::Endpoint
                ),
                (
                    (StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded),
                    false,
                    Blame::Client
                ),
                (
                    (StatusCode::BAD_REQUEST, Code::Cancelled),
                    false,
                    Blame::Client
                ),
                (
                    (StatusCode::BAD_GATEWAY, Code::Unavailable),
                    true,
                    Blame::Endpoint
                ),
                (
                    (StatusCode::BAD_GATEWAY, Code::Unavailable),
                    false,
                    Blame::Nobody
                ),
                (
                    (
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        Code::ResourceExhausted
                    ),
                    false,
                    Blame::Client
                ),
                (
                    (StatusCode::FORBIDDEN, Code::PermissionDenied),
                    false,
                    Blame::Client
                ),
            ]
        );
    }

    #[test]
    fn every_kind_renders_its_pair_for_grpc_and_http_callers() {
        for err in every_kind() {
            let (status, code) = err.status();
            let grpc = err.response(true);
            assert_eq!(grpc.status(), StatusCode::OK, "{err:?}");
            assert_eq!(grpc.headers()["grpc-status"], (code as i32).to_string());
            assert_eq!(grpc.headers()["content-type"], "application/grpc");
            assert!(grpc.body().is_end_stream(), "trailers-only: {err:?}");
            let http = err.response(false);
            assert_eq!(http.status(), status, "{err:?}");
            assert!(!http.body().is_end_stream(), "the message is the body");
        }
    }

    #[test]
    fn messages_carry_their_causes_and_stay_safe_ascii() {
        let err = ProxyError::Upstream {
            target: "stockdata".into(),
            endpoint: "127.0.0.1:1".into(),
            source: upstream_error(),
        };
        assert_eq!(
            err.message(),
            "endpoint 127.0.0.1:1 of stockdata failed: connecting to 127.0.0.1:1 timed out after 3s"
        );
        let response = render(true, StatusCode::OK, tonic::Code::Unavailable, "100%, ünï");
        assert_eq!(response.headers()["grpc-message"], "100%25, ?n?");
    }

    #[test]
    fn a_recorded_answer_counts_as_one_finished_response() {
        use crate::metrics::{Direction, Metrics, RouteLabels};
        let metrics = Arc::new(Metrics::default());
        let route = metrics.route(RouteLabels {
            direction: Direction::Outbound,
            target: "stockdata".into(),
            endpoint: "127.0.0.1:1".into(),
            tls: Default::default(),
        });
        // Kept, as an endpoint keeps its route: the last handle removes
        // the route's series.
        let route = Arc::new(route);
        let recorder = Recorder::new(route.clone(), tokio::time::Instant::now());
        let err = ProxyError::NoEndpoints {
            service: "stockdata".into(),
        };
        err.recorded(recorder, true);
        assert!(
            metrics
                .encode()
                .contains(r#"grpc_status="14",classification="failure"} 1"#)
        );
    }
}
