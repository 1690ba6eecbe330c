//! Resilience under real faults: a replica process killed with SIGKILL, a
//! replica failing half its calls, a black hole that accepts and never
//! answers, a killed replica coming back, and SIGTERM to the proxy itself.
//! The client must lose nothing the mesh can save.

use crate::support::{
    Load, call_many, free_port, parse_prometheus, static_list, stockdata_proxy, sum,
};
use std::{net::SocketAddr, process::Stdio, time::Duration};
use stockdata::{
    Faults,
    test_util::{connect, eventually, spawn_replica, spawn_replica_with},
};
use stockkube_proto::stockdata::{GetRequest, stocks_client::StocksClient};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// Set in the environment of a child process that should be a replica
/// (this test binary, re-run for one test; see `child_replica_process`).
const CHILD_ID: &str = "MESH_TEST_CHILD_REPLICA";
const CHILD_PORT: &str = "MESH_TEST_CHILD_PORT";
const CHILD_TEST: &str = "resilience::child_replica_process";

/// A StockData replica in its own process, so it can really be killed.
struct ChildReplica {
    child: Child,
    addr: SocketAddr,
}

impl ChildReplica {
    /// Starts one on `port` (0: any free port) and waits until it listens.
    async fn spawn(id: &str, port: u16) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ID, id)
            .env(CHILD_PORT, port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the test binary runs again as a child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // libtest may have printed "test NAME ... " on the same line.
                if let Some((_, addr)) = line.split_once("child replica listening on ") {
                    return addr.trim().parse().unwrap();
                }
            }
            panic!("child replica {id} exited before listening");
        })
        .await
        .expect("child replica listens within 20 s");
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr }
    }

    /// SIGKILL, and wait until the process is gone.
    async fn kill(mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("a killed child exits")
            .unwrap();
    }
}

/// In a child (see [`ChildReplica`]): serve until killed. Otherwise: check
/// that a child replica serves and that SIGKILL ends it at once.
#[tokio::test]
async fn child_replica_process() {
    if let Ok(id) = std::env::var(CHILD_ID) {
        let port: u16 = std::env::var(CHILD_PORT).unwrap().parse().unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        println!("child replica listening on {addr}");
        let config = stockdata::Config {
            listen: vec![addr],
            server_id: id,
            faults: Faults::default(),
        };
        stockdata::run(config, vec![listener], std::future::pending())
            .await
            .unwrap();
        return;
    }
    let child = ChildReplica::spawn("c", 0).await;
    let addr = child.addr;
    let mut client = StocksClient::new(connect(addr).await);
    let answer = client.get(GetRequest { id: 1 }).await.unwrap();
    assert_eq!(answer.metadata().get("server-id").unwrap(), "c");
    child.kill().await;
    let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

async fn metrics(admin: SocketAddr) -> (String, Vec<crate::support::Sample>) {
    let (_, text) = crate::support::http_get(admin, "/metrics").await;
    let samples = parse_prometheus(&text);
    (text, samples)
}

async fn endpoint_view(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let (_, json) = crate::support::http_get(admin, "/endpoints").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    json["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["addr"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in {json}"))
}

#[tokio::test]
async fn a_replica_killed_under_load_costs_no_call() {
    let replicas = [
        ChildReplica::spawn("k1", 0).await,
        ChildReplica::spawn("k2", 0).await,
        ChildReplica::spawn("k3", 0).await,
    ];
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let proxy = stockdata_proxy(&addrs, &[]).await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    // 100 concurrent streams over one connection, before and after the kill.
    let load = Load::start(&client, 100);
    load.run_for_calls(3000).await;
    let [k1, k2, k3] = replicas;
    k2.kill().await;
    load.run_for_calls(6000).await;
    let tally = load.finish().await;

    assert!(
        tally.failures.is_empty(),
        "{} of {} calls failed: {:?}",
        tally.failures.len(),
        tally.succeeded() + tally.failures.len(),
        &tally.failures[..tally.failures.len().min(5)]
    );
    for id in ["k1", "k2", "k3"] {
        assert!(tally.count(id) > 100, "{id}: {:?}", tally.servers);
    }
    let (text, samples) = metrics(proxy.admin).await;
    let k2_label = addrs[1].to_string();
    assert!(
        sum(&samples, "mesh_retries_total", &[("endpoint", &k2_label)]) > 0.0,
        "the calls k2 dropped were retried elsewhere: {text}"
    );
    proxy.shutdown().await;
    k1.kill().await;
    k3.kill().await;
}

#[tokio::test]
async fn a_replica_failing_half_its_calls_is_retried_within_the_budget() {
    let healthy = [spawn_replica("h1").await, spawn_replica("h2").await];
    let flaky = spawn_replica_with(
        "flaky",
        Faults {
            fail_rate: 0.5,
            ..Faults::default()
        },
    )
    .await;
    let proxy = stockdata_proxy(&[healthy[0].addr, healthy[1].addr, flaky.addr], &[]).await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    let load = Load::start(&client, 100);
    load.run_for_calls(5000).await;
    let tally = load.finish().await;
    let total = tally.succeeded() + tally.failures.len();
    assert!(
        (tally.failures.len() as f64) < 0.01 * total as f64,
        "{} of {total} calls failed: {:?}",
        tally.failures.len(),
        &tally.failures[..tally.failures.len().min(5)]
    );

    let (text, samples) = metrics(proxy.admin).await;
    let attempts = sum(&samples, "mesh_requests_total", &[("target", "stockdata")]);
    let retries = sum(&samples, "mesh_retries_total", &[("target", "stockdata")]);
    let requests = attempts - retries;
    assert!(retries > 0.0, "UNAVAILABLE answers were retried: {text}");
    // The defaults: 20% of requests plus 10/s over the 10 s window, which
    // this test does not outlast.
    assert!(
        retries <= 0.2 * requests + 100.0,
        "{retries} retries for {requests} requests: {text}"
    );
    assert!(
        sum(
            &samples,
            "mesh_retries_total",
            &[("reason", "status"), ("endpoint", &flaky.addr.to_string())]
        ) > 0.0,
        "{text}"
    );
    let retried_calls: usize = tally
        .attempts
        .iter()
        .filter(|(n, _)| n.as_str() != "1")
        .map(|(_, count)| count)
        .sum();
    assert!(
        retried_calls > 0,
        "x-mesh-attempts shows retries: {:?}",
        tally.attempts
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_spent_budget_stops_retries() {
    let failing = [
        spawn_replica_with(
            "down1",
            Faults {
                fail_rate: 1.0,
                ..Faults::default()
            },
        )
        .await,
        spawn_replica_with(
            "down2",
            Faults {
                fail_rate: 1.0,
                ..Faults::default()
            },
        )
        .await,
    ];
    let proxy = stockdata_proxy(
        &[failing[0].addr, failing[1].addr],
        &["--failure-accrual", "0"],
    )
    .await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    let tally = call_many(&client, 500, 10).await;
    assert_eq!(tally.failures.len(), 500, "every replica fails every call");
    assert!(
        tally
            .failures
            .iter()
            .all(|s| s.code() == tonic::Code::Unavailable)
    );
    let (text, samples) = metrics(proxy.admin).await;
    let retries = sum(&samples, "mesh_retries_total", &[]);
    // At most 10/s × 10 s plus 20% of 500 requests; without a budget, three
    // attempts each would have made 1,000 retries.
    assert!(
        (100.0..=200.0).contains(&retries),
        "{retries} retries: {text}"
    );
    assert!(
        sum(
            &samples,
            "mesh_retries_skipped_total",
            &[("reason", "budget")]
        ) > 0.0,
        "{text}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_black_hole_times_out_is_ejected_and_gets_no_more_calls() {
    let healthy = [spawn_replica("b1").await, spawn_replica("b2").await];
    // Accepts connections (the kernel does) and never reads or answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let proxy = stockdata_proxy(
        &[healthy[0].addr, healthy[1].addr, hole_addr],
        &["--timeout", "stockdata=1s"],
    )
    .await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    let load = Load::start(&client, 20);
    eventually(
        "the black hole ejected",
        Duration::from_secs(10),
        || async { (endpoint_view(proxy.admin, hole_addr).await["ejected"] == true).then_some(()) },
    )
    .await;
    let before = load.finish().await;
    let hole_label = hole_addr.to_string();
    assert!(
        before.failed_at(&hole_label) > 0,
        "calls sent there timed out"
    );
    assert!(
        before
            .failures
            .iter()
            .all(|s| s.code() == tonic::Code::DeadlineExceeded),
        "{:?}",
        before.failures
    );

    // From now on the others carry the load; a probe after the backoff may
    // still meet the hole (and time out), nothing more.
    let load = Load::start(&client, 20);
    load.run_for_calls(4000).await;
    let after = load.finish().await;
    let total = after.succeeded() + after.failures.len();
    let share = after.failed_at(&hole_label) as f64 / total as f64;
    assert!(share < 0.005, "black hole share {share} of {total}");
    assert_eq!(after.endpoints.get(&hole_label), None);
    let (text, samples) = metrics(proxy.admin).await;
    assert!(
        sum(
            &samples,
            "mesh_request_timeouts_total",
            &[("endpoint", &hole_label)]
        ) > 0.0,
        "{text}"
    );
    assert!(
        sum(
            &samples,
            "mesh_endpoint_ejections_total",
            &[("endpoint", &hole_label)]
        ) >= 1.0,
        "{text}"
    );
    drop(hole);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_killed_replica_that_comes_back_is_probed_and_served_again() {
    let steady = spawn_replica("steady").await;
    let returning = ChildReplica::spawn("returning", 0).await;
    let addr = returning.addr;
    let proxy = stockdata_proxy(&[steady.addr, addr], &[]).await;
    let client = StocksClient::new(connect(proxy.outbound).await);
    let load = Load::start(&client, 10);
    load.run_for_calls(500).await;
    returning.kill().await;
    // The proxy notices (its calls there fail and are retried)...
    eventually(
        "the killed replica failed",
        Duration::from_secs(10),
        || async {
            (endpoint_view(proxy.admin, addr).await["failed"]
                .as_u64()
                .unwrap()
                > 0)
            .then_some(())
        },
    )
    .await;
    // ...and when it is back on the same port, a probe finds it and it is
    // back in.
    let back = ChildReplica::spawn("returning", addr.port()).await;
    let served_before = endpoint_view(proxy.admin, addr).await["served"]
        .as_u64()
        .unwrap();
    eventually(
        "the returning replica served again",
        Duration::from_secs(30),
        || async {
            let view = endpoint_view(proxy.admin, addr).await;
            (view["ejected"] == false && view["served"].as_u64().unwrap() > served_before + 50)
                .then_some(())
        },
    )
    .await;
    let tally = load.finish().await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    proxy.shutdown().await;
    back.kill().await;
}

#[tokio::test]
async fn sigterm_under_load_finishes_every_accepted_call_and_exits_zero() {
    let slow = [
        spawn_replica_with(
            "slow1",
            Faults {
                delay: Duration::from_millis(300),
                ..Faults::default()
            },
        )
        .await,
        spawn_replica_with(
            "slow2",
            Faults {
                delay: Duration::from_millis(300),
                ..Faults::default()
            },
        )
        .await,
    ];
    let outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args([
            "--outbound",
            &format!("stockdata={outbound}"),
            "--discover",
            &static_list(&[slow[0].addr, slow[1].addr]),
            "--admin",
            &admin.to_string(),
            "--drain-timeout",
            "5s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("the proxy ready", Duration::from_secs(20), || async {
        let ready = tokio::net::TcpStream::connect(admin).await.is_ok()
            && crate::support::http_get(admin, "/ready").await.0 == 200;
        ready.then_some(())
    })
    .await;
    let client = StocksClient::new(connect(outbound).await);
    let calls = tokio::spawn({
        let client = client.clone();
        async move { call_many(&client, 100, 100).await }
    });
    // Every call accepted and waiting on a replica.
    eventually("100 calls in flight", Duration::from_secs(10), || async {
        let (_, json) = crate::support::http_get(admin, "/endpoints").await;
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let in_flight: u64 = json["services"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["in_flight"].as_u64().unwrap())
            .sum();
        (in_flight == 100).then_some(())
    })
    .await;
    let pid = rustix::process::Pid::from_raw(proxy.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();

    let tally = calls.await.unwrap();
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.succeeded(), 100);
    let status = tokio::time::timeout(Duration::from_secs(5), proxy.wait())
        .await
        .expect("exits within the 5 s drain timeout")
        .unwrap();
    assert!(status.success(), "{status}");
}
