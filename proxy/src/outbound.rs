//! Outbound: the local app's traffic to other services.
//!
//! One HTTP request, in order ([`Outbound::proxy_http`]):
//!
//! ```text
//! route     which service: the one :authority / Host names, else the listener's   (route)
//!           and which of its routes (the path) the request counts on
//! deadline  the service's timeout or the client's grpc-timeout, the shorter       (deadline)
//! budget    the request is deposited in its service's retry budget                (retry::budget)
//! replay    its body is kept, up to a limit, so a retry can send it again         (retry::replay)
//! attempts  pick -> send -> classify -> feedback, again on another endpoint        (attempt)
//!           while the failure is retryable and attempts, body and budget allow
//! respond   the endpoint's response, observed to its end, or the proxy's own      (respond)
//!           answer; both say which endpoint served and after how many attempts
//! ```
//!
//! Opaque TCP is balanced per connection ([`Outbound::proxy_tcp`]). The
//! listener hands over a target service; where that came from (a port
//! mapped to a service, or the original destination of an intercepted
//! connection, see [`intercept`]) is the listener's business.

mod attempt;
mod deadline;
pub mod intercept;
mod respond;
mod route;

pub(crate) use route::host as host_of;

use attempt::{Attempt, Attempts, Outcome};
use deadline::Deadline;

use crate::{
    balance::{Balancer, BalancerConfig, Balancers, EndpointState},
    body::{ProxyBody, Received},
    config::Config,
    detect::Protocol,
    discover::{Discover as _, destination::Destination},
    errors,
    http::{Upstream, strip_hop_by_hop},
    limits::Refusal,
    metrics::{Direction, Metrics, RouteLabels, RouteMetrics, paths::PathRoutes},
    retry::{RetryConfig, RetryPolicy, budget::RetryBudget, replay::ReplayBody},
    tcp::{self, OpaqueConfig},
    tls::{MeshTls, PeerTls},
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};

/// One target service: its balancer and the policies its requests follow.
#[derive(Debug)]
pub struct Service {
    pub balancer: Arc<Balancer>,
    timeout: Option<Duration>,
    retry_policy: RetryPolicy,
    budget: RetryBudget,
    /// Its routes' metrics.
    routes: PathRoutes,
}

impl Service {
    pub fn new(
        balancer: Arc<Balancer>,
        timeout: Option<Duration>,
        retry_policy: RetryPolicy,
        budget: RetryBudget,
        routes: PathRoutes,
    ) -> Self {
        Self {
            balancer,
            timeout,
            retry_policy,
            budget,
            routes,
        }
    }
}

/// The outbound side of one proxy: its services and the upstream clients.
#[derive(Debug)]
pub struct Outbound {
    /// The services named on the command line; looked up by every
    /// request's authority, so hashed with foldhash (keyed per process;
    /// clients only look up, never add), not SipHash.
    services: foldhash::HashMap<Arc<str>, Arc<Service>>,
    /// Services found by intercepting connections, by the controller's name
    /// for them; made on first use and kept (looked up once per connection).
    discovered: Mutex<HashMap<Arc<str>, Arc<Service>>>,
    destination: Option<Destination>,
    balancers: Arc<Balancers>,
    balancer: BalancerConfig,
    timeouts: BTreeMap<String, Duration>,
    retry_policies: BTreeMap<String, RetryPolicy>,
    retry: RetryConfig,
    upstream: Upstream<ReplayBody<Received>>,
    tls: Option<Arc<MeshTls>>,
    opaque: OpaqueConfig,
    metrics: Arc<Metrics>,
}

impl Outbound {
    /// The outbound side over the named services' `balancers` (in
    /// `all_balancers` too); services found later through `destination` are
    /// added there. With `tls`, calls to endpoints that have identities
    /// are mTLS.
    pub fn new(
        balancers: impl IntoIterator<Item = Arc<Balancer>>,
        all_balancers: Arc<Balancers>,
        destination: Option<Destination>,
        config: &Config,
        metrics: Arc<Metrics>,
        tls: Option<Arc<MeshTls>>,
    ) -> Self {
        let mut outbound = Self {
            services: foldhash::HashMap::default(),
            discovered: Mutex::new(HashMap::new()),
            destination,
            balancers: all_balancers,
            balancer: config.balancer,
            timeouts: config.timeouts.clone(),
            retry_policies: config.retry_policies.clone(),
            retry: config.retry.clone(),
            upstream: Upstream::new(tls.clone()),
            tls,
            opaque: config.opaque.clone(),
            metrics,
        };
        for balancer in balancers {
            // Keyed lowercase: requests name services by host, which has
            // no case (`route`).
            let name = balancer.service().to_ascii_lowercase().into();
            let service = outbound.service_over(balancer);
            outbound.services.insert(name, Arc::new(service));
        }
        outbound
    }

    /// A service over `balancer`, with the policies configured for its name.
    fn service_over(&self, balancer: Arc<Balancer>) -> Service {
        let name = balancer.service().clone();
        Service::new(
            balancer,
            self.timeouts.get(&*name).copied(),
            self.retry_policies.get(&*name).cloned().unwrap_or_default(),
            RetryBudget::new(self.retry.budget),
            self.metrics.paths(Direction::Outbound, name.clone()),
        )
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name.to_ascii_lowercase().as_str())
    }

    /// The service the controller calls `name` (as `Resolve` answered it),
    /// followed through the destination API from its first use on; `None`
    /// without a controller.
    pub fn discovered(&self, name: &Arc<str>) -> Option<Arc<Service>> {
        let destination = self.destination.as_ref()?;
        let mut discovered = self
            .discovered
            .lock()
            .expect("discovered services lock is never poisoned");
        if let Some(service) = discovered.get(name) {
            return Some(service.clone());
        }
        let balancer = Balancer::new(name, destination.watch(name), self.balancer);
        self.balancers.add(balancer.clone());
        let service = Arc::new(self.service_over(balancer));
        discovered.insert(name.clone(), service.clone());
        tracing::info!(service = %name, "following a service found by interception");
        Some(service)
    }

    /// Forwards one HTTP request to an endpoint of its service, and again
    /// to another one when the attempt failed in a way that may be retried.
    pub async fn proxy_http(
        &self,
        protocol: Protocol,
        target: &Arc<Service>,
        request: http::Request<Received>,
        source: std::net::IpAddr,
    ) -> http::Response<ProxyBody> {
        let arrived = Instant::now();
        let grpc = errors::is_grpc(&request);
        let service = route::route(&self.services, &request, target);
        let call = service.routes.call(&request, arrived, source);
        let (mut head, body) = request.into_parts();
        if protocol == Protocol::Http1 {
            strip_hop_by_hop(&mut head.headers);
        }
        let deadline = Deadline::of(arrived, service.timeout, &head.headers);
        if let Some(deadline) = deadline
            && deadline.after.is_zero()
        {
            // `grpc-timeout: 0`: the caller's time is up before anything
            // could be sent (gRPC servers answer so too).
            let expired = deadline.expired(service.balancer.service());
            return respond::respond(protocol, grpc, Outcome::NotSent(expired), call);
        }
        service.budget.deposit();
        let replay = ReplayBody::new(body, self.retry.replay_limit());
        let outcome = Attempts {
            upstream: &self.upstream,
            service,
            retry: &self.retry,
            metrics: &self.metrics,
        }
        .run(protocol, grpc, &head, &replay, deadline)
        .await;
        respond::respond(protocol, grpc, outcome, call)
    }

    /// Forwards one opaque connection to an endpoint of `target`; one whose
    /// protocol was not detected only when the endpoint's port is opaque.
    pub async fn proxy_tcp<C>(
        &self,
        target: &Arc<Service>,
        client: C,
        undetected: bool,
    ) -> Result<(), (Refusal, String)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let balancer = &target.balancer;
        let picked = match balancer.pick().await {
            Ok(picked) => picked,
            Err(err) => {
                tracing::debug!(%err, "no endpoint for an opaque connection");
                return Ok(());
            }
        };
        let endpoint = picked.endpoint().clone();
        let port = endpoint.endpoint.addr.port();
        if undetected && !self.opaque.allows(port) {
            // Nothing was sent: the pick only gives its slot back, and the
            // endpoint learns nothing.
            drop(picked);
            return Err((
                Refusal::ProtocolNotDetected,
                format!(
                    "a connection to {} that is not HTTP, and port {port} is not opaque",
                    balancer.service()
                ),
            ));
        }
        let identity = endpoint.endpoint.identity.as_ref();
        endpoint_metrics(&self.metrics, balancer.service(), &endpoint, || {
            self.upstream.peer_tls(identity)
        })
        .tcp_connection();
        picked.succeeded();
        let tls = self.tls.as_deref().zip(identity.map(|id| &**id));
        let idle = self.opaque.idle_timeout;
        if let Err(err) = tcp::forward(client, endpoint.endpoint.addr, tls, idle).await {
            tracing::debug!(%err, endpoint = %endpoint.addr_label, "opaque connection ended with an error");
        }
        Ok(())
    }
}

/// An outbound endpoint's metric handles, made on its first request or
/// connection and kept with it (so its series go with it).
fn endpoint_metrics<'e>(
    metrics: &Arc<Metrics>,
    service: &Arc<str>,
    endpoint: &'e EndpointState,
    tls: impl FnOnce() -> PeerTls,
) -> &'e Arc<RouteMetrics> {
    endpoint.metrics.get_or_init(|| {
        Arc::new(metrics.route(RouteLabels {
            direction: Direction::Outbound,
            target: service.clone(),
            endpoint: endpoint.addr_label.clone(),
            tls: tls(),
        }))
    })
}
