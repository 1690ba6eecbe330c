//! The `mesh-proxy` binary: flags, logging, bind, proxy until SIGINT or SIGTERM.

use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    mesh_runtime::exit("mesh-proxy", serve())
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let config = mesh_proxy::Config::try_from(mesh_proxy::Args::parse())?;
    mesh_runtime::init_tracing("mesh_proxy");
    let shutdown = mesh_runtime::shutdown_signal()?;
    let listeners = mesh_proxy::Listeners::bind(&config).await?;
    mesh_proxy::run(config, listeners, shutdown).await
}
