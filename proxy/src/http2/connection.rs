//! One HTTP/2 connection over a socket, on the proxy's own protocol layer
//! ([`crate::wire::conn`]), at either end: a client's connection served
//! (requests accepted, responses sent) or a connection to an upstream
//! (requests sent, responses received).
//!
//! The [`Driver`] owns the socket: it writes what is queued, reads and
//! decodes what came and hands each event to its stream; a served
//! connection's driver is polled by [`Driver::accept`], which hands out
//! each new request, and an upstream connection's runs in a task of its
//! own ([`Driver::run`]) beside its [`Requester`]. A stream's two halves
//! (what it receives, [`RecvBody`]; what it sends, [`SendHalf`]) live in
//! other tasks and reach the protocol state through one lock, which they
//! hold only to move bytes in or out; whatever they queue for the peer,
//! the driver writes.
//!
//! Back-pressure, both ways: a received body's window is given back only
//! as its reader takes the data, and a body is read from its source only
//! while less than a stream's window of it waits for the peer's window.
//! The driver reads no more from its peer while its own output is not
//! written, so a peer that sends cheap frames whose answers it does not
//! read (PING, SETTINGS) stalls itself.

use super::client::StreamSlot;
use crate::{
    activity::Activity,
    body::BodyError,
    retry::replay::BoxError,
    wire::{
        conn::{Config, ConnError, Connection, Event, Role},
        frame::{ErrorCode, StreamId},
        hpack::Field,
        message,
    },
};
use bytes::{Bytes, BytesMut};
use foldhash::HashMap;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version, uri};
use http_body::{Body, Frame};
use std::{
    collections::VecDeque,
    future::{Future, poll_fn},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker, ready},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite};

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How much an idle connection reads at a time, into the stack: it holds
/// no buffer of its own while it waits (one request's head and message
/// fit).
const IDLE_READ: usize = 4 * 1024;

/// How long a connection stays idle (no stream open, nothing to write)
/// before it gives back the buffers and tables its streams grew. Not at
/// once: a client making one call at a time would have them allocated
/// again for every call (+21% instructions per call at 1 × 1).
pub(super) const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// How long a draining connection with no stream open waits for its
/// client to acknowledge the GOAWAY's PING (a client that has stopped
/// reading never does) before it closes: a request already on its way
/// then meets a closed connection, as it would with h2.
const DRAIN_ACK_WAIT: Duration = Duration::from_secs(1);

/// A connection that failed: the peer broke the protocol (the GOAWAY
/// saying so was sent), or the socket did.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Protocol(#[from] ConnError),
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How a [`SendPipe`] ended.
#[derive(Debug)]
pub enum Piped {
    /// The whole body was sent.
    Sent,
    /// The peer reset the stream or the connection closed.
    PeerGone,
    /// The body failed (its own sender went away); the stream was reset.
    BodyFailed(BoxError),
}

/// A request served here.
pub type Request = http::Request<RecvBody>;

/// Why a stream we opened got no response, or its body no end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer reset it; `REFUSED_STREAM` (also for streams past its
    /// GOAWAY) says it was not processed.
    #[error("the stream was reset: {0:?}")]
    Reset(ErrorCode),
    /// The connection closed under it, after a GOAWAY with this code if
    /// the peer sent one.
    #[error("the connection closed (GOAWAY: {0:?})")]
    ConnectionLost(Option<ErrorCode>),
    /// The peer said GOAWAY before it could be opened.
    #[error("the peer is going away")]
    GoingAway,
}

/// What one stream has received and not yet handed out, and who waits.
#[derive(Debug, Default)]
struct Slot {
    /// A response's head, until its future takes it (upstream streams).
    head: Option<http::response::Parts>,
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The client ended its side (after `data` and `trailers`).
    ended: bool,
    /// The stream was reset, by the client or by us.
    reset: Option<ErrorCode>,
    /// What `content-length` says is still to come.
    content_left: Option<u64>,
    /// The receiving half, waiting for a head or for data.
    reader: Option<Waker>,
    /// The sending half, waiting for room or watching for a reset.
    sender: Option<Waker>,
    /// The receiving half was dropped: data is given back as it comes.
    recv_dropped: bool,
    /// The sending half was dropped.
    send_dropped: bool,
    /// What we send ended (its last frame queued) or was reset.
    send_ended: bool,
}

impl Slot {
    fn wake(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
        if let Some(waker) = self.sender.take() {
            waker.wake();
        }
    }
}

/// The protocol state the connection's task and its streams share.
#[derive(Debug)]
struct Inner {
    role: Role,
    conn: Connection,
    slots: HashMap<StreamId, Slot>,
    /// The connection's task, to write what a stream queued.
    writer: Option<Waker>,
    /// Streams whose response waits for the client's window.
    waiting_for_room: Vec<StreamId>,
    /// How much of a body may wait for the peer's window.
    send_limit: usize,
    /// The connection is over: every stream fails.
    gone: bool,
    /// The peer said GOAWAY, with this code: no new stream of ours.
    going_away: Option<ErrorCode>,
    /// Requests waiting for the peer's stream limit to allow one more.
    waiting_to_open: Vec<Waker>,
    /// Draining, or no [`Requester`] is left: the driver looks again when
    /// the last stream ends.
    close_when_idle: bool,
}

impl Inner {
    /// Wakes the connection's task if there is something to write.
    fn output_queued(&mut self) {
        if !self.conn.output().is_empty()
            && let Some(waker) = self.writer.take()
        {
            waker.wake();
        }
    }

    /// Ends everything: the connection is over.
    fn fail_all(&mut self) {
        self.gone = true;
        for slot in self.slots.values_mut() {
            slot.wake();
        }
        for waker in self.waiting_to_open.drain(..) {
            waker.wake();
        }
    }

    /// Gives back the stream table and the protocol's buffers and tables,
    /// each only if empty (a connection with no stream open).
    fn release_memory(&mut self) {
        if self.slots.is_empty() {
            self.slots = HashMap::default();
        }
        self.conn.release_memory();
    }

    /// How a stream whose connection is over failed.
    fn lost(&self) -> StreamError {
        StreamError::ConnectionLost(self.going_away)
    }

    /// Forgets a stream both of whose handles are gone; resets it first
    /// if it is still open (the handler gave up on it).
    fn drop_handle(&mut self, stream: StreamId, recv: bool) {
        let Some(slot) = self.slots.get_mut(&stream) else {
            return;
        };
        if recv {
            slot.recv_dropped = true;
            // Data nobody will read: give its window back.
            let unread: usize = slot.data.drain(..).map(|d| d.len()).sum();
            if unread > 0 && !self.gone {
                self.conn.release(stream, unread);
            }
        } else {
            slot.send_dropped = true;
        }
        if slot.recv_dropped && slot.send_dropped {
            // What we sent to its end may still be queued behind the
            // peer's window: a served response goes out, and the stream
            // closes as the client ends its side. An upstream response
            // nobody reads any more is cancelled.
            let unwanted = !slot.send_ended || (self.role == Role::Client && !slot.ended);
            self.slots.remove(&stream);
            if !self.gone && unwanted && self.conn.is_open(stream) {
                self.conn.reset(stream, ErrorCode::CANCEL);
            }
            // The last stream of a connection closing when idle.
            if self.slots.is_empty()
                && self.close_when_idle
                && let Some(waker) = self.writer.take()
            {
                waker.wake();
                return;
            }
        }
        self.output_queued();
    }
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// The [`Requester`]s alive: with none, no stream can be opened.
    requesters: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves bytes, never broken invariants
        // worth stopping the proxy for.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One HTTP/2 connection's socket and protocol. See the module's
/// documentation.
#[derive(Debug)]
pub struct Driver<I> {
    io: I,
    shared: Arc<Shared>,
    read: BytesMut,
    /// Output taken from the connection, being written.
    write: BytesMut,
    accepted: VecDeque<(Request, SendHalf)>,
    /// GOAWAY sent: the connection ends once its streams have.
    draining: bool,
    /// Closed by us: the connection ends once its GOAWAY is written.
    closing: bool,
    /// The protocol error to report once its GOAWAY is written.
    failed: Option<ConnError>,
    /// Draining with no stream open: how long the PING's ack is awaited.
    drain_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    /// No stream open and nothing to write, when last looked.
    idle: bool,
    /// When an idle connection gives its memory back.
    release_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Reads go into the stack first, and only what came is kept: for a
    /// new connection, and one idle for [`IDLE_RELEASE`], whose buffers and
    /// tables went back, until a read fills the stack buffer (a busy
    /// connection reads into a buffer of its own). So thousands of idle
    /// connections cost little memory each, and a connection read in small
    /// pieces holds no read buffer between them.
    small_reads: bool,
    done: bool,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Driver<I> {
    /// A connection of `role` on `io` announcing `config` (its preface and
    /// SETTINGS are the first thing written); `send_limit` is how much of
    /// each body may wait for the peer's window.
    pub fn new(role: Role, io: I, config: Config, send_limit: usize) -> Self {
        let inner = Inner {
            role,
            conn: Connection::new(role, config),
            slots: HashMap::default(),
            writer: None,
            waiting_for_room: Vec::new(),
            send_limit,
            gone: false,
            going_away: None,
            waiting_to_open: Vec::new(),
            close_when_idle: false,
        };
        Self {
            io,
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                requesters: AtomicUsize::new(0),
            }),
            read: BytesMut::new(),
            write: BytesMut::new(),
            accepted: VecDeque::new(),
            draining: false,
            closing: false,
            failed: None,
            drain_wait: None,
            idle: false,
            release_timer: None,
            small_reads: true,
            done: false,
        }
    }

    /// The next request, once the client sends one; `None` when the
    /// connection has ended (closed by the client, or by us once its
    /// streams are done). For a served connection.
    pub async fn accept(&mut self) -> Option<Result<(Request, SendHalf), ConnectionError>> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The handle that sends requests on this connection (an upstream's).
    pub fn requester(&self) -> Requester {
        self.shared.requesters.fetch_add(1, Ordering::Relaxed);
        Requester {
            shared: self.shared.clone(),
        }
    }

    /// Drives an upstream connection until it ends: when the peer closes
    /// it, or once it has no stream open and no [`Requester`] is left.
    pub async fn run(mut self) -> Result<(), ConnectionError> {
        poll_fn(|cx| {
            // Nobody can open a stream on it any more, and none is open.
            if self.shared.requesters.load(Ordering::Acquire) == 0
                && self.shared.lock().slots.is_empty()
                && !self.closing
            {
                self.abrupt_shutdown(ErrorCode::NO_ERROR);
            }
            match ready!(self.poll_accept(cx)) {
                Some(Err(err)) => Poll::Ready(Err(err)),
                // A client connection accepts nothing.
                Some(Ok(_)) | None => Poll::Ready(Ok(())),
            }
        })
        .await
    }

    /// GOAWAY: no new streams; the connection ends once those in flight
    /// have.
    pub fn graceful_shutdown(&mut self) {
        if !self.draining {
            self.draining = true;
            let mut inner = self.shared.lock();
            inner.close_when_idle = true;
            inner.conn.go_away_gracefully();
        }
    }

    /// GOAWAY with `code`, and the connection ends once that is written,
    /// cutting short any stream in flight.
    pub fn abrupt_shutdown(&mut self, code: ErrorCode) {
        self.draining = true;
        self.closing = true;
        let mut inner = self.shared.lock();
        inner.conn.go_away(code);
    }

    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<(Request, SendHalf), ConnectionError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(accepted) = self.accepted.pop_front() {
                return Poll::Ready(Some(Ok(accepted)));
            }
            // What is queued goes out before anything more is read.
            if let Err(err) = ready!(self.poll_write(cx)) {
                return Poll::Ready(Some(Err(self.end(err.into()))));
            }
            if let Some(err) = self.failed.take() {
                return Poll::Ready(Some(Err(self.end(err.into()))));
            }
            if self.closing || (self.draining && self.drained(cx)) {
                self.shared.lock().fail_all();
                self.done = true;
                return Poll::Ready(None);
            }
            match ready!(self.poll_read(cx)) {
                Ok(0) => {
                    // The peer closed its side: nothing in flight can be
                    // answered.
                    self.shared.lock().fail_all();
                    self.done = true;
                    return Poll::Ready(None);
                }
                Ok(_) => self.receive(),
                Err(err) => return Poll::Ready(Some(Err(self.end(err.into())))),
            }
        }
    }

    /// After a graceful GOAWAY: every stream taken is done, and the client
    /// has seen the GOAWAY (acknowledged its PING), or has not within
    /// [`DRAIN_ACK_WAIT`] of the connection having no stream open.
    fn drained(&mut self, cx: &mut Context<'_>) -> bool {
        let (idle, seen) = {
            let inner = self.shared.lock();
            (inner.slots.is_empty(), inner.conn.goaway_sent())
        };
        if !idle {
            return false;
        }
        if seen {
            return true;
        }
        let wait = self
            .drain_wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(DRAIN_ACK_WAIT)));
        wait.as_mut().poll(cx).is_ready()
    }

    /// Reads what the peer sent into the read buffer; see `small_reads`.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.small_reads && self.read.is_empty() {
            // Given back, not kept: the allocation may still be shared with
            // bodies split off it, which keep their part alive.
            self.read = BytesMut::new();
            let mut stack = [std::mem::MaybeUninit::uninit(); IDLE_READ];
            let mut buf = tokio::io::ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            self.read.extend_from_slice(buf.filled());
            // Filled: more is likely waiting.
            self.small_reads = n < IDLE_READ;
            return Poll::Ready(Ok(n));
        }
        self.read.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Writes what the connection queued, then flushes.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.write.is_empty() {
                let mut inner = self.shared.lock();
                if inner.conn.output().is_empty() {
                    // Registered under the lock that found nothing to
                    // write: a stream that queues output after this finds
                    // the waker and wakes the task, whatever the task does
                    // meanwhile (registered later, output queued in
                    // between would wait for the next read).
                    inner.writer = Some(cx.waker().clone());
                    let idle = inner.slots.is_empty();
                    drop(inner);
                    self.watch_idleness(idle, cx);
                    break;
                }
                let out = inner.conn.output();
                // Swapped, not split: each buffer keeps its capacity, and
                // neither becomes shared (which would cost an allocation).
                self.write.clear();
                std::mem::swap(out, &mut self.write);
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            bytes::Buf::advance(&mut self.write, n);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Arms the release when the connection has just become idle, and
    /// gives back what its last streams grew once it has stayed idle for
    /// [`IDLE_RELEASE`] (allocated again by the next request).
    fn watch_idleness(&mut self, idle: bool, cx: &mut Context<'_>) {
        if idle && !self.idle {
            let at = tokio::time::Instant::now() + IDLE_RELEASE;
            match &mut self.release_timer {
                Some(timer) => timer.as_mut().reset(at),
                None => self.release_timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.idle = idle;
        let due = idle
            && self
                .release_timer
                .as_mut()
                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if !due {
            return;
        }
        self.release_timer = None;
        self.write = BytesMut::new();
        if self.accepted.is_empty() {
            self.accepted = VecDeque::new();
        }
        // Whatever a stream opened since does not go: only what is empty.
        self.shared.lock().release_memory();
        self.small_reads = true;
    }

    /// The connection is over with `err`.
    fn end(&mut self, err: ConnectionError) -> ConnectionError {
        self.shared.lock().fail_all();
        self.done = true;
        err
    }

    /// Decodes what was read and hands each event to its stream.
    fn receive(&mut self) {
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        if let Err(err) = inner.conn.receive(&mut self.read) {
            // Its GOAWAY is in the output: written, then reported.
            self.failed = Some(err);
            self.closing = true;
        }
        while let Some(event) = inner.conn.event() {
            match event {
                Event::Headers {
                    stream,
                    fields,
                    end_stream,
                    trailers: false,
                    too_large,
                } if inner.role == Role::Server => {
                    if let Some(accepted) =
                        new_request(inner, &self.shared, stream, fields, end_stream, too_large)
                    {
                        self.accepted.push_back(accepted);
                    }
                }
                // A response head past what we decode fails its request.
                Event::Headers {
                    stream,
                    trailers: false,
                    too_large: true,
                    ..
                } => malformed(inner, stream),
                Event::Headers {
                    stream,
                    fields,
                    end_stream,
                    trailers: false,
                    ..
                } => response_head(inner, stream, fields, end_stream),
                Event::Headers { stream, fields, .. } => {
                    let trailers = message::trailers(&fields)
                        .ok()
                        .and_then(|()| header_map(fields));
                    let Some(slot) = inner.slots.get_mut(&stream) else {
                        continue;
                    };
                    match trailers {
                        Some(trailers) if slot.content_left.is_none_or(|left| left == 0) => {
                            slot.trailers = Some(trailers);
                            slot.ended = true;
                            slot.wake();
                        }
                        _ => malformed(inner, stream),
                    }
                }
                Event::Data {
                    stream,
                    data,
                    end_stream,
                } => {
                    let len = data.len();
                    let Some(slot) = inner.slots.get_mut(&stream) else {
                        inner.conn.release(stream, len);
                        continue;
                    };
                    let over = match &mut slot.content_left {
                        Some(left) if (len as u64) > *left => true,
                        Some(left) => {
                            *left -= len as u64;
                            end_stream && *left > 0
                        }
                        None => false,
                    };
                    if over {
                        malformed(inner, stream);
                        continue;
                    }
                    if slot.recv_dropped {
                        inner.conn.release(stream, len);
                    } else if len > 0 {
                        slot.data.push_back(data);
                    }
                    slot.ended |= end_stream;
                    if let Some(waker) = slot.reader.take() {
                        waker.wake();
                    }
                }
                Event::Reset { stream, code } => {
                    if let Some(slot) = inner.slots.get_mut(&stream) {
                        slot.reset = Some(code);
                        slot.wake();
                    }
                }
                // A client's GOAWAY: it opens no more streams; those in
                // flight are answered. An upstream's: ours past its last
                // stream come as resets (REFUSED_STREAM), the others go on,
                // and no new one opens here.
                Event::GoAway { code, .. } => inner.going_away = Some(code),
            }
        }
        if !inner.waiting_to_open.is_empty() && inner.conn.can_open() || inner.going_away.is_some()
        {
            for waker in inner.waiting_to_open.drain(..) {
                waker.wake();
            }
        }
        // A window update may have made room for waiting responses.
        let limit = inner.send_limit;
        let conn = &inner.conn;
        let slots = &mut inner.slots;
        inner.waiting_for_room.retain(|stream| {
            if conn.queued(*stream) >= limit && conn.is_open(*stream) {
                return true;
            }
            if let Some(waker) = slots.get_mut(stream).and_then(|slot| slot.sender.take()) {
                waker.wake();
            }
            false
        });
    }
}

/// A stream is malformed after its head (content-length broken, bad
/// trailers): reset with PROTOCOL_ERROR (RFC 9113 §8.1.1), and its reader
/// sees the reset.
fn malformed(inner: &mut Inner, stream: StreamId) {
    inner.conn.reset(stream, ErrorCode::PROTOCOL_ERROR);
    if let Some(slot) = inner.slots.get_mut(&stream) {
        slot.reset = Some(ErrorCode::PROTOCOL_ERROR);
        slot.wake();
    }
}

/// A new stream's head: the request and its handles, or `None` when the
/// stream was answered here (a head too large, a malformed one).
fn new_request(
    inner: &mut Inner,
    shared: &Arc<Shared>,
    stream: StreamId,
    fields: Vec<Field>,
    end_stream: bool,
    too_large: bool,
) -> Option<(Request, SendHalf)> {
    if too_large {
        // Past what we decode (twice the proxy's own limit, which answers
        // with a count of its own): 431, and the rest of the request is
        // not wanted.
        let status = vec![Field::new(&b":status"[..], &b"431"[..])];
        let _ = inner.conn.send_headers(stream, status, true);
        inner.conn.reset(stream, ErrorCode::PROTOCOL_ERROR);
        return None;
    }
    let Some((head, content_length)) = request_head(fields) else {
        inner.conn.reset(stream, ErrorCode::PROTOCOL_ERROR);
        return None;
    };
    if end_stream && content_length.is_some_and(|n| n > 0) {
        inner.conn.reset(stream, ErrorCode::PROTOCOL_ERROR);
        return None;
    }
    inner.slots.insert(
        stream,
        Slot {
            ended: end_stream,
            content_left: content_length,
            ..Slot::default()
        },
    );
    let body = RecvBody::new(shared.clone(), stream);
    let respond = SendHalf {
        shared: shared.clone(),
        stream,
    };
    Some((http::Request::from_parts(head, body), respond))
}

/// A response head on a stream of ours: kept for its future. An interim
/// (1xx) head is passed over; a malformed one resets the stream.
fn response_head(inner: &mut Inner, stream: StreamId, fields: Vec<Field>, end_stream: bool) {
    let head = message::response(&fields).ok().and_then(|checked| {
        let status = http::StatusCode::from_u16(checked.status).ok()?;
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = status;
        head.version = Version::HTTP_2;
        head.headers = header_map(fields)?;
        Some((head, checked.content_length))
    });
    let Some(slot) = inner.slots.get_mut(&stream) else {
        return;
    };
    match head {
        Some((head, _)) if head.status.is_informational() => {}
        Some((head, content_length)) if !end_stream || content_length.is_none_or(|n| n == 0) => {
            slot.head = Some(head);
            slot.content_left = content_length;
            slot.ended = end_stream;
            slot.wake();
        }
        _ => malformed(inner, stream),
    }
}

/// A checked request head as http's: `None` when malformed.
fn request_head(fields: Vec<Field>) -> Option<(http::request::Parts, Option<u64>)> {
    let checked = message::request(&fields).ok()?;
    let method = Method::from_bytes(&checked.method).ok()?;
    let mut uri = uri::Parts::default();
    if let Some(scheme) = &checked.scheme {
        uri.scheme = Some(uri::Scheme::try_from(&scheme[..]).ok()?);
    }
    if let Some(authority) = checked.authority {
        uri.authority = Some(uri::Authority::from_maybe_shared(authority).ok()?);
    }
    if let Some(path) = checked.path {
        uri.path_and_query = Some(uri::PathAndQuery::from_maybe_shared(path).ok()?);
    }
    let uri = Uri::from_parts(uri).ok()?;
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.method = method;
    head.uri = uri;
    head.version = Version::HTTP_2;
    head.headers = header_map(fields)?;
    Some((head, checked.content_length))
}

/// The regular fields of a checked list as a header map: `None` when one
/// is not a valid header.
fn header_map(fields: Vec<Field>) -> Option<HeaderMap> {
    // `try_`: a map holds at most 32,768 fields, fewer than a large
    // `--max-header-bytes` lets through; past that the head is refused.
    let mut headers = HeaderMap::try_with_capacity(fields.len()).ok()?;
    for field in fields {
        if field.name.first() == Some(&b':') {
            continue;
        }
        let name = HeaderName::from_bytes(&field.name).ok()?;
        let mut value = HeaderValue::from_maybe_shared(field.value).ok()?;
        value.set_sensitive(field.never_index);
        headers.try_append(name, value).ok()?;
    }
    Some(headers)
}

/// Connection-specific fields, which HTTP/2 forbids (RFC 9113 §8.2.2):
/// never sent, whatever the response carries.
fn connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// Header fields as HPACK's: `pseudo` first (`:status`, or a request's
/// four), then `headers` (without `host`, which HTTP/2 carries as
/// `:authority`). Their bytes are copied into one buffer: one allocation
/// per block, not two per field.
fn fields(pseudo: &[(&'static [u8], &[u8])], headers: &HeaderMap) -> Vec<Field> {
    let sendable = |name: &HeaderName, value: &HeaderValue| {
        !connection_specific(name)
            && name != http::header::HOST
            && (name != http::header::TE || value == "trailers")
    };
    let size: usize = pseudo.iter().map(|(_, value)| value.len()).sum::<usize>()
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum::<usize>();
    let mut bytes = BytesMut::with_capacity(size);
    let mut fields = Vec::with_capacity(headers.len() + pseudo.len());
    for (name, value) in pseudo {
        bytes.extend_from_slice(value);
        fields.push(Field::new(Bytes::from_static(name), bytes.split().freeze()));
    }
    for (name, value) in headers {
        if !sendable(name, value) {
            continue;
        }
        bytes.extend_from_slice(name.as_str().as_bytes());
        let name = bytes.split().freeze();
        bytes.extend_from_slice(value.as_bytes());
        fields.push(Field {
            name,
            value: bytes.split().freeze(),
            never_index: value.is_sensitive(),
        });
    }
    fields
}

/// A body received on a stream: a client's request, or an upstream's
/// response. Reading it gives the peer its window back.
#[derive(Debug)]
pub struct RecvBody {
    shared: Arc<Shared>,
    stream: StreamId,
    /// A served request's: moved by each frame, and told when it ends.
    activity: Option<Arc<Activity>>,
    /// Whether the activity is told of the end as soon as it is read.
    watch_end: bool,
    /// An upstream response's: its place on its connection.
    slot: Option<StreamSlot>,
}

impl RecvBody {
    fn new(shared: Arc<Shared>, stream: StreamId) -> Self {
        Self {
            shared,
            stream,
            activity: None,
            watch_end: false,
            slot: None,
        }
    }

    pub(super) fn watched(mut self, activity: Arc<Activity>, watch_end: bool) -> Self {
        self.activity = Some(activity);
        self.watch_end = watch_end;
        self
    }

    pub(super) fn holding(mut self, slot: StreamSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    fn moved(&self) {
        if let Some(activity) = &self.activity {
            activity.moved();
        }
    }

    /// The body came to its end, or failed: it was not cancelled.
    fn ended(&mut self) {
        if let Some(slot) = &mut self.slot {
            slot.ended();
        }
        if let Some(activity) = &self.activity {
            activity.request_ended();
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        let mut guard = this.shared.lock();
        let inner = &mut *guard;
        let lost = inner.lost();
        let Some(slot) = inner.slots.get_mut(&this.stream) else {
            drop(guard);
            this.ended();
            return Poll::Ready(Some(Err(lost)));
        };
        if let Some(data) = slot.data.pop_front() {
            let end = slot.ended && slot.data.is_empty() && slot.trailers.is_none();
            let len = data.len();
            if !inner.gone {
                inner.conn.release(this.stream, len);
                inner.output_queued();
            }
            drop(guard);
            this.moved();
            if end && (this.watch_end || this.slot.is_some()) {
                this.ended();
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        // The end before a reset: a peer may reset a stream whose end it
        // sent (RFC 9113 §8.1: NO_ERROR, to stop the other side's body).
        if slot.ended {
            let trailers = slot.trailers.take();
            drop(guard);
            this.ended();
            return Poll::Ready(trailers.map(|t| {
                this.moved();
                Ok(Frame::trailers(t))
            }));
        }
        if let Some(code) = slot.reset {
            drop(guard);
            this.ended();
            return Poll::Ready(Some(Err(StreamError::Reset(code))));
        }
        if inner.gone {
            drop(guard);
            this.ended();
            return Poll::Ready(Some(Err(lost)));
        }
        slot.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let inner = self.shared.lock();
        inner.slots.get(&self.stream).is_none_or(|slot| {
            slot.ended && slot.data.is_empty() && slot.trailers.is_none() && slot.reset.is_none()
        })
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        // A body whose last frame ended it may never be read to its end:
        // that is not a cancellation either.
        if self.slot.as_ref().is_some_and(|slot| !slot.is_ended()) && self.is_end_stream() {
            self.ended();
        }
        self.shared.lock().drop_handle(self.stream, true);
    }
}

/// What we send on one stream: a served request's response (head, then
/// body), or a request's body to an upstream.
#[derive(Debug)]
pub struct SendHalf {
    shared: Arc<Shared>,
    stream: StreamId,
}

impl SendHalf {
    /// Ready with its reason once the peer reset the stream (or the
    /// connection ended).
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<ErrorCode> {
        let mut inner = self.shared.lock();
        let gone = inner.gone;
        let Some(slot) = inner.slots.get_mut(&self.stream) else {
            return Poll::Ready(ErrorCode::CANCEL);
        };
        match slot.reset {
            Some(code) => Poll::Ready(code),
            None if gone => Poll::Ready(ErrorCode::CANCEL),
            None => {
                slot.sender = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Resets the stream with `code`, dropping whatever of ours still
    /// waits for the peer's window.
    pub fn send_reset(&mut self, code: ErrorCode) {
        self.queue(true, |conn, stream| {
            if conn.is_open(stream) {
                conn.reset(stream, code);
            }
            true
        });
        if let Some(slot) = self.shared.lock().slots.get_mut(&self.stream) {
            slot.reset.get_or_insert(code);
            slot.wake();
        }
    }

    /// Sends the response head; with `end`, the stream's end too. `false`
    /// when the stream is gone.
    pub fn send_response(&mut self, head: &http::response::Parts, end: bool) -> bool {
        let fields = fields(
            &[(b":status", head.status.as_str().as_bytes())],
            &head.headers,
        );
        self.queue(end, |conn, stream| {
            conn.send_headers(stream, fields, end).is_ok()
        })
    }

    /// Sends `body` as the peer's window allows, then its trailers or its
    /// end.
    pub fn pipe<B>(self, body: B) -> SendPipe<B> {
        SendPipe {
            body,
            respond: self,
            pending: None,
        }
    }

    /// Once less than a stream's window of what we send waits for the
    /// peer's window, queues `data` (if any): `Ready(false)` when the
    /// stream is gone.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Option<(Bytes, bool)>) -> Poll<bool> {
        {
            let mut guard = self.shared.lock();
            let inner = &mut *guard;
            let Some(slot) = inner.slots.get_mut(&self.stream) else {
                return Poll::Ready(false);
            };
            if inner.gone || slot.reset.is_some() {
                return Poll::Ready(false);
            }
            if inner.conn.queued(self.stream) >= inner.send_limit {
                slot.sender = Some(cx.waker().clone());
                if !inner.waiting_for_room.contains(&self.stream) {
                    inner.waiting_for_room.push(self.stream);
                }
                return Poll::Pending;
            }
        }
        let Some((bytes, end)) = data.take() else {
            return Poll::Ready(true);
        };
        Poll::Ready(self.queue(end, |conn, stream| {
            conn.send_data(stream, bytes, end).is_ok()
        }))
    }

    fn send_trailers(&mut self, trailers: &HeaderMap) -> bool {
        let fields = fields(&[], trailers);
        self.queue(true, |conn, stream| {
            conn.send_headers(stream, fields, true).is_ok()
        })
    }

    /// Hands something to the connection (`send`; `false` when the stream
    /// is not open for it) and wakes the connection's task to write it;
    /// `end` when it ends the response.
    fn queue(&mut self, end: bool, send: impl FnOnce(&mut Connection, StreamId) -> bool) -> bool {
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        if inner.gone {
            return false;
        }
        let sent = send(&mut inner.conn, self.stream);
        if end && let Some(slot) = inner.slots.get_mut(&self.stream) {
            slot.send_ended = true;
        }
        inner.output_queued();
        sent
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        self.shared.lock().drop_handle(self.stream, false);
    }
}

pin_project_lite::pin_project! {
    /// A response body on its way to the client: as [`super::Pipe`], on a
    /// stream served here.
    pub struct SendPipe<B> {
        #[pin]
        body: B,
        respond: SendHalf,
        // Data read from the body and not yet queued, and whether it ends it.
        pending: Option<(Bytes, bool)>,
    }
}

impl<B> SendPipe<B> {
    /// Gives up on the stream: resets it with `code`.
    pub fn reset(self: Pin<&mut Self>, code: ErrorCode) {
        self.project().respond.send_reset(code);
    }
}

impl<B> Future for SendPipe<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Piped;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Piped> {
        let mut this = self.project();
        loop {
            // Queues what was read once there is room, and waits for room
            // before the body is read again: nothing is read from it while
            // the client is behind.
            let ends = this.pending.as_ref().is_some_and(|(_, end)| *end);
            if !ready!(this.respond.poll_send(cx, this.pending)) {
                return Poll::Ready(Piped::PeerGone);
            }
            if ends {
                return Poll::Ready(Piped::Sent);
            }
            let frame = match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Waiting on the body: notice a client that gives up.
                    return this.respond.poll_reset(cx).map(|_| Piped::PeerGone);
                }
            };
            match frame {
                None => *this.pending = Some((Bytes::new(), true)),
                Some(Err(err)) => {
                    let err: BoxError = err.into();
                    tracing::debug!(%err, "body failed; resetting the stream");
                    this.respond.send_reset(reset_reason(&*err));
                    return Poll::Ready(Piped::BodyFailed(err));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = this.body.is_end_stream();
                        if !data.is_empty() || end {
                            *this.pending = Some((data, end));
                        }
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            return Poll::Ready(if this.respond.send_trailers(&trailers) {
                                Piped::Sent
                            } else {
                                Piped::PeerGone
                            });
                        }
                        // A frame of a kind HTTP/2 has no use for: the end.
                        Err(_) => *this.pending = Some((Bytes::new(), true)),
                    },
                },
            }
        }
    }
}

/// Sends requests on an upstream connection; clones share it.
#[derive(Debug)]
pub struct Requester {
    shared: Arc<Shared>,
}

impl Clone for Requester {
    fn clone(&self) -> Self {
        self.shared.requesters.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Requester {
    /// How many streams the peer lets us have open at once.
    pub fn max_streams(&self) -> usize {
        self.shared.lock().conn.peer_max_streams() as usize
    }

    /// Opens a stream with `head` (and ends it there with `end`), once the
    /// peer's stream limit allows: the response to come, and the half that
    /// sends the request's body.
    pub async fn send_request(
        &self,
        head: &http::request::Parts,
        end: bool,
    ) -> Result<(ResponseFuture, SendHalf), StreamError> {
        let fields = request_fields(head);
        poll_fn(|cx| {
            let mut guard = self.shared.lock();
            let inner = &mut *guard;
            if inner.gone {
                return Poll::Ready(Err(inner.lost()));
            }
            if inner.going_away.is_some() {
                return Poll::Ready(Err(StreamError::GoingAway));
            }
            if !inner.conn.can_open() {
                inner.waiting_to_open.push(cx.waker().clone());
                return Poll::Pending;
            }
            let Ok(stream) = inner.conn.open(&fields, end) else {
                return Poll::Ready(Err(StreamError::GoingAway));
            };
            inner.slots.insert(
                stream,
                Slot {
                    send_ended: end,
                    ..Slot::default()
                },
            );
            inner.output_queued();
            let response = ResponseFuture {
                body: Some(RecvBody::new(self.shared.clone(), stream)),
            };
            let send = SendHalf {
                shared: self.shared.clone(),
                stream,
            };
            Poll::Ready(Ok((response, send)))
        })
        .await
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        // The last one gone lets an idle connection close.
        if self.shared.requesters.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut inner = self.shared.lock();
            inner.close_when_idle = true;
            if let Some(waker) = inner.writer.take() {
                waker.wake();
            }
        }
    }
}

/// A request's fields: the pseudo-header fields from its URI, then its
/// headers (`host` only as `:authority`).
fn request_fields(head: &http::request::Parts) -> Vec<Field> {
    let uri = &head.uri;
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| head.headers.get(http::header::HOST)?.to_str().ok());
    let method = (&b":method"[..], head.method.as_str().as_bytes());
    let scheme = (
        &b":scheme"[..],
        uri.scheme_str().unwrap_or("http").as_bytes(),
    );
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes();
    let path = (&b":path"[..], path);
    match authority {
        Some(authority) => fields(
            &[method, scheme, (b":authority", authority.as_bytes()), path],
            &head.headers,
        ),
        None => fields(&[method, scheme, path], &head.headers),
    }
}

/// The response to a request sent with [`Requester::send_request`].
#[derive(Debug)]
pub struct ResponseFuture {
    /// Its body's receiving half, handed out with the head.
    body: Option<RecvBody>,
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<RecvBody>, StreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let body = self.body.as_ref().expect("polled after it answered");
        let head = {
            let mut guard = body.shared.lock();
            let inner = &mut *guard;
            let lost = inner.lost();
            let Some(slot) = inner.slots.get_mut(&body.stream) else {
                return Poll::Ready(Err(lost));
            };
            if let Some(head) = slot.head.take() {
                head
            } else if let Some(code) = slot.reset {
                return Poll::Ready(Err(StreamError::Reset(code)));
            } else if inner.gone {
                return Poll::Ready(Err(lost));
            } else {
                slot.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
        };
        let body = self.body.take().expect("checked above");
        Poll::Ready(Ok(http::Response::from_parts(head, body)))
    }
}

/// The reset to pass on for a body that failed: the peer's own code when
/// its stream was reset (a CANCEL stays a CANCEL), else INTERNAL_ERROR.
fn reset_reason(err: &(dyn std::error::Error + 'static)) -> ErrorCode {
    let mut cause = Some(err);
    while let Some(err) = cause {
        let stream = match err.downcast_ref::<BodyError>() {
            Some(BodyError::Http2(err)) => Some(err),
            _ => err.downcast_ref::<StreamError>(),
        };
        if let Some(StreamError::Reset(code)) = stream {
            return *code;
        }
        cause = err.source();
    }
    ErrorCode::INTERNAL_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_passes_on_its_reason() {
        let reset = StreamError::Reset(ErrorCode::CANCEL);
        let err: BoxError = Box::new(BodyError::Http2(reset));
        assert_eq!(reset_reason(&*err), ErrorCode::CANCEL);
        let err: BoxError = Box::new(reset);
        assert_eq!(reset_reason(&*err), ErrorCode::CANCEL);
        let err: BoxError = Box::new(BodyError::Http2(StreamError::ConnectionLost(None)));
        assert_eq!(reset_reason(&*err), ErrorCode::INTERNAL_ERROR);
        let err: BoxError = "something else".into();
        assert_eq!(reset_reason(&*err), ErrorCode::INTERNAL_ERROR);
    }
}
