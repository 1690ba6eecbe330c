//! `mesh-controller`: the StockKube Mesh control plane.
//!
//! Proxies ask it where a service's endpoints are (the `Destination` API, a
//! server stream of additions and removals) and which service an address
//! is. Its [`backend`] is either the local in-memory [`registry`], written
//! through the `Registry` API by `meshctl demo`, compose and tests, or the
//! [`kubernetes`] index of Services, EndpointSlices and Pods.
//!
//! Layout:
//! - [`backend`]: the two backends behind one interface.
//! - [`registry`]: services and endpoints in memory, published on watches.
//! - [`kubernetes`]: the API server's objects, watched into an index.
//! - [`destination`]: the `Destination` and `Registry` gRPC services.
//! - [`inject`]: the sidecar the mesh adds to a pod (pure data; `meshctl
//!   inject --manual` writes it, the injector adds the same).
//! - [`injector`]: the admission webhook (`mesh-injector`), over TLS.
//! - [`tls`]: the crypto provider, the injector's certificates, checks.
//! - [`run`]: serves both, health and reflection on a bound listener.

pub mod backend;
pub mod destination;
pub mod identity;
pub mod inject;
pub mod injector;
pub mod kubernetes;
pub mod registry;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod tls;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};
use stockkube_proto::mesh::{
    destination_server::DestinationServer, identity_server::IdentityServer,
    registry_server::RegistryServer,
};
use tokio::net::TcpListener;

pub use backend::Backend;
pub use registry::Registry;

/// Flags and environment of the `mesh-controller` binary.
#[derive(Debug, clap::Parser)]
#[command(name = "mesh-controller", version)]
pub struct Args {
    /// Address of the gRPC server (Destination, Registry, health, reflection).
    #[arg(long, env = "MESH_CONTROLLER_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], stockkube_proto::ports::CONTROLLER)))]
    pub listen: SocketAddr,

    /// Where endpoints come from: `local` (the in-memory registry, written
    /// through the Registry API) or `kubernetes` (Services, EndpointSlices
    /// and Pods from the API server, found in-cluster or through
    /// KUBECONFIG, as every Kubernetes tool does).
    #[arg(long, env = "MESH_CONTROLLER_BACKEND", default_value = "local")]
    pub backend: BackendKind,

    /// The cluster's DNS domain (Kubernetes backend).
    #[arg(
        long,
        env = "MESH_CONTROLLER_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,

    /// The mesh's certificate authority, `ca.crt` (the trust anchor),
    /// `issuer.crt` and `issuer.key`: turns the Identity service on, which
    /// signs proxies' certificates.
    #[arg(long, env = "MESH_CONTROLLER_IDENTITY_DIR", value_name = "DIR")]
    pub identity_dir: Option<std::path::PathBuf>,

    /// The identities' trust domain: spiffe://TRUST-DOMAIN/ns/NS/sa/ACCOUNT.
    #[arg(
        long,
        env = "MESH_CONTROLLER_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,

    /// How long the certificates it signs are valid.
    #[arg(long, env = "MESH_CONTROLLER_CERTIFICATE_LIFETIME", default_value = "24h", value_parser = mesh_runtime::parse_duration)]
    pub certificate_lifetime: std::time::Duration,

    /// Local backend: the workloads' bootstrap credentials, one
    /// `NAMESPACE/ACCOUNT CREDENTIAL` per line (the Kubernetes backend
    /// checks ServiceAccount tokens with the API server instead).
    #[arg(long, env = "MESH_CONTROLLER_IDENTITY_BOOTSTRAP", value_name = "FILE")]
    pub identity_bootstrap: Option<std::path::PathBuf>,

    /// With --identity-dir: make the trust anchor and the issuer there when
    /// it holds none (one machine, compose; in Kubernetes `meshctl install`
    /// makes them).
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_GENERATE",
        requires = "identity_dir"
    )]
    pub identity_generate: bool,

    /// Local backend: publish the trust anchor (`ca.crt`) and a credential
    /// for each --identity-workload (`NAMESPACE/ACCOUNT/token`) in this
    /// directory, for the proxies to read. Anyone who reads it can act as
    /// those workloads: for demos and development.
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_PUBLISH",
        value_name = "DIR",
        requires = "identity_dir"
    )]
    pub identity_publish: Option<std::path::PathBuf>,

    /// A workload, NAMESPACE/ACCOUNT, to publish a credential for. Repeat,
    /// or comma-separate in the variable.
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_WORKLOAD",
        value_name = "NAMESPACE/ACCOUNT",
        value_delimiter = ',',
        requires = "identity_publish",
        value_parser = identity::provision::parse_workload
    )]
    pub identity_workload: Vec<(String, String)>,

    /// With identities: an identity that may write any Registry entry
    /// (others may register only endpoints that prove their own identity).
    /// Repeat, or comma-separate in the variable.
    #[arg(
        long,
        env = "MESH_CONTROLLER_REGISTRY_ADMIN",
        value_name = "SPIFFE-ID",
        value_delimiter = ',',
        requires = "identity_dir"
    )]
    pub registry_admin: Vec<String>,

    /// The namespace of callers that do not say theirs (Kubernetes backend).
    #[arg(
        long,
        env = "MESH_CONTROLLER_DEFAULT_NAMESPACE",
        default_value = "default"
    )]
    pub default_namespace: String,

    /// How long an endpoint or proxy registered through the Registry API
    /// stays unless registered again: the writer is told to renew at two
    /// fifths of it, so one that died without deregistering (a SIGKILLed
    /// sidecar) is dropped within two and a half renewals. The local
    /// backend only; with the Kubernetes backend, announced proxies last the
    /// default.
    #[arg(long, env = "MESH_CONTROLLER_REGISTRATION_LEASE", default_value = "25s", value_parser = mesh_runtime::parse_duration)]
    pub registration_lease: Duration,
}

/// How long a registration through the Registry API lasts unless renewed
/// (by default; `--registration-lease`).
pub const REGISTRATION_LEASE: Duration = Duration::from_secs(25);

/// The controller's source of endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Local,
    Kubernetes,
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
///
/// Health (`grpc.health.v1`) says the `Destination` service is serving once
/// the backend can answer: at once for the local registry; for Kubernetes,
/// once every kind was listed, and not while a watch fails.
pub async fn run(
    backend: impl Into<Backend>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    run_with(backend, None, listener, shutdown).await
}

/// [`run`], with the Identity service when it is given.
pub async fn run_with(
    backend: impl Into<Backend>,
    identity: Option<identity::IdentityService>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let backend = backend.into();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let readiness = match &backend {
        Backend::Local(_) => {
            health_reporter
                .set_serving::<DestinationServer<destination::DestinationService>>()
                .await;
            None
        }
        Backend::Kubernetes(index) => Some(tokio::spawn(report_readiness(
            index.clone(),
            health_reporter,
        ))),
    };
    // The Registry API writes the local registry; with the Kubernetes
    // backend it keeps only the proxies that announce themselves, and lists
    // the pods with the sidecar beside them.
    let registry = match &backend {
        Backend::Local(registry) => registry.clone(),
        Backend::Kubernetes(_) => Registry::with_lease(REGISTRATION_LEASE),
    };
    let expiry = tokio::spawn(registry.clone().expire_continuously());
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(stockkube_proto::mesh::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServeError::Reflection)?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "mesh-controller listening");
    }
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(RegistryServer::new(destination::RegistryService::new(
            registry,
            &backend,
            identity.clone(),
        )))
        .add_service(DestinationServer::new(
            destination::DestinationService::new(backend),
        ))
        .add_optional_service(identity.map(IdentityServer::new))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(ServeError::Transport);
    if let Some(readiness) = readiness {
        readiness.abort();
    }
    expiry.abort();
    served
}

/// Follows the Kubernetes index's health into the gRPC health service.
async fn report_readiness(
    index: Arc<kubernetes::Index>,
    reporter: tonic_health::server::HealthReporter,
) {
    let mut health = index.health();
    loop {
        let state = health.borrow_and_update().clone();
        if state.ready() {
            reporter
                .set_serving::<DestinationServer<destination::DestinationService>>()
                .await;
        } else {
            tracing::debug!(?state, "not ready");
            reporter
                .set_not_serving::<DestinationServer<destination::DestinationService>>()
                .await;
        }
        if health.changed().await.is_err() {
            return;
        }
    }
}

/// The Kubernetes backend: the index, fed by watchers on `client` (which
/// run until the returned tasks are aborted). With `trust_domain` (the
/// controller issues identities), meshed pods' endpoints carry their
/// ServiceAccount's identity, so that callers speak mTLS to them.
pub fn kubernetes_backend(
    client: kube::Client,
    cluster_domain: &str,
    default_namespace: &str,
    trust_domain: Option<&str>,
) -> (Backend, Vec<tokio::task::JoinHandle<()>>) {
    let mut index = kubernetes::Index::new(cluster_domain, default_namespace);
    if let Some(trust_domain) = trust_domain {
        index = index.with_identities(trust_domain);
    }
    let index = Arc::new(index);
    let watchers = kubernetes::watchers::spawn(client, index.clone());
    (Backend::Kubernetes(index), watchers)
}
