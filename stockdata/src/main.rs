//! The `stockdata` binary: flags, logging, bind, serve until SIGINT or SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use std::{io::IsTerminal as _, process::ExitCode};

/// Fatal errors print as one line (with their causes), never as a panic or
/// a backtrace: they are for the person who started the process.
fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stockdata: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let config = stockdata::Config::try_from(stockdata::Args::parse())?;
    init_tracing();
    let shutdown = shutdown_signal()?;

    let mut listeners = Vec::new();
    for addr in &config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--listen / STOCKDATA_LISTEN)"))?;
        listeners.push(listener);
    }
    stockdata::run(config, listeners, shutdown).await?;
    Ok(())
}

/// `RUST_LOG` wins; otherwise `info` for this crate and `warn` for the rest.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,stockdata=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Registers SIGINT and SIGTERM handlers now, before any port is served, so
/// a signal that arrives early still drains instead of killing the process;
/// the returned future completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
