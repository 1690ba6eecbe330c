//! `meshctl bench --scaling`: how mesh-proxy's cost per call moves as the
//! endpoints behind a service and the client connections grow, and what an
//! idle client connection holds.
//!
//! - Endpoints: one proxy (one worker) balancing over 1, 10, 100 and 1,000
//!   endpoints of one service, 1 connection × 100 streams from h2load. The
//!   endpoints are distinct addresses served by two StockData replicas
//!   (each listens on half of them), so the proxy keeps one upstream
//!   connection per endpoint, as it would in a cluster.
//! - Connections: 1, 10, 100 and 1,000 client connections × 10 streams
//!   each, to a proxy over the two replicas.
//! - Idle connections: the proxy's resident memory (VmRSS) before and while
//!   10,000 client connections are open and idle, each after one call.
//!
//! With HAProxy on PATH (or `--haproxy`), each point of both curves is
//! measured for HAProxy too (one thread, `http-reuse always`, the suite's
//! config), as a baseline: whether a cost that grows with the endpoints is
//! mesh-proxy's or any proxy's that keeps a connection per endpoint.
//!
//! Points alternate within each round, medians over rounds; the proxy is
//! started fresh for each measurement.

use super::{
    Load,
    h2load::H2load,
    suite::{
        Proxy, RemoveOnDrop, TlsSide, cpu_seconds, find_on_path, free_port, median, start_tool,
        status_kb, write_report,
    },
};
use crate::process::{Service, bin_dir, ensure_binaries, wait_until_listening};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use prost::Message as _;
use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, time::Duration};
use stockkube_proto::stockdata::GetRequest;

/// Flags of `meshctl bench --scaling`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalingArgs {
    /// Client connections held open for the idle-memory figure.
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: usize,
}

/// What one curve varies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Curve {
    Endpoints,
    Connections,
}

/// One point of a curve for one proxy: medians over rounds.
#[derive(Debug)]
struct Point {
    curve: Curve,
    x: usize,
    proxy: Proxy,
    rps: f64,
    cpu_us: f64,
    p99_ms: f64,
    errors: u64,
}

struct Scaling {
    bin: PathBuf,
    h2load: H2load,
    /// The baseline's binary, if there.
    haproxy: Option<PathBuf>,
    scratch: PathBuf,
    /// Every endpoint address, alternating between the two replicas.
    endpoints: Vec<SocketAddr>,
}

impl Scaling {
    /// A proxy over the first `endpoints` addresses, listening on `listen`.
    async fn proxy(
        &self,
        listen: SocketAddr,
        endpoints: usize,
        extra: &[&str],
    ) -> anyhow::Result<Service> {
        let list: Vec<String> = self.endpoints[..endpoints]
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut args = vec![
            "--outbound".into(),
            format!("stockdata={listen}"),
            "--discover".into(),
            format!("stockdata=static:{}", list.join(";")),
            "--admin".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut proxy = Service::spawn(
            format!("mesh-proxy on {listen}"),
            &self.bin.join("mesh-proxy"),
            &args,
            &[
                ("TOKIO_WORKER_THREADS", "1".into()),
                ("RUST_LOG", "warn".into()),
            ],
        )?;
        wait_until_listening(&mut [&mut proxy], &[listen]).await?;
        Ok(proxy)
    }

    /// HAProxy over the first `endpoints` addresses, listening on `listen`.
    async fn haproxy(&self, listen: SocketAddr, endpoints: usize) -> anyhow::Result<Service> {
        let binary = self.haproxy.as_ref().context("no haproxy binary")?;
        let mut haproxy = start_tool(
            Proxy::Haproxy,
            binary,
            listen,
            &self.endpoints[..endpoints],
            &self.scratch,
            TlsSide::None,
            None,
        )?;
        wait_until_listening(&mut [&mut haproxy], &[listen]).await?;
        Ok(haproxy)
    }

    /// One measurement of a point for `which` proxy: requests/s, proxy CPU
    /// µs per call, p99 ms, failed calls.
    async fn measure(
        &self,
        which: Proxy,
        curve: Curve,
        x: usize,
        run_time: Duration,
        smoke: bool,
    ) -> anyhow::Result<(f64, f64, f64, u64)> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (endpoints, connections, streams) = match curve {
            Curve::Endpoints => (x, 1, 100),
            Curve::Connections => (2, x, 10),
        };
        let proxy = match which {
            Proxy::Haproxy => self.haproxy(listen, endpoints).await?,
            _ => self.proxy(listen, endpoints, &[]).await?,
        };
        let pid = proxy.pid().context("the proxy exited")?;
        // Warm-up: enough calls that every endpoint has its connection.
        let warmup = if smoke {
            200
        } else {
            (endpoints * 20).max(2_000)
        } as u64;
        let load = Load {
            target: format!("http://{listen}"),
            connections,
            streams,
            duration: run_time,
            requests: smoke.then_some(300),
            rate: None,
            warmup: warmup.max((connections * streams) as u64),
            progress: false,
        };
        // The proxy's CPU from the end of the warm-up to the end of the run.
        let measured = self
            .h2load
            .run_warmed(&load, move || cpu_seconds(pid))
            .await;
        let after = cpu_seconds(pid);
        proxy.stop(Duration::from_secs(5)).await;
        let (report, _, before) = measured?;
        let cpu = before
            .zip(after)
            .map(|(b, a)| a - b)
            .context("cannot read the proxy's CPU time")?;
        Ok((
            report.rps,
            cpu * 1e6 / report.requests.max(1) as f64,
            report.latency_us.p99 as f64 / 1000.0,
            report.failed(),
        ))
    }

    /// The proxy's VmRSS (bytes) settled with nothing open, and with
    /// `count` client connections open and idle after one call each.
    async fn idle_memory(&self, count: usize) -> anyhow::Result<(u64, u64)> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let limit = (count + 100).to_string();
        let proxy = self
            .proxy(
                listen,
                2,
                &[
                    "--max-connections",
                    &limit,
                    "--max-connections-per-source",
                    &limit,
                ],
            )
            .await?;
        let pid = proxy.pid().context("the proxy exited")?;
        let rss = || status_kb(pid, "VmRSS:").map(|kb| kb * 1024);
        // One call first, so that the upstream connections exist before the
        // baseline is read.
        let mut held = Vec::new();
        held.push(idle_connection(listen).await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let baseline = rss().context("cannot read the proxy's memory")?;
        let mut opening = tokio::task::JoinSet::new();
        for _ in 1..count {
            opening.spawn(idle_connection(listen));
            // At most 200 handshakes in flight.
            while opening.len() >= 200 {
                if let Some(joined) = opening.join_next().await {
                    held.push(joined??);
                }
            }
        }
        while let Some(joined) = opening.join_next().await {
            held.push(joined??);
        }
        // Past the second after which an idle connection gives back what
        // its call grew (mesh-proxy's IDLE_RELEASE).
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let open = rss().context("cannot read the proxy's memory")?;
        drop(held);
        proxy.stop(Duration::from_secs(10)).await;
        Ok((baseline, open))
    }
}

/// A client connection to `proxy` that made one call and stays open (its
/// connection task runs until the handle is dropped).
async fn idle_connection(proxy: SocketAddr) -> anyhow::Result<IdleConnection> {
    let tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .with_context(|| format!("cannot connect to {proxy}"))?;
    let (mut send, connection) = h2::client::handshake(tcp).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::post(format!("http://{proxy}/StockData.Stocks/Get"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let message = GetRequest { id: 1 }.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    body.extend_from_slice(&message);
    send = send.ready().await?;
    let (response, mut stream) = send.send_request(request, false)?;
    stream.send_data(Bytes::from(body), true)?;
    let response = response.await?;
    let mut answer = response.into_body();
    while let Some(data) = answer.data().await {
        let data = data?;
        let _ = answer.flow_control().release_capacity(data.len());
    }
    let trailers = answer.trailers().await?;
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .map(|s| s.as_bytes().to_vec());
    if status.as_deref() != Some(b"0") {
        bail!("the call on a connection to be held failed: grpc-status {status:?}");
    }
    Ok(IdleConnection { _send: send, task })
}

struct IdleConnection {
    _send: h2::client::SendRequest<Bytes>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IdleConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Raises this process's open-file limit to its hard limit (the children
/// inherit it): the idle connections need one descriptor each, here and in
/// the proxy.
fn raise_open_files() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

pub async fn run_scaling(
    suite: &super::suite::SuiteArgs,
    args: &ScalingArgs,
) -> anyhow::Result<()> {
    raise_open_files();
    let bin = bin_dir(suite.bin_dir.as_deref())?;
    ensure_binaries(&bin, &["stockdata", "mesh-proxy"])?;
    let scratch = std::env::temp_dir().join(format!("meshctl-scaling-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let _scratch = RemoveOnDrop(scratch.clone());
    let h2load = suite
        .h2load
        .clone()
        .or_else(|| find_on_path("h2load"))
        .context("--scaling needs h2load (--h2load; Debian's nghttp2-client)")?;
    let h2load = H2load::new(h2load, &scratch)?;
    let haproxy = suite.haproxy.clone().or_else(|| find_on_path("haproxy"));
    if haproxy.is_none() {
        eprintln!("meshctl bench: no haproxy (--haproxy): the curves are mesh-proxy's alone");
    }

    let (endpoint_points, connection_points, idle) = if suite.smoke {
        (vec![1, 10], vec![1, 10], 100)
    } else {
        (
            vec![1, 10, 100, 1000],
            vec![1, 10, 100, 1000],
            args.idle_connections,
        )
    };
    let most = endpoint_points.iter().copied().max().unwrap_or(2).max(2);
    // Two replicas, each listening on half of the endpoint addresses.
    // Held until all are chosen, so that no port is handed out twice.
    let held: Vec<std::net::TcpListener> = (0..most)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let endpoints: Vec<SocketAddr> = held
        .iter()
        .map(std::net::TcpListener::local_addr)
        .collect::<Result<_, _>>()?;
    drop(held);
    let mut replicas = Vec::new();
    for (i, id) in ["r1", "r2"].iter().enumerate() {
        let mine: Vec<SocketAddr> = endpoints.iter().skip(i).step_by(2).copied().collect();
        let list: Vec<String> = mine.iter().map(ToString::to_string).collect();
        let mut replica = Service::spawn(
            *id,
            &bin.join("stockdata"),
            &[
                "--listen".into(),
                list.join(","),
                "--server-id".into(),
                (*id).into(),
            ],
            &[("RUST_LOG", "warn".into())],
        )?;
        wait_until_listening(&mut [&mut replica], &mine).await?;
        replicas.push(replica);
    }
    let mut proxies = vec![Proxy::Mesh];
    if haproxy.is_some() {
        proxies.push(Proxy::Haproxy);
    }
    let scaling = Scaling {
        bin,
        h2load,
        haproxy,
        scratch: scratch.clone(),
        endpoints,
    };

    let rounds = if suite.smoke { 1 } else { suite.rounds.max(1) };
    let points: Vec<(Curve, usize, Proxy)> = endpoint_points
        .iter()
        .map(|x| (Curve::Endpoints, *x))
        .chain(connection_points.iter().map(|x| (Curve::Connections, *x)))
        .flat_map(|(curve, x)| proxies.iter().map(move |proxy| (curve, x, *proxy)))
        .collect();
    let mut samples: Vec<Vec<(f64, f64, f64, u64)>> = vec![Vec::new(); points.len()];
    for round in 0..rounds {
        for (i, (curve, x, proxy)) in points.iter().enumerate() {
            eprintln!(
                "meshctl bench: scaling {curve:?} {x} / {} / round {}",
                proxy.name(),
                round + 1
            );
            samples[i].push(
                scaling
                    .measure(*proxy, *curve, *x, suite.run_time, suite.smoke)
                    .await?,
            );
        }
    }
    eprintln!("meshctl bench: {idle} idle connections");
    let (baseline, open) = scaling.idle_memory(idle).await?;
    for replica in replicas {
        replica.stop(Duration::from_secs(5)).await;
    }

    let results: Vec<Point> = points
        .iter()
        .zip(&samples)
        .map(|((curve, x, proxy), s)| Point {
            curve: *curve,
            x: *x,
            proxy: *proxy,
            rps: median(s.iter().map(|m| m.0).collect()),
            cpu_us: median(s.iter().map(|m| m.1).collect()),
            p99_ms: median(s.iter().map(|m| m.2).collect()),
            errors: s.iter().map(|m| m.3).sum(),
        })
        .collect();
    let text = report(&results, idle, baseline, open);
    println!("{text}");
    if let Some(path) = &suite.report {
        let svg_path = path.with_file_name("benchmarks-scaling.svg");
        std::fs::write(&svg_path, chart(&results))
            .with_context(|| format!("cannot write {}", svg_path.display()))?;
        write_report(
            path,
            "scaling",
            &format!("{text}\n![scaling](benchmarks-scaling.svg)\n"),
        )?;
        eprintln!(
            "meshctl bench: wrote {} and {}",
            path.display(),
            svg_path.display()
        );
    }
    let failed: u64 = results.iter().map(|p| p.errors).sum();
    if failed > 0 {
        bail!("{failed} calls failed");
    }
    Ok(())
}

/// The two tables and the idle-memory line, in Markdown.
fn report(points: &[Point], idle: usize, baseline: u64, open: u64) -> String {
    let mut text = String::new();
    for (curve, title) in [
        (Curve::Endpoints, "endpoints (1 connection × 100 streams)"),
        (
            Curve::Connections,
            "client connections × 10 streams (2 endpoints)",
        ),
    ] {
        let rows: Vec<&Point> = points.iter().filter(|p| p.curve == curve).collect();
        let _ = writeln!(
            text,
            "| {title} | proxy | requests/s | proxy CPU µs / call | vs its first | p99 ms | errors |\n|---:|---|---:|---:|---:|---:|---:|"
        );
        for p in &rows {
            // The same proxy's cost at the curve's first point.
            let first = rows
                .iter()
                .find(|q| q.proxy == p.proxy)
                .map_or(1.0, |q| q.cpu_us);
            // Under a clock tick of CPU (a short run of a fast proxy) reads 0.
            let ratio = if first > 0.0 {
                format!("{:.2} ×", p.cpu_us / first)
            } else {
                "–".to_owned()
            };
            let _ = writeln!(
                text,
                "| {} | {} | {:.0} | {:.2} | {ratio} | {:.3} | {} |",
                p.x,
                p.proxy.name(),
                p.rps,
                p.cpu_us,
                p.p99_ms,
                p.errors
            );
        }
        text.push('\n');
    }
    let per = open.saturating_sub(baseline) as f64 / idle.max(1) as f64;
    let _ = writeln!(
        text,
        "Idle client connections: the proxy's VmRSS {:.1} MB with one open, {:.1} MB with {idle} open and idle after one call each: **{:.1} KB per idle connection**.",
        baseline as f64 / 1e6,
        open as f64 / 1e6,
        per / 1e3
    );
    text
}

/// What a chart's row draws of a point.
type Measure = fn(&Point) -> f64;

/// CPU per call and p99, against the endpoints and against the client
/// connections (a panel each, log-scaled x axes), as an SVG: mesh-proxy's
/// curve with its values, and the baseline's (HAProxy) dashed beside it on
/// the same scale when it was measured.
fn chart(points: &[Point]) -> String {
    let (panel_w, panel_h, left_margin, gap) = (330.0, 170.0, 55.0, 45.0);
    let mesh_colour = "#4c7bd9";
    let baseline_colour = "#8c8c8c";
    let mut body = String::new();
    let has_baseline = points.iter().any(|p| p.proxy != Proxy::Mesh);
    let legend_baseline = if has_baseline {
        format!(
            r#"<line x1="200" y1="16" x2="230" y2="16" stroke="{baseline_colour}" stroke-width="2" stroke-dasharray="5,4"/><text x="236" y="20">HAProxy (its values are in the tables)</text>"#
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        body,
        r#"<line x1="{left_margin}" y1="16" x2="{x2}" y2="16" stroke="{mesh_colour}" stroke-width="2"/><text x="{tx}" y="20">mesh-proxy</text>{legend_baseline}"#,
        x2 = left_margin + 30.0,
        tx = left_margin + 36.0,
    );
    let columns = [
        (Curve::Endpoints, "endpoints behind one service"),
        (Curve::Connections, "client connections × 10 streams"),
    ];
    let rows: [(Measure, &str); 2] = [
        (|p| p.cpu_us, "proxy CPU µs per call"),
        (|p| p.p99_ms, "p99 ms"),
    ];
    for (column, (curve, axis)) in columns.into_iter().enumerate() {
        let x0 = left_margin + column as f64 * (panel_w + left_margin + gap);
        let on_curve: Vec<&Point> = points.iter().filter(|p| p.curve == curve).collect();
        let span = on_curve
            .iter()
            .map(|p| (p.x.max(1) as f64).log10())
            .fold(0.0, f64::max)
            .max(1.0);
        for (row, (value, name)) in rows.into_iter().enumerate() {
            let top = 45.0 + row as f64 * (panel_h + 70.0);
            let y0 = top + 20.0;
            let yb = y0 + panel_h;
            // One scale for both proxies, so the curves compare.
            let max = on_curve
                .iter()
                .map(|p| value(p))
                .fold(0.0, f64::max)
                .max(1e-9)
                * 1.15;
            let at = |p: &Point| {
                (
                    x0 + panel_w * (p.x.max(1) as f64).log10() / span,
                    y0 + panel_h * (1.0 - value(p) / max),
                )
            };
            let _ = writeln!(
                body,
                r##"<text x="{x0}" y="{top}" font-weight="bold">{name}</text>
<line x1="{x0}" y1="{yb}" x2="{xe}" y2="{yb}" stroke="#888"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{yb}" stroke="#888"/>
<text x="{lx}" y="{y0t}" text-anchor="end">{max:.1}</text><text x="{lx}" y="{yb}" text-anchor="end">0</text>
<text x="{xm}" y="{ya}" text-anchor="middle" fill="#555">{axis}</text>"##,
                xe = x0 + panel_w,
                lx = x0 - 4.0,
                y0t = y0 + 10.0,
                xm = x0 + panel_w / 2.0,
                ya = yb + 32.0,
            );
            let mut xs_labelled = Vec::new();
            for proxy in [Proxy::Haproxy, Proxy::Mesh] {
                let series: Vec<&&Point> = on_curve.iter().filter(|p| p.proxy == proxy).collect();
                if series.is_empty() {
                    continue;
                }
                let (colour, dash) = if proxy == Proxy::Mesh {
                    (mesh_colour, "")
                } else {
                    (baseline_colour, r#" stroke-dasharray="5,4""#)
                };
                let path: Vec<String> = series
                    .iter()
                    .map(|p| {
                        let (x, y) = at(p);
                        format!("{x:.1},{y:.1}")
                    })
                    .collect();
                let _ = writeln!(
                    body,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
                    path.join(" ")
                );
                for p in &series {
                    let (x, y) = at(p);
                    let _ = write!(
                        body,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
                    );
                    if proxy == Proxy::Mesh {
                        let _ = write!(
                            body,
                            r#"<text x="{x:.1}" y="{ty:.1}" text-anchor="middle" fill="{colour}">{v:.2}</text>"#,
                            ty = y - 7.0,
                            v = value(p),
                        );
                    }
                    if !xs_labelled.contains(&p.x) {
                        xs_labelled.push(p.x);
                        let _ = write!(
                            body,
                            r#"<text x="{x:.1}" y="{by:.1}" text-anchor="middle">{n}</text>"#,
                            by = yb + 15.0,
                            n = p.x,
                        );
                    }
                    body.push('\n');
                }
            }
        }
    }
    let width = 2.0 * (panel_w + left_margin) + gap + 20.0;
    let height = 45.0 + 2.0 * (panel_h + 70.0) + 10.0;
    let title = if has_baseline {
        "mesh-proxy and HAProxy: CPU per call and p99 as endpoints and client connections grow"
    } else {
        "mesh-proxy: CPU per call and p99 as endpoints and client connections grow"
    };
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12" role="img">
<title>{title}</title>
<rect width="100%" height="100%" fill="white"/>
{body}</svg>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(curve: Curve, x: usize, proxy: Proxy, cpu_us: f64, p99_ms: f64) -> Point {
        Point {
            curve,
            x,
            proxy,
            rps: 1000.0,
            cpu_us,
            p99_ms,
            errors: 0,
        }
    }

    fn points(with_baseline: bool) -> Vec<Point> {
        let mut points = Vec::new();
        for curve in [Curve::Endpoints, Curve::Connections] {
            for (i, x) in [1, 10, 100, 1000].into_iter().enumerate() {
                let i = i as f64;
                points.push(point(curve, x, Proxy::Mesh, 14.0 + i, 3.0 + i));
                if with_baseline {
                    points.push(point(curve, x, Proxy::Haproxy, 10.0 + i, 2.5 + i));
                }
            }
        }
        points
    }

    /// The chart's elements named `tag`, read as the XML it must be.
    fn elements(svg: &str, tag: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).expect("the chart is well-formed XML");
        doc.descendants()
            .filter(|n| n.tag_name().name() == tag)
            .map(|n| {
                n.text()
                    .map(str::to_owned)
                    .or_else(|| n.attribute("stroke-dasharray").map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn the_chart_draws_both_proxies_on_each_panel() {
        let svg = chart(&points(true));
        let lines = elements(&svg, "polyline");
        // Four panels, a curve per proxy on each: HAProxy's dashed.
        assert_eq!(lines.len(), 8, "{svg}");
        assert_eq!(lines.iter().filter(|dash| !dash.is_empty()).count(), 4);
        let texts = elements(&svg, "text");
        assert!(texts.iter().any(|t| t.starts_with("HAProxy")), "{texts:?}");
        // mesh-proxy's values are written beside its points; HAProxy's are not.
        for value in ["14.00", "17.00", "3.00", "6.00"] {
            assert_eq!(texts.iter().filter(|t| *t == value).count(), 2, "{value}");
        }
        assert!(!texts.iter().any(|t| t == "10.00"), "{texts:?}");
        // Each x once per panel, whichever proxy drew it first.
        assert_eq!(texts.iter().filter(|t| *t == "1000").count(), 4);
        // 16 points on each side, every one drawn.
        assert_eq!(elements(&svg, "circle").len(), 32);
    }

    #[test]
    fn without_a_baseline_the_chart_is_mesh_proxy_s_alone() {
        let svg = chart(&points(false));
        assert_eq!(elements(&svg, "polyline").len(), 4, "{svg}");
        assert!(!svg.contains("HAProxy"), "{svg}");
        assert_eq!(elements(&svg, "circle").len(), 16);
    }
}
