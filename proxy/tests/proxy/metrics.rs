//! The admin endpoints: metrics match the calls made; endpoints list the
//! replicas; ready and live answer.

use crate::support::{call_many, http_get, parse_prometheus, stockdata_proxy, sum};
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
