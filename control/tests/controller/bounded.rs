//! The controller binary keeps nothing a caller only asks about, and
//! forgets registrations their writers stop renewing.

use std::{net::SocketAddr, time::Duration};
use stockkube_proto::mesh::{
    DeregisterRequest, ListProxiesRequest, ListRequest, ProxyInfo, registry_client::RegistryClient,
};
use tokio::process::Child;
use tonic::transport::Channel;

/// The controller binary on a free loopback port, with `args`.
async fn controller(args: &[&str]) -> (Child, RegistryClient<Channel>) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], mesh_runtime::test_ports::free_port()));
    let child = crate::controller_binary()
        .args(["--listen", &addr.to_string()])
        .args(args)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => break channel,
            Err(err) if tokio::time::Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the controller did not listen within 20 s: {err}"),
        }
    };
    (child, RegistryClient::new(channel))
}

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// `count` deregistrations of names nobody registered, 16 at a time.
async fn deregister_unknown(registry: &RegistryClient<Channel>, from: usize, count: usize) {
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut registry = registry.clone();
        calls.spawn(async move {
            for i in (from + worker..from + count).step_by(16) {
                let answer = registry
                    .deregister(DeregisterRequest {
                        service: format!("nobody-registered-this-{i}.example.svc:8080"),
                        addr: "10.0.0.1:8080".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(!answer.removed);
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_unknown_names_leaves_memory_where_it_was() {
    let (child, registry) = controller(&[]).await;
    let pid = child.id().unwrap();
    // Warm up first: connections, buffers and the allocator's arenas.
    deregister_unknown(&registry, 0, 5_000).await;
    let baseline = rss(pid);
    deregister_unknown(&registry, 5_000, 50_000).await;
    let after = rss(pid);
    eprintln!(
        "controller RSS: {baseline} bytes after warm-up, {after} after 50,000 deregistrations of unknown names"
    );
    assert!(
        after <= baseline + 5 * 1024 * 1024,
        "50,000 deregistrations of unknown names took the controller from {baseline} to {after} bytes"
    );
    let listed = registry
        .clone()
        .list(ListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.services.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn a_registration_not_renewed_within_the_lease_is_dropped() {
    let (_child, mut registry) = controller(&["--registration-lease", "1s"]).await;
    let proxy = |port: u16| ProxyInfo {
        workload: "stockdata".into(),
        instance: format!("stockdata-{port}"),
        admin_addr: SocketAddr::from(([127, 0, 0, 1], port)).to_string(),
    };
    let answer = registry
        .register_proxy(proxy(1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.renew_after_ms, 400, "two fifths of the lease");
    registry.register_proxy(proxy(2)).await.unwrap();
    // One keeps renewing as told; the other stops, as a SIGKILLed sidecar.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        registry.register_proxy(proxy(1)).await.unwrap();
        let listed = registry
            .list_proxies(ListProxiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .proxies;
        if listed == [proxy(1)] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unrenewed proxy is still listed: {listed:?}"
        );
    }
}

#[tokio::test]
async fn a_lease_of_zero_is_refused() {
    let stderr = crate::refused(
        crate::controller_binary(),
        &["--listen", "127.0.0.1:0", "--registration-lease", "0s"],
    )
    .await;
    assert!(stderr.contains("--registration-lease"), "{stderr}");
}
