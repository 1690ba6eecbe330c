//! The `stockweb` binary as a process: start-up errors and `--help`.

use std::{process::Stdio, time::Duration};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stockweb");

async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("STOCKDATA_ADDRESS")
        .env_remove("STOCKWEB_LISTEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("stockweb exits within 20 s")
        .expect("stockweb starts")
}

#[tokio::test]
async fn an_unparsable_stockdata_address_is_a_clear_error() {
    let output = run_to_exit(
        &["--listen", "127.0.0.1:0"],
        &[("STOCKDATA_ADDRESS", "::not a url")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("STOCKDATA_ADDRESS"), "{stderr}");
    assert!(stderr.contains("::not a url"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run_to_exit(
        &[
            "--listen",
            &addr,
            "--stockdata-address",
            "http://127.0.0.1:1",
        ],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

#[tokio::test]
async fn help_documents_every_flag_and_variable() {
    let output = run_to_exit(&["--help"], &[]).await;
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for word in [
        "--listen",
        "STOCKWEB_LISTEN",
        "--stockdata-address",
        "STOCKDATA_ADDRESS",
        "--call-timeout",
        "--assets-dir",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}
