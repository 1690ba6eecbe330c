//! Where the `Destination` API's answers come from: the local registry
//! (the demo, compose, tests) or the Kubernetes index. Both publish a
//! service's endpoints whole on a `watch` channel, as a [`Published`] set;
//! the destination stream turns each change into updates.

use crate::{
    kubernetes::{self, names::NameError},
    registry::{self, Registry},
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};
use tokio::sync::watch;

/// What the mesh knows about one endpoint besides its address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// A human name: the replica's id, or the pod's name.
    pub instance: String,
    /// It runs the mesh's sidecar.
    pub meshed: bool,
    /// The pod's ServiceAccount and node (Kubernetes), empty when unknown.
    pub service_account: String,
    pub node: String,
    /// The SPIFFE ID its proxy proves (see `Endpoint.identity`), empty
    /// when it has none.
    pub identity: String,
}

impl From<&str> for EndpointMeta {
    /// An endpoint known only by its instance name.
    fn from(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            ..Self::default()
        }
    }
}

/// One service's endpoints, keyed by address.
pub type Endpoints = Arc<BTreeMap<SocketAddr, EndpointMeta>>;

/// A service's answer: whether it exists, and its endpoints now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub exists: bool,
    pub endpoints: Endpoints,
}

/// Why a lookup has no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{ip}:{port} is the cluster IP and port of more than one Service: {services:?}")]
    Ambiguous {
        ip: IpAddr,
        port: u16,
        services: Vec<String>,
    },
}

/// The controller's source of endpoints.
#[derive(Debug, Clone)]
pub enum Backend {
    Local(Registry),
    Kubernetes(Arc<kubernetes::Index>),
}

impl From<Registry> for Backend {
    fn from(registry: Registry) -> Self {
        Backend::Local(registry)
    }
}

impl Backend {
    /// Follows the service `name` (as an app in `context_namespace` writes
    /// it). The Kubernetes backend answers once its first lists are in, so a
    /// controller that just started never says "no such service" too soon.
    pub async fn subscribe(
        &self,
        name: &str,
        context_namespace: &str,
    ) -> Result<Subscription, LookupError> {
        match self {
            Backend::Local(registry) => Ok(Subscription::Local(registry.watch(name))),
            Backend::Kubernetes(index) => {
                let target = index.target(name, context_namespace)?;
                index.synced().await;
                Ok(Subscription::Kubernetes(index.watch(&target)))
            }
        }
    }

    /// The service whose address `ip:port` is, by the name `subscribe`
    /// takes; `None` when it is no service (the local registry knows none by
    /// address).
    pub async fn resolve(&self, ip: IpAddr, port: u16) -> Result<Option<String>, LookupError> {
        match self {
            Backend::Local(_) => Ok(None),
            Backend::Kubernetes(index) => {
                index.synced().await;
                index.resolve(ip, port)
            }
        }
    }
}

/// A destination stream's view of one service.
#[derive(Debug)]
pub enum Subscription {
    Local(watch::Receiver<registry::EndpointSet>),
    Kubernetes(watch::Receiver<Published>),
}

impl Subscription {
    /// The current answer, marking it seen.
    pub fn current(&mut self) -> Published {
        match self {
            Subscription::Local(rx) => {
                let set = rx.borrow_and_update().clone();
                Published {
                    // The registry cannot tell a service from a name nobody
                    // registered yet.
                    exists: !set.is_empty(),
                    endpoints: set,
                }
            }
            Subscription::Kubernetes(rx) => rx.borrow_and_update().clone(),
        }
    }

    /// Waits for the next change; an error when the source is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match self {
            Subscription::Local(rx) => rx.changed().await,
            Subscription::Kubernetes(rx) => rx.changed().await,
        }
    }
}
