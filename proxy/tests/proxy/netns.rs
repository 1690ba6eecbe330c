//! Network namespaces for the tests that need a real kernel's iptables:
//! made by the test, named with its pid, and deleted whatever happens to
//! the test. Needs root (CI runs as root); nothing outside the namespaces
//! is touched.

use std::{
    os::fd::AsFd as _,
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

/// Runs `run` on a thread of its own inside network namespace `ns`, on a
/// runtime of its own: the sockets it opens are the namespace's. Returns
/// what `run` sends back once it is serving; the thread ends with the test
/// process.
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

/// Deletes the test's namespaces, whatever happens to the test.
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
    }
}

pub fn sh(args: &[&str]) {
    let status = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?}: {status}");
}

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

/// Whether this machine can run the test; with CI=true it must.
pub fn prerequisites() -> bool {
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
