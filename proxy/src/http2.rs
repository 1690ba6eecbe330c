//! HTTP/2 both ways, on the proxy's own layer ([`crate::wire`]): serving a
//! client's connection, and the one multiplexed connection per upstream
//! address.
//!
//! Why not through hyper, as HTTP/1 goes: hyper sends every request through
//! a channel to a dispatch task and spawns two tasks per request it sends
//! (the response and the request body), each of which hands frames to its
//! connection and wakes it. Here a request is written to the upstream
//! connection by the stream's own task, and a request body that is complete
//! before its response (every unary call) is sent without a task of its
//! own: per request, one task (the served stream) instead of three, and no
//! channel. Why not on a general-purpose HTTP/2 library (h2, which this
//! used before): it cost about a quarter more instructions per call than
//! the proxy's own layer does. The profiles and the ratios are in
//! docs/benchmarks.md.
//!
//! Flow control: a received body releases its window as it is read, so a
//! reader that stops slows its sender; a body is sent only as fast as the
//! peer grants window, so nothing buffers beyond what HTTP/2 allows.
//!
//! Layout: serving with the proxy's limits (here), [`connection`] (one
//! connection over a socket, either end: its I/O, received bodies and what
//! is sent), [`client`] (the pool of upstream connections).

mod budget;
mod client;
pub mod connection;
pub mod fuzz;

pub use client::{Client, ClientError};
pub use connection::{Piped, RecvBody, StreamError};

use crate::{
    activity::{Activity, Stalled, Watched},
    body::{ProxyBody, Received},
    limits::{LimitsConfig, Refusal, StreamLimits, StreamPermit},
    wire::{
        conn::{Config, Role},
        frame::ErrorCode,
    },
};
use http_body::Body;
use std::{
    future::{Future, poll_fn},
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    time::Instant,
};
use tracing::Instrument as _;

// Windows, both ways. A stream's window (larger than HTTP/2's 64 KiB default,
// which would throttle any body of more than a few messages) is what one
// stream can hold buffered here when its reader stops. A connection's
// window is that times the most streams it carries, so streams whose
// readers stopped hold only their own windows, never the window the
// connection's other streams need: one client that does not read cannot
// stall everyone else's calls on a shared connection.
const STREAM_WINDOW: u32 = 256 * 1024;
const CLIENT_CONNECTION_WINDOW: u32 = STREAM_WINDOW * client::MAX_STREAMS_PER_CONNECTION as u32;

/// A served connection's window: a stream's times its stream limit.
fn server_connection_window(max_concurrent_streams: u32) -> u32 {
    STREAM_WINDOW
        .saturating_mul(max_concurrent_streams)
        .clamp(STREAM_WINDOW, crate::wire::frame::MAX_WINDOW)
}

/// How long connecting to an upstream may take, HTTP/1 or HTTP/2.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How a served connection ended, when it ended without a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed it, or the drain did.
    Closed,
    /// No stream was open for the idle timeout: closed with GOAWAY.
    Idle,
    /// Closed with GOAWAY for a limit: no request within the header read
    /// timeout, too many resets, too many frames that carry nothing
    /// ([`budget`]).
    Refused(Refusal),
}

/// Serves one client's HTTP/2 connection with `handle` as the per-request
/// function, until the connection closes. When `drain` turns true it sends
/// GOAWAY and lets the streams in flight finish. A connection that sends no
/// request within `header_read_timeout`, or has no stream open for
/// `idle_timeout`, is sent GOAWAY too, so idle clients cannot hold the
/// proxy's connections; so is one that has not acknowledged the proxy's
/// SETTINGS within `header_read_timeout`. Each stream takes a permit from
/// its side's cap on open streams (`streams`), and is reset when nothing
/// moves on it for the stream idle timeout.
pub async fn serve<I, H, F>(
    io: I,
    limits: &LimitsConfig,
    streams: &Arc<StreamLimits>,
    mut drain: watch::Receiver<bool>,
    handle: H,
) -> Result<Ended, connection::ConnectionError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Fn(http::Request<Received>) -> F + Clone + Send + 'static,
    F: Future<Output = http::Response<ProxyBody>> + Send + 'static,
{
    let frames = budget::FrameBudget::new(limits.max_empty_frames_per_second);
    let io = budget::Budgeted::new(io, frames.clone());
    let config = Config {
        max_concurrent_streams: limits.max_concurrent_streams,
        stream_window: STREAM_WINDOW,
        connection_window: server_connection_window(limits.max_concurrent_streams),
        max_frame_size: crate::wire::frame::DEFAULT_MAX_FRAME_SIZE,
        max_header_list_size: u32::try_from(limits.transport_header_bytes()).unwrap_or(u32::MAX),
    };
    let mut connection = connection::Driver::new(Role::Server, io, config, STREAM_WINDOW as usize);
    let open = Arc::new(OpenStreams::default());
    let resets = Arc::new(Resets::new(limits.max_resets_per_second));
    let mut requested = false;
    let mut ended = Ended::Closed;
    let mut draining = false;
    let check = tokio::time::sleep(limits.header_read_timeout);
    let mut check = pin!(check);
    loop {
        tokio::select! {
            // In this order: a limit's GOAWAY is queued before the HTTP/2
            // layer reads again.
            biased;
            // The watch guard must not live across an await.
            _ = async { drain.wait_for(|draining| *draining).await.is_ok() }, if !draining => {
                draining = true;
                connection.graceful_shutdown();
            }
            () = frames.notify.notified(), if !draining => {
                draining = true;
                ended = Ended::Refused(Refusal::TooManyEmptyFrames);
                connection.abrupt_shutdown(ErrorCode::ENHANCE_YOUR_CALM);
            }
            () = resets.exceeded.notified(), if !draining => {
                draining = true;
                ended = Ended::Refused(Refusal::TooManyResets);
                connection.abrupt_shutdown(ErrorCode::ENHANCE_YOUR_CALM);
            }
            () = &mut check, if !draining => {
                let now = Instant::now();
                // When to look again, or the reason to close with now.
                let next = if !requested {
                    ended = Ended::Refused(Refusal::HeaderReadTimeout);
                    Err(ErrorCode::NO_ERROR)
                } else if !frames.settings_acked() {
                    // RFC 9113 section 6.5.3: until then the client may
                    // not hold to the proxy's limits.
                    ended = Ended::Refused(Refusal::SettingsTimeout);
                    Err(ErrorCode::SETTINGS_TIMEOUT)
                } else {
                    match open.idle_since() {
                        None => Ok(now + limits.idle_timeout),
                        Some(since) if now >= since + limits.idle_timeout => {
                            ended = Ended::Idle;
                            Err(ErrorCode::NO_ERROR)
                        }
                        Some(since) => Ok(since + limits.idle_timeout),
                    }
                };
                match next {
                    Ok(at) => check.as_mut().reset(at),
                    Err(code) => {
                        // No stream is open (or the client is not playing
                        // by the rules), so nothing is cut short.
                        draining = true;
                        connection.abrupt_shutdown(code);
                    }
                }
            }
            accepted = connection.accept() => match accepted {
                Some(Ok((request, mut respond))) => {
                    requested = true;
                    resets.opened();
                    let Some(permit) = streams.admit() else {
                        respond.send_reset(ErrorCode::REFUSED_STREAM);
                        continue;
                    };
                    // A task per stream, so that a proxy with several
                    // workers spreads one connection's streams over them.
                    // Polling the streams inside this task instead measured
                    // the same CPU per request (docs/benchmarks.md).
                    let stream = respond_to(
                        request,
                        respond,
                        handle.clone(),
                        Held {
                            _open: open.opened(),
                            permit,
                            resets: resets.clone(),
                        },
                    );
                    // Boxed, so that the task's stage is a pointer: tokio
                    // writes the whole stage again when the task ends
                    // (0.987 × the instructions per request,
                    // docs/benchmarks.md).
                    tokio::spawn(Box::pin(stream).in_current_span());
                }
                // After the proxy closed it for a reason of its own, the
                // error is that GOAWAY's (or the budget's refused read):
                // the reason is what it ended with.
                Some(Err(_)) if frames.exceeded() => {
                    return Ok(Ended::Refused(Refusal::TooManyEmptyFrames));
                }
                Some(Err(_)) if ended != Ended::Closed => return Ok(ended),
                Some(Err(err)) => return Err(err),
                // Closed, and after a GOAWAY only once every stream ended.
                None if frames.exceeded() => return Ok(Ended::Refused(Refusal::TooManyEmptyFrames)),
                None => return Ok(ended),
            },
        }
    }
}

/// How many streams of a connection are open, and since when none is.
#[derive(Debug)]
struct OpenStreams {
    count: AtomicUsize,
    /// When the last stream ended, in milliseconds since `started`.
    last_ended_ms: AtomicU64,
    started: Instant,
}

impl Default for OpenStreams {
    fn default() -> Self {
        Self {
            count: AtomicUsize::new(0),
            last_ended_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl OpenStreams {
    fn opened(self: &Arc<Self>) -> OpenStream {
        self.count.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.clone())
    }

    /// `None` while a stream is open.
    fn idle_since(&self) -> Option<Instant> {
        (self.count.load(Ordering::Relaxed) == 0).then(|| {
            self.started + Duration::from_millis(self.last_ended_ms.load(Ordering::Relaxed))
        })
    }
}

/// One open stream, counted until it ends.
struct OpenStream(Arc<OpenStreams>);

/// A connection's streams and client resets in the current second. Past
/// `limit` resets of accepted streams in a second that are also more than
/// half of the streams opened in it, the connection is closed: a client
/// cancelling calls now and then is served on, while one that opens
/// streams only to reset them (Rapid Reset, CVE-2023-44487, paced so that
/// each stream is accepted first) is cut off after a bounded number of
/// streams sent upstream.
#[derive(Debug)]
struct Resets {
    limit: u64,
    /// Streams opened, and reset by the client.
    counts: budget::PerSecond,
    exceeded: tokio::sync::Notify,
}

const OPENED: usize = 0;
const RESET: usize = 1;

impl Resets {
    fn new(limit: u32) -> Self {
        Self {
            limit: limit.into(),
            counts: budget::PerSecond::default(),
            exceeded: tokio::sync::Notify::new(),
        }
    }

    fn opened(&self) {
        self.counts.add(OPENED, 1);
    }

    /// The client reset an accepted stream before its response.
    fn client_reset(&self) {
        let reset = self.counts.add(RESET, 1);
        if reset > self.limit && reset * 2 > self.counts.get(OPENED) {
            // Stored, so a serve loop not waiting right now still sees it.
            self.exceeded.notify_one();
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let ms = self.0.started.elapsed().as_millis() as u64;
        self.0.last_ended_ms.store(ms, Ordering::Relaxed);
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a served stream holds while it lives: its place among its
/// connection's open streams and its side's, and where its client's
/// resets and its own timeout are counted.
struct Held {
    _open: OpenStream,
    permit: StreamPermit,
    resets: Arc<Resets>,
}

/// How a stream's wait for its response ended.
#[expect(
    clippy::large_enum_variant,
    reason = "a value of one select, moved once; boxing the response would cost an allocation per request"
)]
enum Awaited {
    Response(http::Response<ProxyBody>),
    ClientReset,
    Stalled(Stalled),
}

/// One stream of a served connection: the handler's response, then its
/// body. A client that resets the stream cancels both (and with them the
/// upstream request); so does the stream idle timeout, which resets the
/// stream with CANCEL when no frame moved either way (request read,
/// response sent) for that long.
async fn respond_to<H, F>(
    request: connection::Request,
    mut respond: connection::SendHalf,
    handle: H,
    held: Held,
) where
    H: Fn(http::Request<Received>) -> F,
    F: Future<Output = http::Response<ProxyBody>>,
{
    let (idle_timeout, body_timeout) = (
        held.permit.limits().idle_timeout,
        held.permit.limits().body_timeout,
    );
    let activity = Arc::new(Activity::default());
    if body_timeout.is_some() && request.body().is_end_stream() {
        activity.request_ended();
    }
    let mut stalled = pin!(activity.stalled(idle_timeout, body_timeout));
    let request =
        request.map(|body| Received::Http2(body.watched(activity.clone(), body_timeout.is_some())));
    // Boxed, so that the stream's task stays small: tokio copies a task's
    // future into the task when it is spawned and writes the whole task
    // stage again when it finishes, and the handler's future is most of
    // the stream's (0.978 × the instructions per request, docs/benchmarks.md).
    let mut response = Box::pin(handle(request));
    let awaited = poll_fn(|cx| {
        // The reset first: a reset also ends the request body, which may
        // make the handler answer for a client that is no longer there.
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(Awaited::ClientReset);
        }
        if let Poll::Ready(response) = response.as_mut().poll(cx) {
            return Poll::Ready(Awaited::Response(response));
        }
        stalled.as_mut().poll(cx).map(Awaited::Stalled)
    })
    .await;
    let response = match awaited {
        Awaited::Response(response) => response,
        Awaited::ClientReset => {
            held.resets.client_reset();
            return;
        }
        Awaited::Stalled(why) => {
            respond.send_reset(ErrorCode::CANCEL);
            stream_stalled(held.permit.limits(), why);
            return;
        }
    };
    let (head, body) = response.into_parts();
    // A response without a body (a trailers-only gRPC status) stays one
    // HEADERS frame, as strict clients require.
    let end = body.is_end_stream();
    if !respond.send_response(&head, end) {
        tracing::debug!("cannot send a response head: the stream is gone");
        return;
    }
    if end {
        return;
    }
    activity.moved();
    let mut pipe = pin!(respond.pipe(Watched::new(body, activity.clone())));
    // How it ended is the response's business: the recorder saw it.
    let stalled = poll_fn(|cx| match pipe.as_mut().poll(cx) {
        Poll::Ready(_) => Poll::Ready(None),
        Poll::Pending => stalled.as_mut().poll(cx).map(Some),
    })
    .await;
    if let Some(why) = stalled {
        pipe.as_mut().reset(ErrorCode::CANCEL);
        stream_stalled(held.permit.limits(), why);
    }
}

/// Counts a stream reset for a timeout.
fn stream_stalled(limits: &StreamLimits, why: Stalled) {
    match why {
        Stalled::Idle => limits.refused(
            Refusal::StreamIdleTimeout,
            &format_args!("nothing moved for {:?}", limits.idle_timeout),
        ),
        Stalled::RequestBody => limits.refused(
            Refusal::RequestBodyTimeout,
            &format_args!(
                "the request body did not end within {:?}",
                limits.body_timeout.unwrap_or_default()
            ),
        ),
    }
}

#[cfg(test)]
mod tests;
