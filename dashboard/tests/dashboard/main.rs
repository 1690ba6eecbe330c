//! The dashboard over real sockets, against a real controller, proxy and
//! replicas in this process: its JSON API reports what the proxies did; a
//! proxy that stops answering is shown down; the binary refuses bad flags.

use clap::Parser as _;
use serde_json::Value;
use std::{net::SocketAddr, time::Duration};
use stockdata::test_util::{connect, eventually, spawn_replica};
use stockkube_proto::{
    mesh::{ProxyInfo, registry_client::RegistryClient},
    stockdata::{GetRequest, stocks_client::StocksClient},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[tokio::test]
async fn api_reports_traffic_per_replica_and_proxies_that_went_down() {
    // Controller.
    let registry = mesh_controller::Registry::default();
    let controller_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let controller = controller_listener.local_addr().unwrap();
    tokio::spawn(mesh_controller::run(
        registry.clone(),
        controller_listener,
        std::future::pending(),
    ));

    // Two replicas behind one outbound proxy.
    let (a, b) = (spawn_replica("a").await, spawn_replica("b").await);
    registry.register("stockdata", a.addr, "a");
    registry.register("stockdata", b.addr, "b");
    let args = mesh_proxy::Args::try_parse_from([
        "mesh-proxy",
        "--outbound",
        "stockdata=127.0.0.1:0",
        "--destination",
        &format!("http://{controller}"),
        "--admin",
        "127.0.0.1:0",
    ])
    .unwrap();
    let config = mesh_proxy::Config::try_from(args).unwrap();
    let listeners = mesh_proxy::Listeners::bind(&config).await.unwrap();
    let outbound = mesh_proxy::local_addr(&listeners.outbound[0].1);
    let admin = mesh_proxy::local_addr(&listeners.admin);
    let (stop_proxy, proxy_stopped) = oneshot::channel::<()>();
    let proxy = tokio::spawn(mesh_proxy::run(config, listeners, async {
        let _ = proxy_stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{controller}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    RegistryClient::new(channel)
        .register_proxy(ProxyInfo {
            workload: "stockweb".into(),
            instance: "stockweb-1".into(),
            admin_addr: admin.to_string(),
        })
        .await
        .unwrap();

    // The dashboard, scraping every 200 ms.
    let args = mesh_dashboard::Args::try_parse_from([
        "mesh-dashboard",
        "--controller",
        &format!("http://{controller}"),
        "--scrape-interval",
        "200ms",
        "--window",
        "60s",
    ])
    .unwrap();
    let config = mesh_dashboard::Config::try_from(args).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dashboard = listener.local_addr().unwrap();
    tokio::spawn(mesh_dashboard::run(
        config,
        listener,
        std::future::pending(),
    ));

    eventually(
        "the dashboard sees the proxy",
        Duration::from_secs(10),
        || async {
            let proxies = get_json(dashboard, "/api/proxies").await;
            (proxies[0]["up"] == true).then_some(())
        },
    )
    .await;

    let client = StocksClient::new(connect(outbound).await);
    for id in 1..=40 {
        client.clone().get(GetRequest { id }).await.unwrap();
    }

    let servers = eventually("40 requests counted", Duration::from_secs(10), || async {
        let servers = get_json(dashboard, "/api/servers").await;
        (servers["services"][0]["total"] == 40.0).then_some(servers)
    })
    .await;
    let replicas = servers["services"][0]["replicas"].as_array().unwrap();
    let names: Vec<_> = replicas
        .iter()
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "{servers}");
    let served: f64 = replicas.iter().map(|r| r["served"].as_f64().unwrap()).sum();
    assert_eq!(served, 40.0);
    assert!(
        replicas.iter().all(|r| r["served"].as_f64().unwrap() > 0.0),
        "{servers}"
    );

    let overview = get_json(dashboard, "/api/overview").await;
    let row = &overview["workloads"][0];
    assert_eq!(
        (row["workload"].as_str(), row["direction"].as_str()),
        (Some("stockweb"), Some("outbound"))
    );
    assert_eq!(row["golden"]["requests"], 40.0);
    assert_eq!(row["golden"]["success_rate"], 1.0);

    let topology = get_json(dashboard, "/api/topology").await;
    assert_eq!(topology["edges"][0]["source"], "stockweb");
    assert_eq!(topology["edges"][0]["target"], "stockdata");

    // The proxy stops: it is shown down, not dropped.
    let _ = stop_proxy.send(());
    proxy.await.unwrap().unwrap();
    eventually("the proxy shown down", Duration::from_secs(10), || async {
        let proxies = get_json(dashboard, "/api/proxies").await;
        (proxies[0]["up"] == false && proxies[0]["error"].is_string()).then_some(())
    })
    .await;
    let overview = get_json(dashboard, "/api/overview").await;
    assert_eq!(overview["workloads"][0]["meshed"], 0);
    assert_eq!(overview["workloads"][0]["total"], 1);
    assert_eq!(overview["workloads"][0]["in_trouble"], true);
}

#[tokio::test]
async fn the_binary_refuses_bad_flags() {
    for (args, expected) in [
        (&["--controller", "grpc://x"][..], "--controller"),
        (&["--scrape-interval", "soon"][..], "--scrape-interval"),
        (
            &["--window", "1s", "--scrape-interval", "2s"][..],
            "--window",
        ),
        (&["--frobnicate"][..], "--frobnicate"),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-dashboard"))
            .args(args)
            .env_clear()
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
