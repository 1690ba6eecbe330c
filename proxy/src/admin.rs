//! The admin server, for operators and the dashboard:
//!
//! | route | answers |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics: text format 0.0.4, or OpenMetrics when `Accept` asks for it; see [`crate::metrics`] |
//! | `GET /ready` | 200 `ready` while serving; 503 `starting` before, `draining` once shutdown began; with `--identity`, 503 while the proxy has no valid certificate, and 200 `ready, degraded: ...` while its renewal is overdue |
//! | `GET /identity` | JSON: the proxy's identity, its certificate chain (PEM) and expiry; 404 without `--identity`, 503 before the first certificate |
//! | `GET /live` | 200 `live` while the process runs |
//! | `GET /endpoints` | JSON: each outbound service, its balancing and endpoints |

mod limited;

pub use limited::AdminLimits;

use crate::{
    balance::Balancers,
    metrics::{Format, Metrics},
};
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use std::{
    future::IntoFuture as _,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};
use stockkube_proto::admin::{ENDPOINTS, IDENTITY, LIVE, METRICS, READY};
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
        .with_state(state)
}

/// Serves the admin routes on `listener` until `stop` turns true: after
/// the drain, so that probes read `/ready`'s `503 draining` (not a refused
/// connection) and metrics stay readable while requests finish.
/// Its connections are limited apart from the data plane's ([`AdminLimits`]).
pub async fn serve(listener: TcpListener, state: AdminState, mut stop: watch::Receiver<bool>) {
    let listener = limited::Limited::new(listener, AdminLimits::default());
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
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
