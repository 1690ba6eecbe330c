//! Scraping: every interval, ask the controller which proxies exist, then
//! read each proxy's `/metrics` and `/endpoints` at once. Each round becomes
//! one [`Snapshot`]; the last few minutes of them are the [`History`] every
//! page is computed from. A proxy that does not answer stays in the
//! snapshot, marked down with the reason; so does one whose answer is
//! larger than the byte limit, holds more samples than the series limit, or
//! takes longer than most of an interval. Only the metric families the
//! views read are kept, and a proxy that leaves the registry leaves the
//! history at once.

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
    sync::{Arc, Mutex},
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
    /// Times failure accrual ejected it, ever.
    #[serde(default)]
    pub ejections: u64,
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
    /// The most a proxy's `/metrics` (or `/endpoints`) may weigh.
    pub max_bytes: usize,
    /// The most samples a proxy's `/metrics` may hold.
    pub max_series: usize,
    /// The most samples kept from one round, all proxies together.
    pub max_kept: usize,
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
            limits: Limits {
                max_bytes: config.max_bytes,
                max_series: config.max_series,
            },
            max_kept: config.max_kept,
            strings: Arc::default(),
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
                forget_gone_proxies(history, &snapshot);
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

/// Keeps at most `max_kept` samples of a round: the proxies past the budget
/// (in the registry's order) are shown with that error instead, so that
/// what the history holds is bounded however many proxies there are.
fn keep_within(proxies: &mut [ProxyScrape], max_kept: usize) {
    let mut kept = 0usize;
    for proxy in proxies {
        if kept + proxy.samples.len() <= max_kept {
            kept += proxy.samples.len();
            continue;
        }
        proxy.error = Some(format!(
            "its {} samples exceed what is left of the dashboard's budget of {max_kept} per scrape (--history-max-series): not kept",
            proxy.samples.len()
        ));
        proxy.samples = Arc::from([]);
        proxy.endpoints = EndpointsDoc::default();
    }
}

/// A proxy that left the registry leaves the history too, at once: what
/// the dashboard holds follows the proxies there are, not the window.
fn forget_gone_proxies(history: &mut VecDeque<Arc<Snapshot>>, latest: &Snapshot) {
    let present = |target: &ProxyTarget| latest.proxies.iter().any(|p| p.target == *target);
    for snapshot in history.iter_mut() {
        if snapshot.proxies.iter().all(|p| present(&p.target)) {
            continue;
        }
        let kept = snapshot
            .proxies
            .iter()
            .filter(|p| present(&p.target))
            .cloned()
            .collect();
        *snapshot = Arc::new(Snapshot {
            proxies: kept,
            ..(**snapshot).clone()
        });
    }
}

/// What one proxy's answers may cost.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bytes: usize,
    max_series: usize,
}

struct Scraper {
    registry: RegistryClient<Channel>,
    http: Client<HttpConnector, Empty<Bytes>>,
    targets: Vec<ProxyTarget>,
    limits: Limits,
    max_kept: usize,
    strings: Arc<Mutex<prom::Interner>>,
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
        let scrapes = self.targets.iter().cloned().map(|target| {
            let strings = self.strings.clone();
            scrape_proxy(self.http.clone(), target, timeout, self.limits, strings)
        });
        let mut proxies = join_all(scrapes).await;
        keep_within(&mut proxies, self.max_kept);
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
    limits: Limits,
    strings: Arc<Mutex<prom::Interner>>,
) -> ProxyScrape {
    let addr = target.admin_addr;
    let work = async {
        let metrics = get(&http, addr, admin::METRICS, limits.max_bytes).await?;
        let endpoints = get(&http, addr, admin::ENDPOINTS, limits.max_bytes).await?;
        // Only the families the views read are kept.
        let keep = |name: &str| crate::views::READ.contains(&name);
        let parsed = {
            let mut strings = strings.lock().expect("the interner lock is never poisoned");
            prom::parse_limited(&metrics, limits.max_series, &keep, &mut strings)
        };
        let (samples, bad) = parsed.map_err(|e| format!("{}: {e}", admin::METRICS))?;
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
    max_bytes: usize,
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
    let too_large = || format!("{path} is larger than {max_bytes} bytes: not read");
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_bytes as u64) {
        return Err(too_large());
    }
    let body = http_body_util::Limited::new(response.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                format!("{path}: {e}")
            }
        })?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("{path} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(port: u16, samples: usize) -> ProxyScrape {
        let sample = prom::Sample {
            name: "mesh_requests_total".into(),
            labels: Arc::from([]),
            value: 1.0,
        };
        ProxyScrape {
            target: ProxyTarget {
                workload: "w".into(),
                instance: format!("w-{port}"),
                admin_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            },
            error: None,
            samples: vec![sample; samples].into(),
            endpoints: EndpointsDoc::default(),
        }
    }

    fn snapshot(proxies: Vec<ProxyScrape>) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            at: Instant::now(),
            wall: SystemTime::now(),
            proxies,
            registry_error: None,
        })
    }

    #[test]
    fn proxies_past_the_round_budget_are_not_kept() {
        let mut proxies = vec![scrape(1, 60), scrape(2, 50), scrape(3, 40)];
        keep_within(&mut proxies, 100);
        let kept: Vec<usize> = proxies.iter().map(|p| p.samples.len()).collect();
        assert_eq!(kept, [60, 0, 40], "the one that does not fit is dropped");
        assert!(
            proxies[1]
                .error
                .as_deref()
                .unwrap()
                .contains("budget of 100")
        );
        assert!(proxies[0].up() && proxies[2].up());
    }

    #[test]
    fn a_proxy_that_left_leaves_the_history() {
        let mut history: VecDeque<_> = (0..3)
            .map(|_| snapshot(vec![scrape(1, 10), scrape(2, 10)]))
            .collect();
        let untouched = history[0].clone();
        forget_gone_proxies(&mut history, &snapshot(vec![scrape(1, 10), scrape(2, 10)]));
        assert!(
            Arc::ptr_eq(&history[0], &untouched),
            "nothing left: nothing copied"
        );
        forget_gone_proxies(&mut history, &snapshot(vec![scrape(2, 10)]));
        for snap in &history {
            let ports: Vec<u16> = snap
                .proxies
                .iter()
                .map(|p| p.target.admin_addr.port())
                .collect();
            assert_eq!(ports, [2]);
        }
    }
}
