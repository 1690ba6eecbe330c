//! Flags and environment (`MESH_PROXY_*`) of `mesh-proxy`, parsed into a
//! checked [`Config`]. Every bad value names its flag before anything binds.

use crate::{
    limits::LimitsConfig,
    retry::{RetryConfig, RetryPolicy, budget::BudgetConfig},
};
use mesh_runtime::parse_duration;
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

/// mesh-proxy: the StockKube Mesh sidecar. Balances every HTTP/2 (gRPC) and
/// HTTP/1 request across a service's endpoints; forwards anything else as
/// opaque TCP.
#[derive(Debug, clap::Parser)]
#[command(name = "mesh-proxy", version)]
pub struct Args {
    /// Outbound listeners, SERVICE=ADDR: the local app connects to ADDR to
    /// reach SERVICE (like a Consul upstream). Repeat, or comma-separate in
    /// the variable.
    #[arg(
        long = "outbound",
        env = "MESH_PROXY_OUTBOUND",
        value_delimiter = ',',
        value_name = "SERVICE=ADDR"
    )]
    pub outbound: Vec<String>,

    /// Inbound listener: other proxies connect here to reach the local app.
    #[arg(
        long,
        env = "MESH_PROXY_INBOUND",
        value_name = "ADDR",
        requires = "app"
    )]
    pub inbound: Option<SocketAddr>,

    /// The local app's address, where inbound traffic is forwarded.
    #[arg(
        long,
        env = "MESH_PROXY_APP",
        value_name = "ADDR",
        requires = "inbound"
    )]
    pub app: Option<SocketAddr>,

    /// Admin server: /metrics, /ready, /live, /endpoints.
    #[arg(
        long,
        env = "MESH_PROXY_ADMIN",
        default_value = "127.0.0.1:4191",
        value_name = "ADDR"
    )]
    pub admin: SocketAddr,

    /// How to discover a service's endpoints, SERVICE=SPEC, where SPEC is
    /// `static:ADDR[;ADDR...]`, `dns:HOST:PORT` (every A/AAAA record,
    /// re-resolved) or `destination` (the controller, see --destination).
    /// Services without one use `destination` when --destination is set.
    #[arg(
        long = "discover",
        env = "MESH_PROXY_DISCOVER",
        value_delimiter = ',',
        value_name = "SERVICE=SPEC"
    )]
    pub discover: Vec<String>,

    /// Request timeouts, SERVICE=DURATION (off by default). A request still
    /// waiting for its response headers then answers DEADLINE_EXCEEDED
    /// (gRPC) or 504, and its upstream stream is cancelled. A gRPC
    /// `grpc-timeout` header is honoured too; the shorter one wins.
    #[arg(
        long = "timeout",
        env = "MESH_PROXY_TIMEOUT",
        value_delimiter = ',',
        value_name = "SERVICE=DURATION"
    )]
    pub timeout: Vec<String>,

    /// The controller's destination API, an http:// URL.
    #[arg(long, env = "MESH_PROXY_DESTINATION", value_name = "URL")]
    pub destination: Option<String>,

    /// Balancing: `p2c-ewma` (power of two choices over peak-EWMA latency,
    /// Linkerd's) or `round-robin`.
    #[arg(long, env = "MESH_PROXY_BALANCE", default_value = "p2c-ewma")]
    pub balance: BalanceStrategy,

    /// How often `dns:` discovery re-resolves.
    #[arg(long, env = "MESH_PROXY_DNS_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub dns_refresh: Duration,

    /// How long protocol detection waits for a client's first bytes before
    /// treating the connection as opaque TCP.
    #[arg(long, env = "MESH_PROXY_DETECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// How many bytes detection reads at most before deciding.
    #[arg(long, env = "MESH_PROXY_DETECT_MAX_BYTES", default_value_t = 8192)]
    pub detect_max_bytes: usize,

    /// Peak-EWMA decay: how fast a latency sample is forgotten.
    #[arg(long, env = "MESH_PROXY_EWMA_DECAY", default_value = "10s", value_parser = parse_duration)]
    pub ewma_decay: Duration,

    /// Latency assumed for an endpoint with no sample yet.
    #[arg(long, env = "MESH_PROXY_EWMA_DEFAULT_RTT", default_value = "30ms", value_parser = parse_duration)]
    pub ewma_default_rtt: Duration,

    /// How long a request waits for a service to have endpoints before it
    /// fails with 503 / UNAVAILABLE.
    #[arg(long, env = "MESH_PROXY_FAILFAST_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub failfast_timeout: Duration,

    /// Consecutive failures (no answer: refused, reset) after which an
    /// endpoint is ejected from its balancer for a backoff of 1 s doubling
    /// up to 60 s; 0 turns ejection off.
    #[arg(long, env = "MESH_PROXY_FAILURE_ACCRUAL", default_value_t = 7)]
    pub failure_accrual: u32,

    /// Response statuses a service's requests are retried on,
    /// SERVICE=STATUSES: `off`, or `;`-separated gRPC codes and HTTP
    /// statuses (`unavailable;resource-exhausted;503`). The default for
    /// every service is `unavailable;503`. Requests that got no response at
    /// all (refused, reset) are retried whatever the policy.
    #[arg(
        long = "retry-on",
        env = "MESH_PROXY_RETRY_ON",
        value_delimiter = ',',
        value_name = "SERVICE=STATUSES"
    )]
    pub retry_on: Vec<String>,

    /// Attempts per request, the first included; 1 turns retries off.
    #[arg(long, env = "MESH_PROXY_RETRY_ATTEMPTS", default_value_t = 3)]
    pub retry_attempts: u32,

    /// Request bodies up to this many bytes are kept so they can be retried;
    /// larger ones stream through and are not retried.
    #[arg(long, env = "MESH_PROXY_RETRY_MAX_BODY", default_value_t = 64 * 1024, value_name = "BYTES")]
    pub retry_max_body: usize,

    /// Retry budget: retries may add this ratio of a service's requests...
    #[arg(long, env = "MESH_PROXY_RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,

    /// ...plus this many per second...
    #[arg(
        long,
        env = "MESH_PROXY_RETRY_BUDGET_MIN_PER_SECOND",
        default_value_t = 10.0
    )]
    pub retry_budget_min_per_second: f64,

    /// ...counted over this sliding window.
    #[arg(long, env = "MESH_PROXY_RETRY_BUDGET_TTL", default_value = "10s", value_parser = parse_duration)]
    pub retry_budget_ttl: Duration,

    /// Largest request header block accepted (name + value + 32 per field);
    /// larger ones answer RESOURCE_EXHAUSTED (gRPC) or 431.
    #[arg(long, env = "MESH_PROXY_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_name = "BYTES")]
    pub max_header_bytes: usize,

    /// How long an HTTP/1 client may take to send a request head
    /// (slowloris); the connection is closed after it.
    #[arg(long, env = "MESH_PROXY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Streams one HTTP/2 client connection may have open at once
    /// (advertised in SETTINGS; clients queue the rest).
    #[arg(long, env = "MESH_PROXY_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Client connections open at once, all listeners together; more are
    /// closed as soon as they are accepted.
    #[arg(long, env = "MESH_PROXY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Register with the controller (--destination) as a proxy of this
    /// workload, so the dashboard finds it, where nothing else registers it
    /// (docker compose, a VM).
    #[arg(
        long,
        env = "MESH_PROXY_REGISTER_WORKLOAD",
        value_name = "NAME",
        requires = "destination"
    )]
    pub register_workload: Option<String>,

    /// With --register-workload: also register the inbound listener as an
    /// endpoint of this service, so other proxies discover it.
    #[arg(long, env = "MESH_PROXY_REGISTER_SERVICE", value_name = "SERVICE", requires_all = ["register_workload", "inbound"])]
    pub register_service: Option<String>,

    /// The instance name to register (default: the host name).
    #[arg(long, env = "MESH_PROXY_REGISTER_INSTANCE", value_name = "NAME")]
    pub register_instance: Option<String>,

    /// The host other components reach this proxy at, a name or an IP
    /// (default: the host name, resolved at each registration).
    #[arg(long, env = "MESH_PROXY_ADVERTISE", value_name = "HOST")]
    pub advertise: Option<String>,

    /// How long in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "MESH_PROXY_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// The balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceStrategy {
    P2cEwma,
    RoundRobin,
}

/// Where one service's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySpec {
    Static(Vec<SocketAddr>),
    Dns { host: String, port: u16 },
    Destination,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Outbound listener address to its service.
    pub outbound: Vec<(String, SocketAddr)>,
    /// Inbound listener and the app it forwards to.
    pub inbound: Option<(SocketAddr, SocketAddr)>,
    pub admin: SocketAddr,
    /// Discovery per service; every outbound service has one.
    pub discovery: BTreeMap<String, DiscoverySpec>,
    /// Request timeout per service; services without one have none.
    pub timeouts: BTreeMap<String, Duration>,
    pub destination: Option<http::Uri>,
    pub balance: BalanceStrategy,
    pub dns_refresh: Duration,
    pub detect_timeout: Duration,
    pub detect_max_bytes: usize,
    pub ewma_decay: Duration,
    pub ewma_default_rtt: Duration,
    pub failfast_timeout: Duration,
    pub failure_accrual: u32,
    pub retry: RetryConfig,
    /// Retry policy per service; services without one use the default.
    pub retry_policies: BTreeMap<String, RetryPolicy>,
    pub limits: LimitsConfig,
    /// Self-registration with the controller, when asked for.
    pub registration: Option<crate::register::Registration>,
    pub drain_timeout: Duration,
}

/// A flag value that is not what its flag takes.
#[derive(Debug, thiserror::Error)]
#[error("{flag} ({env}): {message}")]
pub struct ConfigError {
    flag: &'static str,
    env: &'static str,
    message: String,
}

fn bad(flag: &'static str, env: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        env,
        message: message.into(),
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        let outbound_err = |m: String| bad("--outbound", "MESH_PROXY_OUTBOUND", m);
        let mut outbound = Vec::new();
        for entry in &args.outbound {
            let (service, addr) = entry
                .split_once('=')
                .ok_or_else(|| outbound_err(format!("expected SERVICE=ADDR, got {entry:?}")))?;
            check_service_name(service).map_err(outbound_err)?;
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| outbound_err(format!("{addr:?} is not an ip:port address")))?;
            outbound.push((service.to_owned(), addr));
        }

        let destination = args
            .destination
            .as_deref()
            .map(|url| {
                let uri: http::Uri = url.parse().map_err(|e| {
                    bad(
                        "--destination",
                        "MESH_PROXY_DESTINATION",
                        format!("{url:?}: {e}"),
                    )
                })?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err(bad(
                        "--destination",
                        "MESH_PROXY_DESTINATION",
                        format!("{url:?} must be an http://host:port URL"),
                    ));
                }
                Ok(uri)
            })
            .transpose()?;

        let discover_err = |m: String| bad("--discover", "MESH_PROXY_DISCOVER", m);
        let mut discovery = BTreeMap::new();
        for entry in &args.discover {
            let (service, spec) = entry
                .split_once('=')
                .ok_or_else(|| discover_err(format!("expected SERVICE=SPEC, got {entry:?}")))?;
            check_service_name(service).map_err(discover_err)?;
            let spec = parse_spec(spec).map_err(discover_err)?;
            if spec == DiscoverySpec::Destination && destination.is_none() {
                return Err(discover_err(format!(
                    "{service} uses the destination API but --destination is not set"
                )));
            }
            discovery.insert(service.to_owned(), spec);
        }
        for (service, _) in &outbound {
            if !discovery.contains_key(service) {
                if destination.is_none() {
                    return Err(discover_err(format!(
                        "no discovery for outbound service {service}: add --discover {service}=... or --destination"
                    )));
                }
                discovery.insert(service.clone(), DiscoverySpec::Destination);
            }
        }

        let timeout_err = |m: String| bad("--timeout", "MESH_PROXY_TIMEOUT", m);
        let mut timeouts = BTreeMap::new();
        for entry in &args.timeout {
            let (service, duration) = entry
                .split_once('=')
                .ok_or_else(|| timeout_err(format!("expected SERVICE=DURATION, got {entry:?}")))?;
            check_service_name(service).map_err(timeout_err)?;
            let duration = parse_duration(duration).map_err(timeout_err)?;
            if duration.is_zero() {
                return Err(timeout_err(format!(
                    "{service}: a timeout must be more than zero"
                )));
            }
            timeouts.insert(service.to_owned(), duration);
        }

        let retry_err = |m: String| bad("--retry-on", "MESH_PROXY_RETRY_ON", m);
        let mut retry_policies = BTreeMap::new();
        for entry in &args.retry_on {
            let (service, statuses) = entry
                .split_once('=')
                .ok_or_else(|| retry_err(format!("expected SERVICE=STATUSES, got {entry:?}")))?;
            check_service_name(service).map_err(retry_err)?;
            let policy = statuses
                .parse()
                .map_err(|e| retry_err(format!("{service}: {e}")))?;
            retry_policies.insert(service.to_owned(), policy);
        }
        if args.retry_attempts == 0 {
            return Err(bad(
                "--retry-attempts",
                "MESH_PROXY_RETRY_ATTEMPTS",
                "must be at least 1 (1 turns retries off)",
            ));
        }
        if !(0.0..=10.0).contains(&args.retry_budget_ratio) {
            return Err(bad(
                "--retry-budget-ratio",
                "MESH_PROXY_RETRY_BUDGET_RATIO",
                format!("must be between 0 and 10, got {}", args.retry_budget_ratio),
            ));
        }
        if !(0.0..=1e6).contains(&args.retry_budget_min_per_second) {
            return Err(bad(
                "--retry-budget-min-per-second",
                "MESH_PROXY_RETRY_BUDGET_MIN_PER_SECOND",
                format!(
                    "must be between 0 and 1000000, got {}",
                    args.retry_budget_min_per_second
                ),
            ));
        }
        if args.max_header_bytes < 1024 {
            return Err(bad(
                "--max-header-bytes",
                "MESH_PROXY_MAX_HEADER_BYTES",
                format!("must be at least 1024, got {}", args.max_header_bytes),
            ));
        }
        for (flag, env, value) in [
            (
                "--max-concurrent-streams",
                "MESH_PROXY_MAX_CONCURRENT_STREAMS",
                args.max_concurrent_streams as usize,
            ),
            (
                "--max-connections",
                "MESH_PROXY_MAX_CONNECTIONS",
                args.max_connections,
            ),
        ] {
            if value == 0 {
                return Err(bad(flag, env, "must be at least 1"));
            }
        }

        if args.detect_max_bytes < 64 {
            return Err(bad(
                "--detect-max-bytes",
                "MESH_PROXY_DETECT_MAX_BYTES",
                format!(
                    "must be at least 64 (an HTTP/2 preface is 24), got {}",
                    args.detect_max_bytes
                ),
            ));
        }
        for (flag, env, value) in [
            (
                "--detect-timeout",
                "MESH_PROXY_DETECT_TIMEOUT",
                args.detect_timeout,
            ),
            ("--ewma-decay", "MESH_PROXY_EWMA_DECAY", args.ewma_decay),
            ("--dns-refresh", "MESH_PROXY_DNS_REFRESH", args.dns_refresh),
            (
                "--retry-budget-ttl",
                "MESH_PROXY_RETRY_BUDGET_TTL",
                args.retry_budget_ttl,
            ),
            (
                "--header-read-timeout",
                "MESH_PROXY_HEADER_READ_TIMEOUT",
                args.header_read_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(bad(flag, env, "must be more than zero"));
            }
        }
        let registration = match (&args.register_workload, &destination) {
            (Some(workload), Some(controller)) => {
                check_service_name(workload)
                    .map_err(|m| bad("--register-workload", "MESH_PROXY_REGISTER_WORKLOAD", m))?;
                if let Some(service) = &args.register_service {
                    check_service_name(service)
                        .map_err(|m| bad("--register-service", "MESH_PROXY_REGISTER_SERVICE", m))?;
                }
                let hostname = crate::register::hostname();
                Some(crate::register::Registration {
                    controller: controller.clone(),
                    workload: workload.clone(),
                    instance: args
                        .register_instance
                        .clone()
                        .unwrap_or_else(|| hostname.clone()),
                    advertise: args.advertise.clone().unwrap_or(hostname),
                    admin_port: args.admin.port(),
                    service: args
                        .register_service
                        .clone()
                        .zip(args.inbound.map(|addr| addr.port())),
                })
            }
            _ => None,
        };

        if outbound.is_empty() && args.inbound.is_none() {
            return Err(bad(
                "--outbound",
                "MESH_PROXY_OUTBOUND",
                "nothing to proxy: give --outbound SERVICE=ADDR and/or --inbound ADDR --app ADDR",
            ));
        }

        Ok(Config {
            outbound,
            inbound: args.inbound.zip(args.app),
            admin: args.admin,
            discovery,
            timeouts,
            destination,
            balance: args.balance,
            dns_refresh: args.dns_refresh,
            detect_timeout: args.detect_timeout,
            detect_max_bytes: args.detect_max_bytes,
            ewma_decay: args.ewma_decay,
            ewma_default_rtt: args.ewma_default_rtt,
            failfast_timeout: args.failfast_timeout,
            failure_accrual: args.failure_accrual,
            retry: RetryConfig {
                max_attempts: args.retry_attempts,
                max_body_bytes: args.retry_max_body,
                budget: BudgetConfig {
                    ratio: args.retry_budget_ratio,
                    min_per_second: args.retry_budget_min_per_second,
                    ttl: args.retry_budget_ttl,
                },
            },
            retry_policies,
            registration,
            limits: LimitsConfig {
                max_header_bytes: args.max_header_bytes,
                header_read_timeout: args.header_read_timeout,
                max_concurrent_streams: args.max_concurrent_streams,
                max_connections: args.max_connections,
            },
            drain_timeout: args.drain_timeout,
        })
    }
}

fn check_service_name(service: &str) -> Result<(), String> {
    let ok = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{service:?} is not a service name (letters, digits, '-', '.', '_')"
        ))
    }
}

fn parse_spec(spec: &str) -> Result<DiscoverySpec, String> {
    if spec == "destination" {
        return Ok(DiscoverySpec::Destination);
    }
    if let Some(list) = spec.strip_prefix("static:") {
        let addrs = list
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|a| {
                a.parse()
                    .map_err(|_| format!("{a:?} is not an ip:port address"))
            })
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        if addrs.is_empty() {
            return Err("static: needs at least one address".into());
        }
        return Ok(DiscoverySpec::Static(addrs));
    }
    if let Some(target) = spec.strip_prefix("dns:") {
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| format!("dns:{target} needs HOST:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port"))?;
        if host.is_empty() {
            return Err(format!("dns:{target} has no host"));
        }
        return Ok(DiscoverySpec::Dns {
            host: host.to_owned(),
            port,
        });
    }
    Err(format!(
        "{spec:?} is not static:..., dns:HOST:PORT or destination"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args = Args::try_parse_from(std::iter::once("mesh-proxy").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn outbound_with_static_discovery() {
        let config = parse(&[
            "--outbound",
            "stockdata=127.0.0.1:4140",
            "--discover",
            "stockdata=static:127.0.0.1:1;127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(
            config.outbound,
            [("stockdata".into(), "127.0.0.1:4140".parse().unwrap())]
        );
        assert_eq!(
            config.discovery["stockdata"],
            DiscoverySpec::Static(vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            ])
        );
        assert_eq!(config.balance, BalanceStrategy::P2cEwma);
    }

    #[test]
    fn outbound_defaults_to_the_destination_api() {
        let config = parse(&[
            "--outbound",
            "stockdata=127.0.0.1:4140",
            "--destination",
            "http://127.0.0.1:8086",
            "--discover",
            "other=dns:stockdata:80",
        ])
        .unwrap();
        assert_eq!(config.discovery["stockdata"], DiscoverySpec::Destination);
        assert_eq!(
            config.discovery["other"],
            DiscoverySpec::Dns {
                host: "stockdata".into(),
                port: 80
            }
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--outbound", "stockdata"][..], "--outbound"),
            (&["--outbound", "stockdata=nowhere"][..], "--outbound"),
            (&["--outbound", "s=127.0.0.1:1"][..], "--discover"),
            (
                &[
                    "--outbound",
                    "s=127.0.0.1:1",
                    "--discover",
                    "s=carrier-pigeon",
                ][..],
                "--discover",
            ),
            (
                &["--outbound", "s=127.0.0.1:1", "--discover", "s=destination"][..],
                "--discover",
            ),
            (
                &["--outbound", "s=127.0.0.1:1", "--destination", "grpc://x"][..],
                "--destination",
            ),
            (&["--inbound", "127.0.0.1:1"][..], "--app"),
            (&["--balance", "random"][..], "--balance"),
            (
                &[
                    "--outbound",
                    "s=127.0.0.1:1",
                    "--discover",
                    "s=static:127.0.0.1:2",
                    "--timeout",
                    "s=soon",
                ][..],
                "--timeout",
            ),
            (
                &[
                    "--outbound",
                    "s=127.0.0.1:1",
                    "--discover",
                    "s=static:127.0.0.1:2",
                    "--timeout",
                    "s=0ms",
                ][..],
                "--timeout",
            ),
            (&["--detect-timeout", "soon"][..], "--detect-timeout"),
            (&["--retry-on", "s=sometimes"][..], "--retry-on"),
            (&["--retry-on", "s"][..], "--retry-on"),
            (&["--retry-attempts", "0"][..], "--retry-attempts"),
            (&["--retry-budget-ratio", "20"][..], "--retry-budget-ratio"),
            (&["--max-header-bytes", "10"][..], "--max-header-bytes"),
            (&["--max-connections", "0"][..], "--max-connections"),
            (
                &["--header-read-timeout", "0s"][..],
                "--header-read-timeout",
            ),
            (&[][..], "nothing to proxy"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
