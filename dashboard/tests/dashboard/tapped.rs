//! `/api/tap` merges the chosen proxies' taps, each line naming its proxy;
//! a proxy whose tap refuses, or sends a line too long or unreadable, is
//! reported in the stream and left, while the others go on; a workload with
//! no proxy up is a 404.

use super::{get_json, register, spawn_controller};
use axum::{body::Body, routing::get};
use std::{net::SocketAddr, time::Duration};
use stockdata::test_util::eventually;
use stockkube_proto::admin;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
};

/// A proxy admin server whose `/tap` answers `tap` (and `/metrics` with
/// nothing, so that it is up).
async fn admin_with_tap(tap: fn() -> axum::response::Response) -> SocketAddr {
    let app = axum::Router::new()
        .route(admin::METRICS, get(|| async { "" }))
        .route(admin::ENDPOINTS, get(|| async { r#"{"services":[]}"# }))
        .route(admin::TAP, get(move || async move { tap() }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn request_line(path: &str) -> String {
    format!(
        r#"{{"type":"request","direction":"inbound","target":"app","method":"POST","path":"{path}","status":200,"grpc_status":0,"attempts":1,"latency_ms":1.0,"tls":false,"headers":[]}}"#
    ) + "\n"
}

/// Two requests, then a "line" of 100 KB that never ends.
fn overlong() -> axum::response::Response {
    let mut body = request_line("/a") + &request_line("/b");
    body.push_str(&"x".repeat(100 * 1024));
    axum::response::Response::new(Body::from(body))
}

/// A request, a heartbeat, then a line that is no JSON; held open after.
fn garbled() -> axum::response::Response {
    let lines = request_line("/c") + "{\"type\":\"heartbeat\"}\n" + "not json\n";
    axum::response::Response::new(Body::from(lines))
}

fn refusing() -> axum::response::Response {
    axum::response::Response::builder()
        .status(503)
        .body(Body::from("16 taps are attached already\n"))
        .unwrap()
}

#[tokio::test]
async fn proxies_taps_merge_and_bad_ones_are_reported_not_trusted() {
    let (controller, mut client) = spawn_controller().await;
    for (instance, tap) in [
        ("web-1", overlong as fn() -> _),
        ("web-2", garbled),
        ("web-3", refusing),
    ] {
        let admin = admin_with_tap(tap).await;
        register(&mut client, "web", instance, admin).await;
    }
    let dashboard = super::spawn_dashboard(controller, &[]).await;
    eventually("three proxies up", Duration::from_secs(10), || async {
        let proxies = get_json(dashboard, "/api/proxies").await;
        let up = proxies
            .as_array()?
            .iter()
            .filter(|p| p["up"] == true)
            .count();
        (up == 3).then_some(())
    })
    .await;

    let mut stream = TcpStream::connect(dashboard).await.unwrap();
    let request = format!(
        "GET /api/tap?workload=web HTTP/1.1\r\nHost: {dashboard}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/x-ndjson"), "{head}");
    // Chunked: size lines between the data lines; the JSON lines are what
    // this reads.
    let mut events = Vec::new();
    while events.len() < 6 {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .expect("the merged tap goes on");
        if read.unwrap() == 0 {
            break;
        }
        // (A chunk's size line can be a JSON number: only objects count.)
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(line.trim())
            && event.is_object()
        {
            events.push(event);
        }
    }
    let of = |instance: &str, kind: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["instance"] == instance && e["type"] == kind)
            .collect()
    };
    assert_eq!(of("web-1", "request").len(), 2, "{events:#?}");
    assert!(
        of("web-1", "request")
            .iter()
            .all(|e| e["workload"] == "web")
    );
    assert!(
        of("web-1", "error")[0]["error"]
            .as_str()
            .unwrap()
            .contains("over 65536 bytes"),
        "{events:#?}"
    );
    assert_eq!(of("web-2", "request").len(), 1, "{events:#?}");
    assert!(
        of("web-2", "error")[0]["error"]
            .as_str()
            .unwrap()
            .contains("unreadable tap line"),
        "{events:#?}"
    );
    assert!(
        of("web-3", "error")[0]["error"]
            .as_str()
            .unwrap()
            .contains("refused the tap (503 Service Unavailable): 16 taps are attached already"),
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e["type"] != "heartbeat"));

    let (head, body) = super::request(dashboard, "GET", "/api/tap?workload=nosuch").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(body.contains("no proxy is up"), "{body}");
}
