//! `mesh-controller`: the StockKube Mesh control plane.
//!
//! Proxies ask it where a service's endpoints are (the `Destination` API, a
//! server stream of additions and removals). Today its backend is the local
//! in-memory [`registry`], written through the `Registry` API by `meshctl
//! demo` and tests; a Kubernetes backend will feed the same API.
//!
//! Layout:
//! - [`registry`]: services and endpoints in memory, published on watches.
//! - [`destination`]: the `Destination` and `Registry` gRPC services.
//! - [`inject`]: the sidecar the mesh adds to a pod (pure data; `meshctl
//!   inject` writes it, the admission webhook will add the same).
//! - [`run`]: serves both, health and reflection on a bound listener.

pub mod destination;
pub mod inject;
pub mod registry;

use std::{future::Future, net::SocketAddr};
use stockkube_proto::mesh::{
    destination_server::DestinationServer, registry_server::RegistryServer,
};
use tokio::net::TcpListener;

pub use registry::Registry;

/// Flags and environment of the `mesh-controller` binary.
#[derive(Debug, clap::Parser)]
#[command(name = "mesh-controller", version)]
pub struct Args {
    /// Address of the gRPC server (Destination, Registry, health, reflection).
    #[arg(long, env = "MESH_CONTROLLER_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], stockkube_proto::ports::CONTROLLER)))]
    pub listen: SocketAddr,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the reflection service could not load its descriptors")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("the gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Serves the control plane on `listener` until `shutdown` completes; open
/// destination streams end then, so proxies reconnect elsewhere.
pub async fn run(
    registry: Registry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<DestinationServer<destination::DestinationService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(stockkube_proto::mesh::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServeError::Reflection)?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "mesh-controller listening");
    }
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(DestinationServer::new(
            destination::DestinationService::new(registry.clone()),
        ))
        .add_service(RegistryServer::new(destination::RegistryService::new(
            registry,
        )))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(ServeError::Transport)
}
