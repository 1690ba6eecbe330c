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
    // kube's client logs every failed request as an error, several a second
    // while the API server is away; the watchers say it once per outage.
    mesh_runtime::init_tracing_with("mesh_controller", &["kube_client::client::builder=off"]);
    let shutdown = mesh_runtime::shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen / MESH_CONTROLLER_LISTEN)",
                args.listen
            )
        })?;
    let (backend, watchers) = match args.backend {
        mesh_controller::BackendKind::Local => {
            (mesh_controller::Registry::default().into(), Vec::new())
        }
        mesh_controller::BackendKind::Kubernetes => {
            let client = mesh_controller::kubernetes::client()
                .await
                .context("cannot configure a Kubernetes client (--backend kubernetes): no in-cluster configuration and no usable KUBECONFIG")?;
            mesh_controller::kubernetes_backend(
                client,
                &args.cluster_domain,
                &args.default_namespace,
            )
        }
    };
    let served = mesh_controller::run(backend, listener, shutdown).await;
    for watcher in watchers {
        watcher.abort();
    }
    served?;
    Ok(())
}
