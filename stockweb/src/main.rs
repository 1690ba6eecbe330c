//! The `stockweb` binary: flags, logging, bind, serve until SIGINT or SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use std::{io::IsTerminal as _, process::ExitCode};

/// Fatal errors print as one line (with their causes), never as a panic or
/// a backtrace: they are for the person who started the process.
fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stockweb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let config = stockweb::Config::try_from(stockweb::Args::parse())?;
    init_tracing();

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen / STOCKWEB_LISTEN)",
                config.listen
            )
        })?;
    stockweb::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// `RUST_LOG` wins; otherwise `info` for this crate and `warn` for the rest.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,stockweb=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a signal handler can be installed at start-up");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
