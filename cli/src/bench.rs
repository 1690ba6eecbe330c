//! `meshctl bench`: a gRPC load tool for `StockData.Stocks/Get`.
//!
//! N connections × M concurrent streams of unary calls, for a duration or a
//! request count. Closed loop by default (each stream sends its next call
//! when the last one answered); with `--rate` open loop: calls are due at a
//! fixed rate whether or not earlier ones answered, and each call's latency
//! counts from when it was due, so a stall shows in the latency instead of
//! slowing the load down (no coordinated omission). At most N × M calls are
//! in flight; a due call waits for a free stream, and that wait counts.
//!
//! It reports requests/s, latency percentiles (HDR histogram, microsecond
//! resolution), errors by gRPC status, and each replica's share (from the
//! `server-id` header), as text or JSON. `--suite` runs the comparison in
//! [`suite`].

mod h2load;
mod scaling;
pub mod suite;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use std::{
    collections::BTreeMap,
    io::IsTerminal as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use stockkube_proto::{
    headers::SERVER_ID,
    stockdata::{GetRequest, stocks_client::StocksClient},
};
use tokio::time::Instant;
use tonic::transport::Channel;

/// `meshctl bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The StockData (or proxy) address, http://HOST:PORT.
    #[arg(long, default_value_t = format!("http://127.0.0.1:{}", stockkube_proto::ports::PROXY_OUTBOUND), value_name = "URL")]
    pub target: String,

    /// HTTP/2 connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,

    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,

    /// How long to run (ignored with --requests).
    #[arg(long, default_value = "10s", value_parser = mesh_runtime::parse_duration)]
    pub duration: Duration,

    /// Stop after this many calls instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,

    /// Calls per second, open loop; without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Calls before measuring starts, to open connections and warm caches.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Run the benchmark suite instead (see docs/benchmarks.md).
    #[arg(long)]
    pub suite: bool,

    /// Run the scaling curves instead: mesh-proxy's cost per call (and
    /// HAProxy's beside it, if there) as the endpoints and the client
    /// connections grow, and mesh-proxy's memory per idle connection (see
    /// docs/benchmarks.md). Takes the suite's flags.
    #[arg(long, conflicts_with = "suite")]
    pub scaling: bool,

    #[command(flatten)]
    pub suite_args: suite::SuiteArgs,

    #[command(flatten)]
    pub scaling_args: scaling::ScalingArgs,
}

/// One load run's parameters, as the suite also uses them.
#[derive(Debug, Clone)]
pub struct Load {
    pub target: String,
    pub connections: usize,
    pub streams: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub rate: Option<f64>,
    pub warmup: u64,
    /// Show a progress line on stderr.
    pub progress: bool,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub connections: usize,
    pub streams: usize,
    pub rate: Option<f64>,
    pub seconds: f64,
    pub requests: u64,
    pub rps: f64,
    /// Failed calls by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Latency,
    /// Successful calls per `server-id`.
    pub servers: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Report {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn text(&self) -> String {
        let mode = match self.rate {
            Some(rate) => format!("open loop at {rate:.0}/s"),
            None => "closed loop".into(),
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let l = &self.latency_us;
        let mut text = format!(
            "target    {}\nload      {} connection(s) × {} stream(s), {mode}, {:.1} s\n\
             requests  {} ({:.1}/s), {} failed\n\
             latency   p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms\n",
            self.target,
            self.connections,
            self.streams,
            self.seconds,
            self.requests,
            self.rps,
            self.failed(),
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
        );
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            text += &format!("errors    {}\n", errors.join(", "));
        }
        let served: u64 = self.servers.values().sum();
        if served > 0 {
            let shares: Vec<String> = self
                .servers
                .iter()
                .map(|(id, n)| format!("{id} {:.1}%", 100.0 * *n as f64 / served as f64))
                .collect();
            text += &format!("servers   {}\n", shares.join("  "));
        }
        text
    }
}

pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if args.suite {
        return runtime.block_on(suite::run_suite(args.suite_args));
    }
    if args.scaling {
        return runtime.block_on(scaling::run_scaling(&args.suite_args, &args.scaling_args));
    }
    anyhow::ensure!(
        args.connections > 0 && args.streams > 0,
        "--connections and --streams must be at least 1"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be more than 0");
    }
    let load = Load {
        target: args.target,
        connections: args.connections,
        streams: args.streams,
        duration: args.duration,
        requests: args.requests,
        rate: args.rate,
        warmup: args.warmup,
        progress: std::io::stdout().is_terminal(),
    };
    let report = match &args.suite_args.h2load {
        // The closed loop driven by h2load instead (what the suite does).
        Some(binary) => {
            anyhow::ensure!(
                load.rate.is_none(),
                "--h2load drives closed loops only: drop --rate"
            );
            let scratch =
                std::env::temp_dir().join(format!("meshctl-h2load-{}", std::process::id()));
            std::fs::create_dir_all(&scratch).context("cannot make a scratch directory")?;
            let _scratch = suite::RemoveOnDrop(scratch.clone());
            let h2load = h2load::H2load::new(binary.clone(), &scratch)?;
            runtime.block_on(h2load.run(&load))?.0
        }
        None => runtime.block_on(run(&load))?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// What each stream worker collects; merged at the end, so the hot path
/// takes no lock.
struct Tally {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    servers: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("static histogram bounds are valid"),
            errors: BTreeMap::new(),
            servers: BTreeMap::new(),
        }
    }

    fn record(
        &mut self,
        started: Instant,
        result: Result<tonic::Response<stockkube_proto::stockdata::GetResponse>, tonic::Status>,
    ) {
        let micros = started.elapsed().as_micros().max(1) as u64;
        self.latency.saturating_record(micros);
        match result {
            Ok(response) => {
                let server = response
                    .metadata()
                    .get(SERVER_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                *self.servers.entry(server).or_default() += 1;
            }
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds add");
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.servers {
            *self.servers.entry(k).or_default() += v;
        }
    }
}

async fn connect(target: &str) -> anyhow::Result<StocksClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(target.to_owned())
        .with_context(|| format!("{target:?} is not a URL"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    Ok(StocksClient::new(channel))
}

/// Runs one load and measures it.
pub async fn run(load: &Load) -> anyhow::Result<Report> {
    Ok(run_warmed(load, || ()).await?.0)
}

/// Runs one load and measures it, calling `warmed` between the warm-up and
/// the measured calls: what it returns (say, a process's CPU time) is read
/// where the measured run begins.
pub async fn run_warmed<T>(load: &Load, warmed: impl FnOnce() -> T) -> anyhow::Result<(Report, T)> {
    let mut clients = Vec::new();
    for _ in 0..load.connections {
        clients.push(connect(&load.target).await?);
    }
    // Warm-up: open every stream's path once, measured nowhere.
    let mut warm = tokio::task::JoinSet::new();
    for i in 0..load.warmup {
        let mut client = clients[i as usize % clients.len()].clone();
        warm.spawn(async move { client.get(GetRequest { id: 1 }).await });
        if warm.len() >= load.connections * load.streams {
            warm.join_next().await;
        }
    }
    while warm.join_next().await.is_some() {}
    let at_start = warmed();

    let done = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + load.duration;
    let budget = load.requests;
    // Takes the next call's number, or None when the run is over.
    let next = {
        let (done, issued) = (done.clone(), issued.clone());
        move || -> Option<u64> {
            if done.load(Ordering::Relaxed) {
                return None;
            }
            let n = issued.fetch_add(1, Ordering::Relaxed);
            match budget {
                Some(total) if n >= total => None,
                None if Instant::now() >= deadline => None,
                _ => Some(n),
            }
        }
    };

    let progress = load.progress.then(|| {
        let (done, completed) = (done.clone(), completed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let n = completed.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprint!("\r  {secs:5.1} s  {n} calls  {:.0}/s   ", n as f64 / secs);
            }
            eprintln!();
        })
    });

    // Open loop: each worker takes the next due time in turn; a late worker
    // sends at once, and the lateness counts in that call's latency.
    let interval = load.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut workers = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for s in 0..load.streams {
            let mut client = client.clone();
            let next = next.clone();
            let completed = completed.clone();
            let id = ((c * load.streams + s) % 100) as i32 + 1;
            workers.spawn(async move {
                let mut tally = Tally::new();
                while let Some(n) = next() {
                    let at = match interval {
                        Some(interval) => {
                            let due = started + interval.mul_f64(n as f64);
                            tokio::time::sleep_until(due).await;
                            due
                        }
                        None => Instant::now(),
                    };
                    let result = client.get(GetRequest { id }).await;
                    tally.record(at, result);
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                tally
            });
        }
    }
    let mut total = Tally::new();
    while let Some(joined) = workers.join_next().await {
        total.merge(joined.context("a load worker panicked")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    let requests = total.latency.len();
    let h = &total.latency;
    let report = Report {
        target: load.target.clone(),
        connections: load.connections,
        streams: load.streams,
        rate: load.rate,
        seconds,
        requests,
        rps: requests as f64 / seconds,
        errors: total.errors,
        latency_us: Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        },
        servers: total.servers,
    };
    Ok((report, at_start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockkube_proto::stockdata::{
        GetResponse,
        stocks_server::{Stocks, StocksServer},
    };

    /// A StockData that counts the calls it answered.
    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicU64>);

    #[tonic::async_trait]
    impl Stocks for Counting {
        async fn get(
            &self,
            _request: tonic::Request<GetRequest>,
        ) -> Result<tonic::Response<GetResponse>, tonic::Status> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(tonic::Response::new(GetResponse::default()))
        }
    }

    /// Serves a [`Counting`] StockData on loopback; its URL and its count.
    async fn counting_server() -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counting = Counting::default();
        let answered = counting.0.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(StocksServer::new(counting))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (format!("http://{addr}"), answered)
    }

    fn load(target: String) -> Load {
        Load {
            target,
            connections: 1,
            streams: 4,
            duration: Duration::from_secs(30),
            requests: Some(200),
            rate: None,
            warmup: 50,
            progress: false,
        }
    }

    #[tokio::test]
    async fn the_measured_run_begins_after_the_warm_up() {
        let (target, answered) = counting_server().await;
        let counted = answered.clone();
        let (report, at_start) = run_warmed(&load(target), move || counted.load(Ordering::SeqCst))
            .await
            .unwrap();
        assert_eq!(
            at_start, 50,
            "every warm-up call answered, no measured one yet"
        );
        assert_eq!(report.requests, 200);
        assert_eq!(answered.load(Ordering::SeqCst), 250);
    }

    #[tokio::test]
    async fn h2load_s_measured_run_begins_after_its_warm_up() {
        let Some(binary) = suite::find_on_path("h2load") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "h2load (Debian's nghttp2-client) is required with CI=true"
            );
            eprintln!("skipped: no h2load on PATH");
            return;
        };
        let scratch = std::env::temp_dir().join(format!("meshctl-warm-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let _scratch = suite::RemoveOnDrop(scratch.clone());
        let (target, answered) = counting_server().await;
        let counted = answered.clone();
        let h2load = h2load::H2load::new(binary, &scratch).unwrap();
        let (report, _, at_start) = h2load
            .run_warmed(&load(target), move || counted.load(Ordering::SeqCst))
            .await
            .unwrap();
        // One call first learns the size of a response message.
        assert_eq!(
            at_start,
            1 + 50,
            "every warm-up call answered, no measured one yet"
        );
        assert_eq!(report.requests, 200);
        assert_eq!(answered.load(Ordering::SeqCst), 251);
    }
}
