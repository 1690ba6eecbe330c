//! The demo's control API, for the dashboard's demo controls. It listens on
//! loopback only and exists only while `meshctl demo` runs.
//!
//! | route | does |
//! |---|---|
//! | `GET /replicas` | lists replicas: name, running, delay |
//! | `POST /replicas` | adds a replica with its sidecar |
//! | `POST /replicas/{name}/kill` | kills a replica and its sidecar |
//! | `POST /replicas/{name}/slow` | restarts a replica with a 200 ms delay |

use super::Demo;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(serde::Serialize)]
struct ReplicaView {
    name: String,
    running: bool,
    delay_ms: u64,
}

pub async fn serve(listener: TcpListener, demo: Arc<Demo>) {
    let app = Router::new()
        .route("/replicas", get(list).post(add))
        .route("/replicas/{name}/{action}", post(act))
        .with_state(demo);
    if let Err(err) = axum::serve(listener, app).await {
        eprintln!("meshctl: demo API stopped: {err}");
    }
}

async fn list(State(demo): State<Arc<Demo>>) -> Json<Vec<ReplicaView>> {
    Json(
        demo.list()
            .await
            .into_iter()
            .map(|(name, running, delay_ms)| ReplicaView {
                name,
                running,
                delay_ms,
            })
            .collect(),
    )
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
