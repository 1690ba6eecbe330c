//! `mesh-proxy-init`'s rules in a real kernel: two network namespaces made
//! for the test (a client "node" and a "pod"), real iptables, the real
//! proxy. A connection to the pod's app port must arrive through the proxy.
//! Needs root (CI runs as root); nothing outside the namespaces is touched.

use std::{
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};
use stockdata::test_util::eventually;
use tokio::process::{Child, Command};

/// Deletes the test's namespaces, whatever happens to the test.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
    }
}

fn sh(args: &[&str]) {
    let status = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?}: {status}");
}

fn spawn_in(ns: &str, program: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `curl` from namespace `ns`: the body, or None if the connection failed
/// or the answer was an HTTP error.
async fn curl_in(ns: &str, url: &str) -> Option<String> {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-fsS", "--max-time", "3", url])
        .output()
        .await
        .unwrap();
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether this machine can run the test; with CI=true it must.
fn prerequisites() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = ["ip", "iptables-restore", "curl", "python3"]
        .iter()
        .all(|tool| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if root && tools {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the redirection test needs root and ip, iptables-restore, curl, python3 \
         (scripts/test.sh installs them); root: {root}, tools: {tools}"
    );
    eprintln!("SKIPPED: needs root and ip, iptables-restore, curl, python3");
    false
}

#[tokio::test]
async fn inbound_connections_to_the_app_arrive_through_the_proxy() {
    if !prerequisites() {
        return;
    }
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let tag = format!(
        "{}{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
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
