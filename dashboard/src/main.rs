//! The `mesh-dashboard` binary: flags, logging, bind, serve until SIGINT or SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    mesh_runtime::exit("mesh-dashboard", serve())
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let args = mesh_dashboard::Args::parse();
    let listen = args.listen;
    let config = mesh_dashboard::Config::try_from(args)?;
    mesh_runtime::init_tracing("mesh_dashboard");
    tokio::spawn(mesh_runtime::return_freed_memory());
    let shutdown = mesh_runtime::shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen / MESH_DASHBOARD_LISTEN)"))?;
    mesh_dashboard::run(config, listener, shutdown).await?;
    Ok(())
}
