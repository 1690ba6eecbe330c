//! What each page shows, computed from the scraped [`History`]: the data
//! both the HTML pages and the `/api/` JSON serve. Rates and percentiles are
//! over the last `window` (one minute by default).

use crate::{
    prom::Sample,
    scrape::{History, ProxyTarget, Snapshot},
    stats,
};
use serde::Serialize;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

/// Below this success rate a workload or edge is shown in trouble.
pub const HEALTHY_SUCCESS_RATE: f64 = 0.95;

use stockkube_proto::metrics::{
    REFUSED_TOTAL as REFUSED, REQUESTS_TOTAL as REQUESTS,
    RESPONSE_LATENCY_BUCKET as LATENCY_BUCKET, RESPONSES_TOTAL as RESPONSES,
    RETRIES_TOTAL as RETRIES, ROUTE_REQUESTS_TOTAL as ROUTE_REQUESTS,
    ROUTE_RESPONSE_LATENCY_BUCKET as ROUTE_LATENCY_BUCKET,
    ROUTE_RESPONSES_TOTAL as ROUTE_RESPONSES, labels,
};

/// The metric families the views read; a scrape keeps no other.
pub const READ: &[&str] = &[
    REQUESTS,
    RESPONSES,
    LATENCY_BUCKET,
    REFUSED,
    ROUTE_REQUESTS,
    ROUTE_RESPONSES,
    ROUTE_LATENCY_BUCKET,
    RETRIES,
];

/// The snapshots inside the window, oldest first.
pub struct Window<'a> {
    snaps: Vec<&'a Snapshot>,
    pub seconds: f64,
}

impl<'a> Window<'a> {
    /// `None` until there is at least one snapshot.
    pub fn new(history: &'a History, window: Duration) -> Option<Self> {
        let latest = history.back()?;
        let snaps: Vec<&Snapshot> = history
            .iter()
            .filter(|s| latest.at.duration_since(s.at) <= window)
            .map(|s| s.as_ref())
            .collect();
        let seconds = latest.at.duration_since(snaps[0].at).as_secs_f64();
        Some(Self { snaps, seconds })
    }

    pub fn latest(&self) -> &'a Snapshot {
        self.snaps
            .last()
            .expect("a window has at least one snapshot")
    }

    /// The increase over the window of `name` samples passing `filter`, on
    /// proxies passing `proxy`, summed.
    pub fn increase(
        &self,
        proxy: &dyn Fn(&ProxyTarget) -> bool,
        name: &str,
        filter: &dyn Fn(&Sample) -> bool,
    ) -> f64 {
        self.increase_by(proxy, name, &|s| filter(s).then_some(()))
            .into_values()
            .sum()
    }

    /// The increase over the window of `name` samples, on proxies passing
    /// `proxy`, summed per the key `key` gives a sample (samples without
    /// one are left out). Per series of each proxy, so that one proxy's
    /// restart (its counters back to zero) is handled on its own, and a
    /// series that goes away (a proxy drops an endpoint's series when
    /// discovery removes it) or comes (counted from zero) moves the sum
    /// only by what it grew.
    pub fn increase_by<K: Ord>(
        &self,
        proxy: &dyn Fn(&ProxyTarget) -> bool,
        name: &str,
        key: &dyn Fn(&Sample) -> Option<K>,
    ) -> BTreeMap<K, f64> {
        type Series<'s> = (SocketAddr, &'s crate::prom::Labels);
        // Each series' key (`None`: left out) and its value in every
        // snapshot its proxy answered, 0 where the series was absent.
        let mut series: BTreeMap<Series<'_>, Option<(K, Vec<f64>)>> = BTreeMap::new();
        let mut answered: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for snap in &self.snaps {
            for scraped in snap.proxies.iter().filter(|p| p.up() && proxy(&p.target)) {
                let addr = scraped.target.admin_addr;
                let seen = answered.entry(addr).or_default();
                for sample in scraped.samples.iter().filter(|s| &*s.name == name) {
                    let entry = series
                        .entry((addr, &sample.labels))
                        .or_insert_with(|| key(sample).map(|k| (k, Vec::new())));
                    if let Some((_, values)) = entry {
                        values.resize(*seen, 0.0);
                        values.push(sample.value);
                    }
                }
                *seen += 1;
            }
        }
        let mut sums = BTreeMap::new();
        for ((addr, _), kept) in series {
            if let Some((k, mut values)) = kept {
                values.resize(answered[&addr], 0.0);
                *sums.entry(k).or_insert(0.0) += stats::increase(&values);
            }
        }
        sums
    }

    /// Golden metrics of the matching traffic.
    pub fn golden(
        &self,
        proxy: &dyn Fn(&ProxyTarget) -> bool,
        filter: &dyn Fn(&Sample) -> bool,
    ) -> Golden {
        self.golden_by(proxy, &ENDPOINT_FAMILIES, &|s| filter(s).then_some(()))
            .remove(&())
            .unwrap_or_default()
    }

    /// Golden metrics from `families`, per the key `key` gives a sample.
    pub fn golden_by<K: Ord + Clone>(
        &self,
        proxy: &dyn Fn(&ProxyTarget) -> bool,
        families: &Families,
        key: &dyn Fn(&Sample) -> Option<K>,
    ) -> BTreeMap<K, Golden> {
        let responses = self.increase_by(proxy, families.responses, key);
        let successes = self.increase_by(proxy, families.responses, &|s| {
            key(s).filter(|_| s.label(labels::CLASSIFICATION) == Some(labels::SUCCESS))
        });
        let requests = self.increase_by(proxy, families.requests, key);
        let buckets = self.increase_by(proxy, families.latency_bucket, &|s| {
            let le = s.label("le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((key(s)?, OrderedBound(bound)))
        });
        let mut latencies: BTreeMap<K, Vec<(f64, f64)>> = BTreeMap::new();
        for ((k, bound), count) in buckets {
            // In bound order: the key's buckets come sorted.
            latencies.entry(k).or_default().push((bound.0, count));
        }
        let keys: BTreeSet<&K> = requests.keys().chain(responses.keys()).collect();
        keys.into_iter()
            .map(|k| {
                let answered = responses.get(k).copied().unwrap_or(0.0);
                let buckets = latencies.get(k).map(Vec::as_slice).unwrap_or(&[]);
                let ms = |q| stats::quantile(q, buckets).map(|s| s * 1000.0);
                let golden = Golden {
                    requests: requests.get(k).copied().unwrap_or(0.0),
                    rps: stats::rate(answered, self.seconds),
                    success_rate: (answered > 0.0)
                        .then(|| successes.get(k).copied().unwrap_or(0.0) / answered),
                    p50_ms: ms(0.5),
                    p95_ms: ms(0.95),
                    p99_ms: ms(0.99),
                };
                (k.clone(), golden)
            })
            .collect()
    }
}

/// A bucket's upper bound, ordered (bounds are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedBound(f64);

impl Eq for OrderedBound {}

impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The three families golden metrics are computed from.
#[derive(Debug)]
pub struct Families {
    pub requests: &'static str,
    pub responses: &'static str,
    pub latency_bucket: &'static str,
}

/// Per endpoint (and per inbound app): what the overview, topology and
/// servers read.
pub const ENDPOINT_FAMILIES: Families = Families {
    requests: REQUESTS,
    responses: RESPONSES,
    latency_bucket: LATENCY_BUCKET,
};

/// Per route (request path).
pub const ROUTE_FAMILIES: Families = Families {
    requests: ROUTE_REQUESTS,
    responses: ROUTE_RESPONSES,
    latency_bucket: ROUTE_LATENCY_BUCKET,
};

/// The golden metrics Linkerd shows: success rate, request rate, latency.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Golden {
    /// Requests started in the window.
    pub requests: f64,
    /// Responses per second over the window.
    pub rps: f64,
    /// Share of responses classified `success`; `None` with no responses.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Golden {
    pub fn in_trouble(&self) -> bool {
        self.success_rate
            .is_some_and(|rate| rate < HEALTHY_SUCCESS_RATE)
    }
}

/// One instance (pod, replica) of a workload.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub name: String,
    pub admin_addr: String,
    pub up: bool,
    /// Why the proxy is shown down.
    pub error: Option<String>,
}

fn instances(snapshot: &Snapshot, workload: &str) -> Vec<Instance> {
    let mut instances: Vec<Instance> = snapshot
        .proxies
        .iter()
        .filter(|p| p.target.workload == workload)
        .map(|p| Instance {
            name: p.target.instance.clone(),
            admin_addr: p.target.admin_addr.to_string(),
            up: p.up(),
            error: p.error.clone(),
        })
        .collect();
    instances.sort_by(|a, b| a.name.cmp(&b.name));
    instances
}

fn workloads(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .proxies
        .iter()
        .map(|p| p.target.workload.clone())
        .collect()
}

// === Overview ===

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub window_seconds: f64,
    pub workloads: Vec<WorkloadRow>,
    /// Proxies the latest scrape could not read, with why.
    pub unread: Vec<UnreadProxy>,
    /// Why the proxy list may be stale.
    pub registry_error: Option<String>,
}

/// A proxy that did not answer, or whose answer was refused (too large,
/// too many series, too slow).
#[derive(Debug, Clone, Serialize)]
pub struct UnreadProxy {
    pub workload: String,
    pub instance: String,
    pub admin_addr: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadRow {
    pub workload: String,
    pub meshed: usize,
    pub total: usize,
    /// `inbound` when the row measures traffic the workload served,
    /// `outbound` when it only sends (a front end like StockWeb).
    pub direction: &'static str,
    pub golden: Golden,
    pub in_trouble: bool,
    /// Peers and requests its proxies refused in the window, by reason
    /// (`mesh_refused_total`: inbound policy, limits), largest first.
    pub refused: Vec<(String, f64)>,
}

impl ReplicaRow {
    /// Retries in the window, all reasons.
    pub fn retried(&self) -> f64 {
        self.retries.iter().map(|(_, n)| n).sum()
    }

    /// `3 after no answer, 1 after a retryable status`, or `–`.
    pub fn retries_text(&self) -> String {
        if self.retries.is_empty() {
            return "–".into();
        }
        self.retries
            .iter()
            .map(|(reason, n)| match reason.as_str() {
                "error" => format!("{n:.0} after no answer"),
                "status" => format!("{n:.0} after a retryable status"),
                other => format!("{n:.0} ({other})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl WorkloadRow {
    /// `3 tls_required, 1 unauthorized`, or empty.
    pub fn refused_text(&self) -> String {
        self.refused
            .iter()
            .map(|(reason, count)| format!("{count:.0} {reason}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What `of_workload`'s proxies refused in the window, by reason.
fn refused(window: &Window<'_>, of_workload: &dyn Fn(&ProxyTarget) -> bool) -> Vec<(String, f64)> {
    let reasons: BTreeSet<String> = window
        .latest()
        .proxies
        .iter()
        .filter(|p| of_workload(&p.target))
        .flat_map(|p| p.samples.iter())
        .filter(|s| &*s.name == REFUSED)
        .filter_map(|s| s.label(labels::REASON).map(str::to_owned))
        .collect();
    let mut counts: Vec<(String, f64)> = reasons
        .into_iter()
        .map(|reason| {
            let count = window.increase(of_workload, REFUSED, &|s| {
                s.label(labels::REASON) == Some(&reason)
            });
            (reason, count)
        })
        .filter(|(_, count)| *count >= 1.0)
        .collect();
    counts.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    counts
}

pub fn overview(window: &Window<'_>) -> Overview {
    let latest = window.latest();
    let rows = workloads(latest)
        .into_iter()
        .map(|workload| {
            let instances = instances(latest, &workload);
            let of_workload = |t: &ProxyTarget| t.workload == workload;
            let inbound = window.golden(&of_workload, &|s| {
                s.label(labels::DIRECTION) == Some(labels::INBOUND)
            });
            let (direction, golden) = if inbound.requests > 0.0 {
                (labels::INBOUND, inbound)
            } else {
                (
                    labels::OUTBOUND,
                    window.golden(&of_workload, &|s| {
                        s.label(labels::DIRECTION) == Some(labels::OUTBOUND)
                    }),
                )
            };
            let meshed = instances.iter().filter(|i| i.up).count();
            WorkloadRow {
                in_trouble: golden.in_trouble() || meshed < instances.len(),
                refused: refused(window, &of_workload),
                workload,
                meshed,
                total: instances.len(),
                direction,
                golden,
            }
        })
        .collect();
    let unread = latest
        .proxies
        .iter()
        .filter_map(|p| {
            Some(UnreadProxy {
                workload: p.target.workload.clone(),
                instance: p.target.instance.clone(),
                admin_addr: p.target.admin_addr.to_string(),
                error: p.error.clone()?,
            })
        })
        .collect();
    Overview {
        window_seconds: window.seconds,
        workloads: rows,
        registry_error: latest.registry_error.clone(),
        unread,
    }
}

// === Topology ===

#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub width: usize,
    pub height: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub workload: String,
    pub instances: Vec<Instance>,
    pub in_trouble: bool,
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub source: String,
    pub target: String,
    pub golden: Golden,
    /// Whether its requests went over mTLS.
    pub security: Security,
    pub in_trouble: bool,
    /// Stroke width, by request rate.
    pub width: f64,
    pub x1: usize,
    pub y1: usize,
    pub x2: usize,
    pub y2: usize,
}

const NODE_W: usize = 220;
const COLUMN_GAP: usize = 260;
const ROW_GAP: usize = 40;

/// How requests went between proxies, from their metrics' `tls` and
/// `server_id` labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Security {
    /// `mtls` (every request), `plaintext` (none), `mixed`, or `unknown`
    /// (no requests counted yet).
    pub state: &'static str,
    /// The identities the called proxies proved.
    pub identities: Vec<String>,
}

impl Security {
    /// What the page says, in words (with a lock for mTLS): never colour alone.
    pub fn text(&self) -> &'static str {
        match self.state {
            "mtls" => "🔒 mTLS",
            "mixed" => "partly mTLS",
            "plaintext" => "plaintext",
            _ => "–",
        }
    }
}

/// The security of the requests the latest scrape counts, of the proxies
/// `source` selects, among the samples `filter` selects.
fn security(
    window: &Window<'_>,
    source: &dyn Fn(&ProxyTarget) -> bool,
    filter: &dyn Fn(&Sample) -> bool,
) -> Security {
    let (mut tls, mut plain) = (false, false);
    let mut identities = BTreeSet::new();
    let proxies = window.latest().proxies.iter().filter(|p| source(&p.target));
    for sample in proxies.flat_map(|p| p.samples.iter()) {
        if &*sample.name != REQUESTS || sample.value <= 0.0 || !filter(sample) {
            continue;
        }
        if sample.label(labels::TLS) == Some("true") {
            tls = true;
            if let Some(id) = sample.label(labels::SERVER_ID) {
                identities.insert(id.to_owned());
            }
        } else {
            plain = true;
        }
    }
    let state = match (tls, plain) {
        (true, false) => "mtls",
        (true, true) => "mixed",
        (false, true) => "plaintext",
        (false, false) => "unknown",
    };
    Security {
        state,
        identities: identities.into_iter().collect(),
    }
}

pub fn topology(window: &Window<'_>) -> Topology {
    let latest = window.latest();
    let mut names = workloads(latest);
    // Edges: every (workload, target) pair its proxies sent to in the window.
    let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
    for snap in &window.snaps {
        for proxy in &snap.proxies {
            for sample in proxy.samples.iter().filter(|s| &*s.name == REQUESTS) {
                if sample.label(labels::DIRECTION) == Some(labels::OUTBOUND)
                    && let Some(target) = sample.label(labels::TARGET)
                {
                    pairs.insert((proxy.target.workload.clone(), target.to_owned()));
                }
            }
        }
    }
    for (_, target) in &pairs {
        names.insert(target.clone());
    }

    // Columns by depth: a workload goes one column right of its callers.
    let mut depth: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 0)).collect();
    for _ in 0..names.len() {
        for (source, target) in &pairs {
            let next = depth[source] + 1;
            if source != target && depth[target] < next && next < names.len() {
                depth.insert(target.clone(), next);
            }
        }
    }
    let mut rows_used: BTreeMap<usize, usize> = BTreeMap::new();
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|workload| {
            let instances = instances(latest, workload);
            let column = depth[workload];
            let h = 56 + 26 * instances.len().max(1);
            let y = *rows_used.entry(column).or_insert(20);
            rows_used.insert(column, y + h + ROW_GAP);
            let of_workload = |t: &ProxyTarget| t.workload == *workload;
            let inbound = window.golden(&of_workload, &|s| {
                s.label(labels::DIRECTION) == Some(labels::INBOUND)
            });
            Node {
                in_trouble: inbound.in_trouble() || instances.iter().any(|i| !i.up),
                workload: workload.clone(),
                instances,
                x: 20 + column * (NODE_W + COLUMN_GAP),
                y,
                w: NODE_W,
                h,
            }
        })
        .collect();
    nodes.sort_by_key(|n| (n.x, n.y));

    let goldens: Vec<(&(String, String), Golden, Security)> = pairs
        .iter()
        .map(|pair| {
            let (source, target) = pair;
            let of_source = |t: &ProxyTarget| t.workload == *source;
            let to_target = |s: &Sample| {
                s.label(labels::DIRECTION) == Some(labels::OUTBOUND)
                    && s.label(labels::TARGET) == Some(target)
            };
            let golden = window.golden(&of_source, &to_target);
            (pair, golden, security(window, &of_source, &to_target))
        })
        .collect();
    // Width grows with the log of the rate, relative to the busiest edge.
    let busiest = goldens
        .iter()
        .map(|(_, g, _)| g.rps)
        .fold(0.0_f64, f64::max);
    let edges: Vec<Edge> = goldens
        .into_iter()
        .map(|((source, target), golden, security)| {
            let from = nodes
                .iter()
                .find(|n| n.workload == *source)
                .expect("sources are nodes");
            let to = nodes
                .iter()
                .find(|n| n.workload == *target)
                .expect("targets are nodes");
            let scale = if busiest > 0.0 {
                golden.rps.ln_1p() / busiest.ln_1p()
            } else {
                0.0
            };
            Edge {
                in_trouble: golden.in_trouble(),
                width: 2.0 + 10.0 * scale,
                source: source.clone(),
                target: target.clone(),
                golden,
                security,
                x1: from.x + from.w,
                y1: from.y + from.h / 2,
                x2: to.x,
                y2: to.y + to.h / 2,
            }
        })
        .collect();
    let width = nodes.iter().map(|n| n.x + n.w).max().unwrap_or(400) + 20;
    let height = nodes.iter().map(|n| n.y + n.h).max().unwrap_or(200) + 20;
    Topology {
        nodes,
        edges,
        width,
        height,
    }
}

// === Servers ===

#[derive(Debug, Clone, Serialize)]
pub struct Servers {
    pub window_seconds: f64,
    pub services: Vec<ServiceServers>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceServers {
    pub service: String,
    pub total: f64,
    pub replicas: Vec<ReplicaRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaRow {
    pub addr: String,
    pub instance: String,
    /// `up`, `down` (its proxy stopped answering) or `removed` (no longer an
    /// endpoint).
    pub state: &'static str,
    /// Requests it served in the window, through every client proxy.
    pub served: f64,
    /// Its share of the service's requests, 0 to 100.
    pub share: f64,
    /// The balancers' view, from the latest `/endpoints` of client proxies.
    pub ewma_ms: Option<f64>,
    pub in_flight: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    /// Some client proxy's balancer has ejected it (failure accrual).
    pub ejected: bool,
    /// Times client proxies' balancers ejected it, ever (summed).
    pub ejections: u64,
    /// Attempts on it that failed and were sent again to another replica
    /// in the window, by why (`error`: no answer; `status`: a status the
    /// retry policy names): the retries that saved those requests.
    pub retries: Vec<(String, f64)>,
    /// Whether its callers reached it over mTLS, and the identity it proved.
    pub security: Security,
}

pub fn servers(window: &Window<'_>) -> Servers {
    let latest = window.latest();
    // Instance names for addresses, newest last so they win.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut services: BTreeSet<String> = BTreeSet::new();
    let mut addrs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for snap in &window.snaps {
        for proxy in &snap.proxies {
            for service in &proxy.endpoints.services {
                services.insert(service.service.clone());
                for endpoint in &service.endpoints {
                    if !endpoint.instance.is_empty() {
                        names.insert(endpoint.addr.clone(), endpoint.instance.clone());
                    }
                    addrs
                        .entry(service.service.clone())
                        .or_default()
                        .insert(endpoint.addr.clone());
                }
            }
            for sample in proxy.samples.iter().filter(|s| &*s.name == RESPONSES) {
                if sample.label(labels::DIRECTION) == Some(labels::OUTBOUND)
                    && let (Some(target), Some(endpoint)) =
                        (sample.label(labels::TARGET), sample.label(labels::ENDPOINT))
                {
                    services.insert(target.to_owned());
                    addrs
                        .entry(target.to_owned())
                        .or_default()
                        .insert(endpoint.to_owned());
                }
            }
        }
    }

    let services = services
        .into_iter()
        .map(|service| {
            let current: Vec<_> = latest
                .proxies
                .iter()
                .flat_map(|p| p.endpoints.services.iter())
                .filter(|s| s.service == service)
                .flat_map(|s| s.endpoints.iter())
                .collect();
            let mut replicas: Vec<ReplicaRow> = addrs
                .get(&service)
                .into_iter()
                .flatten()
                .map(|addr| {
                    let served = window.increase(&|_| true, RESPONSES, &|s| {
                        s.label(labels::DIRECTION) == Some(labels::OUTBOUND)
                            && s.label(labels::TARGET) == Some(&service)
                            && s.label(labels::ENDPOINT) == Some(addr)
                    });
                    let instance = names.get(addr).cloned().unwrap_or_else(|| addr.clone());
                    let views: Vec<_> = current.iter().filter(|e| e.addr == *addr).collect();
                    let proxy_down = latest.proxies.iter().any(|p| {
                        p.target.workload == service && p.target.instance == instance && !p.up()
                    });
                    let state = if proxy_down {
                        "down"
                    } else if views.is_empty() {
                        "removed"
                    } else {
                        "up"
                    };
                    let security = security(window, &|_| true, &|s| {
                        s.label(labels::DIRECTION) == Some(labels::OUTBOUND)
                            && s.label(labels::TARGET) == Some(&service)
                            && s.label(labels::ENDPOINT) == Some(addr)
                    });
                    let retries = ["error", "status"]
                        .into_iter()
                        .map(|reason| {
                            let count = window.increase(&|_| true, RETRIES, &|s| {
                                s.label(labels::DIRECTION) == Some(labels::OUTBOUND)
                                    && s.label(labels::TARGET) == Some(&service)
                                    && s.label(labels::ENDPOINT) == Some(addr)
                                    && s.label(labels::REASON) == Some(reason)
                            });
                            (reason.to_owned(), count)
                        })
                        .filter(|(_, count)| *count >= 1.0)
                        .collect();
                    ReplicaRow {
                        addr: addr.clone(),
                        instance,
                        state,
                        security,
                        served,
                        retries,
                        ejections: views.iter().map(|e| e.ejections).sum(),
                        share: 0.0,
                        ewma_ms: (!views.is_empty()).then(|| {
                            views.iter().map(|e| e.ewma_ms).sum::<f64>() / views.len() as f64
                        }),
                        in_flight: views.iter().map(|e| e.in_flight).sum(),
                        failed: views.iter().map(|e| e.failed).sum(),
                        last_error: views.iter().find_map(|e| e.last_error.clone()),
                        ejected: views.iter().any(|e| e.ejected),
                    }
                })
                .collect();
            // Instances of the service's workload that are down and no
            // longer endpoints still get a row: down is shown, not dropped.
            for proxy in latest
                .proxies
                .iter()
                .filter(|p| p.target.workload == service && !p.up())
            {
                if !replicas.iter().any(|r| r.instance == proxy.target.instance) {
                    replicas.push(ReplicaRow {
                        addr: String::new(),
                        instance: proxy.target.instance.clone(),
                        state: "down",
                        served: 0.0,
                        share: 0.0,
                        ewma_ms: None,
                        in_flight: 0,
                        failed: 0,
                        last_error: proxy.error.clone(),
                        ejected: false,
                        ejections: 0,
                        retries: Vec::new(),
                        security: Security {
                            state: "unknown",
                            identities: Vec::new(),
                        },
                    });
                }
            }
            let total: f64 = replicas.iter().map(|r| r.served).sum();
            for replica in &mut replicas {
                replica.share = if total > 0.0 {
                    replica.served * 100.0 / total
                } else {
                    0.0
                };
            }
            replicas.sort_by(|a, b| a.instance.cmp(&b.instance));
            ServiceServers {
                service,
                total,
                replicas,
            }
        })
        .collect();
    Servers {
        window_seconds: window.seconds,
        services,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::{EndpointsDoc, ProxyScrape};
    use std::{
        collections::VecDeque,
        sync::Arc,
        time::{Instant, SystemTime},
    };

    fn target(workload: &str, instance: &str, port: u16) -> ProxyTarget {
        ProxyTarget {
            workload: workload.into(),
            instance: instance.into(),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn metrics(text: &str) -> Arc<[Sample]> {
        crate::prom::parse(text).0.into()
    }

    /// StockWeb's proxy after `n` calls to each of two endpoints, all OK,
    /// half under 1 ms and half under 2 ms.
    fn stockweb_text(n: u32) -> String {
        let mut text = String::new();
        // The first endpoint over mTLS, the second in plaintext.
        for (ep, tls) in [
            (
                "127.0.0.1:1",
                r#"tls="true",server_id="spiffe://cluster.local/ns/demo/sa/stockdata""#,
            ),
            ("127.0.0.1:2", r#"tls="false""#),
        ] {
            let labels =
                format!(r#"direction="outbound",target="stockdata",endpoint="{ep}",{tls}"#);
            text += &format!("mesh_requests_total{{{labels}}} {n}\n");
            text += &format!(
                "mesh_responses_total{{{labels},status_code=\"200\",grpc_status=\"0\",classification=\"success\"}} {n}\n"
            );
            text += &format!(
                "mesh_response_latency_seconds_bucket{{{labels},le=\"0.001\"}} {}\n",
                n / 2
            );
            text += &format!("mesh_response_latency_seconds_bucket{{{labels},le=\"0.002\"}} {n}\n");
            text += &format!("mesh_response_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {n}\n");
        }
        // Per route: one method with every call, a tenth failing; and the
        // bound's overflow, a few.
        let route = r#"direction="outbound",target="stockdata",route="/StockData.Stocks/Get""#;
        text += &format!("mesh_route_requests_total{{{route}}} {}\n", 2 * n);
        text += &format!(
            "mesh_route_responses_total{{{route},status_code=\"200\",grpc_status=\"0\",classification=\"success\"}} {}\n",
            2 * n - n / 5
        );
        text += &format!(
            "mesh_route_responses_total{{{route},status_code=\"200\",grpc_status=\"14\",classification=\"failure\"}} {}\n",
            n / 5
        );
        text +=
            &format!("mesh_route_response_latency_seconds_bucket{{{route},le=\"0.004\"}} {n}\n");
        text += &format!(
            "mesh_route_response_latency_seconds_bucket{{{route},le=\"0.008\"}} {}\n",
            2 * n
        );
        text += &format!(
            "mesh_route_response_latency_seconds_bucket{{{route},le=\"+Inf\"}} {}\n",
            2 * n
        );
        let other = r#"direction="outbound",target="stockdata",route="other""#;
        text += &format!("mesh_route_requests_total{{{other}}} {}\n", n / 10);
        text += &format!(
            "mesh_route_responses_total{{{other},status_code=\"200\",grpc_status=\"12\",classification=\"failure\"}} {}\n",
            n / 10
        );
        // Calls that failed on the second endpoint and were sent again.
        text += &format!(
            "mesh_retries_total{{direction=\"outbound\",target=\"stockdata\",endpoint=\"127.0.0.1:2\",reason=\"error\"}} {}\n",
            n / 10
        );
        // Its inbound policy turned away a tenth as many.
        text += &format!(
            "mesh_refused_total{{direction=\"inbound\",reason=\"tls_required\"}} {}\n",
            n / 10
        );
        text
    }

    fn history(rounds: &[(u64, u32, bool)]) -> History {
        let start = Instant::now();
        let snaps: VecDeque<Arc<Snapshot>> = rounds
            .iter()
            .map(|&(secs, n, replica_up)| {
                let stockweb = ProxyScrape {
                    target: target("stockweb", "stockweb-1", 10),
                    error: None,
                    samples: metrics(&stockweb_text(n)),
                    endpoints: serde_json::from_str(
                        r#"{"services":[{"service":"stockdata","balance":"p2c-ewma","endpoints":[
                            {"addr":"127.0.0.1:1","instance":"stockdata-1","ewma_ms":1.5,"in_flight":2,"served":5,"failed":0,"last_error":null},
                            {"addr":"127.0.0.1:2","instance":"stockdata-2","ewma_ms":0.5,"in_flight":0,"served":5,"failed":1,"last_error":"reset","ejected":true,"ejections":2}]}]}"#,
                    )
                    .unwrap(),
                };
                let replica = ProxyScrape {
                    target: target("stockdata", "stockdata-2", 11),
                    error: (!replica_up).then(|| "connection refused".to_owned()),
                    samples: metrics(""),
                    endpoints: EndpointsDoc::default(),
                };
                Arc::new(Snapshot {
                    at: start + Duration::from_secs(secs),
                    wall: SystemTime::now(),
                    proxies: vec![stockweb, replica],
                    registry_error: None,
                })
            })
            .collect();
        Arc::new(snaps)
    }

    #[test]
    fn routes_have_golden_metrics_of_their_own() {
        let history = history(&[(0, 0, true), (30, 30, true), (60, 60, true)]);
        let window = Window::new(&history, Duration::from_secs(60)).unwrap();
        let view = routes(&window);
        let names: Vec<&str> = view.workloads.iter().map(|w| w.workload.as_str()).collect();
        assert_eq!(names, ["stockdata", "stockweb"]);
        assert!(view.workloads[0].routes.is_empty());
        let stockweb = &view.workloads[1].routes;
        let keys: Vec<(&str, &str, &str)> = stockweb
            .iter()
            .map(|r| (r.direction.as_str(), r.target.as_str(), r.route.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("outbound", "stockdata", "/StockData.Stocks/Get"),
                ("outbound", "stockdata", "other"),
            ]
        );
        let get = &stockweb[0].golden;
        assert_eq!((get.requests, get.rps), (120.0, 2.0));
        assert!((get.success_rate.unwrap() - 0.9).abs() < 1e-9);
        assert!(stockweb[0].in_trouble, "90% is below the healthy rate");
        // Half under 4 ms, all under 8 ms.
        assert!((get.p50_ms.unwrap() - 4.0).abs() < 1e-9);
        assert!(get.p99_ms.unwrap() > 4.0 && get.p99_ms.unwrap() <= 8.0);
        let other = &stockweb[1].golden;
        assert_eq!((other.requests, other.success_rate), (6.0, Some(0.0)));
        assert_eq!(other.p50_ms, None, "no buckets for it");
    }

    #[test]
    fn golden_metrics_from_deltas() {
        // 0 -> 60 calls per endpoint over 60 s: 120 requests, 2 per second.
        let history = history(&[(0, 0, true), (30, 30, true), (60, 60, true)]);
        let window = Window::new(&history, Duration::from_secs(60)).unwrap();
        let golden = window.golden(&|_| true, &|_| true);
        assert_eq!(golden.requests, 120.0);
        assert_eq!(golden.rps, 2.0);
        assert_eq!(golden.success_rate, Some(1.0));
        // Half the observations under 1 ms: p50 is 1 ms; p99 inside (1, 2].
        assert!((golden.p50_ms.unwrap() - 1.0).abs() < 1e-9);
        assert!((golden.p99_ms.unwrap() - 1.98).abs() < 1e-9);
    }

    #[test]
    fn a_proxy_restart_does_not_make_negative_or_lost_traffic() {
        // 40 per endpoint, then the proxy restarts and counts 10 more.
        let history = history(&[(0, 0, true), (30, 40, true), (60, 10, true)]);
        let window = Window::new(&history, Duration::from_secs(60)).unwrap();
        assert_eq!(window.golden(&|_| true, &|_| true).requests, 100.0);
    }

    #[test]
    fn series_that_go_or_come_count_only_what_they_grew() {
        // Both endpoints at 40; then the proxy dropped the second's series
        // (discovery removed it) and the first reached 50; then the second
        // came back, counting from zero to 5.
        let mut history = (*history(&[(0, 40, true), (30, 50, true), (60, 50, true)])).clone();
        let without_second = |text: String| -> String {
            text.lines()
                .filter(|line| !line.contains("127.0.0.1:2"))
                .map(|line| format!("{line}\n"))
                .collect()
        };
        let with_second_at_5 = without_second(stockweb_text(50))
            + &stockweb_text(5)
                .lines()
                .filter(|line| line.contains("127.0.0.1:2"))
                .map(|line| format!("{line}\n"))
                .collect::<String>();
        for (snap, text) in [
            (1, without_second(stockweb_text(50))),
            (2, with_second_at_5),
        ] {
            let mut changed = (*history[snap]).clone();
            changed.proxies[0].samples = metrics(&text);
            history[snap] = Arc::new(changed);
        }
        let history: History = Arc::new(history);
        let window = Window::new(&history, Duration::from_secs(60)).unwrap();
        assert_eq!(window.golden(&|_| true, &|_| true).requests, 15.0);
    }

    #[test]
    fn overview_uses_outbound_traffic_for_a_front_end_and_counts_down_instances() {
        let history = history(&[(0, 0, true), (60, 60, false)]);
        let window = Window::new(&history, Duration::from_secs(60)).unwrap();
        let view = overview(&window);
        let stockweb = view
            .workloads
            .iter()
            .find(|w| w.workload == "stockweb")
            .unwrap();
        assert_eq!((stockweb.direction, stockweb.golden.rps), ("outbound", 2.0));
        assert_eq!(stockweb.refused, [("tls_required".to_owned(), 6.0)]);
        assert_eq!(stockweb.refused_text(), "6 tls_required");
        let stockdata = view
            .workloads
            .iter()
            .find(|w| w.workload == "stockdata")
            .unwrap();
        assert_eq!((stockdata.meshed, stockdata.total), (0, 1));
        assert!(stockdata.in_trouble);
    }

    #[test]
    fn topology_has_an_edge_from_caller_to_service() {
        let history = history(&[(0, 0, true), (60, 60, true)]);
        let window = Window::new(&history, Duration::from_secs(60)).unwrap();
        let view = topology(&window);
        assert_eq!(view.edges.len(), 1);
        assert_eq!(
            (view.edges[0].source.as_str(), view.edges[0].target.as_str()),
            ("stockweb", "stockdata")
        );
        let web = view
            .nodes
            .iter()
            .find(|n| n.workload == "stockweb")
            .unwrap();
        let data = view
            .nodes
            .iter()
            .find(|n| n.workload == "stockdata")
            .unwrap();
        assert!(web.x < data.x, "callers sit left of their services");
        let security = &view.edges[0].security;
        assert_eq!(security.state, "mixed");
        assert_eq!(security.text(), "partly mTLS");
        assert_eq!(
            security.identities,
            ["spiffe://cluster.local/ns/demo/sa/stockdata"]
        );
    }

    #[test]
    fn servers_show_shares_balancer_view_and_down_replicas() {
        let history = history(&[(0, 0, true), (60, 30, false)]);
        let window = Window::new(&history, Duration::from_secs(60)).unwrap();
        let view = servers(&window);
        let service = &view.services[0];
        assert_eq!(service.service, "stockdata");
        assert_eq!(service.total, 60.0);
        let one = &service.replicas[0];
        assert_eq!(
            (one.instance.as_str(), one.served, one.share, one.state),
            ("stockdata-1", 30.0, 50.0, "up")
        );
        assert_eq!((one.ewma_ms, one.in_flight), (Some(1.5), 2));
        let two = &service.replicas[1];
        assert_eq!((two.instance.as_str(), two.state), ("stockdata-2", "down"));
        assert_eq!(two.last_error.as_deref(), Some("reset"));
        assert!(two.ejected && !one.ejected);
        assert_eq!((two.ejections, one.ejections), (2, 0));
        assert_eq!(two.retries, [("error".to_owned(), 3.0)]);
        assert_eq!(two.retries_text(), "3 after no answer");
        assert_eq!((one.retries_text(), one.retried()), ("–".to_owned(), 0.0));
        assert_eq!(
            (one.security.text(), two.security.text()),
            ("🔒 mTLS", "plaintext")
        );
        assert_eq!(
            one.security.identities,
            ["spiffe://cluster.local/ns/demo/sa/stockdata"]
        );
    }
}

// === Routes ===

#[derive(Debug, Clone, Serialize)]
pub struct Routes {
    pub window_seconds: f64,
    pub workloads: Vec<WorkloadRoutes>,
}

/// One workload's routes: those it serves (inbound) and those it calls, per
/// service (outbound).
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadRoutes {
    pub workload: String,
    pub routes: Vec<RouteRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteRow {
    /// `inbound` (served) or `outbound` (called).
    pub direction: String,
    /// The service called (outbound), or `app` (inbound).
    pub target: String,
    /// The request path; `other` gathers the paths past the proxy's bound.
    pub route: String,
    pub golden: Golden,
    pub in_trouble: bool,
}

/// Every workload's routes with golden metrics over the window, busiest
/// first (requests per second; then served before called, by target and
/// route): the dashboard's top.
pub fn routes(window: &Window<'_>) -> Routes {
    let workloads = workloads(window.latest())
        .into_iter()
        .map(|workload| {
            let of_workload = |t: &ProxyTarget| t.workload == workload;
            let key = |s: &Sample| {
                Some((
                    s.label(labels::DIRECTION)?.to_owned(),
                    s.label(labels::TARGET)?.to_owned(),
                    s.label(labels::ROUTE)?.to_owned(),
                ))
            };
            let mut routes: Vec<RouteRow> = window
                .golden_by(&of_workload, &ROUTE_FAMILIES, &key)
                .into_iter()
                .map(|((direction, target, route), golden)| RouteRow {
                    in_trouble: golden.in_trouble(),
                    direction,
                    target,
                    route,
                    golden,
                })
                .collect();
            // Stable: equal rates keep the key order.
            routes.sort_by(|a, b| b.golden.rps.total_cmp(&a.golden.rps));
            WorkloadRoutes { workload, routes }
        })
        .collect();
    Routes {
        window_seconds: window.seconds,
        workloads,
    }
}
