//! Discovery: where a service's endpoints are, as a `watch` of the whole
//! current set. The balancer reads the latest set and never learns where it
//! came from.
//!
//! Sources, one module each, all behind [`Discover`]:
//! - [`static_list`]: a fixed list from the command line;
//! - [`dns`]: every A/AAAA record of a name, re-resolved on an interval
//!   (docker compose service names, headless Kubernetes Services);
//! - [`destination`]: the controller's `Destination` gRPC stream;
//! - [`resolve`]: which service an intercepted connection's original
//!   destination is (the controller's `Destination.Resolve`).
//!
//! A source keeps the last set it knew when its backend is unreachable: an
//! outage of DNS or of the controller must not empty a working balancer.

pub mod destination;
pub mod dns;
pub mod resolve;
pub mod static_list;

use crate::config::{Config, DiscoverySpec};
use std::{net::SocketAddr, sync::Arc};
use tokio::sync::watch;

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// A human name (replica id, pod name); empty when the source has none.
    pub instance: Arc<str>,
    /// The identity its proxy proves (the controller's discovery only):
    /// calls to it are mTLS when this proxy has an identity too.
    pub identity: Option<Arc<str>>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, instance: &str) -> Self {
        Self {
            addr,
            instance: instance.into(),
            identity: None,
        }
    }

    /// The same endpoint, proving `identity` (none when empty).
    pub fn with_identity(mut self, identity: &str) -> Self {
        self.identity = (!identity.is_empty()).then(|| identity.into());
        self
    }
}

/// A service's endpoints, sorted by address.
pub type Endpoints = Arc<[Endpoint]>;

/// A source of endpoint sets.
pub trait Discover: Send + Sync + 'static {
    /// Starts watching `service`. The receiver holds the latest set; the
    /// source stops its work once every receiver is dropped.
    fn watch(&self, service: &str) -> watch::Receiver<Endpoints>;
}

/// Sorts and dedups, so equal sets compare equal whatever their source order.
pub fn normalize(mut endpoints: Vec<Endpoint>) -> Endpoints {
    endpoints.sort();
    endpoints.dedup_by(|a, b| a.addr == b.addr);
    endpoints.into()
}

/// Starts watching every service of `config` with its source.
pub fn watch_services(config: &Config) -> Vec<(String, watch::Receiver<Endpoints>)> {
    let destination = self::destination(config);
    config
        .discovery
        .iter()
        .map(|(service, spec)| {
            let endpoints = match spec {
                DiscoverySpec::Static(addrs) => static_list::StaticList::new(addrs).watch(service),
                DiscoverySpec::Dns { host, port } => {
                    dns::Dns::new(host, *port, config.dns_refresh).watch(service)
                }
                DiscoverySpec::Destination => destination
                    .as_ref()
                    .expect("Config checks that --destination is set")
                    .watch(service),
            };
            (service.clone(), endpoints)
        })
        .collect()
}

/// The controller's destination API, when `--destination` is set.
pub fn destination(config: &Config) -> Option<destination::Destination> {
    config
        .destination
        .clone()
        .map(|uri| destination::Destination::new(uri, &config.namespace))
}
