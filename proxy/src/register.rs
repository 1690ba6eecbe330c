//! Self-registration with the controller, where nothing else tells it about
//! the proxy (docker compose, a VM): the proxy announces its admin server
//! (so the dashboard scrapes it) and, optionally, its inbound listener as an
//! endpoint of a service (so other proxies discover it). It announces again
//! every 10 s, or sooner when the controller's answer asks (registrations
//! there are leases), so a restarted controller relearns it and one that
//! dies is forgotten; it withdraws both when it drains.

use std::{net::SocketAddr, time::Duration};
use stockkube_proto::mesh::{
    DeregisterProxyRequest, DeregisterRequest, Endpoint, ProxyInfo, RegisterRequest,
    registry_client::RegistryClient,
};
use tokio::sync::watch;
use tonic::transport::Channel;

/// How often registration is repeated, unless the controller asks for
/// sooner (its registrations are leases).
const REFRESH: Duration = Duration::from_secs(10);
/// The soonest a controller may ask for a renewal, so that a confused one
/// cannot make the proxy call it in a loop.
const MIN_REFRESH: Duration = Duration::from_millis(100);

/// What the proxy says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The controller's URL (`--destination`).
    pub controller: http::Uri,
    pub workload: String,
    /// The instance name; the host name when not given.
    pub instance: Option<String>,
    /// The host others reach this proxy at (the host name when not given);
    /// resolved at each announcement, since a container's address is only
    /// known once it runs.
    pub advertise: Option<String>,
    pub admin_port: u16,
    /// The service whose endpoint the inbound listener is, with its port.
    pub service: Option<(String, u16)>,
    /// With `--identity`: the identity the endpoint proves, and the
    /// credential that proves this proxy is it (read at each announcement;
    /// the controller takes Registry writes only from a known caller).
    pub identity: Option<(String, std::path::PathBuf)>,
}

impl Registration {
    /// With the ports actually bound (a flag may have said 0).
    pub fn bound(mut self, admin: SocketAddr, inbound: Option<SocketAddr>) -> Self {
        self.admin_port = admin.port();
        if let (Some((_, port)), Some(inbound)) = (&mut self.service, inbound) {
            *port = inbound.port();
        }
        self
    }
}

/// The machine's host name, the default instance name and advertised host
/// (in a container or pod, its own name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

async fn resolve(host: &str) -> Result<std::net::IpAddr, String> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .map(|addr| addr.ip())
        .ok_or_else(|| format!("{host} has no address"))
}

/// Announces until `drain` turns true, then withdraws.
pub async fn run(mut registration: Registration, mut drain: watch::Receiver<bool>) {
    if registration.instance.is_none() || registration.advertise.is_none() {
        let name = hostname();
        registration.instance.get_or_insert_with(|| name.clone());
        registration.advertise.get_or_insert(name);
    }
    let channel = tonic::transport::Endpoint::from(registration.controller.clone())
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut client = RegistryClient::new(channel);
    let mut announced: Option<(SocketAddr, Option<SocketAddr>)> = None;
    let mut credential = None;
    let mut failing = false;
    loop {
        credential = read_credential(&registration).await.or(credential);
        let mut refresh = REFRESH;
        match announce(&mut client, &registration, credential.as_deref()).await {
            Ok((addrs, renew_after)) => {
                if let Some(renew_after) = renew_after {
                    refresh = renew_after.clamp(MIN_REFRESH, REFRESH);
                }
                if failing || announced.is_none() {
                    tracing::info!(admin = %addrs.0, endpoint = ?addrs.1, controller = %registration.controller, "registered with the controller");
                }
                failing = false;
                announced = Some(addrs);
            }
            Err(err) => {
                // One warning per outage, not one per attempt.
                if !failing {
                    tracing::warn!(%err, controller = %registration.controller, "cannot register with the controller; retrying");
                }
                failing = true;
            }
        }
        let wait = if failing {
            Duration::from_secs(1).min(refresh)
        } else {
            refresh
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = drain.wait_for(|draining| *draining) => break,
        }
    }
    if let Some((admin, endpoint)) = announced {
        let withdraw = async {
            if let (Some((service, _)), Some(addr)) = (&registration.service, endpoint) {
                let request = DeregisterRequest {
                    service: service.clone(),
                    addr: addr.to_string(),
                };
                client
                    .deregister(authorized(request, credential.as_deref()))
                    .await?;
            }
            let request = DeregisterProxyRequest {
                admin_addr: admin.to_string(),
            };
            client
                .deregister_proxy(authorized(request, credential.as_deref()))
                .await?;
            Ok::<_, tonic::Status>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), withdraw).await {
            Ok(Ok(())) => tracing::info!("deregistered from the controller"),
            Ok(Err(status)) => tracing::warn!(message = status.message(), "cannot deregister"),
            Err(_) => tracing::warn!("the controller did not answer the deregistration in 2 s"),
        }
    }
}

/// The credential, when the proxy has an identity and can read it.
async fn read_credential(registration: &Registration) -> Option<String> {
    let (_, file) = registration.identity.as_ref()?;
    match tokio::fs::read_to_string(file).await {
        Ok(token) => Some(token.trim().to_owned()),
        Err(err) => {
            tracing::debug!(%err, file = %file.display(), "cannot read the credential");
            None
        }
    }
}

/// `message` with the caller's credential, when it has one.
fn authorized<T>(message: T, credential: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = credential.and_then(|c| format!("Bearer {c}").parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The addresses announced and how soon the controller wants them again.
type Announced = ((SocketAddr, Option<SocketAddr>), Option<Duration>);

/// One announcement: the admin address and, if asked, the endpoint.
async fn announce(
    client: &mut RegistryClient<Channel>,
    registration: &Registration,
    credential: Option<&str>,
) -> Result<Announced, String> {
    let mut renew_after = None::<Duration>;
    let mut lease = |ms: u64| {
        if ms > 0 {
            let asked = Duration::from_millis(ms);
            renew_after = Some(renew_after.map_or(asked, |d| d.min(asked)));
        }
    };
    let advertise = registration.advertise.as_deref().unwrap_or("localhost");
    let ip = resolve(advertise).await?;
    let instance = registration.instance.clone().unwrap_or_default();
    let admin = SocketAddr::new(ip, registration.admin_port);
    let mut endpoint = None;
    if let Some((service, port)) = &registration.service {
        let addr = SocketAddr::new(ip, *port);
        let identity = registration.identity.as_ref();
        let request = RegisterRequest {
            service: service.clone(),
            endpoint: Some(Endpoint {
                addr: addr.to_string(),
                instance: instance.clone(),
                meshed: true,
                identity: identity.map(|(id, _)| id.clone()).unwrap_or_default(),
                ..Default::default()
            }),
        };
        let answer = client
            .register(authorized(request, credential))
            .await
            .map_err(|s| format!("Register: {}", s.message()))?;
        lease(answer.into_inner().renew_after_ms);
        endpoint = Some(addr);
    }
    let request = ProxyInfo {
        workload: registration.workload.clone(),
        instance,
        admin_addr: admin.to_string(),
    };
    let answer = client
        .register_proxy(authorized(request, credential))
        .await
        .map_err(|s| format!("RegisterProxy: {}", s.message()))?;
    lease(answer.into_inner().renew_after_ms);
    Ok(((admin, endpoint), renew_after))
}
