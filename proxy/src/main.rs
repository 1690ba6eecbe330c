//! The `mesh-proxy` binary: flags, logging, bind, proxy until SIGINT or SIGTERM.

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
    let listeners = mesh_proxy::Listeners::bind(&config).await?;
    mesh_proxy::run(config, listeners, async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a signal handler can be installed at start-up");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    })
    .await
}
