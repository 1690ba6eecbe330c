//! The gRPC servers of the control plane: `Destination` streams a service's
//! endpoints as additions and removals and resolves addresses to services,
//! from either [`Backend`]; `Registry` writes the local backend.

use crate::identity::{IdentityService, SpiffeId};
use crate::{
    backend::{Backend, EndpointMeta, LookupError, Published},
    registry::Registry,
};
use std::{net::SocketAddr, pin::Pin};
use stockkube_proto::mesh::{
    self, AddrSet, DeregisterProxyRequest, DeregisterProxyResponse, DeregisterRequest,
    DeregisterResponse, GetDestination, ListProxiesRequest, ListProxiesResponse, ListRequest,
    ListResponse, NoEndpoints, ProxyInfo, RegisterProxyResponse, RegisterRequest, RegisterResponse,
    ResolveRequest, ResolveResponse, ServiceEndpoints, Update, destination_server::Destination,
    registry_server, update,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

/// Serves `Destination` from a [`Backend`].
#[derive(Debug, Clone)]
pub struct DestinationService {
    backend: Backend,
}

impl DestinationService {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;

impl From<LookupError> for Status {
    fn from(err: LookupError) -> Self {
        match err {
            LookupError::Name(_) => Status::invalid_argument(err.to_string()),
            LookupError::Ambiguous { .. } => Status::failed_precondition(err.to_string()),
        }
    }
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = UpdateStream;

    async fn get(
        &self,
        request: Request<GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let GetDestination {
            service,
            context_namespace,
        } = request.into_inner();
        validate_service(&service)?;
        tracing::debug!(%service, %context_namespace, "destination watch");
        let mut subscription = self.backend.subscribe(&service, &context_namespace).await?;
        // A small buffer: a slow client only delays its own stream, and
        // diffs against the latest set keep it correct however far behind.
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut previous: Option<Published> = None;
            loop {
                let current = subscription.current();
                for update in diff(previous.as_ref(), &current) {
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
                previous = Some(current);
                tokio::select! {
                    changed = subscription.changed() => if changed.is_err() { return },
                    // The client went away; stop watching.
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        let ResolveRequest { ip, port } = request.into_inner();
        let ip = ip
            .parse()
            .map_err(|_| Status::invalid_argument(format!("{ip:?} is not an IP address")))?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Status::invalid_argument(format!("{port} is not a port")))?;
        let service = self.backend.resolve(ip, port).await?.unwrap_or_default();
        Ok(Response::new(ResolveResponse { service }))
    }
}

/// The updates that take a client from `previous` (None: nothing sent yet)
/// to `current`. The first answer is always the whole set or `no_endpoints`
/// (saying whether the service exists); an endpoint whose details changed
/// is sent again in an `add`.
pub fn diff(previous: Option<&Published>, current: &Published) -> Vec<Update> {
    let Some(previous) = previous else {
        return vec![if current.endpoints.is_empty() {
            no_endpoints(current.exists)
        } else {
            add(current.endpoints.iter())
        }];
    };
    let mut updates = Vec::new();
    let removed: Vec<String> = previous
        .endpoints
        .keys()
        .filter(|addr| !current.endpoints.contains_key(addr))
        .map(ToString::to_string)
        .collect();
    if !removed.is_empty() {
        updates.push(Update {
            update: Some(update::Update::Remove(AddrSet { addrs: removed })),
        });
    }
    let added: Vec<_> = current
        .endpoints
        .iter()
        .filter(|(addr, meta)| previous.endpoints.get(addr) != Some(meta))
        .collect();
    if !added.is_empty() {
        updates.push(add(added.into_iter()));
    }
    let emptied = current.endpoints.is_empty() && !previous.endpoints.is_empty();
    if emptied || (current.endpoints.is_empty() && current.exists != previous.exists) {
        updates.push(no_endpoints(current.exists));
    }
    updates
}

fn add<'a>(endpoints: impl Iterator<Item = (&'a SocketAddr, &'a EndpointMeta)>) -> Update {
    Update {
        update: Some(update::Update::Add(mesh::EndpointSet {
            endpoints: endpoints.map(|(addr, meta)| endpoint(addr, meta)).collect(),
        })),
    }
}

fn no_endpoints(exists: bool) -> Update {
    Update {
        update: Some(update::Update::NoEndpoints(NoEndpoints { exists })),
    }
}

fn endpoint(addr: &SocketAddr, meta: &EndpointMeta) -> mesh::Endpoint {
    mesh::Endpoint {
        addr: addr.to_string(),
        instance: meta.instance.clone(),
        meshed: meta.meshed,
        service_account: meta.service_account.clone(),
        node: meta.node.clone(),
        identity: meta.identity.clone(),
    }
}

fn validate_service(service: &str) -> Result<(), Status> {
    validate_name("service", service)
}

/// Names a caller writes are bounded and plain, so that what they log and
/// what the dashboard shows stays readable (and small) whoever wrote it.
fn validate_name(what: &str, name: &str) -> Result<(), Status> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    if valid {
        Ok(())
    } else {
        let shown: String = name.chars().take(64).collect();
        Err(Status::invalid_argument(format!(
            "{what} name must be 1-253 letters, digits, '-', '.', '_' or ':', got {shown:?}{}",
            if shown.len() < name.len() { "..." } else { "" }
        )))
    }
}

fn parse_addr(addr: &str) -> Result<SocketAddr, Status> {
    addr.parse().map_err(|_| {
        let shown: String = addr.chars().take(64).collect();
        Status::invalid_argument(format!("endpoint address must be ip:port, got {shown:?}"))
    })
}

/// Serves the `Registry` API over the same [`Registry`].
///
/// With identities (`auth`), every write names its caller: the request
/// carries `authorization: Bearer CREDENTIAL`, the credential the Identity
/// service takes. An endpoint may be registered or deregistered only by the
/// workload whose identity it proves, or by a registry admin; a proxy
/// entry by any authenticated caller. Without a credential a write is
/// UNAUTHENTICATED; with the wrong one, PERMISSION_DENIED. Reads are open.
#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Registry,
    /// With the Kubernetes backend, the pods with the sidecar are proxies
    /// too (the dashboard scrapes them).
    pods: Option<std::sync::Arc<crate::kubernetes::Index>>,
    auth: Option<IdentityService>,
}

impl RegistryService {
    pub fn new(registry: Registry, backend: &Backend, auth: Option<IdentityService>) -> Self {
        let pods = match backend {
            Backend::Local(_) => None,
            Backend::Kubernetes(index) => Some(index.clone()),
        };
        Self {
            registry,
            pods,
            auth,
        }
    }

    /// The caller of a write, when identities are on; `Err` when it proves none.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Option<SpiffeId>, Status> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "Registry writes need the caller's credential (authorization: Bearer ...)",
                )
            })?;
        match auth.caller(token.trim()).await {
            Ok(caller) => Ok(Some(caller)),
            Err(err) => {
                tracing::warn!(error = %err, "a Registry write with a credential that proves nothing");
                Err(Status::unauthenticated(format!(
                    "the credential proves no identity: {err}"
                )))
            }
        }
    }

    /// How soon a registration must be renewed; 0 when it need not be.
    fn renew_after_ms(&self) -> u64 {
        self.registry.renew_after().map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        })
    }

    /// Refuses a caller that may not write an endpoint proving `identity`.
    fn check_endpoint(&self, caller: &Option<SpiffeId>, identity: &str) -> Result<(), Status> {
        match (&self.auth, caller) {
            (Some(auth), Some(caller)) if !auth.may_register(caller, identity) => {
                Err(Status::permission_denied(format!(
                    "{caller} may write only endpoints that prove its own identity, not {:?}",
                    identity.chars().take(120).collect::<String>()
                )))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let caller = self.caller(&request).await?;
        let RegisterRequest { service, endpoint } = request.into_inner();
        validate_service(&service)?;
        let endpoint = endpoint.ok_or_else(|| Status::invalid_argument("endpoint is required"))?;
        let addr = parse_addr(&endpoint.addr)?;
        if !endpoint.instance.is_empty() {
            validate_name("instance", &endpoint.instance)?;
        }
        if !endpoint.identity.is_empty()
            && stockkube_proto::identity::parse(&endpoint.identity).is_none()
        {
            let shown: String = endpoint.identity.chars().take(120).collect();
            return Err(Status::invalid_argument(format!(
                "identity must be spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT, got {shown:?}"
            )));
        }
        self.check_endpoint(&caller, &endpoint.identity)?;
        let meta = EndpointMeta {
            instance: endpoint.instance,
            meshed: endpoint.meshed || !endpoint.identity.is_empty(),
            identity: endpoint.identity,
            ..EndpointMeta::default()
        };
        let instance = meta.instance.clone();
        if self.registry.register(&service, addr, meta) {
            tracing::info!(%service, %addr, %instance, "endpoint registered");
        }
        Ok(Response::new(RegisterResponse {
            renew_after_ms: self.renew_after_ms(),
        }))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let caller = self.caller(&request).await?;
        let DeregisterRequest { service, addr } = request.into_inner();
        validate_service(&service)?;
        let addr = parse_addr(&addr)?;
        // Looked up without being added: asking about a name costs nothing.
        if let Some(registered) = self.registry.endpoint(&service, addr) {
            self.check_endpoint(&caller, &registered.identity)?;
        }
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
                    .map(|(addr, meta)| endpoint(addr, meta))
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListResponse { services }))
    }

    async fn register_proxy(
        &self,
        request: Request<ProxyInfo>,
    ) -> Result<Response<RegisterProxyResponse>, Status> {
        self.caller(&request).await?;
        let info = request.into_inner();
        validate_name("workload", &info.workload)?;
        validate_name("instance", &info.instance)?;
        let admin_addr = parse_addr(&info.admin_addr)?;
        tracing::info!(workload = %info.workload, instance = %info.instance, %admin_addr, "proxy registered");
        self.registry.register_proxy(crate::registry::ProxyRecord {
            workload: info.workload,
            instance: info.instance,
            admin_addr,
        });
        Ok(Response::new(RegisterProxyResponse {
            renew_after_ms: self.renew_after_ms(),
        }))
    }

    async fn deregister_proxy(
        &self,
        request: Request<DeregisterProxyRequest>,
    ) -> Result<Response<DeregisterProxyResponse>, Status> {
        self.caller(&request).await?;
        let admin_addr = parse_addr(&request.into_inner().admin_addr)?;
        let removed = self.registry.deregister_proxy(admin_addr);
        Ok(Response::new(DeregisterProxyResponse { removed }))
    }

    async fn list_proxies(
        &self,
        _: Request<ListProxiesRequest>,
    ) -> Result<Response<ListProxiesResponse>, Status> {
        let mut proxies: Vec<ProxyInfo> = self
            .registry
            .proxies()
            .into_iter()
            .map(|p| ProxyInfo {
                workload: p.workload,
                instance: p.instance,
                admin_addr: p.admin_addr.to_string(),
            })
            .collect();
        // Pods with the sidecar, unless they announced themselves too.
        let pods = self
            .pods
            .iter()
            .flat_map(|index| index.meshed_pods(crate::inject::ADMIN_PORT));
        for pod in pods {
            let admin_addr = pod.admin.to_string();
            if !proxies.iter().any(|p| p.admin_addr == admin_addr) {
                proxies.push(ProxyInfo {
                    workload: pod.workload,
                    instance: pod.instance,
                    admin_addr,
                });
            }
        }
        Ok(Response::new(ListProxiesResponse { proxies }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(u16, &str)]) -> Published {
        Published {
            exists: !entries.is_empty(),
            endpoints: std::sync::Arc::new(
                entries
                    .iter()
                    .map(|(port, name)| {
                        let meta = EndpointMeta {
                            instance: (*name).to_owned(),
                            ..EndpointMeta::default()
                        };
                        (SocketAddr::from(([127, 0, 0, 1], *port)), meta)
                    })
                    .collect(),
            ),
        }
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
                update::Update::NoEndpoints(n) if n.exists => "none".to_owned(),
                update::Update::NoEndpoints(_) => "no such service".to_owned(),
            })
            .collect()
    }

    #[test]
    fn first_update_is_the_whole_set_or_none() {
        assert_eq!(kinds(&diff(None, &set(&[]))), ["no such service"]);
        let empty_but_there = Published {
            exists: true,
            ..Published::default()
        };
        assert_eq!(kinds(&diff(None, &empty_but_there)), ["none"]);
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
            ["remove 127.0.0.1:2,127.0.0.1:3", "no such service"]
        );
        // An endpoint whose details changed is sent again.
        let mut renamed = after.clone();
        std::sync::Arc::make_mut(&mut renamed.endpoints)
            .get_mut(&SocketAddr::from(([127, 0, 0, 1], 3)))
            .unwrap()
            .meshed = true;
        assert_eq!(kinds(&diff(Some(&after), &renamed)), ["add 127.0.0.1:3"]);
    }

    #[test]
    fn names_and_addresses_are_checked() {
        assert!(validate_service("stockdata.stocks").is_ok());
        assert!(validate_service("").is_err());
        assert!(validate_service("a b").is_err());
        assert!(validate_service("stockdata.stocks.svc.cluster.local:80").is_ok());
        assert!(parse_addr("127.0.0.1:80").is_ok());
        assert!(parse_addr("stockdata:80").is_err());
    }
}
