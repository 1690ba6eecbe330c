//! Limits against peers that send too much or too slowly, all checked
//! here: connections per side and per source ([`Limits::admit`]), request header size
//! ([`Limits::check_head`]), and the limits the HTTP layer enforces itself
//! (time to send a request head, streams per HTTP/2 connection, a head past
//! the transport's maximum), whose errors become refusals
//! ([`Limits::connection_error`]). Each refusal is counted in `/metrics`
//! (`mesh_refused_total{direction,reason}`) and logged: every one at debug
//! level, and at most one warning per reason and direction every 10 s, with
//! how many there were, so a flood of bad peers does not flood the log.

use crate::{
    errors::ProxyError,
    http::ServeError,
    metrics::{Direction, Metrics},
};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

/// Limit settings (flags in `config`).
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    /// Largest request header block, counted as HTTP/2 does (RFC 9113
    /// section 6.5.2: name + value + 32 per field).
    pub max_header_bytes: usize,
    /// How long an HTTP/1 client may take to send a request head, and an
    /// HTTP/2 client its first request and its SETTINGS acknowledgement.
    pub header_read_timeout: Duration,
    /// How long an HTTP/2 client connection may have no stream open.
    pub idle_timeout: Duration,
    /// Client resets of accepted streams one HTTP/2 connection may make in
    /// a second (when also more than half the streams it opened).
    pub max_resets_per_second: u32,
    /// Frames that carry nothing one HTTP/2 client may send in a second,
    /// plus one per KiB the proxy wrote to it.
    pub max_empty_frames_per_second: u32,
    /// Streams one HTTP/2 client connection may have open at once; clients
    /// learn it from SETTINGS and queue the rest.
    pub max_concurrent_streams: u32,
    /// Connections open at once, per side (inbound, outbound).
    pub max_connections: usize,
    /// Connections open at once from one IP address, per side.
    pub max_connections_per_source: usize,
    /// HTTP/2 streams open at once over all connections, per side; past
    /// it new streams are refused (REFUSED_STREAM, which clients retry).
    pub max_streams: usize,
    /// How long an HTTP/2 stream may go without a frame moving either way
    /// (its request read, its response sent) before it is reset, and an
    /// HTTP/1 connection without a byte before it is closed.
    pub stream_idle_timeout: Duration,
    /// How long an HTTP/2 request's body may take, from its head to its
    /// end, before the stream is reset; `None`: as long as it likes
    /// (client-streaming calls).
    pub request_body_timeout: Option<Duration>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_resets_per_second: 100,
            max_empty_frames_per_second: 1000,
            max_concurrent_streams: 256,
            max_connections: 4096,
            max_connections_per_source: 1024,
            max_streams: 10_000,
            stream_idle_timeout: Duration::from_secs(300),
            request_body_timeout: None,
        }
    }
}

impl LimitsConfig {
    /// The hard limit the HTTP libraries enforce themselves: above the
    /// proxy's own check, so that requests just over the limit get the
    /// proxy's answer (a gRPC RESOURCE_EXHAUSTED or a 431, counted); a head
    /// past twice the limit is refused by the HTTP layer (also a 431, and
    /// on HTTP/1 also counted).
    pub fn transport_header_bytes(&self) -> usize {
        (self.max_header_bytes * 2).max(8192)
    }
}

/// The limits in force, shared by every listener: the configuration, the
/// open-connection permits of each side, and where refusals are counted.
#[derive(Debug)]
pub struct Limits {
    pub config: LimitsConfig,
    inbound: Side,
    outbound: Side,
    refusals: Arc<Refusals>,
}

/// One side's open connections (a permit each, and how many per source)
/// and open HTTP/2 streams (a permit each).
#[derive(Debug)]
struct Side {
    connections: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Open HTTP/2 streams, and what every stream needs of the limits.
    streams: Arc<StreamLimits>,
    penalties: Penalties,
}

/// Sources whose connection was closed for abuse, refused new connections
/// for a while: 1 s, twice as long each time they offend again soon after,
/// up to 30 s. Closing a flooding connection alone leaves the attacker to
/// reconnect at once, and every new connection costs the proxy a handshake
/// and a fresh budget; refused at accept, it costs next to nothing. Other
/// sources, and the source's connections already open, are not touched.
#[derive(Debug, Default)]
struct Penalties(Mutex<HashMap<IpAddr, Penalty>>);

#[derive(Debug, Clone, Copy)]
struct Penalty {
    until: Instant,
    length: Duration,
}

const FIRST_PENALTY: Duration = Duration::from_secs(1);
const LONGEST_PENALTY: Duration = Duration::from_secs(30);
/// Sources remembered at most, so that a spoofed flood of sources cannot
/// grow the map without bound (past it, new offenders go unpenalized).
const MAX_PENALIZED: usize = 4096;

impl Penalties {
    /// Penalizes `source`; for how long.
    fn penalize(&self, source: IpAddr) -> Duration {
        let now = Instant::now();
        let mut penalized = self.0.lock().expect("penalty lock is never poisoned");
        if penalized.len() >= MAX_PENALIZED {
            penalized.retain(|_, p| p.until + p.length > now);
            if penalized.len() >= MAX_PENALIZED && !penalized.contains_key(&source) {
                return Duration::ZERO;
            }
        }
        let penalty = penalized.entry(source).or_insert(Penalty {
            until: now,
            length: Duration::ZERO,
        });
        // Offending again within a penalty's length of the last one's end.
        let length = if now < penalty.until + penalty.length {
            (penalty.length * 2).clamp(FIRST_PENALTY, LONGEST_PENALTY)
        } else {
            FIRST_PENALTY
        };
        *penalty = Penalty {
            until: now + length,
            length,
        };
        length
    }

    /// Whether `source` is refused now.
    fn holds(&self, source: IpAddr) -> bool {
        let penalized = self.0.lock().expect("penalty lock is never poisoned");
        !penalized.is_empty()
            && penalized
                .get(&source)
                .is_some_and(|p| p.until > Instant::now())
    }
}

impl Side {
    fn new(config: &LimitsConfig, direction: Direction, refusals: &Arc<Refusals>) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            per_source: Arc::default(),
            streams: Arc::new(StreamLimits {
                open: AtomicUsize::new(0),
                refusals: refusals.clone(),
                direction,
                max_streams: config.max_streams,
                idle_timeout: config.stream_idle_timeout,
                body_timeout: config.request_body_timeout,
            }),
            penalties: Penalties::default(),
        }
    }
}

/// What serving HTTP/2 needs of one side's limits for each stream: a
/// permit from the side's cap on open streams, the stream idle timeout,
/// and where its refusals are counted.
#[derive(Debug)]
pub struct StreamLimits {
    /// Open streams: a counter, not a semaphore, since a stream never
    /// waits for a place (and a semaphore's release takes a lock).
    open: AtomicUsize,
    refusals: Arc<Refusals>,
    direction: Direction,
    max_streams: usize,
    pub idle_timeout: Duration,
    pub body_timeout: Option<Duration>,
}

impl StreamLimits {
    /// A permit for a new stream, held until it ends; `None` (counted)
    /// when the side has its maximum open.
    pub fn admit(self: &Arc<Self>) -> Option<StreamPermit> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_streams {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refusals.refused(
                self.direction,
                Refusal::MaxStreams,
                &format_args!("{} streams open", self.max_streams),
            );
            return None;
        }
        Some(StreamPermit(self.clone()))
    }

    /// Counts and logs a stream the HTTP/2 layer ended for a limit.
    pub fn refused(&self, reason: Refusal, detail: &dyn std::fmt::Display) {
        self.refusals.refused(self.direction, reason, detail);
    }
}

/// A stream's place among its side's open streams, given back when it ends.
#[derive(Debug)]
pub struct StreamPermit(Arc<StreamLimits>);

impl StreamPermit {
    /// The limits the stream lives under.
    pub fn limits(&self) -> &StreamLimits {
        &self.0
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's place in its side's limits, given back when it closes.
#[derive(Debug)]
pub struct ConnectionPermit {
    _open: OwnedSemaphorePermit,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl ConnectionPermit {
    /// The IP address the connection came from.
    pub fn source(&self) -> IpAddr {
        self.source
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_source = self.per_source.lock().expect("lock is never poisoned");
        if let Some(open) = per_source.get_mut(&self.source) {
            *open -= 1;
            if *open == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

impl Limits {
    pub fn new(config: LimitsConfig, metrics: Arc<Metrics>) -> Self {
        let refusals = Arc::new(Refusals::new(metrics));
        Self {
            inbound: Side::new(&config, Direction::Inbound, &refusals),
            outbound: Side::new(&config, Direction::Outbound, &refusals),
            refusals,
            config,
        }
    }

    fn side(&self, direction: Direction) -> &Side {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// The stream limits of `direction`'s HTTP/2 connections.
    pub fn streams(&self, direction: Direction) -> &Arc<StreamLimits> {
        &self.side(direction).streams
    }

    /// A permit for a new connection from `peer`, held until it closes;
    /// `None` (counted) when its side has its maximum open, or its source
    /// its share.
    pub fn admit(&self, direction: Direction, peer: SocketAddr) -> Option<ConnectionPermit> {
        let side = self.side(direction);
        let Ok(open) = side.connections.clone().try_acquire_owned() else {
            self.refusals.refused(
                direction,
                Refusal::MaxConnections,
                &format_args!("{peer}: {} connections open", self.config.max_connections),
            );
            return None;
        };
        let source = peer.ip();
        if side.penalties.holds(source) {
            drop(open);
            self.refusals.refused(
                direction,
                Refusal::Penalized,
                &format_args!("{peer}: a connection from {source} was closed for abuse"),
            );
            return None;
        }
        {
            let mut per_source = side.per_source.lock().expect("lock is never poisoned");
            let from_source = per_source.entry(source).or_default();
            if *from_source >= self.config.max_connections_per_source {
                drop(per_source);
                self.refusals.refused(
                    direction,
                    Refusal::MaxConnectionsPerSource,
                    &format_args!(
                        "{peer}: {} connections open from {source}",
                        self.config.max_connections_per_source
                    ),
                );
                return None;
            }
            *from_source += 1;
        }
        Some(ConnectionPermit {
            _open: open,
            per_source: side.per_source.clone(),
            source,
        })
    }

    /// Counts and logs a refusal the caller made.
    pub fn refused(&self, direction: Direction, reason: Refusal, detail: &dyn std::fmt::Display) {
        self.refusals.refused(direction, reason, detail);
    }

    /// Refuses (counted) a request whose header block is over the limit.
    pub fn check_head<B>(
        &self,
        direction: Direction,
        request: &http::Request<B>,
    ) -> Result<(), ProxyError> {
        let size = header_bytes(request);
        if size <= self.config.max_header_bytes {
            return Ok(());
        }
        let err = ProxyError::HeaderTooLarge {
            size,
            limit: self.config.max_header_bytes,
        };
        self.refusals
            .refused(direction, Refusal::HeaderTooLarge, &err);
        Err(err)
    }

    /// Refuses (counted) a request head the proxy does not forward.
    pub fn check_request(
        &self,
        direction: Direction,
        request: &http::Request<impl Sized>,
    ) -> Result<(), ProxyError> {
        crate::head::check(request).inspect_err(|err| {
            self.refusals.refused(direction, Refusal::BadRequest, err);
        })
    }

    /// A connection from `source` that ended with an error: a limit the
    /// HTTP layer enforced itself is counted as a refusal like the proxy's
    /// own; anything else is a peer that broke the protocol or went away.
    /// A connection closed for abuse (a flood of frames that carry nothing,
    /// Rapid Reset) has its source refused new connections for a while
    /// ([`Penalties`]).
    pub fn connection_error(&self, direction: Direction, source: IpAddr, err: &ServeError) {
        let refusal = match err {
            ServeError::Http1(err) if err.is_parse_too_large() => Some(Refusal::HeaderTooLarge),
            ServeError::Http1(err) if err.is_timeout() => Some(Refusal::HeaderReadTimeout),
            ServeError::Refused(reason) => Some(*reason),
            _ => None,
        };
        let Some(reason) = refusal else {
            tracing::debug!(%err, "connection ended with an error");
            return;
        };
        if matches!(reason, Refusal::TooManyEmptyFrames | Refusal::TooManyResets) {
            let penalty = self.side(direction).penalties.penalize(source);
            self.refusals.refused(
                direction,
                reason,
                &format_args!("{err}; new connections from {source} refused for {penalty:?}"),
            );
        } else {
            self.refusals.refused(direction, reason, err);
        }
    }
}

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerSource,
    HeaderTooLarge,
    HeaderReadTimeout,
    /// A connection to a transparent listener that was not redirected to
    /// it, or whose original destination cannot be read.
    NoOriginalDestination,
    /// Inbound policy ([`crate::policy`]): plaintext where mTLS is required.
    TlsRequired,
    /// Policy: mTLS without a client identity where one is required.
    Unauthenticated,
    /// Policy: a client identity the port does not admit.
    Unauthorized,
    /// Policy `deny`.
    PolicyDenied,
    /// A mesh TLS handshake that failed: a certificate from another
    /// authority, an expired one, a protocol error.
    TlsHandshake,
    /// A connection whose protocol was not detected (not HTTP: too slow,
    /// garbled, or another protocol) to a port not declared opaque.
    ProtocolNotDetected,
    /// An HTTP/2 client that opened streams only to reset them (Rapid
    /// Reset): closed with GOAWAY(ENHANCE_YOUR_CALM).
    TooManyResets,
    /// An HTTP/2 client that flooded frames carrying nothing (PING,
    /// SETTINGS, WINDOW_UPDATE, PRIORITY, empty DATA).
    TooManyEmptyFrames,
    /// A request head the proxy does not forward ([`crate::head`]):
    /// `CONNECT`, a missing or invalid authority.
    BadRequest,
    /// An HTTP/2 stream over the side's cap on open streams: refused with
    /// REFUSED_STREAM.
    MaxStreams,
    /// An HTTP/2 client that did not acknowledge the proxy's SETTINGS
    /// within the header read timeout: GOAWAY(SETTINGS_TIMEOUT).
    SettingsTimeout,
    /// An HTTP/2 request whose body had not ended within the request body
    /// timeout: reset with CANCEL.
    RequestBodyTimeout,
    /// A connection from a source one of whose connections was closed for
    /// abuse lately ([`Penalties`]).
    Penalized,
    /// An HTTP/2 stream on which nothing moved for the stream idle timeout
    /// (a client that stopped reading its response or sending its
    /// request): reset with CANCEL; an HTTP/1 connection: closed.
    StreamIdleTimeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerSource => "max_connections_per_source",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::HeaderReadTimeout => "header_read_timeout",
            Refusal::NoOriginalDestination => "no_original_destination",
            Refusal::TlsRequired => "tls_required",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Unauthorized => "unauthorized",
            Refusal::PolicyDenied => "denied",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::BadRequest => "bad_request",
            Refusal::ProtocolNotDetected => "protocol_not_detected",
            Refusal::TooManyResets => "too_many_resets",
            Refusal::TooManyEmptyFrames => "too_many_empty_frames",
            Refusal::MaxStreams => "max_streams",
            Refusal::Penalized => "penalized",
            Refusal::RequestBodyTimeout => "request_body_timeout",
            Refusal::SettingsTimeout => "settings_timeout",
            Refusal::StreamIdleTimeout => "stream_idle_timeout",
        }
    }
}

/// Counts and logs refusals.
#[derive(Debug)]
struct Refusals {
    metrics: Arc<Metrics>,
    /// Per reason and direction: when the last warning went out, and how
    /// many refusals came since.
    warned: Mutex<HashMap<(Direction, Refusal), Warned>>,
}

/// When the last warning of one kind went out (`None`: never), and how
/// many refusals came since.
type Warned = (Option<Instant>, u64);

const WARN_EVERY: Duration = Duration::from_secs(10);

impl Refusals {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            warned: Mutex::new(HashMap::new()),
        }
    }

    fn refused(&self, direction: Direction, reason: Refusal, detail: &dyn std::fmt::Display) {
        self.metrics.refused(direction, reason.as_str());
        tracing::debug!(reason = reason.as_str(), %detail, "refused");
        let now = Instant::now();
        let mut warned = self
            .warned
            .lock()
            .expect("refusal log lock is never poisoned");
        let entry = warned.entry((direction, reason)).or_insert((None, 0));
        entry.1 += 1;
        // The first refusal of a kind warns at once.
        if entry
            .0
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
        {
            tracing::warn!(
                ?direction,
                reason = reason.as_str(),
                count = entry.1,
                %detail,
                "refused peers (one warning per reason every 10 s; each at debug level)"
            );
            *entry = (Some(now), 0);
        }
    }
}

/// A request head's size as HTTP/2 counts it: every field's name and value
/// plus 32, pseudo-headers included.
pub fn header_bytes<B>(request: &http::Request<B>) -> usize {
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path",
            uri.path_and_query().map_or(1, |p| p.as_str().len()),
        ),
    ];
    let pseudo: usize = pseudo.iter().map(|(name, len)| name.len() + len + 32).sum();
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    pseudo + fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_penalty_lasts_a_second_and_doubles_for_sources_that_offend_again() {
        let penalties = Penalties::default();
        let (offender, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(!penalties.holds(offender));
        assert_eq!(penalties.penalize(offender), Duration::from_secs(1));
        assert!(penalties.holds(offender));
        assert!(!penalties.holds(other), "other sources are not touched");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!penalties.holds(offender));
        // Again soon after: twice as long, and so on up to 30 s.
        assert_eq!(penalties.penalize(offender), Duration::from_secs(2));
        let mut length = Duration::from_secs(2);
        for _ in 0..6 {
            tokio::time::advance(length).await;
            length = penalties.penalize(offender);
        }
        assert_eq!(length, Duration::from_secs(30));
        // After a quiet spell as long as the last penalty, it starts over.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(penalties.penalize(offender), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn penalized_sources_are_bounded() {
        let penalties = Penalties::default();
        for n in 0..MAX_PENALIZED as u32 {
            penalties.penalize(IpAddr::from(n.to_be_bytes()));
        }
        let one_more = IpAddr::from([255, 255, 255, 255]);
        assert_eq!(penalties.penalize(one_more), Duration::ZERO);
        assert!(!penalties.holds(one_more));
        // Once their penalties are long over, room is made.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(penalties.penalize(one_more), Duration::from_secs(1));
    }

    #[test]
    fn header_bytes_count_names_values_and_overhead() {
        let request = http::Request::builder()
            .uri("http://stockdata/StockData.Stocks/Get")
            .header("x-a", "12345")
            .body(())
            .unwrap();
        let pseudo = (7 + 3 + 32) + (7 + 4 + 32) + (10 + 9 + 32) + (5 + 21 + 32);
        assert_eq!(header_bytes(&request), pseudo + (3 + 5 + 32));
    }

    #[test]
    fn warnings_are_counted_not_repeated() {
        let metrics = Arc::new(Metrics::default());
        let refusals = Refusals::new(metrics.clone());
        for _ in 0..5 {
            refusals.refused(Direction::Inbound, Refusal::MaxConnections, &"full");
        }
        let warned = refusals.warned.lock().unwrap();
        // The first warned; four are waiting for the next warning.
        assert_eq!(warned[&(Direction::Inbound, Refusal::MaxConnections)].1, 4);
        assert!(
            metrics
                .encode()
                .contains(r#"mesh_refused_total{direction="inbound",reason="max_connections"} 5"#)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_warning_comes_ten_seconds_later_with_the_count() {
        let refusals = Refusals::new(Arc::new(Metrics::default()));
        let key = (Direction::Outbound, Refusal::HeaderTooLarge);
        let pending = |r: &Refusals| r.warned.lock().unwrap()[&key].1;
        refusals.refused(key.0, key.1, &"big");
        tokio::time::advance(Duration::from_secs(9)).await;
        refusals.refused(key.0, key.1, &"big");
        assert_eq!(pending(&refusals), 1, "held back");
        tokio::time::advance(Duration::from_secs(1)).await;
        refusals.refused(key.0, key.1, &"big");
        assert_eq!(pending(&refusals), 0, "warned with the two since");
    }

    #[test]
    fn connections_past_the_maximum_are_refused_until_one_closes() {
        let metrics = Arc::new(Metrics::default());
        let limits = Limits::new(
            LimitsConfig {
                max_connections: 2,
                ..LimitsConfig::default()
            },
            metrics.clone(),
        );
        let peer = |n: u8| SocketAddr::from(([10, 0, 0, n], 40000));
        let first = limits.admit(Direction::Inbound, peer(1)).unwrap();
        let _second = limits.admit(Direction::Inbound, peer(2)).unwrap();
        assert!(limits.admit(Direction::Inbound, peer(3)).is_none());
        // The other side has its own.
        let _outbound = limits.admit(Direction::Outbound, peer(3)).unwrap();
        drop(first);
        assert!(limits.admit(Direction::Inbound, peer(4)).is_some());
        assert!(
            metrics
                .encode()
                .contains(r#"mesh_refused_total{direction="inbound",reason="max_connections"} 1"#)
        );
    }

    #[test]
    fn one_source_gets_its_share_and_no_more() {
        let metrics = Arc::new(Metrics::default());
        let limits = Limits::new(
            LimitsConfig {
                max_connections_per_source: 2,
                ..LimitsConfig::default()
            },
            metrics.clone(),
        );
        let from = |n: u8, port: u16| SocketAddr::from(([10, 0, 0, n], port));
        let first = limits.admit(Direction::Inbound, from(1, 1)).unwrap();
        let _second = limits.admit(Direction::Inbound, from(1, 2)).unwrap();
        assert!(limits.admit(Direction::Inbound, from(1, 3)).is_none());
        // Another source is not held back, nor the other side.
        assert!(limits.admit(Direction::Inbound, from(2, 1)).is_some());
        assert!(limits.admit(Direction::Outbound, from(1, 4)).is_some());
        drop(first);
        let _again = limits.admit(Direction::Inbound, from(1, 5)).unwrap();
        assert!(metrics.encode().contains(
            r#"mesh_refused_total{direction="inbound",reason="max_connections_per_source"} 1"#
        ));
        assert_eq!(
            limits.inbound.per_source.lock().unwrap()[&from(1, 0).ip()],
            2
        );
    }

    #[test]
    fn a_head_over_the_limit_is_refused_with_its_size() {
        let limits = Limits::new(
            LimitsConfig {
                max_header_bytes: 1024,
                ..LimitsConfig::default()
            },
            Arc::new(Metrics::default()),
        );
        let request = |value: usize| {
            http::Request::builder()
                .uri("http://stockdata/x")
                .header("x-big", "a".repeat(value))
                .body(())
                .unwrap()
        };
        assert!(
            limits
                .check_head(Direction::Outbound, &request(100))
                .is_ok()
        );
        let err = limits
            .check_head(Direction::Outbound, &request(2000))
            .unwrap_err();
        assert!(
            matches!(err, ProxyError::HeaderTooLarge { limit: 1024, .. }),
            "{err:?}"
        );
    }
}
