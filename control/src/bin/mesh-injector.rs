//! The `mesh-injector` binary: the admission webhook that adds the sidecar
//! to pods as they are created (`mesh_controller::injector`).

use anyhow::Context as _;
use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    mesh_runtime::exit("mesh-injector", serve())
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let args = mesh_controller::injector::Args::parse();
    mesh_runtime::init_tracing_with("mesh_controller", &["kube_client::client::builder=off"]);
    let shutdown = mesh_runtime::shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen / MESH_INJECTOR_LISTEN)",
                args.listen
            )
        })?;
    let client = mesh_controller::kubernetes::client()
        .await
        .context("cannot configure a Kubernetes client: no in-cluster configuration and no usable KUBECONFIG")?;
    mesh_controller::injector::serve(&args, listener, client, shutdown)
        .await
        .with_context(|| {
            format!(
                "cannot serve with the certificate in {}",
                args.tls_dir.display()
            )
        })?;
    Ok(())
}
