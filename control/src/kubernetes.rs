//! The Kubernetes backend: Services, EndpointSlices and Pods from the API
//! server, watched into the [`Index`] that answers the `Destination` API.
//!
//! - [`names`]: the names apps use for a Service;
//! - [`index`]: what is kept, and each Service port's endpoints;
//! - [`watchers`]: one `kube` watcher per kind, relisting after `410 Gone`,
//!   a dropped watch or an API server restart, with backoff.

pub mod index;
pub mod names;
pub mod watchers;

pub use index::{Index, Kind, MeshedPod};

/// A client for the cluster the controller runs in (in-cluster
/// configuration), else the one `KUBECONFIG` (or `~/.kube/config`) names.
pub async fn client() -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    client_for(config)
}

/// A client for `config` that reports every failed request to its caller:
/// the watchers retry with their own backoff and report the failure in the
/// controller's readiness, where kube's default retries would hide an API
/// server that answers 503 for minutes.
pub fn client_for(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    kube::Client::try_from(config)
}
