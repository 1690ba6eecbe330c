//! Serving one client's HTTP/2 connection on the proxy's own protocol layer
//! ([`crate::wire::conn`]): the connection's I/O, and each stream's request
//! body and response.
//!
//! The [`Server`] owns the socket; [`Server::accept`] drives it (writes
//! what is queued, reads and decodes what came) and hands out each new
//! request with a [`Respond`] handle. A stream's body and response live in
//! other tasks and reach the protocol state through one lock, which they
//! hold only to move bytes in or out; whatever they queue for the peer,
//! the connection's task writes.
//!
//! Back-pressure, both ways: a request body's window is given back only as
//! its reader takes the data, and a response body is read from its source
//! only while less than a stream's window of it waits for the client's
//! window. The connection reads no more from its client while its own
//! output is not written, so a peer that sends cheap frames whose answers
//! it does not read (PING, SETTINGS) stalls itself.

use super::Piped;
use crate::{
    activity::Activity,
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
use h2::Reason;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version, uri};
use http_body::{Body, Frame};
use std::{
    collections::VecDeque,
    future::{Future, poll_fn},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker, ready},
};
use tokio::io::{AsyncRead, AsyncWrite};

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A connection that failed: the peer broke the protocol (the GOAWAY
/// saying so was sent), or the socket did.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Protocol(#[from] ConnError),
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
}

impl ServeError {
    /// The GOAWAY code we closed the connection with, for a protocol error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ServeError::Protocol(ConnError::Protocol { code, .. }) => Some(*code),
            ServeError::Protocol(ConnError::Preface) => Some(ErrorCode::PROTOCOL_ERROR),
            ServeError::Io(_) => None,
        }
    }
}

/// A request served here.
pub type Request = http::Request<RequestBody>;

/// What one stream has received and not yet handed out, and who waits.
#[derive(Debug, Default)]
struct Slot {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The client ended its side (after `data` and `trailers`).
    ended: bool,
    /// The stream was reset, by the client or by us.
    reset: Option<ErrorCode>,
    /// What `content-length` says is still to come.
    content_left: Option<u64>,
    /// The request body's reader, waiting for data.
    reader: Option<Waker>,
    /// The response's sender, waiting for room or watching for a reset.
    sender: Option<Waker>,
    /// The request body was dropped: its data is given back as it comes.
    body_dropped: bool,
    /// The response handle was dropped.
    respond_dropped: bool,
    /// The response ended (its last frame queued) or was reset.
    response_ended: bool,
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
    conn: Connection,
    slots: HashMap<StreamId, Slot>,
    /// The connection's task, to write what a stream queued.
    writer: Option<Waker>,
    /// Streams whose response waits for the client's window.
    waiting_for_room: Vec<StreamId>,
    /// How much of a response may wait for the client's window.
    send_limit: usize,
    /// The connection is over: every stream fails.
    gone: bool,
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
    }

    /// Forgets a stream both of whose handles are gone; resets it first
    /// if it is still open (the handler gave up on it).
    fn drop_handle(&mut self, stream: StreamId, body: bool) {
        let Some(slot) = self.slots.get_mut(&stream) else {
            return;
        };
        if body {
            slot.body_dropped = true;
            // Data nobody will read: give its window back.
            let unread: usize = slot.data.drain(..).map(|d| d.len()).sum();
            if unread > 0 && !self.gone {
                self.conn.release(stream, unread);
            }
        } else {
            slot.respond_dropped = true;
        }
        if slot.body_dropped && slot.respond_dropped {
            let ended = slot.response_ended;
            self.slots.remove(&stream);
            // A response that ended may still be queued behind the
            // client's window: it goes out, and the stream closes as the
            // client ends its side.
            if !self.gone && !ended && self.conn.is_open(stream) {
                self.conn.reset(stream, ErrorCode::CANCEL);
            }
        }
        self.output_queued();
    }
}

#[derive(Debug)]
struct Shared(Mutex<Inner>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves bytes, never broken invariants
        // worth stopping the proxy for.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One client's HTTP/2 connection, served. See the module's documentation.
#[derive(Debug)]
pub struct Server<I> {
    io: I,
    shared: Arc<Shared>,
    read: BytesMut,
    /// Output taken from the connection, being written.
    write: BytesMut,
    accepted: VecDeque<(Request, Respond)>,
    /// GOAWAY sent: the connection ends once its streams have.
    draining: bool,
    /// Closed by us: the connection ends once its GOAWAY is written.
    closing: bool,
    /// The protocol error to report once its GOAWAY is written.
    failed: Option<ConnError>,
    done: bool,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Server<I> {
    /// A connection on `io` announcing `config` (its SETTINGS are the
    /// first thing written); `send_limit` is how much of each response
    /// may wait for the client's window.
    pub fn new(io: I, config: Config, send_limit: usize) -> Self {
        let inner = Inner {
            conn: Connection::new(Role::Server, config),
            slots: HashMap::default(),
            writer: None,
            waiting_for_room: Vec::new(),
            send_limit,
            gone: false,
        };
        Self {
            io,
            shared: Arc::new(Shared(Mutex::new(inner))),
            read: BytesMut::new(),
            write: BytesMut::new(),
            accepted: VecDeque::new(),
            draining: false,
            closing: false,
            failed: None,
            done: false,
        }
    }

    /// The next request, once the client sends one; `None` when the
    /// connection has ended (closed by the client, or by us once its
    /// streams are done).
    pub async fn accept(&mut self) -> Option<Result<(Request, Respond), ServeError>> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// GOAWAY: no new streams; the connection ends once those in flight
    /// have.
    pub fn graceful_shutdown(&mut self) {
        if !self.draining {
            self.draining = true;
            let mut inner = self.shared.lock();
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
    ) -> Poll<Option<Result<(Request, Respond), ServeError>>> {
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
            if self.closing || (self.draining && self.drained()) {
                self.shared.lock().fail_all();
                self.done = true;
                return Poll::Ready(None);
            }
            // Registered before reading: a stream that queues output after
            // this wakes the task.
            self.shared.lock().writer = Some(cx.waker().clone());
            self.read.reserve(READ_CHUNK);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.read
            )) {
                Ok(0) => {
                    // The client closed its side: nothing in flight can be
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

    /// After a graceful GOAWAY: the client has seen it, and every stream
    /// taken before it is done.
    fn drained(&self) -> bool {
        let inner = self.shared.lock();
        inner.conn.goaway_sent() && inner.slots.is_empty()
    }

    /// Writes what the connection queued, then flushes.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.write.is_empty() {
                let mut inner = self.shared.lock();
                let out = inner.conn.output();
                if out.is_empty() {
                    break;
                }
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

    /// The connection is over with `err`.
    fn end(&mut self, err: ServeError) -> ServeError {
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
                } => {
                    if let Some(accepted) =
                        new_request(inner, &self.shared, stream, fields, end_stream, too_large)
                    {
                        self.accepted.push_back(accepted);
                    }
                }
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
                    if slot.body_dropped {
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
                // flight are answered.
                Event::GoAway { .. } => {}
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

/// A request's stream is malformed after its head (content-length broken,
/// bad trailers): reset with PROTOCOL_ERROR (RFC 9113 §8.1.1), and its
/// reader sees the reset.
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
) -> Option<(Request, Respond)> {
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
    let body = RequestBody {
        shared: shared.clone(),
        stream,
        activity: None,
        watch_end: false,
    };
    let respond = Respond {
        shared: shared.clone(),
        stream,
    };
    Some((http::Request::from_parts(head, body), respond))
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

/// Header fields as HPACK's, `:status` first for a response head. Their
/// bytes are copied into one buffer: one allocation per head, not two
/// per field.
fn fields(status: Option<http::StatusCode>, headers: &HeaderMap) -> Vec<Field> {
    let sendable = |name: &HeaderName, value: &HeaderValue| {
        !connection_specific(name) && (name != http::header::TE || value == "trailers")
    };
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let mut bytes = BytesMut::with_capacity(size + 3);
    let mut fields = Vec::with_capacity(headers.len() + 1);
    if let Some(status) = status {
        bytes.extend_from_slice(status.as_str().as_bytes());
        fields.push(Field::new(
            Bytes::from_static(b":status"),
            bytes.split().freeze(),
        ));
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

/// The error a stream's body ends with: its reset's reason, as the rest
/// of the proxy reads HTTP/2 resets.
fn stream_error(code: Option<ErrorCode>) -> h2::Error {
    h2::Error::from(Reason::from(code.map_or(ErrorCode::CANCEL.0, |c| c.0)))
}

/// A request's body, as the client sends it; reading it gives the client
/// its window back.
#[derive(Debug)]
pub struct RequestBody {
    shared: Arc<Shared>,
    stream: StreamId,
    /// Moved by each frame, and told when the body ends.
    activity: Option<Arc<Activity>>,
    /// Whether the activity is told of the end as soon as it is read.
    watch_end: bool,
}

impl RequestBody {
    pub(super) fn watched(mut self, activity: Arc<Activity>, watch_end: bool) -> Self {
        self.activity = Some(activity);
        self.watch_end = watch_end;
        self
    }

    fn moved(&self) {
        if let Some(activity) = &self.activity {
            activity.moved();
        }
    }

    fn ended(&self) {
        if let Some(activity) = &self.activity {
            activity.request_ended();
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        let mut guard = this.shared.lock();
        let inner = &mut *guard;
        let Some(slot) = inner.slots.get_mut(&this.stream) else {
            return Poll::Ready(Some(Err(stream_error(None))));
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
            if end && this.watch_end {
                this.ended();
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(code) = slot.reset {
            drop(guard);
            this.ended();
            return Poll::Ready(Some(Err(stream_error(Some(code)))));
        }
        if slot.ended {
            let trailers = slot.trailers.take();
            drop(guard);
            this.ended();
            return Poll::Ready(trailers.map(|t| {
                this.moved();
                Ok(Frame::trailers(t))
            }));
        }
        if inner.gone {
            drop(guard);
            this.ended();
            return Poll::Ready(Some(Err(stream_error(None))));
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

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.shared.lock().drop_handle(self.stream, true);
    }
}

/// Answers one stream: its response head, then its body.
#[derive(Debug)]
pub struct Respond {
    shared: Arc<Shared>,
    stream: StreamId,
}

impl Respond {
    /// Ready with its reason once the client reset the stream (or the
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

    /// Resets the stream with `code`, dropping whatever of the response
    /// still waits for the client's window.
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
        let fields = fields(Some(head.status), &head.headers);
        self.queue(end, |conn, stream| {
            conn.send_headers(stream, fields, end).is_ok()
        })
    }

    /// Sends `body` as the client's window allows, then its trailers or
    /// its end.
    pub fn pipe<B>(self, body: B) -> ResponsePipe<B> {
        ResponsePipe {
            body,
            respond: self,
            pending: None,
        }
    }

    /// Once less than a stream's window of the response waits for the
    /// client's window, queues `data` (if any): `Ready(false)` when the
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
        let fields = fields(None, trailers);
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
            slot.response_ended = true;
        }
        inner.output_queued();
        sent
    }
}

impl Drop for Respond {
    fn drop(&mut self) {
        self.shared.lock().drop_handle(self.stream, false);
    }
}

pin_project_lite::pin_project! {
    /// A response body on its way to the client: as [`super::Pipe`], on a
    /// stream served here.
    pub struct ResponsePipe<B> {
        #[pin]
        body: B,
        respond: Respond,
        // Data read from the body and not yet queued, and whether it ends it.
        pending: Option<(Bytes, bool)>,
    }
}

impl<B> ResponsePipe<B> {
    /// Gives up on the stream: resets it with `code`.
    pub fn reset(self: Pin<&mut Self>, code: ErrorCode) {
        self.project().respond.send_reset(code);
    }
}

impl<B> Future for ResponsePipe<B>
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
                    let code = super::pipe::reset_reason(&*err);
                    this.respond.send_reset(ErrorCode(code.into()));
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
