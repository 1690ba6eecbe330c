//! Network namespaces for the tests that need a real kernel (feature
//! `test-util`): routed "pods" joined to a "node" namespace, a guard that
//! deletes what a test made whatever happens to it, and a way to serve from
//! inside a namespace on a thread of its own. Needs root (CI runs as root);
//! nothing outside the test's own namespaces is touched.

use std::{os::fd::AsFd as _, process::Stdio};

/// Runs a command to completion; a failure fails the test.
pub fn sh(args: &[&str]) {
    let status = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?}: {status}");
}

/// Whether this machine can run a namespace test: root and every tool in
/// `tools`. With CI=true it must (the test command installs them).
pub fn prerequisites(test: &str, tools: &[&str]) -> bool {
    let root = rustix::process::geteuid().is_root();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root and {tools:?} (scripts/test.sh installs them); root: {root}, missing: {missing:?}"
    );
    eprintln!("SKIPPED: {test} needs root and {tools:?}; root: {root}, missing: {missing:?}");
    false
}

/// Deletes the listed namespaces and their `/etc/netns` files on drop.
#[derive(Debug, Default)]
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    /// Makes namespace `name`, deleted with the guard.
    pub fn add(&mut self, name: &str) {
        sh(&["ip", "netns", "add", name]);
        self.0.push(name.to_owned());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
        }
    }
}

/// Makes `node`: a namespace that forwards between the pods joined to it.
pub fn add_node(node: &str) {
    sh(&["ip", "netns", "add", node]);
    sh(&[
        "ip",
        "netns",
        "exec",
        node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    sh(&["ip", "-n", node, "link", "set", "lo", "up"]);
}

/// Joins `pod` to `node` as a routed CNI does: the pod is `{net}.{i}.2/30`
/// on its side of a veth pair, the node `{net}.{i}.1/30` on the other, and
/// the pod's default route goes through the node (which must forward).
/// Link names are `{link}{i}n` and `{link}{i}p` (keep them under 15
/// characters). Returns the pod's address.
pub fn add_routed_pod(node: &str, pod: &str, net: &str, i: u8, link: &str) -> String {
    let (node_if, pod_if) = (format!("{link}{i}n"), format!("{link}{i}p"));
    let (node_ip, pod_ip) = (format!("{net}.{i}.1"), format!("{net}.{i}.2"));
    sh(&[
        "ip", "link", "add", &node_if, "netns", node, "type", "veth", "peer", "name", &pod_if,
        "netns", pod,
    ]);
    sh(&[
        "ip",
        "-n",
        node,
        "addr",
        "add",
        &format!("{node_ip}/30"),
        "dev",
        &node_if,
    ]);
    sh(&["ip", "-n", node, "link", "set", &node_if, "up"]);
    sh(&[
        "ip",
        "-n",
        pod,
        "addr",
        "add",
        &format!("{pod_ip}/30"),
        "dev",
        &pod_if,
    ]);
    sh(&["ip", "-n", pod, "link", "set", &pod_if, "up"]);
    sh(&["ip", "-n", pod, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", pod, "route", "add", "default", "via", &node_ip]);
    pod_ip
}

/// Runs `run` on a thread of its own inside network namespace `ns`, on a
/// runtime of its own, so the sockets it opens are the namespace's. Returns
/// what `run` sends back once it is serving; the thread lives as long as the
/// test process.
pub fn serve_in<T, F, Fut>(ns: &str, run: F) -> T
where
    T: Send + 'static,
    F: FnOnce(std::sync::mpsc::Sender<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let netns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        rustix::thread::move_into_link_name_space(
            netns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("enter the namespace");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(run(tx));
    });
    rx.recv().expect("the namespace's server started")
}

/// The port [`ECHO_SERVER`] listens on.
pub const ECHO_PORT: u16 = 9000;

/// A TCP echo server on [`ECHO_PORT`], IPv6 and IPv4: a `python3 -c` program.
pub const ECHO_SERVER: &str = "import socket, socketserver as s
class E(s.StreamRequestHandler):
    def handle(self):
        while d := self.request.recv(65536): self.request.sendall(d)
class T(s.ThreadingTCPServer):
    address_family = socket.AF_INET6
T(('::', 9000), E).serve_forever()
";

/// Sends 200 kB of random bytes from namespace `ns` to the echo server at
/// `host` and reads them back: `Ok` when the same bytes came back, else what
/// happened.
pub async fn echo_round_trip(ns: &str, host: &str) -> Result<(), String> {
    let program = format!(
        "import os, socket\n\
         data = os.urandom(200000)\n\
         c = socket.create_connection(('{host}', {ECHO_PORT}), timeout=10)\n\
         c.sendall(data); c.shutdown(socket.SHUT_WR)\n\
         got = b''\n\
         while chunk := c.recv(65536): got += chunk\n\
         print('same' if got == data else f'differs: {{len(got)}} bytes')"
    );
    let output = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &program])
        .output()
        .await
        .map_err(|e| e.to_string())?;
    match String::from_utf8_lossy(&output.stdout).trim() {
        "same" => Ok(()),
        other => Err(format!(
            "{host}: {other} {}",
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}
