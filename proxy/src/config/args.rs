//! The flags, each with its `MESH_PROXY_*` variable, default and help.

use mesh_runtime::parse_duration;
use std::{net::SocketAddr, time::Duration};
use stockkube_proto::ports;

/// mesh-proxy: the StockKube Mesh sidecar. Balances every HTTP/2 (gRPC) and
/// HTTP/1 request across a service's endpoints; forwards other protocols as
/// opaque TCP to the ports declared opaque (--opaque-ports) and closes them
/// elsewhere.
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

    /// Outbound listeners for connections the pod's iptables rules redirect
    /// (`mesh-proxy-init --outbound-port`; one address per IP family, e.g.
    /// `127.0.0.1:4140,[::1]:4140`): each goes where the app sent it (its
    /// original destination). When the controller (--destination) knows that
    /// address as a Service, its requests are balanced over the Service's
    /// endpoints; otherwise the connection is forwarded untouched.
    #[arg(
        long,
        env = "MESH_PROXY_OUTBOUND_TRANSPARENT",
        value_name = "ADDR",
        value_delimiter = ',',
        requires = "destination"
    )]
    pub outbound_transparent: Vec<SocketAddr>,

    /// How long an intercepted connection waits for the controller to say
    /// which service its destination is; after it, the connection goes to
    /// its original destination untouched (counted).
    #[arg(long, env = "MESH_PROXY_RESOLVE_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub resolve_timeout: Duration,

    /// The namespace the proxy runs in (Kubernetes: from the downward API),
    /// for service names without one.
    #[arg(long, env = "MESH_PROXY_NAMESPACE", default_value = "")]
    pub namespace: String,

    /// Inbound listeners (one address per IP family, e.g.
    /// `0.0.0.0:4143,[::]:4143`): other proxies connect here to reach the
    /// local app. With --app, every connection goes to that address; without
    /// it, to the port the peer dialled (the original destination of a
    /// connection the pod's iptables rules redirected), on 127.0.0.1.
    #[arg(
        long,
        env = "MESH_PROXY_INBOUND",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub inbound: Vec<SocketAddr>,

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
        default_value_t = SocketAddr::from(([127, 0, 0, 1], ports::PROXY_ADMIN)),
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
    /// deciding the protocol is not HTTP.
    #[arg(long, env = "MESH_PROXY_DETECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// How many bytes detection reads at most before deciding.
    #[arg(long, env = "MESH_PROXY_DETECT_MAX_BYTES", default_value_t = 8192)]
    pub detect_max_bytes: usize,

    /// Ports whose connections are relayed as opaque TCP when they are not
    /// HTTP (Linkerd's opaque ports; comma-separated): the app port
    /// inbound, the endpoint's port outbound. On other ports a connection
    /// whose protocol was not detected is closed.
    #[arg(long, env = "MESH_PROXY_OPAQUE_PORTS", value_delimiter = ',')]
    pub opaque_ports: Vec<u16>,

    /// Routes (request paths; a gRPC method's is its path) per target with
    /// metric series of their own; requests on further routes are counted
    /// under the route `other`, so random paths cannot grow `/metrics`.
    #[arg(long, env = "MESH_PROXY_MAX_ROUTES", default_value_t = crate::metrics::paths::DEFAULT_MAX_ROUTES)]
    pub max_routes: usize,

    /// Request headers a tap may show (comma-separated names); taps show
    /// no other header, and never a body.
    #[arg(long, env = "MESH_PROXY_TAP_HEADERS", value_delimiter = ',')]
    pub tap_headers: Vec<String>,

    /// How long an opaque TCP relay may carry no bytes either way before
    /// it is closed.
    #[arg(long, env = "MESH_PROXY_OPAQUE_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub opaque_idle_timeout: Duration,

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
    /// (slowloris), and an HTTP/2 client its first request and its
    /// acknowledgement of the proxy's SETTINGS; the connection is closed
    /// after it.
    #[arg(long, env = "MESH_PROXY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// How long an HTTP/2 client connection may have no stream open before
    /// the proxy closes it (GOAWAY).
    #[arg(long, env = "MESH_PROXY_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Streams one HTTP/2 client connection may have open at once
    /// (advertised in SETTINGS; clients queue the rest).
    #[arg(long, env = "MESH_PROXY_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// HTTP/2 streams open at once over all client connections, per side
    /// (inbound, outbound); past it new streams are refused with
    /// REFUSED_STREAM, which clients retry.
    #[arg(long, env = "MESH_PROXY_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,

    /// How long an HTTP/2 stream may go with nothing moving either way (no
    /// request frame read, no response frame sent: a client that stopped
    /// reading or sending) before it is reset with CANCEL; an HTTP/1
    /// connection with no byte either way is closed.
    #[arg(long, env = "MESH_PROXY_STREAM_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub stream_idle_timeout: Duration,

    /// How long an HTTP/2 request's body may take, from its head to its
    /// end, before the stream is reset with CANCEL (a body that trickles).
    /// Off by default: client-streaming calls may last as long as they like.
    #[arg(long, env = "MESH_PROXY_REQUEST_BODY_TIMEOUT", value_parser = parse_duration)]
    pub request_body_timeout: Option<Duration>,

    /// Streams one HTTP/2 client may reset in a second, once accepted,
    /// when they are also more than half the streams it opened then; past
    /// it the connection is closed with GOAWAY(ENHANCE_YOUR_CALM) (Rapid
    /// Reset), and its source refused new connections for 1 s, doubling up
    /// to 30 s while it goes on.
    #[arg(long, env = "MESH_PROXY_MAX_RESETS_PER_SECOND", default_value_t = 100)]
    pub max_resets_per_second: u32,

    /// Frames that carry nothing (PING, SETTINGS, WINDOW_UPDATE, PRIORITY,
    /// empty DATA) one HTTP/2 client may send in a second, plus one per KiB
    /// the proxy wrote to it; past it the connection is closed with
    /// GOAWAY(ENHANCE_YOUR_CALM), and its source refused new connections
    /// for 1 s, doubling up to 30 s while it goes on.
    #[arg(
        long,
        env = "MESH_PROXY_MAX_EMPTY_FRAMES_PER_SECOND",
        default_value_t = 1000
    )]
    pub max_empty_frames_per_second: u32,

    /// Client connections open at once on each side (inbound, outbound),
    /// so that one side filling up never refuses the other's; more are
    /// closed as soon as they are accepted.
    #[arg(long, env = "MESH_PROXY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Client connections open at once from one IP address, on each side.
    #[arg(
        long,
        env = "MESH_PROXY_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 1024
    )]
    pub max_connections_per_source: usize,

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

    /// The proxy's identity, `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT`:
    /// it makes a key, asks the controller's Identity service
    /// (--destination) for a certificate before it reports ready, and
    /// renews it. With an identity, calls to endpoints that have one are
    /// mTLS (HTTP/2 and opaque TCP) and the inbound listener accepts mTLS
    /// from other proxies besides plaintext.
    #[arg(
        long,
        env = "MESH_PROXY_IDENTITY",
        value_name = "SPIFFE-ID",
        requires_all = ["destination", "identity_token_file"]
    )]
    pub identity: Option<String>,

    /// The credential that proves --identity, read before each request: in
    /// Kubernetes the pod's projected ServiceAccount token, elsewhere the
    /// workload's bootstrap credential.
    #[arg(
        long,
        env = "MESH_PROXY_IDENTITY_TOKEN_FILE",
        value_name = "FILE",
        requires = "identity"
    )]
    pub identity_token_file: Option<std::path::PathBuf>,

    /// The mesh's trust anchors (PEM): the certificates every other proxy's
    /// chain must lead to. With --identity, this or
    /// --identity-trust-anchors-pem is needed.
    #[arg(
        long,
        env = "MESH_PROXY_IDENTITY_TRUST_ANCHORS",
        value_name = "FILE",
        requires = "identity"
    )]
    pub identity_trust_anchors: Option<std::path::PathBuf>,

    /// The trust anchors as PEM text instead of a file (how the injector
    /// passes them, in the variable).
    #[arg(
        long,
        env = "MESH_PROXY_IDENTITY_TRUST_ANCHORS_PEM",
        value_name = "PEM",
        requires = "identity",
        conflicts_with = "identity_trust_anchors",
        allow_hyphen_values = true,
        hide_env_values = true
    )]
    pub identity_trust_anchors_pem: Option<String>,

    /// Who may call the app: all-unauthenticated, all-authenticated,
    /// cluster-authenticated (identities in this proxy's trust domain),
    /// deny, or a comma-separated list of SPIFFE IDs. Policies that need an
    /// identity close plaintext connections; refused requests get 403 /
    /// PERMISSION_DENIED.
    #[arg(
        long,
        env = "MESH_PROXY_INBOUND_POLICY",
        value_name = "POLICY",
        default_value = "all-unauthenticated"
    )]
    pub inbound_policy: String,

    /// The policy of one app port, PORT=POLICY (as --inbound-policy).
    /// Repeat, or separate with ';' in the variable.
    #[arg(
        long,
        env = "MESH_PROXY_INBOUND_PORT_POLICY",
        value_name = "PORT=POLICY",
        value_delimiter = ';'
    )]
    pub inbound_port_policy: Vec<String>,

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
