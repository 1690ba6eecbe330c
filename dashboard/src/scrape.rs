//! Scraping: every interval, ask the controller which proxies exist, then
//! read each proxy's `/metrics` and `/endpoints` at once. Each round becomes
//! one [`Snapshot`]; the last few minutes of them are the [`History`] every
//! page is computed from. A proxy that does not answer stays in the
//! snapshot, marked down with the reason.

use crate::prom::{self, Sample};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use stockkube_proto::{
    admin,
    mesh::{ListProxiesRequest, registry_client::RegistryClient},
};
use tokio::sync::watch;
use tonic::transport::Channel;

/// A proxy as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProxyTarget {
    pub workload: String,
    pub instance: String,
    pub admin_addr: SocketAddr,
}

/// What the dashboard read from `/endpoints`.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct EndpointsDoc {
    pub services: Vec<ServiceDoc>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct ServiceDoc {
    pub service: String,
    #[serde(default)]
    pub balance: String,
    pub endpoints: Vec<EndpointDoc>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct EndpointDoc {
    pub addr: String,
    #[serde(default)]
    pub instance: String,
    #[serde(default)]
    pub ewma_ms: f64,
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub served: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub ejected: bool,
}

/// One proxy in one round.
#[derive(Debug, Clone)]
pub struct ProxyScrape {
    pub target: ProxyTarget,
    /// `None` when the proxy answered; else why not.
    pub error: Option<String>,
    pub samples: Arc<[Sample]>,
    pub endpoints: EndpointsDoc,
}

impl ProxyScrape {
    pub fn up(&self) -> bool {
        self.error.is_none()
    }
}

/// One scrape round.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub wall: SystemTime,
    pub proxies: Vec<ProxyScrape>,
    /// Set when the controller could not be asked for the proxy list; the
    /// previous list was scraped instead.
    pub registry_error: Option<String>,
}

/// Snapshots, oldest first.
pub type History = Arc<VecDeque<Arc<Snapshot>>>;

/// Scraping settings.
#[derive(Debug, Clone)]
pub struct ScrapeConfig {
    pub controller: http::Uri,
    pub interval: Duration,
    /// How much history to keep.
    pub keep: Duration,
}

/// Scrapes until every receiver of the returned history is gone.
pub fn spawn(config: ScrapeConfig) -> watch::Receiver<History> {
    let (tx, rx) = watch::channel(History::default());
    tokio::spawn(async move {
        let registry = RegistryClient::new(
            tonic::transport::Endpoint::from(config.controller.clone())
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(2))
                .connect_lazy(),
        );
        let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut scraper = Scraper {
            registry,
            http,
            targets: Vec::new(),
        };
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            let snapshot = Arc::new(scraper.round(config.interval).await);
            tx.send_modify(|history| {
                let history = Arc::make_mut(history);
                history.push_back(snapshot);
                while history
                    .front()
                    .is_some_and(|s| s.at.elapsed() > config.keep)
                {
                    history.pop_front();
                }
            });
        }
    });
    rx
}

struct Scraper {
    registry: RegistryClient<Channel>,
    http: Client<HttpConnector, Empty<Bytes>>,
    targets: Vec<ProxyTarget>,
}

impl Scraper {
    async fn round(&mut self, interval: Duration) -> Snapshot {
        let registry_error = match self.registry.list_proxies(ListProxiesRequest {}).await {
            Ok(list) => {
                self.targets = list
                    .into_inner()
                    .proxies
                    .into_iter()
                    .filter_map(|p| {
                        Some(ProxyTarget {
                            admin_addr: p.admin_addr.parse().ok()?,
                            workload: p.workload,
                            instance: p.instance,
                        })
                    })
                    .collect();
                None
            }
            Err(status) => Some(format!("controller unreachable: {}", status.message())),
        };
        // Each proxy gets most of an interval, so one slow proxy cannot
        // hold up the round.
        let timeout = interval.mul_f64(0.8).min(Duration::from_secs(5));
        let scrapes = self
            .targets
            .iter()
            .cloned()
            .map(|target| scrape_proxy(self.http.clone(), target, timeout));
        let proxies = join_all(scrapes).await;
        Snapshot {
            at: Instant::now(),
            wall: SystemTime::now(),
            proxies,
            registry_error,
        }
    }
}

async fn join_all<F: std::future::Future<Output = ProxyScrape> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<ProxyScrape> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(result) = handle.await {
            results.push(result);
        }
    }
    results
}

async fn scrape_proxy(
    http: Client<HttpConnector, Empty<Bytes>>,
    target: ProxyTarget,
    timeout: Duration,
) -> ProxyScrape {
    let addr = target.admin_addr;
    let work = async {
        let metrics = get(&http, addr, admin::METRICS).await?;
        let endpoints = get(&http, addr, admin::ENDPOINTS).await?;
        let (samples, bad) = prom::parse(&metrics);
        if bad > 0 {
            tracing::debug!(%addr, bad, "unreadable metric lines skipped");
        }
        let endpoints: EndpointsDoc = serde_json::from_str(&endpoints)
            .map_err(|e| format!("/endpoints is not the expected JSON: {e}"))?;
        Ok::<_, String>((samples, endpoints))
    };
    let (error, samples, endpoints) = match tokio::time::timeout(timeout, work).await {
        Ok(Ok((samples, endpoints))) => (None, samples.into(), endpoints),
        Ok(Err(err)) => (Some(err), Arc::from([]), EndpointsDoc::default()),
        Err(_) => (
            Some(format!("no answer within {timeout:?}")),
            Arc::from([]),
            EndpointsDoc::default(),
        ),
    };
    ProxyScrape {
        target,
        error,
        samples,
        endpoints,
    }
}

async fn get(
    http: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Result<String, String> {
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e| format!("bad address: {e}"))?;
    let response = http
        .get(uri)
        .await
        .map_err(|e| format!("{path}: {}", mesh_runtime::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("{path} answered {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{path}: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("{path} is not UTF-8"))
}
