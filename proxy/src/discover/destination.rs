//! Discovery from the controller's `Destination` API: a server stream of
//! additions and removals, folded into whole sets. The stream is reopened
//! with backoff when it breaks; the last set stays in use meanwhile.

use super::{Discover, Endpoint, Endpoints, normalize};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};
use stockkube_proto::mesh::{GetDestination, destination_client::DestinationClient, update};
use tokio::sync::watch;
use tonic::transport::Channel;

#[derive(Debug, Clone)]
pub struct Destination {
    client: DestinationClient<Channel>,
    /// The proxy's namespace, for names without one (Kubernetes).
    namespace: String,
}

impl Destination {
    /// Connects lazily; an unreachable controller only delays discovery.
    pub fn new(uri: http::Uri, namespace: &str) -> Self {
        let channel = tonic::transport::Endpoint::from(uri)
            .connect_timeout(Duration::from_secs(3))
            .connect_lazy();
        Self {
            client: DestinationClient::new(channel),
            namespace: namespace.to_owned(),
        }
    }
}

impl Discover for Destination {
    fn watch(&self, service: &str) -> watch::Receiver<Endpoints> {
        let (tx, rx) = watch::channel(Endpoints::from([]));
        let mut client = self.client.clone();
        let service = service.to_owned();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let outcome = tokio::select! {
                    outcome = follow(&mut client, &service, &namespace, &tx) => outcome,
                    _ = tx.closed() => return,
                };
                match outcome {
                    Ok(()) => tracing::debug!(%service, "destination stream ended"),
                    Err(status) => {
                        tracing::warn!(%service, code = ?status.code(), message = status.message(), "destination stream failed; keeping the last endpoints")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        rx
    }
}

/// Applies one stream's updates to `tx` until it ends.
async fn follow(
    client: &mut DestinationClient<Channel>,
    service: &str,
    namespace: &str,
    tx: &watch::Sender<Endpoints>,
) -> Result<(), tonic::Status> {
    let mut stream = client
        .get(GetDestination {
            service: service.to_owned(),
            context_namespace: namespace.to_owned(),
        })
        .await?
        .into_inner();
    // The first update of each stream is the whole set, so state starts empty.
    let mut current: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    while let Some(update) = stream.message().await? {
        match update.update {
            Some(update::Update::Add(set)) => {
                for endpoint in set.endpoints {
                    match endpoint.addr.parse::<SocketAddr>() {
                        Ok(addr) => {
                            current.insert(
                                addr,
                                Endpoint::new(addr, &endpoint.instance)
                                    .with_identity(&endpoint.identity),
                            );
                        }
                        Err(_) => {
                            tracing::debug!(%service, addr = %endpoint.addr, "ignoring a bad endpoint address")
                        }
                    }
                }
            }
            Some(update::Update::Remove(set)) => {
                for addr in set.addrs {
                    if let Ok(addr) = addr.parse() {
                        current.remove(&addr);
                    }
                }
            }
            Some(update::Update::NoEndpoints(_)) => current.clear(),
            None => continue,
        }
        let set = normalize(current.values().cloned().collect());
        tracing::info!(%service, endpoints = set.len(), "destination endpoints changed");
        tx.send_replace(set);
    }
    Ok(())
}
