//! The admin server, for operators and the dashboard:
//!
//! | route | answers |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text), see [`crate::metrics`] |
//! | `GET /ready` | 200 `ready` while serving; 503 `starting` before, `draining` once shutdown began; with `--identity`, 503 while the proxy has no valid certificate |
//! | `GET /live` | 200 `live` while the process runs |
//! | `GET /endpoints` | JSON: each outbound service, its balancing and endpoints |

use crate::{balance::Balancers, metrics::Metrics};
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use std::{
    future::IntoFuture as _,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};
use stockkube_proto::admin::{ENDPOINTS, LIVE, METRICS, READY};
use tokio::{net::TcpListener, sync::watch};

#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub balancers: Arc<Balancers>,
    pub phase: Arc<Phase>,
    /// The identity certificate in use, when the proxy has an identity.
    pub identity: Option<crate::identity::Current>,
}

pub fn app(state: AdminState) -> Router {
    Router::new()
        .route(METRICS, get(metrics))
        .route(READY, get(ready))
        .route(LIVE, get(|| async { "live\n" }))
        .route(ENDPOINTS, get(endpoints))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `stop` turns true: after
/// the drain, so that probes read `/ready`'s `503 draining` (not a refused
/// connection) and metrics stay readable while requests finish.
pub async fn serve(listener: TcpListener, state: AdminState, mut stop: watch::Receiver<bool>) {
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

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
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

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    match state.phase.get() {
        Phase::STARTING => return (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        Phase::DRAINING => return (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ => {}
    }
    match &state.identity {
        Some(current) if current.borrow().is_none() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no identity certificate yet\n",
        ),
        _ => (StatusCode::OK, "ready\n"),
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
