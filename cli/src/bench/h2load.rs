//! The suite's closed-loop client: `h2load` (nghttp2's, Debian's
//! `nghttp2-client`), which costs less per call than the proxies it drives,
//! so that a row is limited by its proxy rather than by the client
//! (`meshctl bench` costs more per call than mesh-proxy or HAProxy does).
//!
//! It sends the same unary `StockData.Stocks/Get` call as `meshctl bench`
//! (one gRPC message, `id: 1`) on one thread (`-t 1`). h2load knows HTTP,
//! not gRPC: a call it counts as succeeded had status 2xx, which a gRPC
//! error answered trailers-only also has. So a call counts as succeeded
//! only if its response message arrived: the DATA bytes received must be
//! the successful calls times the size of one `GetResponse` frame, measured
//! with a real gRPC call before the run; the shortfall counts as failed.
//! Latency percentiles come from h2load's per-request log; the client's CPU
//! time is read from `/proc` once it has exited, before it is reaped.

use super::{Latency, Load, Report};
use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use prost::Message as _;
use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};
use stockkube_proto::stockdata::{GetRequest, stocks_client::StocksClient};

/// h2load, and the request body it sends.
#[derive(Debug, Clone)]
pub struct H2load {
    binary: PathBuf,
    body: PathBuf,
    log: PathBuf,
}

/// One h2load run's figures, as h2load printed them.
#[derive(Debug, Clone, PartialEq)]
struct Printed {
    succeeded: u64,
    /// Failed, errored and timed out.
    failed: u64,
    seconds: f64,
    data_bytes: u64,
}

impl H2load {
    /// Writes the request body into `scratch`.
    pub fn new(binary: PathBuf, scratch: &Path) -> anyhow::Result<Self> {
        let message = GetRequest { id: 1 }.encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
        body.extend_from_slice(&message);
        let path = scratch.join("h2load-get.bin");
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            binary,
            body: path,
            log: scratch.join("h2load.log"),
        })
    }

    /// Runs `load` (closed loop) against its target; the report and the
    /// client's CPU seconds.
    pub async fn run(&self, load: &Load) -> anyhow::Result<(Report, f64)> {
        let (report, cpu, ()) = self.run_warmed(load, || ()).await?;
        Ok((report, cpu))
    }

    /// Runs `load` as [`H2load::run`] does, calling `warmed` between the
    /// warm-up run and the measured one: what it returns (say, a proxy's CPU
    /// time) is read where the measured calls begin.
    pub async fn run_warmed<T: Send + 'static>(
        &self,
        load: &Load,
        warmed: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<(Report, f64, T)> {
        ensure!(load.rate.is_none(), "h2load drives closed-loop loads only");
        let per_call = response_frame_bytes(&load.target).await?;
        let this = self.clone();
        let load = load.clone();
        tokio::task::spawn_blocking(move || this.run_blocking(&load, per_call, warmed))
            .await
            .context("the h2load task panicked")?
    }

    fn run_blocking<T>(
        &self,
        load: &Load,
        per_call: u64,
        warmed: impl FnOnce() -> T,
    ) -> anyhow::Result<(Report, f64, T)> {
        let url = format!("{}/StockData.Stocks/Get", load.target);
        let in_flight = (load.connections * load.streams) as u64;
        if load.warmup > 0 {
            let warm = load.warmup.max(in_flight).to_string();
            self.h2load(load, &url, &["-n", &warm], false)?;
        }
        let at_start = warmed();
        let seconds = load.duration.as_secs().max(1).to_string();
        let requests = load.requests.map(|n| n.max(in_flight).to_string());
        let amount: [&str; 2] = match &requests {
            Some(n) => ["-n", n],
            None => ["-D", &seconds],
        };
        let (printed, cpu) = self.h2load(load, &url, &amount, true)?;
        // A call whose response message did not arrive failed (a gRPC error
        // answered in trailers only, with HTTP status 200).
        let answered = printed.data_bytes / per_call;
        let unanswered = printed.succeeded.saturating_sub(answered);
        let calls = printed.succeeded + printed.failed;
        let mut errors = BTreeMap::new();
        if printed.failed > 0 {
            errors.insert("http_failed".to_owned(), printed.failed);
        }
        if unanswered > 0 {
            errors.insert("no_response_message".to_owned(), unanswered);
        }
        let latency = self.latency()?;
        Ok((
            Report {
                target: load.target.clone(),
                connections: load.connections,
                streams: load.streams,
                rate: None,
                seconds: printed.seconds,
                requests: calls,
                rps: calls as f64 / printed.seconds.max(1e-9),
                errors,
                latency_us: latency,
                servers: BTreeMap::new(),
            },
            cpu,
            at_start,
        ))
    }

    /// One h2load process: what it printed and, for a measured run (with its
    /// per-request log), its CPU seconds.
    fn h2load(
        &self,
        load: &Load,
        url: &str,
        amount: &[&str],
        measured: bool,
    ) -> anyhow::Result<(Printed, f64)> {
        let mut command = Command::new(&self.binary);
        command
            .args(["-t", "1", "-c"])
            .arg(load.connections.to_string())
            .arg("-m")
            .arg(load.streams.to_string())
            .args(amount)
            .arg("-d")
            .arg(&self.body)
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
        if measured {
            // h2load appends to its log: each run starts with an empty one.
            match std::fs::remove_file(&self.log) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    bail!("cannot remove {}: {err}", self.log.display())
                }
                _ => {}
            }
            command.arg("--log-file").arg(&self.log);
        }
        let mut child = command
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .expect("stdout is piped")
            .read_to_string(&mut stdout)?;
        let cpu = exited_cpu_seconds(child.id());
        let output = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.success(),
            "h2load failed ({}): {stdout}{stderr}",
            output.status
        );
        let printed = parse(&stdout).with_context(|| format!("h2load printed: {stdout}"))?;
        let cpu = match (measured, cpu) {
            (true, None) => bail!("cannot read h2load's CPU time"),
            (_, cpu) => cpu.unwrap_or_default(),
        };
        Ok((printed, cpu))
    }

    /// Percentiles of the measured run's per-request log: lines of start
    /// time, status and duration, both in microseconds.
    fn latency(&self) -> anyhow::Result<Latency> {
        let text = std::fs::read_to_string(&self.log)
            .with_context(|| format!("cannot read {}", self.log.display()))?;
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("static histogram bounds are valid");
        for line in text.lines() {
            let duration = line
                .split('\t')
                .nth(2)
                .and_then(|d| d.trim().parse::<u64>().ok())
                .with_context(|| {
                    format!("a line of h2load's log that is not start, status, duration: {line:?}")
                })?;
            histogram.saturating_record(duration.max(1));
        }
        ensure!(!histogram.is_empty(), "h2load logged no request");
        Ok(Latency {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        })
    }
}

/// The size of one successful call's DATA: a `GetResponse` for `id: 1` in
/// its gRPC frame (5 bytes of prefix), from a real call to `target`.
/// A few tries, so that a target that fails some calls can be measured.
async fn response_frame_bytes(target: &str) -> anyhow::Result<u64> {
    let channel = tonic::transport::Endpoint::from_shared(target.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    let mut client = StocksClient::new(channel);
    let mut tries = 0;
    loop {
        match client.get(GetRequest { id: 1 }).await {
            Ok(response) => return Ok(response.get_ref().encoded_len() as u64 + 5),
            Err(_) if tries < 20 => tries += 1,
            Err(status) => bail!("every call to {target} before the run failed: {status}"),
        }
    }
}

/// Reads what h2load printed at the end: the `requests:`, `finished in` and
/// `traffic:` lines.
fn parse(stdout: &str) -> anyhow::Result<Printed> {
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .with_context(|| format!("no {prefix:?} line"))
    };
    // "requests: 10 total, 10 started, 10 done, 9 succeeded, 1 failed, 0 errored, 0 timeout"
    let requests = line("requests:")?;
    let count = |what: &str| -> anyhow::Result<u64> {
        let words: Vec<&str> = requests
            .split([' ', ','])
            .filter(|w| !w.is_empty())
            .collect();
        let at = words
            .iter()
            .position(|w| *w == what)
            .with_context(|| format!("no {what} count"))?;
        let n = at.checked_sub(1).map(|i| words[i]).unwrap_or_default();
        n.parse()
            .with_context(|| format!("{what}: {n:?} is no count"))
    };
    // "finished in 5.00s, 27547.20 req/s, 1.57MB/s"
    let finished = line("finished in")?;
    let seconds = finished
        .trim_start_matches("finished in")
        .trim()
        .split(',')
        .next()
        .unwrap_or_default();
    let seconds = parse_seconds(seconds)?;
    // "traffic: 7.85MB (8230213) total, 790.74KB (809718) headers (...), 3.47MB (3642759) data"
    let traffic = line("traffic:")?;
    let data_bytes = traffic
        .split(',')
        .find(|part| part.trim_end().ends_with(" data"))
        .and_then(|part| part.split_once('(')?.1.split_once(')'))
        .and_then(|(bytes, _)| bytes.parse().ok())
        .context("no data byte count")?;
    Ok(Printed {
        succeeded: count("succeeded")?,
        failed: count("failed")? + count("errored")? + count("timeout")?,
        seconds,
        data_bytes,
    })
}

/// h2load's durations: `5.00s`, `812.12ms`, `950us`.
fn parse_seconds(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        bail!("{text:?} is no duration")
    };
    Ok(number
        .parse::<f64>()
        .with_context(|| format!("{text:?} is no duration"))?
        * scale)
}

/// utime + stime of an exited, not yet reaped child (a zombie keeps its
/// times in `/proc`), waiting up to 5 s for it to exit after closing its
/// output.
#[expect(
    clippy::disallowed_methods,
    reason = "runs on a blocking thread (spawn_blocking), not on the runtime"
)]
fn exited_cpu_seconds(pid: u32) -> Option<f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (state, seconds) = super::suite::process_times(pid)?;
        if state == 'Z' {
            return Some(seconds);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINTED: &str = "\
starting benchmark...
finished in 5.00s, 27547.20 req/s, 1.57MB/s
requests: 137736 total, 137836 started, 137736 done, 137730 succeeded, 6 failed, 0 errored, 0 timeout
status codes: 137736 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 7.85MB (8230213) total, 790.74KB (809718) headers (space savings 95.31%), 3.47MB (3642759) data
";

    #[test]
    fn reads_what_h2load_printed() {
        assert_eq!(
            parse(PRINTED).unwrap(),
            Printed {
                succeeded: 137_730,
                failed: 6,
                seconds: 5.0,
                data_bytes: 3_642_759,
            }
        );
        assert_eq!(parse_seconds("812.5ms").unwrap(), 0.8125);
        assert_eq!(parse_seconds("950us").unwrap(), 0.00095);
        assert!(parse_seconds("5 minutes").is_err());
        let err = parse("finished in 5.00s, 1 req/s\n").unwrap_err();
        assert!(format!("{err:#}").contains("requests:"), "{err:#}");
    }
}
