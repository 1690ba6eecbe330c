//! The `mesh-proxy` binary: flags, logging, bind, proxy until SIGINT or SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use std::{io::IsTerminal as _, process::ExitCode};

fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mesh-proxy: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let config = mesh_proxy::Config::try_from(mesh_proxy::Args::parse())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,mesh_proxy=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let shutdown = shutdown_signal()?;
    let listeners = mesh_proxy::Listeners::bind(&config).await?;
    mesh_proxy::run(config, listeners, shutdown).await
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
