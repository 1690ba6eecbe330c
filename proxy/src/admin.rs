//! The admin server, for operators and the dashboard:
//!
//! | route | answers |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text), see [`crate::metrics`] |
//! | `GET /ready` | 200 `ready` while serving; 503 `draining` once shutdown began |
//! | `GET /live` | 200 `live` while the process runs |
//! | `GET /endpoints` | JSON: each outbound service, its balancing and endpoints |

use crate::{balance::Balancer, metrics::Metrics};
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub balancers: Arc<[Arc<Balancer>]>,
    pub ready: Arc<AtomicBool>,
}

pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/endpoints", get(endpoints))
        .with_state(state)
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

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

#[derive(Debug, serde::Serialize)]
struct EndpointsView {
    services: Vec<crate::balance::ServiceSnapshot>,
}

async fn endpoints(State(state): State<AdminState>) -> Json<EndpointsView> {
    Json(EndpointsView {
        services: state.balancers.iter().map(|b| b.snapshot()).collect(),
    })
}
