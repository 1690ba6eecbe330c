//! `meshctl stat`, `routes`, `top` and `tap`: what the dashboard's JSON API
//! says, as aligned tables like `linkerd viz stat`, `routes` and `top`
//! print, and tap's requests one line each (`-o wide` for more columns,
//! `-o json` for the API's own figures). They read a running dashboard: the
//! local demo's and compose's on port 8082, a cluster's through `kubectl -n
//! stockkube-mesh port-forward svc/mesh-dashboard 8082:8084`.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// How long a dashboard may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What every viewing command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Dashboard {
    /// The dashboard's URL: the local demo's and compose's are on port
    /// 8082; a cluster's through `kubectl -n stockkube-mesh port-forward
    /// svc/mesh-dashboard 8082:8084`.
    #[arg(
        long,
        env = "MESHCTL_DASHBOARD",
        default_value = "http://127.0.0.1:8082",
        value_name = "URL"
    )]
    dashboard: http::Uri,

    /// Output: an aligned table, a wider one, or the dashboard's JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// One workload (`stockdata`, or `deploy/stockdata` as Linkerd writes
    /// it); all when absent.
    workload: Option<String>,

    #[command(flatten)]
    dashboard: Dashboard,
}

#[derive(Debug, clap::Args)]
pub struct RoutesArgs {
    /// The workload whose routes to show (`stockdata` or
    /// `deploy/stockdata`).
    workload: String,

    /// Show the routes the workload calls on this service, instead of the
    /// ones it serves.
    #[arg(long, value_name = "SERVICE")]
    to: Option<String>,

    #[command(flatten)]
    dashboard: Dashboard,
}

/// `deploy/stockdata`, `deployment/stockdata` and `stockdata` name the same
/// workload.
fn workload_name(name: &str) -> &str {
    name.split_once('/').map_or(name, |(_, name)| name)
}

/// The golden figures of a row, as the dashboard's JSON has them.
#[derive(Debug, Deserialize)]
struct Golden {
    requests: f64,
    rps: f64,
    success_rate: Option<f64>,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Overview {
    window_seconds: f64,
    workloads: Vec<WorkloadRow>,
}

#[derive(Debug, Deserialize)]
struct WorkloadRow {
    workload: String,
    meshed: usize,
    total: usize,
    direction: String,
    golden: Golden,
    refused: Vec<(String, f64)>,
}

#[derive(Debug, Deserialize)]
struct Routes {
    window_seconds: f64,
    workloads: Vec<WorkloadRoutes>,
}

#[derive(Debug, Deserialize)]
struct WorkloadRoutes {
    workload: String,
    routes: Vec<RouteRow>,
}

#[derive(Debug, Deserialize)]
struct RouteRow {
    direction: String,
    target: String,
    route: String,
    golden: Golden,
}

pub fn stat_main(args: StatArgs) -> anyhow::Result<()> {
    let json = fetch(&args.dashboard.dashboard, "/api/overview")?;
    let mut overview: Overview = parse(json, "/api/overview")?;
    let wanted = args.workload.as_deref().map(workload_name);
    if let Some(wanted) = wanted {
        overview.workloads.retain(|w| w.workload == wanted);
        if overview.workloads.is_empty() {
            bail!("no meshed workload {wanted:?} (meshctl stat lists them all)");
        }
    }
    print!("{}", render_stat(&overview, args.dashboard.output)?);
    Ok(())
}

fn render_stat(overview: &Overview, output: Output) -> anyhow::Result<String> {
    if output == Output::Json {
        let rows: Vec<Value> = overview
            .workloads
            .iter()
            .map(|w| {
                json_row(
                    serde_json::json!({
                        "name": w.workload,
                        "meshed": w.meshed,
                        "total": w.total,
                        "traffic": w.direction,
                        "refused": w.refused.iter().map(|(reason, n)| (reason.clone(), Value::from(*n))).collect::<serde_json::Map<String, Value>>(),
                    }),
                    &w.golden,
                    overview.window_seconds,
                )
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&rows)? + "\n");
    }
    if overview.workloads.is_empty() {
        return Ok("No meshed workloads: the controller knows no proxy.\n".into());
    }
    let wide = output == Output::Wide;
    let mut header = columns(&["NAME", "MESHED"]);
    if wide {
        header.extend(["TRAFFIC", "REQUESTS", "REFUSED"]);
    }
    let rows = overview.workloads.iter().map(|w| {
        let mut row = vec![w.workload.clone(), format!("{}/{}", w.meshed, w.total)];
        row.extend(golden_cells(&w.golden));
        if wide {
            let refused = w
                .refused
                .iter()
                .map(|(reason, n)| format!("{n:.0} {reason}"))
                .collect::<Vec<_>>()
                .join(", ");
            row.extend([
                w.direction.clone(),
                format!("{:.0}", w.golden.requests),
                if refused.is_empty() {
                    "-".into()
                } else {
                    refused
                },
            ]);
        }
        row
    });
    Ok(table(&header, rows))
}

pub fn routes_main(args: RoutesArgs) -> anyhow::Result<()> {
    let workload = workload_name(&args.workload);
    let path = format!("/api/routes?workload={}", query_value(workload));
    let json = fetch(&args.dashboard.dashboard, &path)?;
    let routes: Routes = parse(json, "/api/routes")?;
    let Some(found) = routes.workloads.iter().find(|w| w.workload == workload) else {
        bail!("no meshed workload {workload:?} (meshctl stat lists them all)");
    };
    let (direction, target) = match args.to.as_deref() {
        Some(service) => ("outbound", service),
        None => ("inbound", "app"),
    };
    let rows: Vec<&RouteRow> = found
        .routes
        .iter()
        .filter(|r| r.direction == direction && r.target == target)
        .collect();
    print!(
        "{}",
        render_routes(
            workload,
            &rows,
            found,
            args.to.as_deref(),
            routes.window_seconds,
            args.dashboard.output
        )?
    );
    Ok(())
}

fn render_routes(
    workload: &str,
    rows: &[&RouteRow],
    all: &WorkloadRoutes,
    to: Option<&str>,
    window_seconds: f64,
    output: Output,
) -> anyhow::Result<String> {
    if output == Output::Json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                json_row(
                    serde_json::json!({ "route": r.route, "service": to }),
                    &r.golden,
                    window_seconds,
                )
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&rows)? + "\n");
    }
    if rows.is_empty() {
        // Say where the routes are instead, when there are some.
        let called: std::collections::BTreeSet<&str> = all
            .routes
            .iter()
            .filter(|r| r.direction == "outbound")
            .map(|r| r.target.as_str())
            .collect();
        let hint = match (to, called.is_empty()) {
            (None, false) => format!(
                "; it calls {}: try --to {}",
                called.iter().copied().collect::<Vec<_>>().join(", "),
                called.first().expect("not empty")
            ),
            _ => String::new(),
        };
        let what = match to {
            Some(service) => format!("called no routes on {service}"),
            None => "served no routes".into(),
        };
        return Ok(format!(
            "{workload} {what} in the last {window_seconds:.0} s{hint}.\n"
        ));
    }
    let wide = output == Output::Wide;
    let mut header = columns(&["ROUTE", "SERVICE"]);
    if wide {
        header.push("REQUESTS");
    }
    let service = to.unwrap_or(workload).to_owned();
    let lines = rows.iter().map(|r| {
        let mut row = vec![r.route.clone(), service.clone()];
        row.extend(golden_cells(&r.golden));
        if wide {
            row.push(format!("{:.0}", r.golden.requests));
        }
        row
    });
    Ok(table(&header, lines))
}

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The workload whose busiest routes to show (`stockdata` or
    /// `deploy/stockdata`).
    workload: String,

    /// How many routes.
    #[arg(long, default_value_t = 10)]
    limit: usize,

    /// Print once and exit, even on a terminal (where `top` otherwise
    /// redraws every --interval until Ctrl-C).
    #[arg(long)]
    once: bool,

    /// How often a terminal's table is redrawn.
    #[arg(long, default_value = "2s", value_parser = mesh_runtime::parse_duration)]
    interval: Duration,

    #[command(flatten)]
    dashboard: Dashboard,
}

pub fn top_main(args: TopArgs) -> anyhow::Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let workload = workload_name(&args.workload).to_owned();
    let live =
        !args.once && std::io::stdout().is_terminal() && args.dashboard.output != Output::Json;
    let runtime = runtime()?;
    loop {
        let path = format!("/api/routes?workload={}", query_value(&workload));
        let json = runtime.block_on(fetch_json(&args.dashboard.dashboard, &path))?;
        let routes: Routes = parse(json, "/api/routes")?;
        let Some(found) = routes.workloads.iter().find(|w| w.workload == workload) else {
            bail!("no meshed workload {workload:?} (meshctl stat lists them all)");
        };
        let text = render_top(
            found,
            args.limit,
            routes.window_seconds,
            args.dashboard.output,
        )?;
        let mut out = std::io::stdout().lock();
        if live {
            // Clear the screen and go home, as top does.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "{text}")?;
        out.flush()?;
        if !live {
            return Ok(());
        }
        runtime.block_on(tokio::time::sleep(args.interval));
    }
}

/// The busiest routes, served and called, by requests per second.
fn render_top(
    routes: &WorkloadRoutes,
    limit: usize,
    window_seconds: f64,
    output: Output,
) -> anyhow::Result<String> {
    let mut busiest: Vec<&RouteRow> = routes
        .routes
        .iter()
        .filter(|r| r.golden.requests > 0.0)
        .collect();
    busiest.sort_by(|a, b| {
        b.golden
            .rps
            .total_cmp(&a.golden.rps)
            .then(a.route.cmp(&b.route))
    });
    busiest.truncate(limit);
    if output == Output::Json {
        let rows: Vec<Value> = busiest
            .iter()
            .map(|r| {
                json_row(
                    serde_json::json!({
                        "route": r.route,
                        "traffic": if r.direction == "inbound" { "served" } else { "called" },
                        "service": if r.direction == "inbound" { routes.workload.as_str() } else { r.target.as_str() },
                    }),
                    &r.golden,
                    window_seconds,
                )
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&rows)? + "\n");
    }
    if busiest.is_empty() {
        return Ok(format!(
            "{} had no requests in the last {window_seconds:.0} s.\n",
            routes.workload
        ));
    }
    let header = columns(&["ROUTE", "TRAFFIC", "SERVICE"]);
    let rows = busiest.iter().map(|r| {
        let (traffic, service) = if r.direction == "inbound" {
            ("served", routes.workload.clone())
        } else {
            ("called", r.target.clone())
        };
        let mut row = vec![r.route.clone(), traffic.to_owned(), service];
        row.extend(golden_cells(&r.golden));
        row
    });
    Ok(format!(
        "Busiest routes of {} over the last {window_seconds:.0} s\n{}",
        routes.workload,
        table(&header, rows)
    ))
}

#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// The workload whose proxies to tap (`stockdata` or
    /// `deploy/stockdata`); every workload's when absent.
    workload: Option<String>,

    /// Only this instance's proxy.
    #[arg(long)]
    instance: Option<String>,

    /// Only requests it served (`inbound`) or called (`outbound`).
    #[arg(long, value_parser = ["inbound", "outbound"])]
    direction: Option<String>,

    /// Only requests with this method.
    #[arg(long)]
    method: Option<String>,

    /// Only requests naming this host (`:authority` or `Host`).
    #[arg(long)]
    authority: Option<String>,

    /// Only requests whose path starts so, e.g. `/StockData.Stocks/`.
    #[arg(long = "path", value_name = "PREFIX")]
    path_prefix: Option<String>,

    /// Only answers with this HTTP status.
    #[arg(long)]
    status: Option<u16>,

    /// Only answers with this gRPC status (14: UNAVAILABLE).
    #[arg(long)]
    grpc_status: Option<u8>,

    /// Requests per second each proxy's tap takes at most; past it they are
    /// counted, not shown.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_rps: u32,

    /// Stop after this many requests.
    #[arg(long, value_name = "N")]
    max_requests: Option<usize>,

    /// Stop after this long (e.g. `10s`); otherwise tap until Ctrl-C.
    #[arg(long, value_parser = mesh_runtime::parse_duration)]
    duration: Option<Duration>,

    #[command(flatten)]
    dashboard: Dashboard,
}

/// One request a tap saw, as the dashboard's stream has it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TapLine {
    #[serde(rename = "type")]
    kind: String,
    workload: String,
    instance: String,
    direction: String,
    method: String,
    authority: Option<String>,
    path: String,
    source: Option<String>,
    endpoint: Option<String>,
    endpoint_instance: Option<String>,
    attempts: u32,
    status: u16,
    grpc_status: Option<u8>,
    latency_ms: f64,
    tls: bool,
    identity: Option<String>,
    headers: Vec<(String, String)>,
    count: u64,
    error: String,
}

impl TapArgs {
    fn query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(workload) = &self.workload {
            query.append_pair("workload", workload_name(workload));
        }
        let text = [
            ("instance", &self.instance),
            ("direction", &self.direction),
            ("method", &self.method),
            ("authority", &self.authority),
            ("path_prefix", &self.path_prefix),
        ];
        for (key, value) in text {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
        if let Some(status) = self.status {
            query.append_pair("status", &status.to_string());
        }
        if let Some(code) = self.grpc_status {
            query.append_pair("grpc_status", &code.to_string());
        }
        query.append_pair("max_rps", &self.max_rps.to_string());
        query.finish()
    }
}

pub fn tap_main(args: TapArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = format!("/api/tap?{}", args.query());
    let output = args.dashboard.output;
    let mut seen = 0;
    let mut out = std::io::stdout();
    let max = args.max_requests.unwrap_or(usize::MAX);
    stream_lines(&args.dashboard.dashboard, &path, args.duration, |raw| {
        let line: TapLine =
            serde_json::from_slice(raw).context("the dashboard sent an unreadable tap line")?;
        match line.kind.as_str() {
            "request" => {
                seen += 1;
                if output == Output::Json {
                    out.write_all(raw)?;
                    out.write_all(b"\n")?;
                } else {
                    writeln!(out, "{}", render_tap(&line, output == Output::Wide))?;
                }
                out.flush()?;
            }
            "dropped" => eprintln!(
                "meshctl: {}/{}: {} requests not shown (--max-rps)",
                line.workload, line.instance, line.count
            ),
            "error" => eprintln!(
                "meshctl: {}/{}: {}",
                line.workload, line.instance, line.error
            ),
            _ => {}
        }
        Ok(seen < max)
    })
}

/// One request on one line, as `linkerd viz tap` writes its fields.
fn render_tap(line: &TapLine, wide: bool) -> String {
    let proxy = if line.direction == "inbound" {
        "in "
    } else {
        "out"
    };
    let dst = match (&line.endpoint, &line.endpoint_instance) {
        (Some(endpoint), Some(instance)) => format!("{endpoint}({instance})"),
        (Some(endpoint), None) => endpoint.clone(),
        _ => "-".into(),
    };
    let grpc = line
        .grpc_status
        .map_or(String::new(), |code| format!(" grpc-status={code}"));
    let mut text = format!(
        "req proxy={proxy} {}/{} src={} dst={dst} tls={} :method={} :authority={} :path={} :status={}{grpc} attempts={} latency={:.2}ms",
        line.workload,
        line.instance,
        line.source.as_deref().unwrap_or("-"),
        line.tls,
        line.method,
        line.authority.as_deref().unwrap_or("-"),
        line.path,
        line.status,
        line.attempts,
        line.latency_ms,
    );
    if wide {
        text.push_str(&format!(
            " identity={}",
            line.identity.as_deref().unwrap_or("-")
        ));
        for (name, value) in &line.headers {
            text.push_str(&format!(" {name}={value}"));
        }
    }
    text
}

/// `fields` with the golden figures and the window they cover: one row of
/// `-o json`.
fn json_row(mut fields: Value, golden: &Golden, window_seconds: f64) -> Value {
    let figures = serde_json::json!({
        "requests": golden.requests,
        "success": golden.success_rate,
        "rps": golden.rps,
        "latency_ms_p50": golden.p50_ms,
        "latency_ms_p95": golden.p95_ms,
        "latency_ms_p99": golden.p99_ms,
        "window_seconds": window_seconds,
    });
    if let (Value::Object(fields), Value::Object(figures)) = (&mut fields, figures) {
        fields.extend(figures);
    }
    fields
}

/// The columns `first`, then those of [`golden_cells`].
fn columns(first: &[&'static str]) -> Vec<&'static str> {
    let golden = [
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
    ];
    first.iter().copied().chain(golden).collect()
}

/// SUCCESS, RPS and the three latencies, as `linkerd viz` prints them.
fn golden_cells(golden: &Golden) -> [String; 5] {
    let ms = |ms: Option<f64>| match ms {
        None => "-".to_owned(),
        Some(ms) if ms >= 10.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{ms:.2}ms"),
    };
    [
        golden
            .success_rate
            .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
        format!("{:.1}rps", golden.rps),
        ms(golden.p50_ms),
        ms(golden.p95_ms),
        ms(golden.p99_ms),
    ]
}

/// Columns padded to their widest cell, three spaces apart.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
        .chain(rows)
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|col| {
            rows.iter()
                .map(|r| r[col].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("   ").trim_end());
        text.push('\n');
    }
    text
}

/// Percent-encodes a query value.
fn query_value(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn parse<T: serde::de::DeserializeOwned>(json: Value, path: &str) -> anyhow::Result<T> {
    if json.is_null() {
        bail!(
            "the dashboard has no figures yet (its first scrape has not finished): try again in a few seconds"
        );
    }
    serde_json::from_value(json)
        .with_context(|| format!("the dashboard's {path} is not what meshctl reads"))
}

/// GETs `path` from the dashboard and hands each line of its streamed
/// answer to `line` until that says stop, the answer ends, or `duration`
/// passes.
fn stream_lines(
    dashboard: &http::Uri,
    path: &str,
    duration: Option<Duration>,
    mut line: impl FnMut(&[u8]) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (base, response) = get(dashboard, path).await?;
        let mut body = response.into_body();
        let until = duration.map(|d| tokio::time::Instant::now() + d);
        let mut buffered: Vec<u8> = Vec::new();
        loop {
            let frame = match until {
                Some(until) => match tokio::time::timeout_at(until, body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) => return Ok(()),
                },
                None => body.frame().await,
            };
            let Some(frame) = frame else {
                return Ok(());
            };
            let frame = frame.with_context(|| format!("the dashboard at {base} broke off"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffered.extend_from_slice(&data);
            while let Some(end) = buffered.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = buffered.drain(..=end).collect();
                if !line(&raw[..raw.len() - 1])? {
                    return Ok(());
                }
            }
        }
    })
}

fn unreachable(base: &str) -> String {
    format!(
        "cannot reach the dashboard at {base}: is it running? (`meshctl demo` serves it on port 8082; set --dashboard or MESHCTL_DASHBOARD)"
    )
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// GETs `path` from the dashboard: its JSON, or why not.
fn fetch(dashboard: &http::Uri, path: &str) -> anyhow::Result<Value> {
    runtime()?.block_on(fetch_json(dashboard, path))
}

async fn fetch_json(dashboard: &http::Uri, path: &str) -> anyhow::Result<Value> {
    let (base, response) = get(dashboard, path).await?;
    let body = tokio::time::timeout(ANSWER_WITHIN, response.into_body().collect())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the dashboard at {base} did not finish its answer within {ANSWER_WITHIN:?}"
            )
        })?
        .with_context(|| unreachable(&base))?
        .to_bytes();
    serde_json::from_slice(&body)
        .with_context(|| format!("the dashboard at {base} answered {path} with no JSON"))
}

/// GETs `path` from the dashboard: its base URL (for messages) and the
/// response, once its head says success; else why not, with the body's
/// first 64 KiB.
async fn get(
    dashboard: &http::Uri,
    path: &str,
) -> anyhow::Result<(String, http::Response<hyper::body::Incoming>)> {
    let base = dashboard.to_string();
    let url: http::Uri = format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .with_context(|| format!("{base} is not a usable dashboard URL"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(ANSWER_WITHIN, client.get(url.clone()))
        .await
        .map_err(|_| {
            anyhow::anyhow!("the dashboard at {base} did not answer within {ANSWER_WITHIN:?}")
        })?
        .with_context(|| unreachable(&base))?;
    let status = response.status();
    if !status.is_success() {
        let text = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        bail!("the dashboard at {base} answered {url} with {status}: {text}");
    }
    Ok((base, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(rps: f64, success: Option<f64>, p50: Option<f64>) -> Golden {
        Golden {
            requests: rps * 60.0,
            rps,
            success_rate: success,
            p50_ms: p50,
            p95_ms: p50.map(|p| p * 2.0),
            p99_ms: p50.map(|p| p * 20.0),
        }
    }

    fn overview() -> Overview {
        Overview {
            window_seconds: 60.0,
            workloads: vec![
                WorkloadRow {
                    workload: "stockdata".into(),
                    meshed: 3,
                    total: 3,
                    direction: "inbound".into(),
                    golden: golden(50.0, Some(1.0), Some(0.6)),
                    refused: vec![],
                },
                WorkloadRow {
                    workload: "stockweb".into(),
                    meshed: 1,
                    total: 1,
                    direction: "outbound".into(),
                    golden: golden(0.0, None, None),
                    refused: vec![("tls_required".into(), 3.0)],
                },
            ],
        }
    }

    #[test]
    fn stat_prints_aligned_columns_like_linkerd_viz() {
        let text = render_stat(&overview(), Output::Table).unwrap();
        assert_eq!(
            text,
            "\
NAME        MESHED   SUCCESS   RPS       LATENCY_P50   LATENCY_P95   LATENCY_P99
stockdata   3/3      100.00%   50.0rps   0.60ms        1.20ms        12ms
stockweb    1/1      -         0.0rps    -             -             -
"
        );
        let wide = render_stat(&overview(), Output::Wide).unwrap();
        assert!(
            wide.lines()
                .next()
                .unwrap()
                .ends_with("TRAFFIC    REQUESTS   REFUSED"),
            "{wide}"
        );
        assert!(
            wide.contains("outbound   0          3 tls_required"),
            "{wide}"
        );
        let json: Value =
            serde_json::from_str(&render_stat(&overview(), Output::Json).unwrap()).unwrap();
        assert_eq!(json[0]["name"], "stockdata");
        assert_eq!(json[0]["success"], 1.0);
        assert_eq!(json[1]["refused"]["tls_required"], 3.0);
    }

    #[test]
    fn routes_say_where_to_look_when_a_workload_serves_none() {
        let all = WorkloadRoutes {
            workload: "stockweb".into(),
            routes: vec![RouteRow {
                direction: "outbound".into(),
                target: "stockdata".into(),
                route: "/StockData.Stocks/Get".into(),
                golden: golden(10.0, Some(0.5), Some(1.0)),
            }],
        };
        let text = render_routes("stockweb", &[], &all, None, 60.0, Output::Table).unwrap();
        assert_eq!(
            text,
            "stockweb served no routes in the last 60 s; it calls stockdata: try --to stockdata.\n"
        );
        let rows: Vec<&RouteRow> = all.routes.iter().collect();
        let text = render_routes(
            "stockweb",
            &rows,
            &all,
            Some("stockdata"),
            60.0,
            Output::Table,
        )
        .unwrap();
        assert_eq!(
            text,
            "\
ROUTE                   SERVICE     SUCCESS   RPS       LATENCY_P50   LATENCY_P95   LATENCY_P99
/StockData.Stocks/Get   stockdata   50.00%    10.0rps   1.00ms        2.00ms        20ms
"
        );
    }

    #[test]
    fn workloads_may_be_named_as_linkerd_names_them() {
        assert_eq!(workload_name("deploy/stockdata"), "stockdata");
        assert_eq!(workload_name("stockdata"), "stockdata");
        assert_eq!(query_value("a b&c/d"), "a+b%26c%2Fd");
    }
}
