//! `mesh-probe` as the sidecar's hooks run it: a target that starts
//! answering later, one that never does, and the preStop wait.

// Plain threads, no async runtime to block.
#![allow(clippy::disallowed_methods)]

use std::{
    net::TcpListener,
    process::Command,
    time::{Duration, Instant},
};

const PROBE: &str = env!("CARGO_BIN_EXE_mesh-probe");

#[test]
fn waits_for_a_target_that_comes_up_later() {
    // Reserve a port, free it, and listen on it again after a while.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let _ = listener.accept();
    });
    let target = format!("tcp://127.0.0.1:{port}");
    let status = Command::new(PROBE)
        .args(["--wait", "20s", &target])
        .status()
        .unwrap();
    assert!(status.success());
    later.join().unwrap();
}

#[test]
fn gives_up_when_the_wait_is_over_and_fails_at_once_without_one() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("tcp://127.0.0.1:{port}");
    let output = Command::new(PROBE)
        .args(["--wait", "600ms", &target])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&target));
    assert_eq!(
        Command::new(PROBE).arg(&target).status().unwrap().code(),
        Some(1)
    );
}

#[test]
fn sleeps_as_long_as_asked_and_rejects_bad_arguments() {
    let start = Instant::now();
    let status = Command::new(PROBE)
        .args(["--sleep", "300ms"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(start.elapsed() >= Duration::from_millis(300));
    for bad in [
        &["--sleep"][..],
        &["--sleep", "soon"],
        &["--wait", "1s"],
        &[],
    ] {
        let output = Command::new(PROBE).args(bad).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        assert!(!output.stderr.is_empty());
    }
}
