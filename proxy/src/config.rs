//! Flags and environment (`MESH_PROXY_*`) of `mesh-proxy`, parsed into a
//! checked [`Config`]. Every bad value names its flag before anything binds.

mod args;
mod service_value;

pub use args::{Args, BalanceStrategy};
pub use service_value::{DiscoverySpec, ServiceValue, Timeout};

use crate::{
    balance::{AccrualConfig, BalancerConfig, EwmaConfig},
    identity::{IdentityConfig, TrustAnchors},
    limits::LimitsConfig,
    policy::{InboundPolicy, Policy},
    register::Registration,
    retry::{RetryConfig, RetryPolicy, budget::BudgetConfig},
    serve::DetectConfig,
    tcp::OpaqueConfig,
};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

/// A checked configuration: every value parsed, every sub-configuration
/// built. Making one does no I/O.
#[derive(Debug, Clone)]
pub struct Config {
    /// Outbound listener address to its service.
    pub outbound: Vec<(String, SocketAddr)>,
    /// The listeners for redirected outbound connections.
    pub outbound_transparent: Vec<SocketAddr>,
    pub resolve_timeout: Duration,
    /// The proxy's namespace (Kubernetes), for names without one.
    pub namespace: String,
    /// Inbound listeners.
    pub inbound: Vec<SocketAddr>,
    /// Where inbound connections go (`None`: each connection's original
    /// destination port on 127.0.0.1).
    pub app: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// Discovery per service; every outbound service has one.
    pub discovery: BTreeMap<String, DiscoverySpec>,
    /// Request timeout per service; services without one have none.
    pub timeouts: BTreeMap<String, Duration>,
    pub destination: Option<http::Uri>,
    pub dns_refresh: Duration,
    pub detect: DetectConfig,
    pub opaque: OpaqueConfig,
    pub balancer: BalancerConfig,
    pub retry: RetryConfig,
    /// Retry policy per service; services without one use the default.
    pub retry_policies: BTreeMap<String, RetryPolicy>,
    pub limits: LimitsConfig,
    /// Routes per target with metric series of their own.
    pub max_routes: usize,
    /// Request headers taps may show.
    pub tap_headers: Vec<http::HeaderName>,
    /// Self-registration with the controller, when asked for.
    pub registration: Option<Registration>,
    /// The proxy's identity, when asked for.
    pub identity: Option<IdentityConfig>,
    /// Who may call the app.
    pub inbound_policy: InboundPolicy,
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

/// Parses every `SERVICE=VALUE` entry of one flag; a later entry for the
/// same service wins.
fn per_service<T>(
    entries: &[String],
    flag: &'static str,
    env: &'static str,
) -> Result<Vec<(String, T)>, ConfigError>
where
    ServiceValue<T>: std::str::FromStr<Err = String>,
{
    entries
        .iter()
        .map(|entry| {
            let ServiceValue { service, value } = entry.parse().map_err(|m| bad(flag, env, m))?;
            Ok((service, value))
        })
        .collect()
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        let outbound: Vec<(String, SocketAddr)> =
            per_service(&args.outbound, "--outbound", "MESH_PROXY_OUTBOUND")?;
        let tap_headers =
            args.tap_headers
                .iter()
                .map(|name| {
                    http::HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                        .map_err(|_| {
                            bad(
                                "--tap-headers",
                                "MESH_PROXY_TAP_HEADERS",
                                format!("{name:?} is not a header name"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;

        let destination = args
            .destination
            .as_deref()
            .map(|url| {
                let bad = |m| bad("--destination", "MESH_PROXY_DESTINATION", m);
                let uri: http::Uri = url.parse().map_err(|e| bad(format!("{url:?}: {e}")))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err(bad(format!("{url:?} must be an http://host:port URL")));
                }
                Ok(uri)
            })
            .transpose()?;

        let discover_err = |m: String| bad("--discover", "MESH_PROXY_DISCOVER", m);
        let mut discovery = BTreeMap::new();
        for (service, spec) in per_service(&args.discover, "--discover", "MESH_PROXY_DISCOVER")? {
            if spec == DiscoverySpec::Destination && destination.is_none() {
                return Err(discover_err(format!(
                    "{service} uses the destination API but --destination is not set"
                )));
            }
            discovery.insert(service, spec);
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

        let timeouts = per_service::<Timeout>(&args.timeout, "--timeout", "MESH_PROXY_TIMEOUT")?
            .into_iter()
            .map(|(service, Timeout(after))| (service, after))
            .collect();
        let retry_policies = per_service(&args.retry_on, "--retry-on", "MESH_PROXY_RETRY_ON")?
            .into_iter()
            .collect();

        check_ranges(&args)?;
        let registration = registration(&args, &destination)?;
        let identity = match (&args.identity, &args.identity_token_file, &destination) {
            (Some(identity), Some(token_file), Some(controller)) => {
                if stockkube_proto::identity::parse(identity).is_none() {
                    return Err(bad(
                        "--identity",
                        "MESH_PROXY_IDENTITY",
                        "expected spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT",
                    ));
                }
                let trust_anchors = match (
                    &args.identity_trust_anchors,
                    &args.identity_trust_anchors_pem,
                ) {
                    (Some(file), _) => TrustAnchors::File(file.clone()),
                    (None, Some(pem)) => TrustAnchors::Pem(pem.clone()),
                    (None, None) => {
                        return Err(bad(
                            "--identity-trust-anchors",
                            "MESH_PROXY_IDENTITY_TRUST_ANCHORS",
                            "--identity needs the mesh's trust anchors (PEM)",
                        ));
                    }
                };
                Some(IdentityConfig {
                    identity: identity.clone(),
                    token_file: token_file.clone(),
                    controller: controller.clone(),
                    trust_anchors,
                })
            }
            _ => None,
        };
        if outbound.is_empty() && args.outbound_transparent.is_empty() && args.inbound.is_empty() {
            return Err(bad(
                "--outbound",
                "MESH_PROXY_OUTBOUND",
                "nothing to proxy: give --outbound SERVICE=ADDR, --outbound-transparent ADDR and/or --inbound ADDR",
            ));
        }

        Ok(Config {
            outbound,
            outbound_transparent: args.outbound_transparent.clone(),
            resolve_timeout: args.resolve_timeout,
            namespace: args.namespace.clone(),
            inbound: args.inbound.clone(),
            app: args.app,
            admin: args.admin,
            discovery,
            timeouts,
            destination,
            dns_refresh: args.dns_refresh,
            detect: DetectConfig {
                timeout: args.detect_timeout,
                max_bytes: args.detect_max_bytes,
            },
            max_routes: args.max_routes,
            tap_headers,
            opaque: OpaqueConfig {
                ports: args.opaque_ports.clone().into(),
                idle_timeout: args.opaque_idle_timeout,
            },
            balancer: BalancerConfig {
                strategy: args.balance,
                ewma: EwmaConfig {
                    decay: args.ewma_decay,
                    default_rtt: args.ewma_default_rtt,
                },
                accrual: AccrualConfig {
                    failures: args.failure_accrual,
                    ..AccrualConfig::default()
                },
                failfast: args.failfast_timeout,
            },
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
            inbound_policy: inbound_policy(&args, identity.is_some())?,
            identity,
            limits: LimitsConfig {
                max_header_bytes: args.max_header_bytes,
                header_read_timeout: args.header_read_timeout,
                idle_timeout: args.idle_timeout,
                max_resets_per_second: args.max_resets_per_second,
                max_empty_frames_per_second: args.max_empty_frames_per_second,
                max_concurrent_streams: args.max_concurrent_streams,
                max_connections: args.max_connections,
                max_connections_per_source: args.max_connections_per_source,
                max_streams: args.max_streams,
                stream_idle_timeout: args.stream_idle_timeout,
                request_body_timeout: args.request_body_timeout,
            },
            drain_timeout: args.drain_timeout,
        })
    }
}

/// The inbound policies; one that needs an identity needs --identity.
fn inbound_policy(args: &Args, has_identity: bool) -> Result<InboundPolicy, ConfigError> {
    const FLAG: &str = "--inbound-port-policy";
    const ENV: &str = "MESH_PROXY_INBOUND_PORT_POLICY";
    let default: Policy = args
        .inbound_policy
        .parse()
        .map_err(|e: String| bad("--inbound-policy", "MESH_PROXY_INBOUND_POLICY", e))?;
    let ports = stockkube_proto::policy::parse_port_policies(&args.inbound_port_policy.join(";"))
        .map_err(|e| bad(FLAG, ENV, e))?
        .into_iter()
        .collect();
    let policy = InboundPolicy { default, ports };
    if policy.needs_identity() && !has_identity {
        return Err(bad(
            "--inbound-policy",
            "MESH_PROXY_INBOUND_POLICY",
            "a policy that admits only authenticated clients needs --identity (mTLS)",
        ));
    }
    Ok(policy)
}

/// Numbers and durations within what the proxy can work with.
fn check_ranges(args: &Args) -> Result<(), ConfigError> {
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
    let counts = [
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
        (
            "--max-empty-frames-per-second",
            "MESH_PROXY_MAX_EMPTY_FRAMES_PER_SECOND",
            args.max_empty_frames_per_second as usize,
        ),
        (
            "--max-resets-per-second",
            "MESH_PROXY_MAX_RESETS_PER_SECOND",
            args.max_resets_per_second as usize,
        ),
        (
            "--max-connections-per-source",
            "MESH_PROXY_MAX_CONNECTIONS_PER_SOURCE",
            args.max_connections_per_source,
        ),
        ("--max-streams", "MESH_PROXY_MAX_STREAMS", args.max_streams),
    ];
    if let Some((flag, env, _)) = counts.into_iter().find(|(_, _, n)| *n == 0) {
        return Err(bad(flag, env, "must be at least 1"));
    }
    let durations = [
        (
            "--detect-timeout",
            "MESH_PROXY_DETECT_TIMEOUT",
            args.detect_timeout,
        ),
        ("--ewma-decay", "MESH_PROXY_EWMA_DECAY", args.ewma_decay),
        (
            "--resolve-timeout",
            "MESH_PROXY_RESOLVE_TIMEOUT",
            args.resolve_timeout,
        ),
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
        (
            "--idle-timeout",
            "MESH_PROXY_IDLE_TIMEOUT",
            args.idle_timeout,
        ),
        (
            "--opaque-idle-timeout",
            "MESH_PROXY_OPAQUE_IDLE_TIMEOUT",
            args.opaque_idle_timeout,
        ),
        (
            "--stream-idle-timeout",
            "MESH_PROXY_STREAM_IDLE_TIMEOUT",
            args.stream_idle_timeout,
        ),
        (
            "--request-body-timeout",
            "MESH_PROXY_REQUEST_BODY_TIMEOUT",
            args.request_body_timeout.unwrap_or(Duration::MAX),
        ),
    ];
    if let Some((flag, env, _)) = durations.into_iter().find(|(_, _, d)| d.is_zero()) {
        return Err(bad(flag, env, "must be more than zero"));
    }
    Ok(())
}

/// Self-registration, when asked for. The host name behind the instance
/// and advertised host defaults is read when the proxy runs, not here.
fn registration(
    args: &Args,
    destination: &Option<http::Uri>,
) -> Result<Option<Registration>, ConfigError> {
    let (Some(workload), Some(controller)) = (&args.register_workload, destination) else {
        return Ok(None);
    };
    service_value::check_service_name(workload)
        .map_err(|m| bad("--register-workload", "MESH_PROXY_REGISTER_WORKLOAD", m))?;
    if let Some(service) = &args.register_service {
        service_value::check_service_name(service)
            .map_err(|m| bad("--register-service", "MESH_PROXY_REGISTER_SERVICE", m))?;
    }
    Ok(Some(Registration {
        controller: controller.clone(),
        workload: workload.clone(),
        instance: args.register_instance.clone(),
        advertise: args.advertise.clone(),
        admin_port: args.admin.port(),
        service: args
            .register_service
            .clone()
            .zip(args.inbound.first().map(|addr| addr.port())),
        identity: args.identity.clone().zip(args.identity_token_file.clone()),
    }))
}

#[cfg(test)]
mod tests;
