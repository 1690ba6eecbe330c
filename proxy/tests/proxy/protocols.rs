//! HTTP/1.1 and opaque TCP through the proxy.

use crate::support::{http_get, spawn_proxy, stockdata_proxy};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// An HTTP/1 server answering `hello from NAME` on every path.
async fn spawn_http1(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(move |uri: axum::http::Uri| async move { format!("hello from {name} at {uri}") });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Echoes every byte back until the peer closes.
async fn spawn_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = conn.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http1_requests_are_balanced_per_request() {
    let (a, b) = (spawn_http1("a").await, spawn_http1("b").await);
    let proxy = spawn_proxy(&[
        "--outbound",
        "web=127.0.0.1:0",
        "--discover",
        &format!("web=static:{a};{b}"),
        "--balance",
        "round-robin",
    ])
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, body) = http_get(proxy.outbound, "/path?q=1").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with("at /path?q=1"), "{body}");
        seen.push(body);
    }
    assert!(
        seen.iter().any(|b| b.starts_with("hello from a")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|b| b.starts_with("hello from b")),
        "{seen:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn http1_keepalive_connection_reaches_both_endpoints() {
    let (a, b) = (spawn_http1("a").await, spawn_http1("b").await);
    let proxy = spawn_proxy(&[
        "--outbound",
        "web=127.0.0.1:0",
        "--discover",
        &format!("web=static:{a};{b}"),
        "--balance",
        "round-robin",
    ])
    .await;
    // Two requests pipelined on one connection, answered by two endpoints.
    let mut conn = TcpStream::connect(proxy.outbound).await.unwrap();
    conn.write_all(b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\nGET /2 HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(
        raw.contains("hello from a") && raw.contains("hello from b"),
        "{raw}"
    );
    assert_eq!(raw.matches("x-mesh-endpoint").count(), 2, "{raw}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn opaque_bytes_arrive_unchanged() {
    let echo = spawn_echo().await;
    let proxy = spawn_proxy(&[
        "--outbound",
        "echo=127.0.0.1:0",
        "--discover",
        &format!("echo=static:{echo}"),
        "--opaque-ports",
        &format!("1,{}", echo.port()),
    ])
    .await;
    // Binary noise that is neither HTTP/1 nor an HTTP/2 preface, to a port
    // declared opaque.
    let payload: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut conn = TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut read, mut write) = conn.split();
    let sent = payload.clone();
    let writer = async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let reader = async move {
        let mut back = Vec::new();
        read.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("echo within 20 s");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "bytes changed in transit");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_python_grpcio_client_is_balanced_through_the_proxy() {
    let (a, b) = (
        stockdata::test_util::spawn_replica("py-a").await,
        stockdata::test_util::spawn_replica("py-b").await,
    );
    let proxy = stockdata_proxy(&[a.addr, b.addr], &["--balance", "round-robin"]).await;
    let Some(report) = stockdata::test_util::python_interop_report(proxy.outbound).await else {
        return;
    };
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    // Two calls on one grpcio channel, one per replica in turn; the client
    // reports the header of the first.
    assert!(
        matches!(report["server_id"].as_str(), Some("py-a" | "py-b")),
        "{report}"
    );
    assert_eq!(report["stock"]["symbol"], "AAPL", "{report}");
    assert_eq!(report["refusal"]["code"], "INVALID_ARGUMENT", "{report}");
    let samples = crate::support::parse_prometheus(
        &crate::support::http_get(proxy.admin, "/metrics").await.1,
    );
    for replica in [&a, &b] {
        let endpoint = replica.addr.to_string();
        assert_eq!(
            crate::support::sum(
                &samples,
                "mesh_requests_total",
                &[("endpoint", endpoint.as_str())]
            ),
            1.0,
            "each replica got one of the two calls"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_naming_another_known_service_is_routed_there() {
    let (web, api) = (spawn_http1("web").await, spawn_http1("api").await);
    let proxy = spawn_proxy(&[
        "--outbound",
        "web=127.0.0.1:0",
        "--discover",
        &format!("web=static:{web}"),
        "--discover",
        &format!("api=static:{api}"),
    ])
    .await;
    let ask = |host: &'static str| async move {
        let mut conn = TcpStream::connect(proxy.outbound).await.unwrap();
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await.unwrap();
        raw
    };
    assert!(ask("api:80").await.contains("hello from api"));
    assert!(ask("api").await.contains("hello from api"));
    // Unknown names fall back to the listener's own service.
    assert!(ask("example.invalid").await.contains("hello from web"));
    assert!(ask("web").await.contains("hello from web"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_service_timeout_answers_deadline_exceeded_and_504() {
    use stockkube_proto::stockdata::{GetRequest, stocks_client::StocksClient};
    let slow = stockdata::test_util::spawn_replica_with(
        "slow",
        stockdata::Faults {
            delay: std::time::Duration::from_millis(2000),
            ..stockdata::Faults::default()
        },
    )
    .await;
    let slow_web = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(|| async {
            tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
            "late"
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    };
    let proxy = spawn_proxy(&[
        "--outbound",
        "stockdata=127.0.0.1:0",
        "--discover",
        &crate::support::static_list(&[slow.addr]),
        "--discover",
        &format!("web=static:{slow_web}"),
        "--timeout",
        "stockdata=200ms,web=200ms",
    ])
    .await;

    let mut client = StocksClient::new(stockdata::test_util::connect(proxy.outbound).await);
    let status = client.get(GetRequest { id: 1 }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("mesh-proxy"), "{status:?}");

    // An HTTP/1 request naming the other service gets a 504.
    let mut conn = TcpStream::connect(proxy.outbound).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 504"), "{raw}");

    let samples = crate::support::parse_prometheus(&http_get(proxy.admin, "/metrics").await.1);
    let timed_out = [("grpc_status", "4"), ("classification", "failure")];
    assert_eq!(
        crate::support::sum(&samples, "mesh_responses_total", &timed_out),
        1.0
    );
    proxy.shutdown().await;
}
