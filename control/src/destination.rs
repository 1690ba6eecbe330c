//! The gRPC servers of the control plane: `Destination` streams a service's
//! endpoints as additions and removals; `Registry` writes the local backend.

use crate::registry::{EndpointSet, Registry};
use std::{net::SocketAddr, pin::Pin};
use stockkube_proto::mesh::{
    self, AddrSet, DeregisterProxyRequest, DeregisterProxyResponse, DeregisterRequest,
    DeregisterResponse, GetDestination, ListProxiesRequest, ListProxiesResponse, ListRequest,
    ListResponse, NoEndpoints, ProxyInfo, RegisterProxyResponse, RegisterRequest, RegisterResponse,
    ServiceEndpoints, Update, destination_server::Destination, registry_server, update,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

/// Serves `Destination.Get` from a [`Registry`].
#[derive(Debug, Clone)]
pub struct DestinationService {
    registry: Registry,
}

impl DestinationService {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = UpdateStream;

    async fn get(
        &self,
        request: Request<GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let service = request.into_inner().service;
        validate_service(&service)?;
        tracing::debug!(%service, "destination watch");
        let mut watch = self.registry.watch(&service);
        // A small buffer: a slow client only delays its own stream, and
        // diffs against the latest set keep it correct however far behind.
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut previous: Option<EndpointSet> = None;
            loop {
                let current = watch.borrow_and_update().clone();
                for update in diff(previous.as_deref(), &current) {
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
                previous = Some(current);
                tokio::select! {
                    changed = watch.changed() => if changed.is_err() { return },
                    // The client went away; stop watching.
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The updates that take a client from `previous` (None: nothing sent yet)
/// to `current`. The first answer is always the whole set or `no_endpoints`.
pub fn diff(
    previous: Option<&std::collections::BTreeMap<SocketAddr, String>>,
    current: &std::collections::BTreeMap<SocketAddr, String>,
) -> Vec<Update> {
    let Some(previous) = previous else {
        return vec![if current.is_empty() {
            no_endpoints()
        } else {
            add(current.iter())
        }];
    };
    let mut updates = Vec::new();
    let removed: Vec<String> = previous
        .keys()
        .filter(|addr| !current.contains_key(addr))
        .map(ToString::to_string)
        .collect();
    if !removed.is_empty() {
        updates.push(Update {
            update: Some(update::Update::Remove(AddrSet { addrs: removed })),
        });
    }
    let added: Vec<_> = current
        .iter()
        .filter(|(addr, instance)| previous.get(addr) != Some(instance))
        .collect();
    if !added.is_empty() {
        updates.push(add(added.into_iter()));
    }
    if current.is_empty() && !previous.is_empty() {
        updates.push(no_endpoints());
    }
    updates
}

fn add<'a>(endpoints: impl Iterator<Item = (&'a SocketAddr, &'a String)>) -> Update {
    Update {
        update: Some(update::Update::Add(mesh::EndpointSet {
            endpoints: endpoints
                .map(|(addr, instance)| endpoint(addr, instance))
                .collect(),
        })),
    }
}

fn no_endpoints() -> Update {
    Update {
        update: Some(update::Update::NoEndpoints(NoEndpoints {})),
    }
}

fn endpoint(addr: &SocketAddr, instance: &str) -> mesh::Endpoint {
    mesh::Endpoint {
        addr: addr.to_string(),
        instance: instance.to_owned(),
    }
}

fn validate_service(service: &str) -> Result<(), Status> {
    let valid = !service.is_empty()
        && service.len() <= 253
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "service name must be 1-253 letters, digits, '-', '.' or '_', got {service:?}"
        )))
    }
}

fn parse_addr(addr: &str) -> Result<SocketAddr, Status> {
    addr.parse().map_err(|_| {
        Status::invalid_argument(format!("endpoint address must be ip:port, got {addr:?}"))
    })
}

/// Serves the `Registry` API over the same [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Registry,
}

impl RegistryService {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let RegisterRequest { service, endpoint } = request.into_inner();
        validate_service(&service)?;
        let endpoint = endpoint.ok_or_else(|| Status::invalid_argument("endpoint is required"))?;
        let addr = parse_addr(&endpoint.addr)?;
        if self.registry.register(&service, addr, &endpoint.instance) {
            tracing::info!(%service, %addr, instance = %endpoint.instance, "endpoint registered");
        }
        Ok(Response::new(RegisterResponse {}))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let DeregisterRequest { service, addr } = request.into_inner();
        validate_service(&service)?;
        let addr = parse_addr(&addr)?;
        let removed = self.registry.deregister(&service, addr);
        if removed {
            tracing::info!(%service, %addr, "endpoint deregistered");
        }
        Ok(Response::new(DeregisterResponse { removed }))
    }

    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let services = self
            .registry
            .list()
            .into_iter()
            .map(|(service, set)| ServiceEndpoints {
                service,
                endpoints: set
                    .iter()
                    .map(|(addr, instance)| endpoint(addr, instance))
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListResponse { services }))
    }

    async fn register_proxy(
        &self,
        request: Request<ProxyInfo>,
    ) -> Result<Response<RegisterProxyResponse>, Status> {
        let info = request.into_inner();
        validate_service(&info.workload)?;
        let admin_addr = parse_addr(&info.admin_addr)?;
        tracing::info!(workload = %info.workload, instance = %info.instance, %admin_addr, "proxy registered");
        self.registry.register_proxy(crate::registry::ProxyRecord {
            workload: info.workload,
            instance: info.instance,
            admin_addr,
        });
        Ok(Response::new(RegisterProxyResponse {}))
    }

    async fn deregister_proxy(
        &self,
        request: Request<DeregisterProxyRequest>,
    ) -> Result<Response<DeregisterProxyResponse>, Status> {
        let admin_addr = parse_addr(&request.into_inner().admin_addr)?;
        let removed = self.registry.deregister_proxy(admin_addr);
        Ok(Response::new(DeregisterProxyResponse { removed }))
    }

    async fn list_proxies(
        &self,
        _: Request<ListProxiesRequest>,
    ) -> Result<Response<ListProxiesResponse>, Status> {
        let proxies = self
            .registry
            .proxies()
            .into_iter()
            .map(|p| ProxyInfo {
                workload: p.workload,
                instance: p.instance,
                admin_addr: p.admin_addr.to_string(),
            })
            .collect();
        Ok(Response::new(ListProxiesResponse { proxies }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn set(entries: &[(u16, &str)]) -> BTreeMap<SocketAddr, String> {
        entries
            .iter()
            .map(|(port, name)| {
                (
                    SocketAddr::from(([127, 0, 0, 1], *port)),
                    (*name).to_owned(),
                )
            })
            .collect()
    }

    fn kinds(updates: &[Update]) -> Vec<String> {
        updates
            .iter()
            .map(|u| match u.update.as_ref().unwrap() {
                update::Update::Add(s) => format!(
                    "add {}",
                    s.endpoints
                        .iter()
                        .map(|e| e.addr.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                update::Update::Remove(s) => format!("remove {}", s.addrs.join(",")),
                update::Update::NoEndpoints(_) => "none".to_owned(),
            })
            .collect()
    }

    #[test]
    fn first_update_is_the_whole_set_or_none() {
        assert_eq!(kinds(&diff(None, &set(&[]))), ["none"]);
        assert_eq!(
            kinds(&diff(None, &set(&[(1, "a"), (2, "b")]))),
            ["add 127.0.0.1:1,127.0.0.1:2"]
        );
    }

    #[test]
    fn later_updates_carry_only_the_difference() {
        let before = set(&[(1, "a"), (2, "b")]);
        let after = set(&[(2, "b"), (3, "c")]);
        assert_eq!(
            kinds(&diff(Some(&before), &after)),
            ["remove 127.0.0.1:1", "add 127.0.0.1:3"]
        );
        assert!(diff(Some(&after), &after).is_empty());
        assert_eq!(
            kinds(&diff(Some(&after), &set(&[]))),
            ["remove 127.0.0.1:2,127.0.0.1:3", "none"]
        );
    }

    #[test]
    fn names_and_addresses_are_checked() {
        assert!(validate_service("stockdata.stocks").is_ok());
        assert!(validate_service("").is_err());
        assert!(validate_service("a b").is_err());
        assert!(parse_addr("127.0.0.1:80").is_ok());
        assert!(parse_addr("stockdata:80").is_err());
    }
}
