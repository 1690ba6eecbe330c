//! Tap over the admin server: a live stream of the requests passing
//! through a client proxy and a server proxy, filtered, sampled at the
//! tap's rate, with only the allowed headers; a stopping proxy ends its
//! taps instead of waiting for their readers.

use crate::support::{call_many, spawn_proxy, stockdata_proxy};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;
use std::{net::SocketAddr, time::Duration};
use stockdata::test_util::{connect, spawn_replica};
use stockkube_proto::stockdata::{GetRequest, stocks_client::StocksClient};

/// A tap attached to a proxy's admin server: its JSON lines as they come.
struct Tapping {
    body: hyper::body::Incoming,
    buffered: Vec<u8>,
}

impl Tapping {
    async fn attach(admin: SocketAddr, query: &str) -> Self {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let uri = format!("http://{admin}/tap?{query}").parse().unwrap();
        let response = client.get(uri).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        Self {
            body: response.into_body(),
            buffered: Vec::new(),
        }
    }

    /// The next line that is not a heartbeat, within 10 s; `None` when
    /// the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffered.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffered.drain(..=end).collect();
                let value: Value = serde_json::from_slice(&line).unwrap();
                if value["type"] != "heartbeat" {
                    return Some(value);
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("a tap line within 10 s");
            match frame {
                None => return None,
                Some(frame) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.buffered.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_tap_streams_each_request_with_its_endpoint_status_and_identity_of_nothing_secret() {
    let replica = spawn_replica("r1").await;
    let app = replica.addr.to_string();
    let server = spawn_proxy(&[
        "--inbound",
        "127.0.0.1:0",
        "--app",
        &app,
        "--tap-headers",
        "x-request-id",
    ])
    .await;
    let client_side = stockdata_proxy(&[server.inbound.unwrap()], &[]).await;
    let mut client_tap = Tapping::attach(client_side.admin, "path_prefix=/StockData.").await;
    let mut server_tap = Tapping::attach(server.admin, "direction=inbound").await;
    // Not for these taps' filters: nothing comes of it.
    let mut other = Tapping::attach(client_side.admin, "path_prefix=/Other.").await;

    let mut client = StocksClient::new(connect(client_side.outbound).await);
    let mut request = tonic::Request::new(GetRequest { id: 7 });
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    request
        .metadata_mut()
        .insert("authorization", "Bearer secret".parse().unwrap());
    client.get(request).await.unwrap();

    let outbound = client_tap.next().await.unwrap();
    assert_eq!(outbound["type"], "request", "{outbound}");
    assert_eq!(outbound["direction"], "outbound");
    assert_eq!(outbound["target"], "stockdata");
    assert_eq!(outbound["method"], "POST");
    assert_eq!(outbound["path"], "/StockData.Stocks/Get");
    assert_eq!(outbound["source"], "127.0.0.1");
    assert_eq!(outbound["endpoint"], server.inbound.unwrap().to_string());
    assert_eq!(
        (outbound["attempts"].as_u64(), outbound["status"].as_u64()),
        (Some(1), Some(200))
    );
    assert_eq!(
        (
            outbound["grpc_status"].as_u64(),
            outbound["complete"].as_bool()
        ),
        (Some(0), Some(true))
    );
    assert!(outbound["latency_ms"].as_f64().unwrap() > 0.0, "{outbound}");
    assert_eq!(
        outbound["headers"],
        serde_json::json!([]),
        "the client proxy allows no header"
    );

    let inbound = server_tap.next().await.unwrap();
    assert_eq!(
        (inbound["direction"].as_str(), inbound["target"].as_str()),
        (Some("inbound"), Some("app"))
    );
    assert_eq!(inbound["endpoint"], app);
    assert_eq!(
        inbound["headers"],
        serde_json::json!([["x-request-id", "req-42"]]),
        "only the allowed header: {inbound}"
    );
    assert!(!inbound.to_string().contains("secret"), "{inbound}");

    // A tap at 5 requests a second during a burst of 200: it is sampled,
    // and what it missed is said.
    let mut sampled = Tapping::attach(client_side.admin, "max_rps=5").await;
    let tally = call_many(&client, 200, 20).await;
    assert!(tally.failures.is_empty());
    let (mut requests, mut dropped) = (0, 0);
    while requests + dropped < 200 {
        let line = sampled.next().await.unwrap();
        match line["type"].as_str() {
            Some("request") => requests += 1,
            Some("dropped") => dropped += line["count"].as_u64().unwrap(),
            _ => panic!("{line}"),
        }
    }
    assert!(
        (5..=10).contains(&requests),
        "{requests} requests, {dropped} dropped"
    );

    // Stopping the proxy ends its taps (the drain would otherwise wait).
    let mut rest = 0;
    server.shutdown().await;
    while let Some(line) = server_tap.next().await {
        assert!(
            line["type"] == "request" || line["type"] == "dropped",
            "{line}"
        );
        rest += 1;
    }
    assert!(rest <= 201);
    client_side.shutdown().await;
    assert!(
        other.next().await.is_none(),
        "the filtered tap saw nothing and ended"
    );
}

#[tokio::test]
async fn bad_tap_filters_are_refused_with_why() {
    let replica = spawn_replica("r1").await;
    let proxy = stockdata_proxy(&[replica.addr], &[]).await;
    for (query, why) in [
        ("direction=sideways", "inbound or outbound"),
        ("max_rps=0", "max_rps 0"),
        ("max_rps=5000", "max_rps 5000"),
        ("status=abc", "status"),
    ] {
        let (status, body) = crate::support::http_get(proxy.admin, &format!("/tap?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(why), "{query}: {body}");
    }
}
