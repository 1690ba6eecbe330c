//! Per-request balancing: what the mesh is for.

use crate::support::{call_many, spawn_proxy, stockdata_proxy};
use stockdata::{
    Faults,
    test_util::{ConnectionBalancer, connect, spawn_replica, spawn_replica_with},
};
use stockkube_proto::stockdata::stocks_client::StocksClient;

#[tokio::test]
async fn one_connection_is_spread_over_every_replica() {
    let replicas = [
        spawn_replica("r1").await,
        spawn_replica("r2").await,
        spawn_replica("r3").await,
    ];
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();

    // Without the proxy: a Service-like forwarder, one connection, one replica.
    let service = ConnectionBalancer::start(addrs.clone()).await;
    let direct = StocksClient::new(connect(service.addr).await);
    let tally = call_many(&direct, 100, 100).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.servers.len(), 1, "{:?}", tally.servers);

    // Through the outbound proxy: the same one connection, every replica.
    let proxy = stockdata_proxy(&addrs, &[]).await;
    let meshed = StocksClient::new(connect(proxy.outbound).await);
    let tally = call_many(&meshed, 100, 100).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    for replica in &replicas {
        assert!(
            tally.count(&replica.server_id) >= 20,
            "{} served too few: {:?}",
            replica.server_id,
            tally.servers
        );
        // The proxy names the endpoint, so balancing shows without app support.
        assert!(
            tally.endpoints.contains_key(&replica.addr.to_string()),
            "{:?}",
            tally.endpoints
        );
    }
    proxy.shutdown().await;
}

async fn slow_share(balance: &str) -> f64 {
    let slow = spawn_replica_with(
        "slow",
        Faults {
            delay: std::time::Duration::from_millis(50),
            ..Faults::default()
        },
    )
    .await;
    let fast = [spawn_replica("fast-1").await, spawn_replica("fast-2").await];
    let proxy = stockdata_proxy(
        &[slow.addr, fast[0].addr, fast[1].addr],
        &["--balance", balance],
    )
    .await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    let tally = call_many(&client, 1000, 10).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    proxy.shutdown().await;
    tally.count("slow") as f64 / 1000.0
}

#[tokio::test]
async fn peak_ewma_steers_away_from_a_slow_replica() {
    let share = slow_share("p2c-ewma").await;
    assert!(
        share < 0.15,
        "the 50 ms replica served {:.1}%",
        share * 100.0
    );
}

/// One call at a time: two equal replicas share the calls. Nothing is in
/// flight to tell them apart, so only the latency estimates do, and an
/// endpoint that fell behind must be tried again.
#[tokio::test]
async fn one_call_at_a_time_is_shared_by_equal_replicas() {
    let replicas = [spawn_replica("a").await, spawn_replica("b").await];
    let proxy = stockdata_proxy(&[replicas[0].addr, replicas[1].addr], &[]).await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    let calls = 3000;
    let tally = call_many(&client, calls, 1).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    for replica in &replicas {
        let share = tally.count(&replica.server_id) as f64 / calls as f64;
        assert!(share >= 0.3, "{:?}", tally.servers);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn round_robin_gives_the_slow_replica_its_third() {
    let share = slow_share("round-robin").await;
    assert!(
        (0.30..=0.37).contains(&share),
        "the 50 ms replica served {:.1}%",
        share * 100.0
    );
}

#[tokio::test]
async fn two_hops_outbound_to_inbound_to_the_app() {
    let replica = spawn_replica("behind-inbound").await;
    let app = replica.addr.to_string();
    let inbound = spawn_proxy(&["--inbound", "127.0.0.1:0", "--app", &app]).await;
    let inbound_addr = inbound.inbound.unwrap();
    let outbound = stockdata_proxy(&[inbound_addr], &[]).await;
    let client = StocksClient::new(connect(outbound.outbound).await);
    let tally = call_many(&client, 50, 25).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.count("behind-inbound"), 50);
    assert_eq!(tally.endpoints.get(&inbound_addr.to_string()), Some(&50));
    outbound.shutdown().await;
    inbound.shutdown().await;
}

#[tokio::test]
async fn each_endpoint_gets_one_multiplexed_connection() {
    let replicas = [spawn_replica("c1").await, spawn_replica("c2").await];
    // A counting forwarder in front of each replica shows how many
    // connections the proxy opened to it.
    let fronts = [
        ConnectionBalancer::start(vec![replicas[0].addr]).await,
        ConnectionBalancer::start(vec![replicas[1].addr]).await,
    ];
    let proxy = stockdata_proxy(&[fronts[0].addr, fronts[1].addr], &[]).await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    for _ in 0..3 {
        let tally = call_many(&client, 100, 100).await;
        assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    }
    assert_eq!(fronts[0].counts(), [1], "connections to c1");
    assert_eq!(fronts[1].counts(), [1], "connections to c2");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_dead_endpoint_is_ejected_after_consecutive_failures() {
    let live = spawn_replica("live").await;
    // A port with nothing listening: every connection is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = stockdata_proxy(
        &[dead, live.addr],
        &["--balance", "round-robin", "--failure-accrual", "3"],
    )
    .await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    // Every call that met the dead endpoint was retried on the live one,
    // until the third failure ejected the dead one.
    let tally = call_many(&client, 50, 1).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.count("live"), 50);

    let (_, json) = crate::support::http_get(proxy.admin, "/endpoints").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let dead_view = json["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["addr"] == dead.to_string())
        .unwrap()
        .clone();
    assert_eq!(dead_view["ejected"], true, "{dead_view}");
    assert_eq!(dead_view["ejections"], 1, "{dead_view}");
    // A probe may have come due (and failed) if the machine was slow.
    let failed = dead_view["failed"].as_u64().unwrap();
    assert!((3..=4).contains(&failed), "{dead_view}");
    let (_, metrics) = crate::support::http_get(proxy.admin, "/metrics").await;
    let samples = crate::support::parse_prometheus(&metrics);
    let dead_label = dead.to_string();
    let retried = crate::support::sum(
        &samples,
        "mesh_retries_total",
        &[("endpoint", &dead_label), ("reason", "error")],
    );
    assert_eq!(retried, failed as f64, "{metrics}");
    assert_eq!(
        crate::support::sum(
            &samples,
            "mesh_endpoint_ejected",
            &[("endpoint", &dead_label)]
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        dead_view["last_error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{dead_view}"
    );
    proxy.shutdown().await;
}
