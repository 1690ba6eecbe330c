//! `mesh-proxy-init`'s rules in a real kernel: two network namespaces made
//! for the test (a client "node" and a "pod"), real iptables, the real
//! proxy. A connection to the pod's app port must arrive through the proxy.
//! Needs root (CI runs as root); nothing outside the namespaces is touched.

use crate::netns::{Namespaces, curl_in, prerequisites, sh, spawn_in, tag};
use std::time::Duration;
use stockdata::test_util::eventually;
use tokio::process::Command;

#[tokio::test]
async fn inbound_connections_to_the_app_arrive_through_the_proxy() {
    if !prerequisites() {
        return;
    }
    let tag = tag();
    let (node, pod) = (format!("mkn{tag}"), format!("mkp{tag}"));
    let (node_if, pod_if) = (format!("mkvn{tag}"), format!("mkvp{tag}"));
    sh(&["ip", "netns", "add", &node]);
    let _cleanup = Namespaces(vec![node.clone(), pod.clone()]);
    sh(&["ip", "netns", "add", &pod]);
    sh(&[
        "ip", "link", "add", &node_if, "netns", &node, "type", "veth", "peer", "name", &pod_if,
        "netns", &pod,
    ]);
    for (ns, dev, addr) in [
        (&node, &node_if, "10.201.0.1/24"),
        (&pod, &pod_if, "10.201.0.2/24"),
    ] {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    // The pod: an app listening on loopback only, and its proxy.
    let _app = spawn_in(
        &pod,
        "python3",
        &["-m", "http.server", "8080", "--bind", "127.0.0.1"],
    );
    let _proxy = spawn_in(
        &pod,
        env!("CARGO_BIN_EXE_mesh-proxy"),
        &[
            "--inbound",
            "0.0.0.0:4143",
            "--app",
            "127.0.0.1:8080",
            "--admin",
            "0.0.0.0:4191",
        ],
    );
    eventually("the proxy's admin port", Duration::from_secs(20), || {
        curl_in(&node, "http://10.201.0.2:4191/ready")
    })
    .await;
    // Without the rules the app cannot be reached from outside the pod.
    assert_eq!(curl_in(&node, "http://10.201.0.2:8080/").await, None);

    let init = Command::new("ip")
        .args(["netns", "exec", &pod, env!("CARGO_BIN_EXE_mesh-proxy-init")])
        .args([
            "--inbound-port",
            "4143",
            "--ignore-inbound-ports",
            "4191,4143",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    let page = eventually("the app through the proxy", Duration::from_secs(20), || {
        curl_in(&node, "http://10.201.0.2:8080/")
    })
    .await;
    assert!(page.contains("Directory listing"), "{page}");
    // The proxy's admin port is not redirected, and it counted the request.
    let metrics = curl_in(&node, "http://10.201.0.2:4191/metrics")
        .await
        .expect("admin port reachable");
    let served = crate::support::sum(
        &crate::support::parse_prometheus(&metrics),
        "mesh_requests_total",
        &[("direction", "inbound")],
    );
    assert!(served >= 1.0, "{metrics}");
}
