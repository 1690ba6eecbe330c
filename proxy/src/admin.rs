//! The admin server, for operators and the dashboard:
//!
//! | route | answers |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics: text format 0.0.4, or OpenMetrics when `Accept` asks for it; see [`crate::metrics`] |
//! | `GET /ready` | 200 `ready` while serving; 503 `starting` before, `draining` once shutdown began; with `--identity`, 503 while the proxy has no valid certificate, and 200 `ready, degraded: ...` while its renewal is overdue |
//! | `GET /identity` | JSON: the proxy's identity, its certificate chain (PEM) and expiry; 404 without `--identity`, 503 before the first certificate |
//! | `GET /live` | 200 `live` while the process runs |
//! | `GET /endpoints` | JSON: each outbound service, its balancing and endpoints |
//! | `GET /tap?...` | JSON lines: the requests passing through, sampled; see [`crate::tap`] and [`TapQuery`] |

mod limited;

pub use limited::AdminLimits;

use crate::{
    balance::Balancers,
    metrics::{Direction, Format, Metrics},
    tap::{self, TapFilter},
};
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use std::{
    future::IntoFuture as _,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};
use stockkube_proto::admin::{ENDPOINTS, IDENTITY, LIVE, METRICS, READY, TAP};
use tokio::{net::TcpListener, sync::watch};

#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub balancers: Arc<Balancers>,
    pub phase: Arc<Phase>,
    /// The proxy's identity and the certificate in use, when it has one.
    pub identity: Option<(Arc<str>, crate::identity::Current)>,
}

pub fn app(state: AdminState) -> Router {
    Router::new()
        .route(METRICS, get(metrics))
        .route(READY, get(ready))
        .route(LIVE, get(|| async { "live\n" }))
        .route(ENDPOINTS, get(endpoints))
        .route(IDENTITY, get(identity))
        .route(TAP, get(tap))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `stop` turns true: after
/// the drain, so that probes read `/ready`'s `503 draining` (not a refused
/// connection) and metrics stay readable while requests finish.
/// Its connections are limited apart from the data plane's ([`AdminLimits`]).
pub async fn serve(listener: TcpListener, state: AdminState, mut stop: watch::Receiver<bool>) {
    let listener = limited::Limited::new(listener, AdminLimits::default());
    let taps = state.metrics.taps().clone();
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
            // Tap streams last as long as their readers: end them, or the
            // drain would wait for those.
            taps.close();
        })
        .into_future()
        .await;
    if let Err(err) = served {
        tracing::warn!(%err, "the admin server failed");
    }
}

async fn metrics(
    State(state): State<AdminState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        state.metrics.encode_as(format),
    )
}

/// What `GET /tap` takes: every filter given must match.
#[derive(Debug, serde::Deserialize)]
pub struct TapQuery {
    /// `inbound` or `outbound`.
    direction: Option<String>,
    method: Option<String>,
    /// The host the request names, without port.
    authority: Option<String>,
    path_prefix: Option<String>,
    /// The answer's HTTP status.
    status: Option<u16>,
    /// The answer's gRPC status.
    grpc_status: Option<u8>,
    /// Requests per second the tap takes at most (1 to 1000; 100).
    max_rps: Option<u32>,
}

impl TapQuery {
    fn filter(self) -> Result<(TapFilter, u32), String> {
        let direction = match self.direction.as_deref() {
            None | Some("") => None,
            Some("inbound") => Some(Direction::Inbound),
            Some("outbound") => Some(Direction::Outbound),
            Some(other) => return Err(format!("direction {other:?}: inbound or outbound")),
        };
        let method = self
            .method
            .filter(|m| !m.is_empty())
            .map(|m| {
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("method {m:?} is not an HTTP method"))
            })
            .transpose()?;
        let max_rps = self.max_rps.unwrap_or(tap::DEFAULT_MAX_RPS);
        if !(1..=tap::LIMIT_MAX_RPS).contains(&max_rps) {
            return Err(format!("max_rps {max_rps}: 1 to {}", tap::LIMIT_MAX_RPS));
        }
        let filter = TapFilter {
            direction,
            method,
            authority: self.authority.filter(|a| !a.is_empty()),
            path_prefix: self.path_prefix.filter(|p| !p.is_empty()),
            status: self.status,
            grpc_status: self.grpc_status,
        };
        Ok((filter, max_rps))
    }
}

async fn tap(
    State(state): State<AdminState>,
    query: Result<axum::extract::Query<TapQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    let query = match query {
        Ok(axum::extract::Query(query)) => query,
        Err(rejection) => {
            return (StatusCode::BAD_REQUEST, format!("{rejection}\n")).into_response();
        }
    };
    let (filter, max_rps) = match query.filter() {
        Ok(parsed) => parsed,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    match state.metrics.taps().attach(filter, max_rps) {
        Some(stream) => (
            [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
            axum::body::Body::new(stream),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} taps are attached already\n", tap::MAX_TAPS),
        )
            .into_response(),
    }
}

/// Where the proxy is in its life, as `/ready` tells it.
#[derive(Debug, Default)]
pub struct Phase(AtomicU8);

impl Phase {
    pub const STARTING: u8 = 0;
    pub const SERVING: u8 = 1;
    pub const DRAINING: u8 = 2;

    pub fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Release);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

async fn ready(State(state): State<AdminState>) -> (StatusCode, String) {
    match state.phase.get() {
        Phase::STARTING => return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
        Phase::DRAINING => return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
        _ => {}
    }
    let Some((_, current)) = &state.identity else {
        return (StatusCode::OK, "ready\n".into());
    };
    let certified = current.borrow().clone();
    match certified {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no identity certificate yet\n".into(),
        ),
        Some(certified) => match certified.overdue(std::time::SystemTime::now()) {
            Some(left) => (
                StatusCode::OK,
                format!(
                    "ready, degraded: the identity certificate expires in {}s and its renewal has not succeeded\n",
                    left.as_secs()
                ),
            ),
            None => (StatusCode::OK, "ready\n".into()),
        },
    }
}

#[derive(Debug, serde::Serialize)]
struct IdentityView {
    identity: String,
    /// Seconds since the Unix epoch.
    valid_until: u64,
    /// The certificate, then its issuer's.
    certificate_chain: String,
}

async fn identity(State(state): State<AdminState>) -> axum::response::Response {
    let Some((identity, current)) = &state.identity else {
        return (
            StatusCode::NOT_FOUND,
            "this proxy has no identity (--identity)\n",
        )
            .into_response();
    };
    let certified = current.borrow().clone();
    match certified {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no identity certificate yet\n",
        )
            .into_response(),
        Some(certified) => Json(IdentityView {
            identity: identity.to_string(),
            valid_until: certified
                .valid_until
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            certificate_chain: certified.chain_pem.clone(),
        })
        .into_response(),
    }
}

#[derive(Debug, serde::Serialize)]
struct EndpointsView {
    services: Vec<crate::balance::ServiceSnapshot>,
}

async fn endpoints(State(state): State<AdminState>) -> Json<EndpointsView> {
    Json(EndpointsView {
        services: state.balancers.snapshots(),
    })
}
