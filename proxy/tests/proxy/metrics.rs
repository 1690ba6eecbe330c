//! The admin endpoints: metrics match the calls made; endpoints list the
//! replicas; ready and live answer.

use crate::support::{call_many, http_get, parse_prometheus, spawn_proxy, stockdata_proxy, sum};
use stockdata::test_util::{connect, spawn_replica};
use stockkube_proto::stockdata::stocks_client::StocksClient;

#[tokio::test]
async fn metrics_count_every_call_per_endpoint() {
    let replicas = [spawn_replica("m1").await, spawn_replica("m2").await];
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let proxy = stockdata_proxy(&addrs, &[]).await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    let tally = call_many(&client, 200, 50).await;
    assert!(tally.failures.is_empty());

    let (status, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_prometheus(&text);
    let outbound = [("direction", "outbound"), ("target", "stockdata")];
    assert_eq!(
        sum(&samples, "mesh_requests_total", &outbound),
        200.0,
        "{text}"
    );
    for addr in &addrs {
        let endpoint = addr.to_string();
        let served = tally.endpoints[&endpoint] as f64;
        let labels = [outbound[0], outbound[1], ("endpoint", endpoint.as_str())];
        assert_eq!(
            sum(&samples, "mesh_requests_total", &labels),
            served,
            "{endpoint}"
        );
        let ok = [
            labels[0],
            labels[1],
            labels[2],
            ("grpc_status", "0"),
            ("classification", "success"),
        ];
        assert_eq!(
            sum(&samples, "mesh_responses_total", &ok),
            served,
            "{endpoint}"
        );
        assert_eq!(
            sum(&samples, "mesh_response_latency_seconds_count", &labels),
            served
        );
    }

    let (status, json) = http_get(proxy.admin, "/endpoints").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let service = &json["services"][0];
    assert_eq!(service["service"], "stockdata");
    assert_eq!(service["balance"], "p2c-ewma");
    let listed: Vec<_> = service["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addr"].as_str().unwrap().to_owned())
        .collect();
    for addr in &addrs {
        assert!(listed.contains(&addr.to_string()), "{listed:?}");
    }
    let served: u64 = service["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["served"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 200);

    assert_eq!(http_get(proxy.admin, "/ready").await.0, 200);
    assert_eq!(http_get(proxy.admin, "/live").await.0, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn grpc_errors_are_counted_as_failures() {
    let replica = spawn_replica("e1").await;
    let proxy = stockdata_proxy(&[replica.addr], &[]).await;
    let mut client = StocksClient::new(connect(proxy.outbound).await);
    let status = client
        .get(stockkube_proto::stockdata::GetRequest { id: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let samples = parse_prometheus(&http_get(proxy.admin, "/metrics").await.1);
    let failed = [
        ("grpc_status", "3"),
        ("classification", "failure"),
        ("status_code", "200"),
    ];
    assert_eq!(sum(&samples, "mesh_responses_total", &failed), 1.0);
    proxy.shutdown().await;
}

/// `/metrics` as the text format (the default) or as OpenMetrics (asked
/// for in `Accept`, as Prometheus does): its content type and text.
async fn scrape(admin: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
    use mesh_runtime::test_http::{Request, send};
    let mut request = Request::get("/metrics").host(&admin.to_string());
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let answer = send(admin, request).await.unwrap();
    let content_type = answer
        .head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: ").map(str::to_owned))
        .unwrap();
    (content_type, answer.body)
}

#[tokio::test]
async fn each_grpc_method_is_a_route_counted_once_per_request_on_both_sides() {
    let replica = spawn_replica("r1").await;
    let app = replica.addr.to_string();
    let server = spawn_proxy(&["--inbound", "127.0.0.1:0", "--app", &app]).await;
    let client_side = stockdata_proxy(&[server.inbound.unwrap()], &[]).await;
    let client = StocksClient::new(connect(client_side.outbound).await);
    let tally = call_many(&client, 120, 20).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);

    let route = ("route", "/StockData.Stocks/Get");
    for (proxy, direction, target) in [
        (&client_side, "outbound", "stockdata"),
        (&server, "inbound", "app"),
    ] {
        let (_, text) = http_get(proxy.admin, "/metrics").await;
        let samples = parse_prometheus(&text);
        let labels = [("direction", direction), ("target", target), route];
        assert_eq!(
            sum(&samples, "mesh_route_requests_total", &labels),
            120.0,
            "{text}"
        );
        let ok = [
            labels[0],
            labels[1],
            labels[2],
            ("grpc_status", "0"),
            ("classification", "success"),
        ];
        assert_eq!(
            sum(&samples, "mesh_route_responses_total", &ok),
            120.0,
            "{text}"
        );
        assert_eq!(
            sum(
                &samples,
                "mesh_route_response_latency_seconds_count",
                &labels
            ),
            120.0
        );
    }
}

#[tokio::test]
async fn random_paths_leave_metrics_bounded_and_the_overflow_counted() {
    const PATHS: usize = 10_000;
    const MAX_ROUTES: usize = 100;
    let replica = spawn_replica("r1").await;
    let proxy = stockdata_proxy(&[replica.addr], &[]).await;
    // One real call, so the size before includes a route's series.
    let client = StocksClient::new(connect(proxy.outbound).await);
    assert!(call_many(&client, 1, 1).await.failures.is_empty());
    let (_, before) = scrape(proxy.admin, None).await;

    // 10,000 gRPC calls to distinct random methods over one HTTP/2
    // connection, 100 at a time: the replica answers UNIMPLEMENTED.
    let tcp = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..PATHS {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let mut h2 = h2.clone().ready().await.unwrap();
        let path = format!("/Random{}.Service/Method{n}", n * 7919 % 10_007);
        calls.spawn(async move {
            let request = http::Request::post(format!("http://stockdata{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (response, _) = h2.send_request(request, true).unwrap();
            let response = response.await.unwrap();
            drop(permit);
            response
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_owned())
        });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap().as_deref(), Some("12"), "UNIMPLEMENTED");
    }

    let (_, after) = scrape(proxy.admin, None).await;
    let samples = parse_prometheus(&after);
    let outbound = [("direction", "outbound"), ("target", "stockdata")];
    let routes: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "mesh_route_requests_total")
        .map(|s| s.labels["route"].as_str())
        .collect();
    assert_eq!(
        routes.len(),
        MAX_ROUTES + 1,
        "the first {MAX_ROUTES} and other"
    );
    assert!(routes.contains("other") && routes.contains("/StockData.Stocks/Get"));
    // The real method took one of the 100 places; the rest of the random
    // ones overflowed.
    let other = [outbound[0], outbound[1], ("route", "other")];
    let overflow = (PATHS - (MAX_ROUTES - 1)) as f64;
    assert_eq!(sum(&samples, "mesh_route_requests_total", &other), overflow);
    let unimplemented = [
        outbound[0],
        outbound[1],
        ("route", "other"),
        ("grpc_status", "12"),
    ];
    assert_eq!(
        sum(&samples, "mesh_route_responses_total", &unimplemented),
        overflow
    );
    assert_eq!(
        sum(&samples, "mesh_route_requests_total", &outbound),
        (PATHS + 1) as f64
    );
    let grown = after.len() - before.len();
    println!(
        "/metrics: {} bytes before, {} bytes after {PATHS} random paths (+{grown} bytes, {} per route kept)",
        before.len(),
        after.len(),
        grown / MAX_ROUTES
    );
    // The stated bound (docs/proxy.md): at most ~3 KB per kept route.
    assert!(grown <= MAX_ROUTES * 3 * 1024, "grew by {grown} bytes");
}

#[tokio::test]
async fn metrics_answer_the_text_format_unless_openmetrics_is_asked_for() {
    let replica = spawn_replica("r1").await;
    let proxy = stockdata_proxy(&[replica.addr], &[]).await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    assert!(call_many(&client, 3, 1).await.failures.is_empty());

    let (content_type, text) = scrape(proxy.admin, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        text.contains("# TYPE mesh_requests_total counter\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, openmetrics) = scrape(proxy.admin, Some(prometheus)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        openmetrics.contains("# TYPE mesh_requests counter\n"),
        "{openmetrics}"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    check_with_promtool(&text);
    check_openmetrics_strictly(&openmetrics);
}

/// `promtool check metrics` (Prometheus's own linter) on the text format:
/// it must parse, and the lint must find nothing.
fn check_with_promtool(text: &str) {
    let Some(promtool) = crate::support::required_tool("promtool", "STOCKKUBE_PROMTOOL") else {
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The OpenMetrics answer through the Python client's OpenMetrics parser,
/// which rejects anything the specification does not allow.
fn check_openmetrics_strictly(text: &str) {
    let Some(python) = crate::support::required_tool("python3", "STOCKKUBE_PYTHON") else {
        return;
    };
    let script = "import sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
families = list(text_string_to_metric_families(sys.stdin.read()))\n\
print(len(families))\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the answer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(families >= 10, "{families} families");
}
