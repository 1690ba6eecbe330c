//! Tap: a live stream of the requests passing through the proxy, for an
//! operator watching one workload (the dashboard's Tap page, `meshctl
//! tap`). Served by the admin server at `GET /tap` as one JSON object per
//! line ([`TapEvent`]).
//!
//! Tapping must not slow the request path: with no tap attached a request
//! pays one atomic load; with taps, a request is recorded only when a tap's
//! filter wants it and that tap has a token left (each tap gets `max_rps`
//! tokens per second, 100 by default), so a busy proxy samples instead of
//! copying every request. What a full tap could not take is counted and
//! said in the stream (`{"type":"dropped","count":N}`). Bodies are never
//! recorded; request headers only when named in `--tap-headers`.

use crate::{metrics::Direction, tls::PeerTls};
use bytes::Bytes;
use serde::Serialize;
use std::{
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use stockkube_proto::metrics::labels;
use tokio::{
    sync::{Notify, futures::OwnedNotified, mpsc},
    time::Instant,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Taps attached at once, at most; more are refused (503).
pub const MAX_TAPS: usize = 16;
/// A tap's rate unless it asks for another, and the most it may ask for.
pub const DEFAULT_MAX_RPS: u32 = 100;
pub const LIMIT_MAX_RPS: u32 = 1000;
/// Events waiting for a slow reader, per tap, before more are dropped.
const QUEUE: usize = 256;
/// A line at least this often, so an idle tap is not closed as idle.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Every tap attached to this proxy.
#[derive(Debug, Default)]
pub struct Taps {
    /// How many are attached: the request path's one check.
    active: AtomicUsize,
    taps: Mutex<Vec<Arc<Tap>>>,
    /// Request headers a tap may show (lowercase), from `--tap-headers`.
    headers: Vec<http::HeaderName>,
    /// Cancelled when the proxy stops: every stream ends.
    closed: CancellationToken,
}

impl Taps {
    pub fn new(headers: Vec<http::HeaderName>) -> Self {
        Self {
            headers,
            ..Self::default()
        }
    }

    /// Whether any tap is attached.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Attaches a tap; `None` when [`MAX_TAPS`] are already attached.
    pub fn attach(self: &Arc<Self>, filter: TapFilter, max_rps: u32) -> Option<TapStream> {
        let mut taps = self.taps.lock().expect("taps lock is never poisoned");
        if taps.len() >= MAX_TAPS || self.closed.is_cancelled() {
            return None;
        }
        let (sender, events) = mpsc::channel(QUEUE);
        let max_rps = max_rps.clamp(1, LIMIT_MAX_RPS);
        let tap = Arc::new(Tap {
            filter,
            bucket: Mutex::new(Bucket::full(max_rps)),
            sender,
            dropped: AtomicU64::new(0),
            dropping: Arc::new(Notify::new()),
        });
        taps.push(tap.clone());
        self.active.store(taps.len(), Ordering::Relaxed);
        Some(TapStream {
            events,
            dropping: Box::pin(tap.dropping.clone().notified_owned()),
            tap,
            taps: self.clone(),
            heartbeat: Box::pin(tokio::time::sleep(HEARTBEAT)),
            closed: Box::pin(self.closed.clone().cancelled_owned()),
        })
    }

    fn detach(&self, tap: &Arc<Tap>) {
        let mut taps = self.taps.lock().expect("taps lock is never poisoned");
        taps.retain(|t| !Arc::ptr_eq(t, tap));
        self.active.store(taps.len(), Ordering::Relaxed);
    }

    /// Ends every tap's stream (the proxy is stopping: the admin server's
    /// drain must not wait for readers that never leave).
    pub fn close(&self) {
        self.closed.cancel();
        let mut taps = self.taps.lock().expect("taps lock is never poisoned");
        taps.clear();
        self.active.store(0, Ordering::Relaxed);
    }

    /// A request arriving: recorded when some tap wants it and may take it.
    pub fn start<B>(
        self: &Arc<Self>,
        direction: Direction,
        target: &Arc<str>,
        request: &http::Request<B>,
        source: IpAddr,
    ) -> Option<Box<Tapped>> {
        if !self.active() {
            return None;
        }
        let path = request.uri().path();
        let method = request.method();
        let authority = crate::outbound::host_of(request);
        let taps = self.taps.lock().expect("taps lock is never poisoned");
        let wanted: Vec<Arc<Tap>> = taps
            .iter()
            .filter(|tap| tap.filter.wants_request(direction, method, authority, path))
            // A tap that filters on the answer cannot tell yet: it takes its
            // token at the end, from the requests that match.
            .filter(|tap| !tap.filter.wants_any_answer() || tap.take_token())
            .cloned()
            .collect();
        drop(taps);
        if wanted.is_empty() {
            return None;
        }
        let headers = self
            .headers
            .iter()
            .filter_map(|name| {
                let value = request.headers().get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
        Some(Box::new(Tapped {
            wanted,
            event: TapEvent {
                kind: "request",
                at_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                direction: match direction {
                    Direction::Inbound => labels::INBOUND,
                    Direction::Outbound => labels::OUTBOUND,
                },
                target: target.clone(),
                method: method.as_str().to_owned(),
                authority: authority.map(str::to_owned),
                path: path.to_owned(),
                source,
                endpoint: None,
                endpoint_instance: None,
                attempts: 0,
                status: 0,
                grpc_status: None,
                complete: false,
                latency_ms: 0.0,
                tls: false,
                identity: None,
                headers,
            },
        }))
    }
}

/// What a tap wants to see; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct TapFilter {
    pub direction: Option<Direction>,
    pub method: Option<http::Method>,
    /// The host the request names (`:authority` or `Host`, without port).
    pub authority: Option<String>,
    pub path_prefix: Option<String>,
    /// The HTTP status of the answer.
    pub status: Option<u16>,
    /// The gRPC status of the answer.
    pub grpc_status: Option<u8>,
}

impl TapFilter {
    fn wants_request(
        &self,
        direction: Direction,
        method: &http::Method,
        authority: Option<&str>,
        path: &str,
    ) -> bool {
        self.direction.is_none_or(|d| d == direction)
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .authority
                .as_deref()
                .is_none_or(|a| authority.is_some_and(|x| x.eq_ignore_ascii_case(a)))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }

    /// Whether every answer to a wanted request is wanted.
    fn wants_any_answer(&self) -> bool {
        self.status.is_none() && self.grpc_status.is_none()
    }

    fn wants_answer(&self, status: u16, grpc_status: Option<u8>) -> bool {
        self.status.is_none_or(|s| s == status)
            && self.grpc_status.is_none_or(|g| Some(g) == grpc_status)
    }
}

/// One attached tap.
#[derive(Debug)]
struct Tap {
    filter: TapFilter,
    bucket: Mutex<Bucket>,
    sender: mpsc::Sender<Arc<TapEvent>>,
    dropped: AtomicU64,
    /// Wakes the stream when drops begin, so it says so without waiting
    /// for the next event.
    dropping: Arc<Notify>,
}

impl Tap {
    fn drop_one(&self) {
        if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            self.dropping.notify_one();
        }
    }

    /// A token from the bucket, or a drop counted.
    fn take_token(&self) -> bool {
        let taken = self
            .bucket
            .lock()
            .expect("bucket lock is never poisoned")
            .take(Instant::now());
        if !taken {
            self.drop_one();
        }
        taken
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` saved.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A request some taps want, filled in as it is answered.
#[derive(Debug)]
pub struct Tapped {
    wanted: Vec<Arc<Tap>>,
    event: TapEvent,
}

impl Tapped {
    /// Who served it, after how many attempts, and over what.
    pub fn served_by(
        &mut self,
        endpoint: &Arc<str>,
        instance: Option<&Arc<str>>,
        attempts: u32,
        tls: &PeerTls,
    ) {
        self.event.endpoint = Some(endpoint.clone());
        self.event.endpoint_instance = instance.filter(|i| !i.is_empty()).cloned();
        self.event.attempts = attempts;
        self.event.tls = tls.is_tls();
        self.event.identity = tls.id().cloned();
    }

    /// The answer ended: to every tap that wants it.
    pub fn answered(
        mut self,
        status: u16,
        grpc_status: Option<u8>,
        complete: bool,
        latency: Duration,
    ) {
        self.event.status = status;
        self.event.grpc_status = grpc_status;
        self.event.complete = complete;
        self.event.latency_ms = latency.as_secs_f64() * 1000.0;
        let event = Arc::new(self.event);
        for tap in self.wanted {
            if !tap.filter.wants_any_answer()
                && (!tap.filter.wants_answer(status, grpc_status) || !tap.take_token())
            {
                continue;
            }
            if tap.sender.try_send(event.clone()).is_err() {
                tap.drop_one();
            }
        }
    }
}

/// One request as a tap shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TapEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When it arrived, Unix milliseconds.
    pub at_ms: u64,
    pub direction: &'static str,
    /// The service (outbound) or `app` (inbound).
    pub target: Arc<str>,
    pub method: String,
    pub authority: Option<String>,
    pub path: String,
    /// The client's IP address.
    pub source: IpAddr,
    /// The endpoint that answered (outbound), the app (inbound); none when
    /// nothing was sent.
    pub endpoint: Option<Arc<str>>,
    pub endpoint_instance: Option<Arc<str>>,
    pub attempts: u32,
    pub status: u16,
    pub grpc_status: Option<u8>,
    /// Whether the answer ended normally (not reset or cut short).
    pub complete: bool,
    /// From arrival to the end of the answer.
    pub latency_ms: f64,
    /// Whether it went over the mesh's mTLS, and the other proxy's identity.
    pub tls: bool,
    pub identity: Option<Arc<str>>,
    /// The request headers `--tap-headers` names, when present.
    pub headers: Vec<(String, String)>,
}

/// A tap's events as a response body of JSON lines; detaches the tap when
/// dropped (the reader went away).
pub struct TapStream {
    events: mpsc::Receiver<Arc<TapEvent>>,
    tap: Arc<Tap>,
    taps: Arc<Taps>,
    heartbeat: Pin<Box<tokio::time::Sleep>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    dropping: Pin<Box<OwnedNotified>>,
}

impl Drop for TapStream {
    fn drop(&mut self) {
        self.taps.detach(&self.tap);
    }
}

fn line(value: &impl Serialize) -> Bytes {
    let mut line = serde_json::to_vec(value).expect("tap lines serialize");
    line.push(b'\n');
    line.into()
}

impl http_body::Body for TapStream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        // Polled until pending, so that the next drop wakes this stream.
        while self.dropping.as_mut().poll(cx).is_ready() {
            let next = self.tap.dropping.clone().notified_owned();
            self.dropping.set(next);
        }
        let dropped = self.tap.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let notice = serde_json::json!({ "type": "dropped", "count": dropped });
            return Poll::Ready(Some(Ok(http_body::Frame::data(line(&notice)))));
        }
        match self.events.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                let deadline = Instant::now() + HEARTBEAT;
                self.heartbeat.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(http_body::Frame::data(line(&*event)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if self.heartbeat.as_mut().poll(cx).is_ready() {
                    let deadline = Instant::now() + HEARTBEAT;
                    self.heartbeat.as_mut().reset(deadline);
                    let beat = serde_json::json!({ "type": "heartbeat" });
                    return Poll::Ready(Some(Ok(http_body::Frame::data(line(&beat)))));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    fn request(path: &str) -> http::Request<()> {
        http::Request::post(format!("http://stockdata:8080{path}"))
            .body(())
            .unwrap()
    }

    async fn next_line(stream: &mut TapStream) -> serde_json::Value {
        use http_body_util::BodyExt as _;
        let frame = stream.frame().await.unwrap().unwrap();
        serde_json::from_slice(frame.data_ref().unwrap()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_tap_sees_what_its_filter_wants_at_its_rate_and_says_what_it_dropped() {
        let taps = Arc::new(Taps::new(vec![http::HeaderName::from_static(
            "x-request-id",
        )]));
        let target: Arc<str> = "stockdata".into();
        assert!(
            taps.start(Direction::Outbound, &target, &request("/a"), CLIENT)
                .is_none(),
            "no tap: nothing recorded"
        );
        let filter = TapFilter {
            path_prefix: Some("/StockData.".into()),
            ..TapFilter::default()
        };
        let mut stream = taps.attach(filter, 2).unwrap();
        assert!(
            taps.start(Direction::Outbound, &target, &request("/Other/Get"), CLIENT)
                .is_none()
        );
        let mut with_header = request("/StockData.Stocks/Get");
        with_header
            .headers_mut()
            .insert("x-request-id", "abc".parse().unwrap());
        with_header
            .headers_mut()
            .insert("authorization", "secret".parse().unwrap());
        let mut tapped = taps
            .start(Direction::Outbound, &target, &with_header, CLIENT)
            .unwrap();
        tapped.served_by(
            &"127.0.0.1:9001".into(),
            Some(&"stockdata-1".into()),
            2,
            &PeerTls::Mesh {
                id: Some("spiffe://x".into()),
            },
        );
        tapped.answered(200, Some(0), true, Duration::from_millis(3));
        let event = next_line(&mut stream).await;
        assert_eq!(event["type"], "request");
        assert_eq!(event["path"], "/StockData.Stocks/Get");
        assert_eq!(event["authority"], "stockdata");
        assert_eq!(event["source"], "10.0.0.9");
        assert_eq!(event["endpoint_instance"], "stockdata-1");
        assert_eq!(
            (event["attempts"].as_u64(), event["grpc_status"].as_u64()),
            (Some(2), Some(0))
        );
        assert_eq!(event["identity"], "spiffe://x");
        assert_eq!(
            event["headers"],
            serde_json::json!([["x-request-id", "abc"]]),
            "only allowed headers"
        );
        // Rate 2/s: one token left, then drops, said once, until a refill.
        for _ in 0..5 {
            if let Some(t) = taps.start(
                Direction::Outbound,
                &target,
                &request("/StockData.Stocks/Get"),
                CLIENT,
            ) {
                t.answered(200, Some(0), true, Duration::from_millis(1));
            }
        }
        assert_eq!(next_line(&mut stream).await["type"], "dropped");
        // The drops were counted before the one left was sent.
        let next = next_line(&mut stream).await;
        assert_eq!(next["type"], "request", "{next}");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            taps.start(
                Direction::Outbound,
                &target,
                &request("/StockData.Stocks/Get"),
                CLIENT,
            )
            .is_some()
        );
        // Idle: a heartbeat keeps the connection alive.
        tokio::time::advance(HEARTBEAT).await;
        assert_eq!(next_line(&mut stream).await["type"], "heartbeat");
        drop(stream);
        assert!(!taps.active(), "a reader that leaves detaches its tap");
    }

    #[tokio::test]
    async fn a_status_filter_takes_only_matching_answers() {
        let taps = Arc::new(Taps::default());
        let target: Arc<str> = "app".into();
        let filter = TapFilter {
            grpc_status: Some(14),
            ..TapFilter::default()
        };
        let mut stream = taps.attach(filter, 100).unwrap();
        for code in [0, 14, 0] {
            let t = taps
                .start(Direction::Inbound, &target, &request("/x"), CLIENT)
                .unwrap();
            t.answered(200, Some(code), true, Duration::from_millis(1));
        }
        let event = next_line(&mut stream).await;
        assert_eq!(event["grpc_status"], 14);
        taps.close();
        use http_body_util::BodyExt as _;
        assert!(
            stream.frame().await.is_none(),
            "closed taps end their streams"
        );
    }

    #[tokio::test]
    async fn at_most_max_taps_attach() {
        let taps = Arc::new(Taps::default());
        let held: Vec<TapStream> = (0..MAX_TAPS)
            .map(|_| taps.attach(TapFilter::default(), 10).unwrap())
            .collect();
        assert!(taps.attach(TapFilter::default(), 10).is_none());
        drop(held);
        assert!(taps.attach(TapFilter::default(), 10).is_some());
    }
}
