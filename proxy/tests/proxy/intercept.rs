//! Transparent interception in a real kernel: a client pod whose app
//! connects to a Service's cluster IP, a node whose kube-proxy stand-in
//! sends each connection to one replica pod at random, and the client's
//! sidecar behind `mesh-proxy-init`'s inbound and outbound rules. Without
//! the sidecar one connection's requests all reach one replica; with it
//! they spread over both, and a destination the controller does not know
//! passes through byte for byte. The control plane is a fake on the wire
//! contract, served inside the client pod. Needs root.

use crate::{
    fake_control::FakeControl,
    netns::{
        Namespaces, add_node, add_routed_pod, curl_in, prerequisites, serve_in, sh, spawn_in, tag,
    },
};
use mesh_runtime::netns::{ECHO_SERVER, echo_round_trip};
use std::time::Duration;
use stockdata::test_util::eventually;
use tokio::process::Command;

const CLUSTER_IP: &str = "10.96.77.10";
const CLUSTER_IP6: &str = "fd96::77:10";

/// `curl` fetching `count` URLs on one connection from `ns`: the bodies,
/// concatenated.
async fn one_connection(ns: &str, url: &str, count: usize) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-fsS", "--max-time", "10"])
        .args(std::iter::repeat_n(url, count))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn intercepted_connections_are_balanced_per_request_or_passed_through() {
    if !prerequisites() {
        return;
    }
    let tag = tag();
    let node = format!("mkn{tag}");
    let pods: Vec<String> = ["c", "a", "b"]
        .iter()
        .map(|p| format!("mk{p}{tag}"))
        .collect();
    let _cleanup = Namespaces([vec![node.clone()], pods.clone()].concat());
    add_node(&node);
    sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    for (i, pod) in pods.iter().enumerate() {
        let i = i as u8 + 1;
        sh(&["ip", "netns", "add", pod]);
        add_routed_pod(&node, pod, "10.212", i, &format!("mk{tag}v"));
        // IPv6 beside IPv4, routed the same way.
        let (node_if, pod_if) = (format!("mk{tag}v{i}n"), format!("mk{tag}v{i}p"));
        let (node6, pod6) = (format!("fd12:{i}::1"), format!("fd12:{i}::2"));
        sh(&[
            "ip",
            "-n",
            &node,
            "-6",
            "addr",
            "add",
            &format!("{node6}/64"),
            "dev",
            &node_if,
            "nodad",
        ]);
        sh(&[
            "ip",
            "-n",
            pod,
            "-6",
            "addr",
            "add",
            &format!("{pod6}/64"),
            "dev",
            &pod_if,
            "nodad",
        ]);
        sh(&[
            "ip", "-n", pod, "-6", "route", "add", "default", "via", &node6,
        ]);
    }
    let client = &pods[0];

    // Replicas a and b: an HTTP server saying which one it is, and a TCP
    // echo server.
    let site = std::env::temp_dir().join(format!("mesh-intercept-{tag}"));
    let _site = RemoveDir(site.clone());
    let mut servers = Vec::new();
    for (name, pod) in [("a", &pods[1]), ("b", &pods[2])] {
        let dir = site.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("who"), name).unwrap();
        let dir = dir.to_str().unwrap().to_owned();
        // HTTP/1.1, so that one connection carries many requests.
        let http = format!(
            "import functools, http.server as h\n\
             h.SimpleHTTPRequestHandler.protocol_version = 'HTTP/1.1'\n\
             handler = functools.partial(h.SimpleHTTPRequestHandler, directory={dir:?})\n\
             import socket\n\
             class Server(h.ThreadingHTTPServer):\n    address_family = socket.AF_INET6\n\
             Server(('::', 8080), handler).serve_forever()"
        );
        servers.push(spawn_in(pod, "python3", &["-c", &http]));
        servers.push(spawn_in(pod, "python3", &["-c", ECHO_SERVER]));
    }
    // The kube-proxy stand-in: the cluster IP, a replica per connection.
    let rules = format!(
        "*nat\n\
         -A PREROUTING -d {CLUSTER_IP}/32 -p tcp --dport 80 -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.212.2.2:8080\n\
         -A PREROUTING -d {CLUSTER_IP}/32 -p tcp --dport 80 -j DNAT --to-destination 10.212.3.2:8080\n\
         COMMIT\n"
    );
    load_rules(&node, "iptables-restore", &rules).await;
    let rules6 = format!(
        "*nat\n\
         -A PREROUTING -d {CLUSTER_IP6}/128 -p tcp --dport 80 -m statistic --mode random --probability 0.5 -j DNAT --to-destination [fd12:2::2]:8080\n\
         -A PREROUTING -d {CLUSTER_IP6}/128 -p tcp --dport 80 -j DNAT --to-destination [fd12:3::2]:8080\n\
         COMMIT\n"
    );
    load_rules(&node, "ip6tables-restore", &rules6).await;
    let service = format!("http://{CLUSTER_IP}/who");
    eventually("both replicas serve", Duration::from_secs(20), || async {
        let a = curl_in(client, "http://10.212.2.2:8080/who").await?;
        let b = curl_in(client, "http://10.212.3.2:8080/who").await?;
        (a == "a" && b == "b").then_some(())
    })
    .await;

    // Without the sidecar: one connection, one replica.
    let answers = one_connection(client, &service, 20).await;
    assert!(
        answers == "a".repeat(20) || answers == "b".repeat(20),
        "{answers}"
    );

    // The control plane knows the cluster IP as the Service `web`.
    let control = FakeControl::default();
    control.resolve_as(format!("{CLUSTER_IP}:80").parse().unwrap(), "web");
    control.resolve_as(format!("[{CLUSTER_IP6}]:80").parse().unwrap(), "web6");
    for (ip, name) in [("10.212.2.2", "a"), ("10.212.3.2", "b")] {
        control.register("web", format!("{ip}:8080").parse().unwrap(), name);
    }
    for (ip, name) in [("fd12:2::2", "a"), ("fd12:3::2", "b")] {
        control.register("web6", format!("[{ip}]:8080").parse().unwrap(), name);
    }
    let controller: String = serve_in(client, move |ready| async move {
        let (url, _stop) = control.spawn().await;
        ready.send(url).unwrap();
        std::future::pending::<()>().await;
    });

    // The sidecar, as its own user, and the rules.
    let proxy_bin = env!("CARGO_BIN_EXE_mesh-proxy");
    let _proxy = spawn_in(
        client,
        "setpriv",
        &[
            "--reuid=2102",
            "--regid=2102",
            "--clear-groups",
            proxy_bin,
            "--outbound-transparent",
            "127.0.0.1:4140,[::1]:4140",
            "--balance",
            "round-robin",
            "--inbound",
            "0.0.0.0:4143",
            "--destination",
            &controller,
            "--admin",
            "127.0.0.1:4191",
        ],
    );
    eventually("the proxy is ready", Duration::from_secs(20), || {
        curl_in(client, "http://127.0.0.1:4191/ready")
    })
    .await;
    let installed = init(client).await;
    assert!(
        installed.contains("# IPv4") && installed.contains("# IPv6"),
        "{installed}"
    );

    // Loading again changes nothing.
    let before = nat_table(client).await;
    init(client).await;
    assert_eq!(nat_table(client).await, before, "idempotent");

    // With it: one connection, both replicas.
    let answers = one_connection(client, &service, 40).await;
    let (a, b) = (answers.matches('a').count(), answers.matches('b').count());
    assert_eq!((a, b), (20, 20), "round-robin over both: {answers}");

    // The same over IPv6.
    let service6 = format!("http://[{CLUSTER_IP6}]/who");
    let answers = one_connection(client, &service6, 40).await;
    let (a, b) = (answers.matches('a').count(), answers.matches('b').count());
    assert_eq!((a, b), (20, 20), "over IPv6: {answers}");

    // A destination the controller does not know passes through untouched.
    for host in ["10.212.2.2", "fd12:2::2"] {
        echo_round_trip(client, host).await.unwrap();
    }

    // A connection to the transparent listener that was not redirected there
    // is refused and counted.
    let direct = Command::new("ip")
        .args([
            "netns",
            "exec",
            client,
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://127.0.0.1:4140/",
        ])
        .output()
        .await
        .unwrap();
    assert!(!direct.status.success(), "a direct connection is closed");

    let metrics = curl_in(client, "http://127.0.0.1:4191/metrics")
        .await
        .expect("admin port");
    let samples = crate::support::parse_prometheus(&metrics);
    let sum = |name, labels: &[(&str, &str)]| crate::support::sum(&samples, name, labels);
    assert_eq!(
        sum("mesh_requests_total", &[("target", "web")]),
        40.0,
        "{metrics}"
    );
    assert!(
        sum("mesh_resolutions_total", &[("result", "service")]) >= 1.0,
        "{metrics}"
    );
    assert!(
        sum("mesh_resolutions_total", &[("result", "unknown")]) >= 2.0,
        "both families' unknown destinations: {metrics}"
    );
    assert_eq!(
        sum("mesh_requests_total", &[("target", "web6")]),
        40.0,
        "{metrics}"
    );
    assert!(
        sum("mesh_tcp_connections_total", &[("target", "passthrough")]) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        sum(
            "mesh_refused_total",
            &[("reason", "no_original_destination")]
        ),
        1.0,
        "{metrics}"
    );
}

/// Removes a directory the test made, whatever happens to the test.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `mesh-proxy-init` in `ns` as the injected sidecar does (IPv6 too):
/// what it printed.
async fn init(ns: &str) -> String {
    let init = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_mesh-proxy-init")])
        .args(["--outbound-port", "4140", "--proxy-uid", "2102", "--ipv6"])
        .output()
        .await
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    String::from_utf8_lossy(&init.stdout).into_owned()
}

async fn load_rules(ns: &str, restore: &str, rules: &str) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, restore, "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .await
        .unwrap();
    assert!(child.wait().await.unwrap().success(), "{rules}");
}

/// The namespace's nat table, without counters and comments.
async fn nat_table(ns: &str) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-save", "-t", "nat"])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
        .collect::<Vec<_>>()
        .join("\n")
}
