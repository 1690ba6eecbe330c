//! The `mesh-proxy` binary: flags, logging, bind, proxy until SIGINT or SIGTERM.

use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    // One worker (`TOKIO_WORKER_THREADS=1`, as a sidecar usually gets one
    // core) runs on tokio's current-thread scheduler: nothing to steal work
    // from, so no cross-thread wakeups, and tasks woken together run in one
    // batch (0.8x the CPU per request of a one-worker multi-thread runtime;
    // docs/benchmarks.md). Otherwise one worker per core, or the count given.
    let single = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let runtime = if single {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => return mesh_runtime::exit("mesh-proxy", Err(err.into())),
    };
    mesh_runtime::exit("mesh-proxy", runtime.block_on(serve()))
}

async fn serve() -> anyhow::Result<()> {
    let config = mesh_proxy::Config::try_from(mesh_proxy::Args::parse())?;
    mesh_runtime::init_tracing("mesh_proxy");
    tokio::spawn(mesh_runtime::return_freed_memory());
    let shutdown = mesh_runtime::shutdown_signal()?;
    let listeners = mesh_proxy::Listeners::bind(&config).await?;
    mesh_proxy::run(config, listeners, shutdown).await
}
