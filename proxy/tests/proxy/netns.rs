//! Network namespaces for the tests that need a real kernel's iptables
//! (the helpers they share with other crates are `mesh_runtime::netns`).

pub use mesh_runtime::netns::{Namespaces, add_node, add_routed_pod, serve_in, sh};
use std::{
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
};
use tokio::process::{Child, Command};

/// A name unique to this test process and call, short enough for an
/// interface name (15 characters) with a short prefix.
pub fn tag() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether this machine can run the namespace tests; with CI=true it must.
pub fn prerequisites() -> bool {
    mesh_runtime::netns::prerequisites(
        "the redirection and interception tests",
        &["ip", "iptables-restore", "curl", "python3", "setpriv"],
    )
}

/// `program` in namespace `ns`, killed when dropped.
pub fn spawn_in(ns: &str, program: &str, args: &[&str]) -> Child {
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
pub async fn curl_in(ns: &str, url: &str) -> Option<String> {
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
