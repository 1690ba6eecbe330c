//! The `mesh-controller` binary: flags, logging, bind, serve until SIGINT or SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    mesh_runtime::exit("mesh-controller", serve())
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let args = mesh_controller::Args::parse();
    mesh_runtime::init_tracing("mesh_controller");
    let shutdown = mesh_runtime::shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen / MESH_CONTROLLER_LISTEN)",
                args.listen
            )
        })?;
    mesh_controller::run(mesh_controller::Registry::default(), listener, shutdown).await?;
    Ok(())
}
