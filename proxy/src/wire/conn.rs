//! One HTTP/2 connection as a state machine without I/O: bytes read from
//! the peer go in ([`Connection::receive`]) and come out as [`Event`]s;
//! what we send goes in as calls ([`Connection::send_headers`],
//! [`Connection::send_data`], [`Connection::reset`]) and comes out as
//! bytes to write ([`Connection::output`]). Its caller owns the socket and
//! the tasks; this owns the protocol: the preface and settings, stream
//! states (RFC 9113 §5.1), flow control both ways (§5.2, §6.9), header
//! blocks and their CONTINUATION frames, PING, RST_STREAM and GOAWAY.
//!
//! Data waiting for the peer's flow-control windows is queued here, per
//! stream, with any trailers behind it; [`Connection::queued`] tells the
//! caller when to stop reading from its source. Received data counts
//! against our windows until the caller says it is consumed
//! ([`Connection::release`]): that is how a slow reader slows its peer.

use super::{
    frame::{
        self, DEFAULT_MAX_FRAME_SIZE, ErrorCode, Frame, FrameError, MAX_WINDOW, Setting, StreamId,
    },
    hpack::{self, Decoder, Encoder, Field},
};
use bytes::{Bytes, BytesMut};
use foldhash::HashMap;
use std::collections::VecDeque;

/// The windows both sides start with (§6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What we announce, and hold the peer to.
#[derive(Debug, Clone)]
pub struct Config {
    /// The streams the peer may have open at once.
    pub max_concurrent_streams: u32,
    /// Each stream's receive window; at least the default 65,535, so that
    /// the peer, which may send before our settings reach it, never
    /// overruns it.
    pub stream_window: u32,
    /// The connection's receive window, at least 65,535 too.
    pub connection_window: u32,
    /// The largest frame we read.
    pub max_frame_size: u32,
    /// The largest header list we keep (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub max_header_list_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1_000,
            stream_window: DEFAULT_WINDOW,
            connection_window: DEFAULT_WINDOW,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: 16 << 10,
        }
    }
}

/// What the peer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A header block: a request (server) or a response (client) head,
    /// interim (1xx) heads included, or trailers. A list larger than our
    /// limit arrives without its excess fields and `too_large` set.
    Headers {
        stream: StreamId,
        fields: Vec<Field>,
        end_stream: bool,
        trailers: bool,
        too_large: bool,
    },
    Data {
        stream: StreamId,
        data: Bytes,
        end_stream: bool,
    },
    /// The stream ended abnormally: reset by the peer, or, for a stream we
    /// opened past a GOAWAY's last stream, never processed
    /// (`REFUSED_STREAM`: safe to retry elsewhere).
    Reset { stream: StreamId, code: ErrorCode },
    /// The peer takes no new streams after `last_stream`.
    GoAway {
        last_stream: StreamId,
        code: ErrorCode,
        debug: Bytes,
    },
}

/// Why the connection failed: it is over, and the GOAWAY saying so (when
/// it was our decision) is in the output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    #[error("the peer broke the protocol: {code:?}, {reason}")]
    Protocol { code: ErrorCode, reason: String },
    #[error("the client's preface is not HTTP/2's")]
    Preface,
}

/// Why a call to send could not be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("stream {0} is not open for sending")]
    NotOpen(StreamId),
    #[error("the peer allows no more streams now")]
    AtStreamLimit,
    #[error("the connection is going away")]
    GoingAway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remote {
    /// No head yet (a stream we opened), or a head whose status was 1xx.
    AwaitingHead,
    Open,
    Closed,
}

#[derive(Debug)]
enum Queued {
    Data(Bytes),
    Trailers(Vec<Field>),
}

#[derive(Debug)]
struct Stream {
    remote: Remote,
    /// We sent END_STREAM, or queued it: then it goes out with the last of
    /// the queue.
    local_closed: bool,
    /// What we may still send on it, from the peer's settings and updates:
    /// negative when the peer lowered its initial window.
    send_window: i64,
    /// What the peer may still send on it.
    recv_window: i64,
    /// Consumed by the caller and not yet given back in a WINDOW_UPDATE.
    released: u32,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
}

impl Stream {
    fn new(remote: Remote, send_window: u32, recv_window: u32) -> Self {
        Self {
            remote,
            local_closed: false,
            send_window: send_window.into(),
            recv_window: recv_window.into(),
            released: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
        }
    }
}

/// A header block arriving in pieces.
#[derive(Debug)]
struct Continuing {
    stream: StreamId,
    end_stream: bool,
    /// Its priority names the stream itself: a stream error, once the
    /// block is decoded.
    on_itself: bool,
    block: BytesMut,
}

/// Streams we reset, for which the peer may still send frames in flight:
/// those are dropped, not answered. Bounded: the oldest are forgotten.
const RECENTLY_RESET: usize = 128;

/// One HTTP/2 connection. See the module's documentation.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Config,
    out: BytesMut,
    events: VecDeque<Event>,
    /// Bytes of the client's preface still to be checked (server only).
    preface_left: usize,
    /// The peer's SETTINGS came first, as they must.
    peer_settings_seen: bool,
    streams: HashMap<StreamId, Stream>,
    /// Streams with data or trailers waiting for a window, in turn.
    sendable: VecDeque<StreamId>,
    recently_reset: VecDeque<StreamId>,
    next_local_stream: StreamId,
    last_peer_stream: StreamId,
    local_open: u32,
    peer_open: u32,
    continuing: Option<Continuing>,
    decoder: Decoder,
    encoder: Encoder,
    // The peer's settings.
    peer_max_streams: u32,
    peer_initial_window: u32,
    peer_max_frame_size: u32,
    send_window: i64,
    recv_window: i64,
    released: u32,
    /// GOAWAY received: no new local streams.
    going_away: bool,
    /// GOAWAY sent: peer streams after this are ignored.
    goaway_sent: Option<StreamId>,
    /// A graceful GOAWAY's PING, until its ack says the peer has seen
    /// the first GOAWAY.
    drain_ping: Option<[u8; 8]>,
    /// Why the connection ended, said again to every later call.
    failed: Option<ConnError>,
}

impl Connection {
    /// A connection that has sent nothing yet; its preface (client) and
    /// settings are the first output.
    pub fn new(role: Role, config: Config) -> Self {
        let config = Config {
            stream_window: config.stream_window.clamp(DEFAULT_WINDOW, MAX_WINDOW),
            connection_window: config.connection_window.clamp(DEFAULT_WINDOW, MAX_WINDOW),
            max_frame_size: config
                .max_frame_size
                .clamp(DEFAULT_MAX_FRAME_SIZE, frame::MAX_MAX_FRAME_SIZE),
            ..config
        };
        let mut out = BytesMut::new();
        if role == Role::Client {
            out.extend_from_slice(frame::PREFACE);
        }
        let mut settings = vec![
            Setting::MaxConcurrentStreams(config.max_concurrent_streams),
            Setting::InitialWindowSize(config.stream_window),
            Setting::MaxFrameSize(config.max_frame_size),
            Setting::MaxHeaderListSize(config.max_header_list_size),
        ];
        if role == Role::Client {
            settings.push(Setting::EnablePush(false));
        }
        Frame::Settings(settings).write(&mut out);
        if config.connection_window > DEFAULT_WINDOW {
            Frame::WindowUpdate {
                stream: 0,
                increment: config.connection_window - DEFAULT_WINDOW,
            }
            .write(&mut out);
        }
        Self {
            role,
            out,
            events: VecDeque::new(),
            preface_left: if role == Role::Server {
                frame::PREFACE.len()
            } else {
                0
            },
            peer_settings_seen: false,
            streams: HashMap::default(),
            sendable: VecDeque::new(),
            recently_reset: VecDeque::new(),
            next_local_stream: if role == Role::Client { 1 } else { 2 },
            last_peer_stream: 0,
            local_open: 0,
            peer_open: 0,
            continuing: None,
            decoder: Decoder::new(hpack::DEFAULT_TABLE_SIZE),
            encoder: Encoder::default(),
            // Unlimited until the peer says otherwise (§6.5.2).
            peer_max_streams: u32::MAX,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            send_window: DEFAULT_WINDOW.into(),
            recv_window: config.connection_window.into(),
            released: 0,
            going_away: false,
            goaway_sent: None,
            drain_ping: None,
            failed: None,
            config,
        }
    }

    /// The bytes to write to the peer; take them (`split`) and write them.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Gives back the output buffer, and the stream tables and queues
    /// when they are empty (a connection with no stream open, idle).
    pub fn release_memory(&mut self) {
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
        if self.streams.is_empty() {
            self.streams = HashMap::default();
        }
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.sendable.is_empty() {
            self.sendable = VecDeque::new();
        }
    }

    /// The next thing the peer did, if any.
    pub fn event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Reads whole frames off the front of `src`, leaving a partial one.
    pub fn receive(&mut self, src: &mut BytesMut) -> Result<(), ConnError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.preface_left > 0 {
            let at = frame::PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(src.len());
            if src[..n] != frame::PREFACE[at..at + n] {
                self.failed = Some(ConnError::Preface);
                return Err(ConnError::Preface);
            }
            let _ = src.split_to(n);
            self.preface_left -= n;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        loop {
            let read = Frame::read(src, self.config.max_frame_size);
            let result = match read {
                Ok(None) => return Ok(()),
                Ok(Some(frame)) => self.on_frame(frame),
                Err(error) => Err(error),
            };
            match result {
                Ok(()) => {}
                Err(FrameError::Stream { stream, code, .. }) => self.reset(stream, code),
                Err(FrameError::Connection { code, reason }) => {
                    return Err(self.fail(code, reason.to_owned()));
                }
            }
        }
    }

    fn fail(&mut self, code: ErrorCode, reason: String) -> ConnError {
        self.go_away(code);
        let error = ConnError::Protocol { code, reason };
        self.failed = Some(error.clone());
        error
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), FrameError> {
        let protocol = |reason| FrameError::Connection {
            code: ErrorCode::PROTOCOL_ERROR,
            reason,
        };
        if !self.peer_settings_seen {
            if !matches!(frame, Frame::Settings(_)) {
                return Err(protocol("the peer's first frame is not SETTINGS"));
            }
            self.peer_settings_seen = true;
        }
        if let Some(continuing) = &self.continuing {
            match &frame {
                Frame::Continuation { stream, .. } if *stream == continuing.stream => {}
                _ => return Err(protocol("a header block interrupted before its end")),
            }
        }
        match frame {
            Frame::Settings(settings) => self.on_settings(settings),
            Frame::SettingsAck | Frame::Priority { .. } | Frame::Unknown { .. } => Ok(()),
            Frame::Ping {
                ack: false,
                payload,
            } => {
                Frame::Ping { ack: true, payload }.write(&mut self.out);
                Ok(())
            }
            Frame::Ping { ack: true, payload } => {
                if self.drain_ping == Some(payload) {
                    // The peer has seen the first GOAWAY: whatever it
                    // sent before is in, and the last stream is known.
                    self.drain_ping = None;
                    if self.goaway_sent.is_none() {
                        self.go_away(ErrorCode::NO_ERROR);
                    }
                }
                Ok(())
            }
            Frame::Headers {
                stream,
                block,
                end_stream,
                end_headers,
                priority,
            } => {
                let on_itself = priority.is_some_and(|p| p.depends_on == stream);
                if end_headers {
                    self.on_header_block(stream, block, end_stream, on_itself)
                } else {
                    let mut pieces = BytesMut::from(&block[..]);
                    pieces.reserve(block.len());
                    self.continuing = Some(Continuing {
                        stream,
                        end_stream,
                        on_itself,
                        block: pieces,
                    });
                    Ok(())
                }
            }
            Frame::Continuation {
                block, end_headers, ..
            } => {
                let Some(continuing) = self.continuing.as_mut() else {
                    return Err(protocol("CONTINUATION after no header block"));
                };
                continuing.block.extend_from_slice(&block);
                // Huffman coding can at most stretch a list 3.75 times:
                // past 4 times our limit, no honest block would go.
                if continuing.block.len() > 4 * self.config.max_header_list_size as usize {
                    return Err(FrameError::Connection {
                        code: ErrorCode::ENHANCE_YOUR_CALM,
                        reason: "a header block far larger than our header list limit",
                    });
                }
                if end_headers {
                    let Continuing {
                        stream,
                        end_stream,
                        on_itself,
                        block,
                    } = self.continuing.take().expect("checked above");
                    self.on_header_block(stream, block.freeze(), end_stream, on_itself)
                } else {
                    Ok(())
                }
            }
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => self.on_data(stream, data, end_stream, flow_len),
            Frame::RstStream { stream, code } => {
                if self.is_idle(stream) {
                    return Err(protocol("RST_STREAM on an idle stream"));
                }
                if self.close(stream) {
                    self.events.push_back(Event::Reset { stream, code });
                }
                Ok(())
            }
            Frame::WindowUpdate {
                stream: 0,
                increment,
            } => {
                self.send_window += i64::from(increment);
                if self.send_window > i64::from(MAX_WINDOW) {
                    return Err(FrameError::Connection {
                        code: ErrorCode::FLOW_CONTROL_ERROR,
                        reason: "the connection's window past 2^31-1",
                    });
                }
                self.flush_queues();
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => {
                if self.is_idle(stream) {
                    return Err(protocol("WINDOW_UPDATE on an idle stream"));
                }
                let Some(state) = self.streams.get_mut(&stream) else {
                    // Closed: updates may still be in flight.
                    return Ok(());
                };
                state.send_window += i64::from(increment);
                if state.send_window > i64::from(MAX_WINDOW) {
                    return Err(FrameError::Stream {
                        stream,
                        code: ErrorCode::FLOW_CONTROL_ERROR,
                        reason: "a stream's window past 2^31-1",
                    });
                }
                self.flush_queues();
                Ok(())
            }
            Frame::PushPromise { .. } => Err(protocol("PUSH_PROMISE, which we never enable")),
            Frame::GoAway {
                last_stream,
                code,
                debug,
            } => {
                self.going_away = true;
                // Streams we opened past `last_stream` were never seen.
                let mut refused: Vec<StreamId> = self
                    .streams
                    .keys()
                    .copied()
                    .filter(|&id| self.is_local(id) && id > last_stream)
                    .collect();
                refused.sort_unstable();
                for stream in refused {
                    self.close(stream);
                    self.events.push_back(Event::Reset {
                        stream,
                        code: ErrorCode::REFUSED_STREAM,
                    });
                }
                self.events.push_back(Event::GoAway {
                    last_stream,
                    code,
                    debug,
                });
                Ok(())
            }
        }
    }

    fn on_settings(&mut self, settings: Vec<Setting>) -> Result<(), FrameError> {
        for setting in settings {
            match setting {
                Setting::HeaderTableSize(size) => self.encoder.peer_allows(size as usize),
                Setting::EnablePush(true) if self.role == Role::Client => {
                    return Err(FrameError::Connection {
                        code: ErrorCode::PROTOCOL_ERROR,
                        reason: "a server enabling push",
                    });
                }
                Setting::EnablePush(_) | Setting::MaxHeaderListSize(_) | Setting::Unknown(..) => {}
                Setting::MaxConcurrentStreams(n) => self.peer_max_streams = n,
                Setting::InitialWindowSize(size) => {
                    let delta = i64::from(size) - i64::from(self.peer_initial_window);
                    self.peer_initial_window = size;
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > i64::from(MAX_WINDOW) {
                            return Err(FrameError::Connection {
                                code: ErrorCode::FLOW_CONTROL_ERROR,
                                reason: "a new initial window takes a stream's past 2^31-1",
                            });
                        }
                    }
                }
                Setting::MaxFrameSize(size) => self.peer_max_frame_size = size,
            }
        }
        Frame::SettingsAck.write(&mut self.out);
        self.flush_queues();
        Ok(())
    }

    fn on_header_block(
        &mut self,
        stream: StreamId,
        block: Bytes,
        end_stream: bool,
        on_itself: bool,
    ) -> Result<(), FrameError> {
        // Decoded first, whatever becomes of the stream: the table must
        // stay in step with the peer's.
        // Room for a typical head: growing from empty costs four copies.
        // Twelve keeps the allocation within glibc's per-thread cache
        // (blocks up to 1 KiB), where sixteen fields' did not.
        let mut fields = Vec::with_capacity(12);
        let decoded = self
            .decoder
            .decode(
                &block,
                self.config.max_header_list_size as usize,
                &mut fields,
            )
            .map_err(|_| FrameError::Connection {
                code: ErrorCode::COMPRESSION_ERROR,
                reason: "a header block that does not decode",
            })?;
        let protocol = |reason| FrameError::Connection {
            code: ErrorCode::PROTOCOL_ERROR,
            reason,
        };
        let (local, idle) = (self.is_local(stream), self.is_idle(stream));
        let recently_reset = self.recently_reset.contains(&stream);
        let trailers = match self.streams.get_mut(&stream) {
            Some(state) => match state.remote {
                Remote::AwaitingHead => {
                    let interim = fields
                        .iter()
                        .find(|f| f.name == ":status")
                        .is_some_and(|f| f.value.first() == Some(&b'1'));
                    if interim && end_stream {
                        return Err(FrameError::Stream {
                            stream,
                            code: ErrorCode::PROTOCOL_ERROR,
                            reason: "an interim response that ends the stream",
                        });
                    }
                    if !interim {
                        state.remote = Remote::Open;
                    }
                    false
                }
                Remote::Open if !end_stream => {
                    return Err(FrameError::Stream {
                        stream,
                        code: ErrorCode::PROTOCOL_ERROR,
                        reason: "trailers that do not end the stream",
                    });
                }
                Remote::Open => true,
                Remote::Closed => {
                    return Err(FrameError::Stream {
                        stream,
                        code: ErrorCode::STREAM_CLOSED,
                        reason: "HEADERS after the peer ended the stream",
                    });
                }
            },
            None if local || !idle => {
                if idle {
                    return Err(protocol("HEADERS on a stream of ours not opened"));
                }
                if recently_reset {
                    return Ok(());
                }
                return Err(FrameError::Stream {
                    stream,
                    code: ErrorCode::STREAM_CLOSED,
                    reason: "HEADERS on a closed stream",
                });
            }
            None => {
                // A new stream from the peer.
                if self.role == Role::Client {
                    return Err(protocol("a server opening a stream"));
                }
                self.last_peer_stream = stream;
                if self.goaway_sent.is_some() {
                    return Ok(());
                }
                if self.peer_open >= self.config.max_concurrent_streams {
                    self.remember_reset(stream);
                    Frame::RstStream {
                        stream,
                        code: ErrorCode::REFUSED_STREAM,
                    }
                    .write(&mut self.out);
                    return Ok(());
                }
                self.peer_open += 1;
                self.streams.insert(stream, self.new_stream(Remote::Open));
                false
            }
        };
        // Checked once the stream exists, so that the reset closes it.
        if on_itself {
            return Err(FrameError::Stream {
                stream,
                code: ErrorCode::PROTOCOL_ERROR,
                reason: "a stream that depends on itself",
            });
        }
        self.events.push_back(Event::Headers {
            stream,
            fields,
            end_stream,
            trailers,
            too_large: decoded.over_limit,
        });
        if end_stream {
            self.remote_ended(stream);
        }
        Ok(())
    }

    fn on_data(
        &mut self,
        stream: StreamId,
        data: Bytes,
        end_stream: bool,
        flow_len: u32,
    ) -> Result<(), FrameError> {
        // The connection's window counts every DATA frame, whatever its
        // stream's state.
        self.recv_window -= i64::from(flow_len);
        if self.recv_window < 0 {
            return Err(FrameError::Connection {
                code: ErrorCode::FLOW_CONTROL_ERROR,
                reason: "DATA past the connection's window",
            });
        }
        // Padding is consumed on arrival; the data when the caller says so.
        self.release_connection(flow_len - data.len() as u32);
        let idle = self.is_idle(stream);
        let Some(state) = self.streams.get_mut(&stream) else {
            self.release_connection(data.len() as u32);
            if idle {
                return Err(FrameError::Connection {
                    code: ErrorCode::PROTOCOL_ERROR,
                    reason: "DATA on an idle stream",
                });
            }
            // Reset by us, or opened after our GOAWAY: dropped.
            let after_goaway = self.goaway_sent.is_some_and(|last| stream > last);
            if after_goaway || self.recently_reset.contains(&stream) {
                return Ok(());
            }
            return Err(FrameError::Stream {
                stream,
                code: ErrorCode::STREAM_CLOSED,
                reason: "DATA on a closed stream",
            });
        };
        if state.remote != Remote::Open {
            let (code, reason) = match state.remote {
                Remote::AwaitingHead => {
                    (ErrorCode::PROTOCOL_ERROR, "DATA before the response's head")
                }
                _ => (
                    ErrorCode::STREAM_CLOSED,
                    "DATA after the peer ended the stream",
                ),
            };
            self.release_connection(data.len() as u32);
            return Err(FrameError::Stream {
                stream,
                code,
                reason,
            });
        }
        state.recv_window -= i64::from(flow_len);
        if state.recv_window < 0 {
            self.release_connection(data.len() as u32);
            return Err(FrameError::Stream {
                stream,
                code: ErrorCode::FLOW_CONTROL_ERROR,
                reason: "DATA past the stream's window",
            });
        }
        let padding = flow_len - data.len() as u32;
        self.release_stream(stream, padding);
        self.events.push_back(Event::Data {
            stream,
            data,
            end_stream,
        });
        if end_stream {
            self.remote_ended(stream);
        }
        Ok(())
    }

    /// The caller consumed `n` bytes of the stream's data: the peer may
    /// send that much more, on the stream and on the connection.
    pub fn release(&mut self, stream: StreamId, n: usize) {
        let n = n as u32;
        self.release_connection(n);
        self.release_stream(stream, n);
    }

    fn release_connection(&mut self, n: u32) {
        self.released += n;
        // Updates in halves of the window: fewer frames, no stalls.
        if self.released >= self.config.connection_window / 2 {
            Frame::WindowUpdate {
                stream: 0,
                increment: self.released,
            }
            .write(&mut self.out);
            self.recv_window += i64::from(self.released);
            self.released = 0;
        }
    }

    fn release_stream(&mut self, stream: StreamId, n: u32) {
        let threshold = self.config.stream_window / 2;
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        // A stream the peer has ended will send no more.
        if state.remote == Remote::Closed {
            return;
        }
        state.released += n;
        if state.released >= threshold {
            Frame::WindowUpdate {
                stream,
                increment: state.released,
            }
            .write(&mut self.out);
            state.recv_window += i64::from(state.released);
            state.released = 0;
        }
    }

    /// Opens a stream of ours (a request, for a client) with its head.
    pub fn open(&mut self, head: &[Field], end_stream: bool) -> Result<StreamId, SendError> {
        if self.going_away || self.failed.is_some() {
            return Err(SendError::GoingAway);
        }
        if self.local_open >= self.peer_max_streams {
            return Err(SendError::AtStreamLimit);
        }
        let stream = self.next_local_stream;
        if stream > MAX_WINDOW {
            return Err(SendError::GoingAway);
        }
        self.next_local_stream += 2;
        self.local_open += 1;
        self.streams
            .insert(stream, self.new_stream(Remote::AwaitingHead));
        self.write_headers(stream, head, end_stream);
        if end_stream {
            self.local_ended(stream);
        }
        Ok(stream)
    }

    /// How many streams the peer lets us have open at once.
    pub fn peer_max_streams(&self) -> u32 {
        self.peer_max_streams
    }

    /// Whether a stream can be opened now (the peer's stream limit).
    pub fn can_open(&self) -> bool {
        !self.going_away && self.failed.is_none() && self.local_open < self.peer_max_streams
    }

    /// Sends a head (a response, for a server) or, behind any queued data,
    /// trailers (with `end_stream`).
    pub fn send_headers(
        &mut self,
        stream: StreamId,
        fields: Vec<Field>,
        end_stream: bool,
    ) -> Result<(), SendError> {
        let state = self.sendable_stream(stream)?;
        if !state.queue.is_empty() {
            state.queue.push_back(Queued::Trailers(fields));
            state.local_closed = true;
            return Ok(());
        }
        self.write_headers(stream, &fields, end_stream);
        if end_stream {
            self.local_ended(stream);
        }
        Ok(())
    }

    /// Sends data as the windows allow, queuing the rest.
    pub fn send_data(
        &mut self,
        stream: StreamId,
        data: Bytes,
        end_stream: bool,
    ) -> Result<(), SendError> {
        let state = self.sendable_stream(stream)?;
        state.queued_bytes += data.len();
        state.queue.push_back(Queued::Data(data));
        if end_stream {
            state.local_closed = true;
        }
        if !self.sendable.contains(&stream) {
            self.sendable.push_back(stream);
        }
        self.flush_queues();
        Ok(())
    }

    /// The data queued on a stream, waiting for windows.
    pub fn queued(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.queued_bytes)
    }

    /// Whether the stream is still open in either direction.
    pub fn is_open(&self, stream: StreamId) -> bool {
        self.streams.contains_key(&stream)
    }

    fn sendable_stream(&mut self, stream: StreamId) -> Result<&mut Stream, SendError> {
        match self.streams.get_mut(&stream) {
            Some(state) if !state.local_closed => Ok(state),
            _ => Err(SendError::NotOpen(stream)),
        }
    }

    /// Resets a stream: RST_STREAM goes out and what was queued is dropped.
    pub fn reset(&mut self, stream: StreamId, code: ErrorCode) {
        Frame::RstStream { stream, code }.write(&mut self.out);
        self.remember_reset(stream);
        self.close(stream);
    }

    /// Sends GOAWAY: the peer's streams after the last one seen are not
    /// taken; ours go on until they end.
    pub fn go_away(&mut self, code: ErrorCode) {
        let last_stream = self.last_peer_stream;
        self.goaway_sent = Some(last_stream);
        Frame::GoAway {
            last_stream,
            code,
            debug: Bytes::new(),
        }
        .write(&mut self.out);
    }

    /// GOAWAY in two steps (RFC 9113 §6.8): first with the largest stream
    /// identifier and a PING, so that requests already on their way are
    /// still taken, then, once the PING's ack comes back, with the last
    /// stream actually seen.
    pub fn go_away_gracefully(&mut self) {
        if self.goaway_sent.is_some() || self.drain_ping.is_some() {
            return;
        }
        Frame::GoAway {
            last_stream: MAX_WINDOW,
            code: ErrorCode::NO_ERROR,
            debug: Bytes::new(),
        }
        .write(&mut self.out);
        let payload = *b"drain\0\0\0";
        self.drain_ping = Some(payload);
        Frame::Ping {
            ack: false,
            payload,
        }
        .write(&mut self.out);
    }

    /// Whether our last GOAWAY has gone out: no new stream of the peer's
    /// is taken.
    pub fn goaway_sent(&self) -> bool {
        self.goaway_sent.is_some()
    }

    /// Whether `stream` is idle: not yet opened by the side whose
    /// identifiers have its parity.
    pub fn is_idle(&self, stream: StreamId) -> bool {
        if self.is_local(stream) {
            stream >= self.next_local_stream
        } else {
            stream > self.last_peer_stream
        }
    }

    /// Streams open in either direction.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    fn is_local(&self, stream: StreamId) -> bool {
        (stream % 2 == 1) == (self.role == Role::Client)
    }

    /// A new stream's state, its windows as both sides' settings say.
    fn new_stream(&self, remote: Remote) -> Stream {
        Stream::new(remote, self.peer_initial_window, self.config.stream_window)
    }

    fn remember_reset(&mut self, stream: StreamId) {
        if self.recently_reset.len() == RECENTLY_RESET {
            self.recently_reset.pop_front();
        }
        self.recently_reset.push_back(stream);
    }

    fn write_headers(&mut self, stream: StreamId, fields: &[Field], end_stream: bool) {
        let encoder = &mut self.encoder;
        frame::write_headers_with(
            stream,
            end_stream,
            self.peer_max_frame_size,
            &mut self.out,
            |dst| encoder.encode(fields, dst),
        );
    }

    /// Writes what the windows allow of the streams' queues, a frame from
    /// each in turn, so that one large body does not hold back the others.
    fn flush_queues(&mut self) {
        let mut turns_without_progress = 0;
        while self.send_window > 0 && turns_without_progress < self.sendable.len() {
            let Some(stream) = self.sendable.pop_front() else {
                break;
            };
            let (progress, more) = self.flush_stream(stream);
            if more {
                self.sendable.push_back(stream);
            }
            if progress {
                turns_without_progress = 0;
            } else {
                turns_without_progress += 1;
            }
        }
    }

    /// Writes the next DATA frame of a stream's queue that the windows
    /// allow, and the trailers if they come next (they need no window).
    /// Returns whether it wrote anything and whether any is left.
    fn flush_stream(&mut self, stream: StreamId) -> (bool, bool) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return (false, false);
        };
        let mut progress = false;
        if let Some(Queued::Data(data)) = state.queue.front_mut() {
            let window = state.send_window.min(self.send_window).max(0) as usize;
            let n = data
                .len()
                .min(window)
                .min(self.peer_max_frame_size as usize);
            if n == 0 && !data.is_empty() {
                return (false, true);
            }
            let chunk = data.split_to(n);
            if data.is_empty() {
                state.queue.pop_front();
            }
            let end_stream = state.queue.is_empty() && state.local_closed;
            state.send_window -= n as i64;
            self.send_window -= n as i64;
            state.queued_bytes -= n;
            Frame::Data {
                stream,
                data: chunk,
                end_stream,
                flow_len: n as u32,
            }
            .write(&mut self.out);
            if end_stream {
                self.local_ended(stream);
                return (true, false);
            }
            progress = true;
        }
        if let Some(Queued::Trailers(_)) = state.queue.front() {
            let Some(Queued::Trailers(fields)) = state.queue.pop_front() else {
                unreachable!("matched above");
            };
            self.write_headers(stream, &fields, true);
            self.local_ended(stream);
            return (true, false);
        }
        (progress, !state.queue.is_empty())
    }

    fn local_ended(&mut self, stream: StreamId) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        state.local_closed = true;
        if state.remote == Remote::Closed && state.queue.is_empty() {
            self.close(stream);
        }
    }

    fn remote_ended(&mut self, stream: StreamId) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        state.remote = Remote::Closed;
        if state.local_closed && state.queue.is_empty() {
            self.close(stream);
        }
    }

    /// Forgets a stream; whether it was open.
    fn close(&mut self, stream: StreamId) -> bool {
        if self.streams.remove(&stream).is_none() {
            return false;
        }
        if self.is_local(stream) {
            self.local_open -= 1;
        } else {
            self.peer_open -= 1;
        }
        true
    }
}

#[cfg(test)]
mod tests;
