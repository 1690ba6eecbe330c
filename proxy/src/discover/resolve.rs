//! Which service an intercepted connection's original destination is: the
//! controller's `Destination.Resolve`, cached and shared by every
//! connection. An answer that does not come within the resolve timeout
//! (controller slow or away) is taken as "no service": the connection goes
//! to its original destination untouched, and that is counted.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use stockkube_proto::mesh::{ResolveRequest, destination_client::DestinationClient};
use tokio::time::Instant;
use tonic::transport::Channel;

/// How long an answer is reused. Cluster IPs belong to a Service for its
/// whole life; this bounds how long a new or deleted Service goes unseen.
const TTL: Duration = Duration::from_secs(10);

/// What an address is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A service, by the name the destination API takes.
    Service(Arc<str>),
    /// No service the controller knows.
    Unknown,
    /// The controller did not answer in time, or failed: treated as unknown,
    /// and not cached.
    Unavailable,
}

impl Resolution {
    /// The `result` label of `mesh_resolutions_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Resolution::Service(_) => "service",
            Resolution::Unknown => "unknown",
            Resolution::Unavailable => "unavailable",
        }
    }
}

/// Resolves addresses through the controller, with a cache.
#[derive(Debug)]
pub struct Resolver {
    client: DestinationClient<Channel>,
    timeout: Duration,
    cache: Mutex<HashMap<SocketAddr, (Instant, Resolution)>>,
}

impl Resolver {
    /// Asks the controller at `controller` (connected lazily); gives up on an
    /// answer after `timeout`.
    pub fn new(controller: http::Uri, timeout: Duration) -> Self {
        let channel = tonic::transport::Endpoint::from(controller)
            .connect_timeout(timeout)
            .connect_lazy();
        Self {
            client: DestinationClient::new(channel),
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn resolve(&self, addr: SocketAddr) -> Resolution {
        let now = Instant::now();
        if let Some((at, resolution)) = self.lock().get(&addr)
            && now.duration_since(*at) < TTL
        {
            return resolution.clone();
        }
        let request = ResolveRequest {
            ip: addr.ip().to_string(),
            port: u32::from(addr.port()),
        };
        let mut client = self.client.clone();
        let answer = tokio::time::timeout(self.timeout, client.resolve(request)).await;
        let resolution = match answer {
            Ok(Ok(response)) => match response.into_inner().service {
                service if service.is_empty() => Resolution::Unknown,
                service => Resolution::Service(service.into()),
            },
            Ok(Err(status)) => {
                tracing::debug!(%addr, code = ?status.code(), message = status.message(), "resolve failed");
                Resolution::Unavailable
            }
            Err(_) => {
                tracing::debug!(%addr, timeout = ?self.timeout, "resolve timed out");
                Resolution::Unavailable
            }
        };
        if resolution != Resolution::Unavailable {
            let mut cache = self.lock();
            // Bounded by what the app dials; stale entries go when it grows.
            if cache.len() >= 4096 {
                cache.retain(|_, (at, _)| now.duration_since(*at) < TTL);
            }
            cache.insert(addr, (now, resolution.clone()));
        }
        resolution
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (Instant, Resolution)>> {
        self.cache
            .lock()
            .expect("resolve cache lock is never poisoned")
    }
}
