//! Micro-benchmarks of the request path's pieces: a balancer pick (p2c over
//! peak-EWMA) with 3 and 1,000 endpoints, recording a response in metrics,
//! and protocol detection. `cargo bench -p mesh-proxy`.

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_proxy::{
    balance::{AccrualConfig, Balancer, BalancerConfig, EwmaConfig},
    body::Recorder,
    config::BalanceStrategy,
    detect::classify,
    discover::{Endpoint, normalize},
    metrics::{Direction, Metrics, RouteLabels},
};
use std::{hint::black_box, net::SocketAddr, sync::Arc, time::Duration};
use tokio::time::Instant;

fn balancer(runtime: &tokio::runtime::Runtime, endpoints: u16) -> Arc<Balancer> {
    let set = normalize(
        (0..endpoints)
            .map(|i| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 10_000 + i)), ""))
            .collect(),
    );
    let (_tx, rx) = tokio::sync::watch::channel(set);
    let _guard = runtime.enter();
    Balancer::new(
        "stockdata",
        rx,
        BalancerConfig {
            strategy: BalanceStrategy::P2cEwma,
            ewma: EwmaConfig {
                decay: Duration::from_secs(10),
                default_rtt: Duration::from_millis(30),
            },
            accrual: AccrualConfig::default(),
            failfast: Duration::from_secs(3),
        },
    )
}

fn pick(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for endpoints in [3, 1000] {
        let balancer = balancer(&runtime, endpoints);
        // The pick alone (its in-flight slot is given back on drop)...
        c.bench_function(&format!("pick p2c-ewma, {endpoints} endpoints"), |b| {
            b.iter(|| black_box(balancer.try_pick(&[]).expect("endpoints")))
        });
        // ...and with the outcome fed back (the latency estimate updated).
        c.bench_function(
            &format!("pick p2c-ewma and record success, {endpoints} endpoints"),
            |b| {
                b.iter(|| {
                    let picked = balancer.try_pick(&[]).expect("endpoints");
                    picked.succeeded();
                })
            },
        );
    }
}

fn record(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::default());
    let route = Arc::new(metrics.route(RouteLabels {
        direction: Direction::Outbound,
        target: "stockdata".into(),
        endpoint: "127.0.0.1:10000".into(),
        tls: Default::default(),
    }));
    let mut headers = http::HeaderMap::new();
    headers.insert("grpc-status", http::HeaderValue::from_static("0"));
    c.bench_function("record a response in metrics", |b| {
        b.iter(|| {
            let mut recorder = Recorder::new(route.clone(), Instant::now());
            recorder.head(http::StatusCode::OK, black_box(&headers));
            recorder.finish(true);
        })
    });
}

fn detect(c: &mut Criterion) {
    let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
    let h1 = b"GET /api/stocks HTTP/1.1\r\nHost: stockweb\r\n\r\n";
    let opaque = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    c.bench_function("detect HTTP/2", |b| b.iter(|| classify(black_box(h2))));
    c.bench_function("detect HTTP/1", |b| b.iter(|| classify(black_box(h1))));
    c.bench_function("detect opaque", |b| b.iter(|| classify(black_box(opaque))));
}

criterion_group!(benches, pick, record, detect);
criterion_main!(benches);
