//! Test plumbing: an in-process proxy on ephemeral ports, gRPC load over one
//! connection, a Prometheus text parser, and HTTP helpers over the tests'
//! one client (`mesh_runtime::test_http`).

use clap::Parser as _;
use std::{collections::HashMap, net::SocketAddr, time::Duration};
use stockkube_proto::{
    headers::SERVER_ID,
    stockdata::{GetRequest, stocks_client::StocksClient},
};
use tokio::{sync::oneshot, task::JoinHandle};

/// A proxy running in this process; stops (draining) on drop.
pub struct Proxy {
    pub outbound: SocketAddr,
    pub inbound: Option<SocketAddr>,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts a proxy with `flags`; every listener it is given binds port 0.
pub async fn spawn_proxy(flags: &[&str]) -> Proxy {
    let args = mesh_proxy::Args::try_parse_from(
        ["mesh-proxy", "--admin", "127.0.0.1:0"]
            .into_iter()
            .chain(flags.iter().copied()),
    )
    .expect("test flags parse");
    let config = mesh_proxy::Config::try_from(args).expect("test flags are valid");
    let listeners = mesh_proxy::Listeners::bind(&config)
        .await
        .expect("ports bind");
    let outbound = listeners
        .outbound
        .first()
        .map(|(_, l)| mesh_proxy::local_addr(l))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let inbound = listeners.inbound.first().map(mesh_proxy::local_addr);
    let admin = mesh_proxy::local_addr(&listeners.admin);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(mesh_proxy::run(config, listeners, async {
        let _ = stopped.await;
    }));
    Proxy {
        outbound,
        inbound,
        admin,
        stop: Some(stop),
        task,
    }
}

impl Proxy {
    /// Triggers the drain and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("the proxy drains within 20 s")
            .expect("the proxy task did not panic")
            .expect("the proxy ran without error");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A proxy whose outbound listener is for `stockdata`, balancing over
/// `replicas`, with `flags` added.
pub async fn stockdata_proxy(replicas: &[SocketAddr], flags: &[&str]) -> Proxy {
    let discover = static_list(replicas);
    let all: Vec<&str> = [
        "--outbound",
        "stockdata=127.0.0.1:0",
        "--discover",
        &discover,
    ]
    .into_iter()
    .chain(flags.iter().copied())
    .collect();
    spawn_proxy(&all).await
}

/// `static:a;b;c` for `--discover`.
pub fn static_list(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!("stockdata=static:{}", list.join(";"))
}

/// What a batch of calls saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Successful calls per `server-id`.
    pub servers: HashMap<String, usize>,
    /// Successful calls per `x-mesh-endpoint`.
    pub endpoints: HashMap<String, usize>,
    pub failures: Vec<tonic::Status>,
    /// Successful calls per `x-mesh-attempts`.
    pub attempts: HashMap<String, usize>,
}

impl Tally {
    pub fn count(&self, server: &str) -> usize {
        self.servers.get(server).copied().unwrap_or(0)
    }

    pub fn succeeded(&self) -> usize {
        self.servers.values().sum()
    }

    /// Failed calls whose `x-mesh-endpoint` is `endpoint`.
    pub fn failed_at(&self, endpoint: &str) -> usize {
        self.failures
            .iter()
            .filter(|s| {
                s.metadata()
                    .get("x-mesh-endpoint")
                    .is_some_and(|v| v == endpoint)
            })
            .count()
    }

    fn add(&mut self, result: Result<Answer, tonic::Status>) {
        match result {
            Ok(answer) => {
                *self.servers.entry(answer.server).or_default() += 1;
                *self.endpoints.entry(answer.endpoint).or_default() += 1;
                *self.attempts.entry(answer.attempts).or_default() += 1;
            }
            Err(status) => self.failures.push(status),
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.servers {
            *self.servers.entry(k).or_default() += v;
        }
        for (k, v) in other.endpoints {
            *self.endpoints.entry(k).or_default() += v;
        }
        for (k, v) in other.attempts {
            *self.attempts.entry(k).or_default() += v;
        }
        self.failures.extend(other.failures);
    }
}

/// What one successful call's headers said.
struct Answer {
    server: String,
    endpoint: String,
    attempts: String,
}

async fn call_once(
    client: &mut StocksClient<tonic::transport::Channel>,
    id: i32,
) -> Result<Answer, tonic::Status> {
    client.get(GetRequest { id }).await.map(|response| {
        let header = |name| {
            response
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        Answer {
            server: header(SERVER_ID),
            endpoint: header("x-mesh-endpoint"),
            attempts: header("x-mesh-attempts"),
        }
    })
}

/// Steady load: `concurrency` callers over one channel, each making one
/// call after another until [`Load::finish`] (or 60 s at most).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    completed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tasks: tokio::task::JoinSet<Tally>,
}

impl Load {
    pub fn start(client: &StocksClient<tonic::transport::Channel>, concurrency: usize) -> Self {
        use std::sync::{Arc, atomic::Ordering};
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let completed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..concurrency {
            let mut client = client.clone();
            let (stop, completed) = (stop.clone(), completed.clone());
            tasks.spawn(async move {
                let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
                let mut tally = Tally::default();
                let mut id = worker as i32;
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < give_up {
                    id = id % 100 + 1;
                    tally.add(call_once(&mut client, id).await);
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                tally
            });
        }
        Self {
            stop,
            completed,
            tasks,
        }
    }

    /// Calls finished so far, failed or not.
    pub fn completed(&self) -> usize {
        self.completed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` further calls have finished (at most 30 s).
    pub async fn run_for_calls(&self, more: usize) {
        let target = self.completed() + more;
        stockdata::test_util::eventually(
            &format!("{more} more calls"),
            Duration::from_secs(30),
            || async { (self.completed() >= target).then_some(()) },
        )
        .await;
    }

    /// Stops the callers after their current call and adds up what they saw.
    pub async fn finish(mut self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut tally = Tally::default();
        while let Some(joined) = self.tasks.join_next().await {
            tally.merge(joined.expect("a load task did not panic"));
        }
        tally
    }
}

/// Makes `calls` unary `Get` calls over one channel (one HTTP/2
/// connection), at most `concurrency` at a time.
pub async fn call_many(
    client: &StocksClient<tonic::transport::Channel>,
    calls: usize,
    concurrency: usize,
) -> Tally {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let mut client = client.clone();
        let permit = permits.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let result = call_once(&mut client, (i % 100) as i32 + 1).await;
            drop(permit);
            result
        });
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        tally.add(joined.unwrap());
    }
    tally
}

/// `GET path` over a fresh HTTP/1.1 connection; (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let answer = mesh_runtime::test_http::get(addr, path).await;
    (answer.status, answer.body)
}

/// One sample of Prometheus text: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus / OpenMetrics text exposition, panicking on any line
/// that is not a comment, blank, or `name{label="value",...} number`.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = HashMap::new();
                for pair in split_labels(body) {
                    let (key, quoted) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    let value = quoted
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label: {line}"));
                    labels.insert(key.to_owned(), value.to_owned());
                }
                (name, labels)
            }
            None => (series, HashMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// Splits `a="x",b="y,z"` at commas outside quotes.
fn split_labels(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < body.len() {
        parts.push(&body[start..]);
    }
    parts
}

/// The sum of `name` over samples whose labels include all of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// A loopback port for a process a test starts (see
/// [`mesh_runtime::test_ports`]).
pub use mesh_runtime::test_ports::free_port;

/// One HTTP/1.1 GET to a loopback port on a fresh connection: the whole
/// answer as text, or the error (a refused connection is an answer too:
/// unlike [`http_get`], it does not panic).
pub async fn try_http_get(port: u16, path: &str) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let request = mesh_runtime::test_http::Request::get(path).host("x");
    Ok(mesh_runtime::test_http::send(addr, request).await?.text())
}

/// Peers the proxy at `admin` refused for `reason`, both directions.
pub async fn refused(admin: SocketAddr, reason: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics").await;
    sum(
        &parse_prometheus(&text),
        "mesh_refused_total",
        &[("reason", reason)],
    )
}

/// The proxy's only endpoint, as `/endpoints` shows it.
pub async fn sole_endpoint(admin: SocketAddr) -> serde_json::Value {
    let (_, json) = http_get(admin, "/endpoints").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    json["services"][0]["endpoints"][0].clone()
}

/// Waits until the proxy's only endpoint has `requests` in flight.
pub async fn until_in_flight(admin: SocketAddr, requests: u64) {
    stockdata::test_util::eventually(
        &format!("{requests} requests in flight"),
        Duration::from_secs(10),
        || async { (sole_endpoint(admin).await["in_flight"] == requests).then_some(()) },
    )
    .await;
}

/// The proxy's only endpoint was charged no failure and is not ejected.
pub async fn assert_uncharged(admin: SocketAddr) {
    let view = sole_endpoint(admin).await;
    assert_eq!(view["failed"], 0, "{view}");
    assert_eq!(view["ejected"], false, "{view}");
}

/// A tool a test runs that nobody here wrote: the path in `env`, else the
/// interop venv's Python for `python3`, else `name` on `PATH`. `None` (the
/// test says SKIPPED) when missing, unless `CI=true`: then it fails.
pub fn required_tool(name: &str, env: &str) -> Option<std::path::PathBuf> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the proxy sits inside the workspace");
    let venv = workspace.join("target/interop-venv/bin/python");
    let found = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .or_else(|| (name == "python3" && venv.exists()).then_some(venv))
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {name} is missing ({env}): scripts/test.sh installs it"
        );
        eprintln!("SKIPPED: {name} is missing ({env}); scripts/test.sh installs it");
    }
    found
}
