//! The demo's control API, for the dashboard's demo controls. It listens on
//! loopback only, exists only while `meshctl demo` runs, and answers only a
//! caller with the run's token (`authorization: Bearer TOKEN`), which
//! `meshctl` hands the dashboard alone: another local process cannot drive
//! the demo through it.
//!
//! | route | does |
//! |---|---|
//! | `GET /replicas` | lists replicas: name, state, restarts, last exit, delay |
//! | `POST /replicas` | adds a replica with its sidecar (409 past `--max-replicas`) |
//! | `POST /replicas/{name}/kill` | kills a replica and its sidecar |
//! | `POST /replicas/{name}/slow` | restarts a replica with a 200 ms delay |

use super::{Demo, ReplicaView};
use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, demo: Arc<Demo>, token: String) {
    let expected: Arc<str> = format!("Bearer {token}").into();
    let app = Router::new()
        .route("/replicas", get(list).post(add))
        .route("/replicas/{name}/{action}", post(act))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let expected = expected.clone();
            async move { authorize(&expected, request, next).await }
        }))
        .with_state(demo);
    if let Err(err) = axum::serve(listener, app).await {
        eprintln!("meshctl: demo API stopped: {err}");
    }
}

async fn authorize(
    expected: &str,
    request: Request,
    next: Next,
) -> Result<Response, (StatusCode, &'static str)> {
    let matches = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .is_some_and(|value| mesh_runtime::same_secret(value.as_bytes(), expected.as_bytes()));
    if !matches {
        return Err((
            StatusCode::UNAUTHORIZED,
            "the demo API answers only the dashboard meshctl started\n",
        ));
    }
    Ok(next.run(request).await)
}

async fn list(State(demo): State<Arc<Demo>>) -> Json<Vec<ReplicaView>> {
    Json(demo.list().await)
}

async fn add(State(demo): State<Arc<Demo>>) -> Result<String, (StatusCode, String)> {
    demo.add_replica().await.map_err(failed)
}

async fn act(
    State(demo): State<Arc<Demo>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<String, (StatusCode, String)> {
    match action.as_str() {
        "kill" => demo.kill_replica(&name).await.map_err(failed)?,
        "slow" => demo.slow_replica(&name).await.map_err(failed)?,
        _ => {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no action {action:?}; use kill or slow"),
            ));
        }
    }
    Ok(format!("{name}: {action} done\n"))
}

fn failed(err: anyhow::Error) -> (StatusCode, String) {
    (StatusCode::CONFLICT, format!("{err:#}"))
}
