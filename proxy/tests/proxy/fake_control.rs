//! A fake control plane on the wire contracts of `stockkube-proto`: the
//! `Destination` stream and the `Registry` calls a proxy makes, over an
//! in-memory table the test changes directly. It stands for any controller
//! that speaks the API, so the proxy's tests do not depend on ours.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
};
use stockkube_proto::mesh::{
    AddrSet, DeregisterProxyRequest, DeregisterProxyResponse, DeregisterRequest,
    DeregisterResponse, Endpoint, EndpointSet, GetDestination, ListProxiesRequest,
    ListProxiesResponse, ListRequest, ListResponse, NoEndpoints, ProxyInfo, RegisterProxyResponse,
    RegisterRequest, RegisterResponse, ResolveRequest, ResolveResponse, Update,
    destination_server::{self, DestinationServer},
    registry_server::{self, RegistryServer},
    update,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};
use tonic::{Request, Response, Status};

type EndpointTable = BTreeMap<SocketAddr, String>;

/// What the fake knows: each service's endpoints, and the proxies that
/// registered.
#[derive(Clone, Default)]
pub struct FakeControl {
    services: Arc<Mutex<BTreeMap<String, watch::Sender<EndpointTable>>>>,
    proxies: Arc<Mutex<Vec<ProxyInfo>>>,
    /// Addresses `Resolve` names as services.
    addresses: Arc<Mutex<BTreeMap<SocketAddr, String>>>,
}

impl FakeControl {
    /// Serves both APIs on a fresh loopback port: its URL, and a sender
    /// that stops it.
    pub async fn spawn(&self) -> (String, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(DestinationServer::new(self.clone()))
            .add_service(RegistryServer::new(self.clone()));
        tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ));
        (url, stop)
    }

    fn service(&self, service: &str) -> watch::Sender<EndpointTable> {
        self.services
            .lock()
            .unwrap()
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(EndpointTable::new()).0)
            .clone()
    }

    /// `Resolve` answers `service` for `addr` (a Service's cluster IP).
    pub fn resolve_as(&self, addr: SocketAddr, service: &str) {
        self.addresses
            .lock()
            .unwrap()
            .insert(addr, service.to_owned());
    }

    pub fn register(&self, service: &str, addr: SocketAddr, instance: &str) {
        self.service(service).send_modify(|table| {
            table.insert(addr, instance.to_owned());
        });
    }

    pub fn deregister(&self, service: &str, addr: SocketAddr) -> bool {
        let mut removed = false;
        self.service(service).send_modify(|table| {
            removed = table.remove(&addr).is_some();
        });
        removed
    }

    /// Every service's endpoints.
    pub fn list(&self) -> Vec<(String, EndpointTable)> {
        let services = self.services.lock().unwrap();
        services
            .iter()
            .map(|(service, table)| (service.clone(), table.borrow().clone()))
            .collect()
    }

    pub fn proxies(&self) -> Vec<ProxyInfo> {
        self.proxies.lock().unwrap().clone()
    }
}

fn endpoints<'a>(table: impl Iterator<Item = (&'a SocketAddr, &'a String)>) -> Update {
    Update {
        update: Some(update::Update::Add(EndpointSet {
            endpoints: table
                .map(|(addr, instance)| Endpoint {
                    addr: addr.to_string(),
                    instance: instance.clone(),
                    ..Default::default()
                })
                .collect(),
        })),
    }
}

/// The updates from `previous` (None: the stream's first) to `current`:
/// removals, then the whole current set (adding is idempotent).
fn updates(previous: Option<&EndpointTable>, current: &EndpointTable) -> Vec<Update> {
    let mut updates = Vec::new();
    let removed: Vec<String> = previous
        .into_iter()
        .flat_map(|previous| previous.keys())
        .filter(|addr| !current.contains_key(addr))
        .map(ToString::to_string)
        .collect();
    if !removed.is_empty() {
        updates.push(Update {
            update: Some(update::Update::Remove(AddrSet { addrs: removed })),
        });
    }
    if current.is_empty() {
        updates.push(Update {
            update: Some(update::Update::NoEndpoints(NoEndpoints { exists: false })),
        });
    } else {
        updates.push(endpoints(current.iter()));
    }
    updates
}

type UpdateStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Update, Status>> + Send>>;

#[tonic::async_trait]
impl destination_server::Destination for FakeControl {
    type GetStream = UpdateStream;

    async fn get(
        &self,
        request: Request<GetDestination>,
    ) -> Result<Response<UpdateStream>, Status> {
        let mut table = self.service(&request.into_inner().service).subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut previous = None;
            loop {
                let current = table.borrow_and_update().clone();
                for update in updates(previous.as_ref(), &current) {
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
                previous = Some(current);
                tokio::select! {
                    changed = table.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        let ResolveRequest { ip, port } = request.into_inner();
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|_| Status::invalid_argument(format!("not an IP: {ip:?}")))?;
        let port = u16::try_from(port).map_err(|_| Status::invalid_argument("not a port"))?;
        let service = self
            .addresses
            .lock()
            .unwrap()
            .get(&SocketAddr::new(ip, port))
            .cloned()
            .unwrap_or_default();
        Ok(Response::new(ResolveResponse { service }))
    }
}

fn addr(text: &str) -> Result<SocketAddr, Status> {
    text.parse()
        .map_err(|_| Status::invalid_argument(format!("not an ip:port: {text:?}")))
}

#[tonic::async_trait]
impl registry_server::Registry for FakeControl {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let RegisterRequest { service, endpoint } = request.into_inner();
        let endpoint = endpoint.ok_or_else(|| Status::invalid_argument("no endpoint"))?;
        FakeControl::register(self, &service, addr(&endpoint.addr)?, &endpoint.instance);
        Ok(Response::new(RegisterResponse::default()))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let DeregisterRequest {
            service,
            addr: text,
        } = request.into_inner();
        let removed = FakeControl::deregister(self, &service, addr(&text)?);
        Ok(Response::new(DeregisterResponse { removed }))
    }

    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Err(Status::unimplemented("the proxy never lists"))
    }

    async fn register_proxy(
        &self,
        request: Request<ProxyInfo>,
    ) -> Result<Response<RegisterProxyResponse>, Status> {
        let info = request.into_inner();
        let mut proxies = self.proxies.lock().unwrap();
        proxies.retain(|p| p.admin_addr != info.admin_addr);
        proxies.push(info);
        Ok(Response::new(RegisterProxyResponse::default()))
    }

    async fn deregister_proxy(
        &self,
        request: Request<DeregisterProxyRequest>,
    ) -> Result<Response<DeregisterProxyResponse>, Status> {
        let admin_addr = request.into_inner().admin_addr;
        let mut proxies = self.proxies.lock().unwrap();
        let before = proxies.len();
        proxies.retain(|p| p.admin_addr != admin_addr);
        Ok(Response::new(DeregisterProxyResponse {
            removed: proxies.len() < before,
        }))
    }

    async fn list_proxies(
        &self,
        _: Request<ListProxiesRequest>,
    ) -> Result<Response<ListProxiesResponse>, Status> {
        Err(Status::unimplemented("the proxy never lists"))
    }
}
