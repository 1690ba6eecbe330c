//! HTTP/2 frames (RFC 9113 §4 and §6): the frame header, each frame type
//! parsed and checked as the RFC requires of a receiver, and written.
//!
//! [`Frame::decode`] checks what can be checked from one frame alone (its
//! length, stream identifier, flags' payloads, setting values); what needs
//! the connection's state (stream states, CONTINUATION sequences, flow
//! control windows) is the connection's job. Each refusal says whether it
//! is a connection error or a stream error and with which code.

use bytes::{Buf as _, BufMut, Bytes, BytesMut};

/// The client's first bytes (§3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The size of a frame header.
pub const HEADER_LEN: usize = 9;
/// `SETTINGS_MAX_FRAME_SIZE`'s initial value, and the least it may be.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The most `SETTINGS_MAX_FRAME_SIZE` may be.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window (§6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// A stream identifier (31 bits); 0 is the connection.
pub type StreamId = u32;

mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// An error code (§7); codes this list does not name are kept as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: Self = Self(0x0);
    pub const PROTOCOL_ERROR: Self = Self(0x1);
    pub const INTERNAL_ERROR: Self = Self(0x2);
    pub const FLOW_CONTROL_ERROR: Self = Self(0x3);
    pub const SETTINGS_TIMEOUT: Self = Self(0x4);
    pub const STREAM_CLOSED: Self = Self(0x5);
    pub const FRAME_SIZE_ERROR: Self = Self(0x6);
    pub const REFUSED_STREAM: Self = Self(0x7);
    pub const CANCEL: Self = Self(0x8);
    pub const COMPRESSION_ERROR: Self = Self(0x9);
    pub const CONNECT_ERROR: Self = Self(0xa);
    pub const ENHANCE_YOUR_CALM: Self = Self(0xb);
    pub const INADEQUATE_SECURITY: Self = Self(0xc);
    pub const HTTP_1_1_REQUIRED: Self = Self(0xd);
}

/// What a receiver must do about a frame it cannot accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Send GOAWAY with this code and close the connection.
    #[error("connection error {code:?}: {reason}")]
    Connection {
        code: ErrorCode,
        reason: &'static str,
    },
    /// Reset this stream with this code; the connection goes on.
    #[error("stream {stream} error {code:?}: {reason}")]
    Stream {
        stream: StreamId,
        code: ErrorCode,
        reason: &'static str,
    },
}

fn connection(code: ErrorCode, reason: &'static str) -> FrameError {
    FrameError::Connection { code, reason }
}

/// The nine bytes before every frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: StreamId,
}

impl FrameHeader {
    pub fn parse(src: &[u8; HEADER_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, src[0], src[1], src[2]]),
            kind: src[3],
            flags: src[4],
            // The reserved bit is ignored on receipt (§4.1).
            stream: u32::from_be_bytes([src[5], src[6], src[7], src[8]]) & MAX_WINDOW,
        }
    }

    fn write(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.bytes());
    }

    fn bytes(&self) -> [u8; HEADER_LEN] {
        let [_, l0, l1, l2] = self.len.to_be_bytes();
        let [s0, s1, s2, s3] = self.stream.to_be_bytes();
        [l0, l1, l2, self.kind, self.flags, s0, s1, s2, s3]
    }
}

/// A stream's priority as HEADERS or PRIORITY carry it (§5.3.2, deprecated
/// by RFC 9113 but still sent, and still to be checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub depends_on: StreamId,
    pub exclusive: bool,
    pub weight: u8,
}

/// One setting of a SETTINGS frame (§6.5.2); unknown identifiers are kept
/// so that a caller may log them, and must otherwise be ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    HeaderTableSize(u32),
    EnablePush(bool),
    MaxConcurrentStreams(u32),
    InitialWindowSize(u32),
    MaxFrameSize(u32),
    MaxHeaderListSize(u32),
    Unknown(u16, u32),
}

impl Setting {
    fn id_and_value(self) -> (u16, u32) {
        match self {
            Self::HeaderTableSize(v) => (0x1, v),
            Self::EnablePush(v) => (0x2, v.into()),
            Self::MaxConcurrentStreams(v) => (0x3, v),
            Self::InitialWindowSize(v) => (0x4, v),
            Self::MaxFrameSize(v) => (0x5, v),
            Self::MaxHeaderListSize(v) => (0x6, v),
            Self::Unknown(id, v) => (id, v),
        }
    }

    fn parse(id: u16, value: u32) -> Result<Self, FrameError> {
        Ok(match id {
            0x1 => Self::HeaderTableSize(value),
            0x2 => match value {
                0 | 1 => Self::EnablePush(value == 1),
                _ => {
                    return Err(connection(
                        ErrorCode::PROTOCOL_ERROR,
                        "SETTINGS_ENABLE_PUSH is neither 0 nor 1",
                    ));
                }
            },
            0x3 => Self::MaxConcurrentStreams(value),
            0x4 if value > MAX_WINDOW => {
                return Err(connection(
                    ErrorCode::FLOW_CONTROL_ERROR,
                    "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                ));
            }
            0x4 => Self::InitialWindowSize(value),
            0x5 if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) => {
                return Err(connection(
                    ErrorCode::PROTOCOL_ERROR,
                    "SETTINGS_MAX_FRAME_SIZE out of range",
                ));
            }
            0x5 => Self::MaxFrameSize(value),
            0x6 => Self::MaxHeaderListSize(value),
            _ => Self::Unknown(id, value),
        })
    }
}

/// A frame, its payload checked. Header block fragments and DATA are
/// slices of the bytes read: nothing is copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: StreamId,
        data: Bytes,
        end_stream: bool,
        /// What the frame counts against flow control: with its padding.
        flow_len: u32,
    },
    Headers {
        stream: StreamId,
        block: Bytes,
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
    },
    Priority {
        stream: StreamId,
        priority: Priority,
    },
    RstStream {
        stream: StreamId,
        code: ErrorCode,
    },
    Settings(Vec<Setting>),
    SettingsAck,
    PushPromise {
        stream: StreamId,
        promised: StreamId,
        block: Bytes,
        end_headers: bool,
    },
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream: StreamId,
        code: ErrorCode,
        debug: Bytes,
    },
    WindowUpdate {
        stream: StreamId,
        increment: u32,
    },
    Continuation {
        stream: StreamId,
        block: Bytes,
        end_headers: bool,
    },
    /// A frame type this implementation does not know: to be ignored
    /// (§5.5), except in the middle of a header block.
    Unknown {
        kind: u8,
        stream: StreamId,
    },
}

impl Frame {
    /// Takes the next whole frame off the front of `src`, if `src` holds
    /// one. A frame longer than `max_frame_size` (our
    /// `SETTINGS_MAX_FRAME_SIZE`) is refused before its payload is read.
    pub fn read(src: &mut BytesMut, max_frame_size: u32) -> Result<Option<Frame>, FrameError> {
        let Some(head) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = FrameHeader::parse(head);
        if header.len > max_frame_size {
            return Err(connection(
                ErrorCode::FRAME_SIZE_ERROR,
                "a frame longer than SETTINGS_MAX_FRAME_SIZE",
            ));
        }
        if src.len() < HEADER_LEN + header.len as usize {
            src.reserve(HEADER_LEN + header.len as usize - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(header.len as usize).freeze();
        Self::decode(header, payload).map(Some)
    }

    /// Checks and parses one frame's payload.
    pub fn decode(header: FrameHeader, mut payload: Bytes) -> Result<Frame, FrameError> {
        let FrameHeader {
            len,
            kind,
            flags,
            stream,
        } = header;
        let on_stream = |name: &'static str| {
            if stream == 0 {
                Err(connection(ErrorCode::PROTOCOL_ERROR, name))
            } else {
                Ok(())
            }
        };
        let on_connection = |name: &'static str| {
            if stream != 0 {
                Err(connection(ErrorCode::PROTOCOL_ERROR, name))
            } else {
                Ok(())
            }
        };
        let frame_size = |reason| Err(connection(ErrorCode::FRAME_SIZE_ERROR, reason));
        Ok(match kind {
            kind::DATA => {
                on_stream("DATA on stream 0")?;
                unpad(&mut payload, flags)?;
                Frame::Data {
                    stream,
                    data: payload,
                    end_stream: flags & flag::END_STREAM != 0,
                    flow_len: len,
                }
            }
            kind::HEADERS => {
                on_stream("HEADERS on stream 0")?;
                unpad(&mut payload, flags)?;
                let priority = if flags & flag::PRIORITY != 0 {
                    if payload.len() < 5 {
                        return frame_size("HEADERS too short for its priority");
                    }
                    // Not checked for a dependency on itself here: the
                    // block must be decoded first (§4.3), so the
                    // connection checks it (`Priority::on_itself`).
                    Some(read_priority(&mut payload))
                } else {
                    None
                };
                Frame::Headers {
                    stream,
                    block: payload,
                    end_stream: flags & flag::END_STREAM != 0,
                    end_headers: flags & flag::END_HEADERS != 0,
                    priority,
                }
            }
            kind::PRIORITY => {
                on_stream("PRIORITY on stream 0")?;
                if len != 5 {
                    return Err(FrameError::Stream {
                        stream,
                        code: ErrorCode::FRAME_SIZE_ERROR,
                        reason: "PRIORITY not 5 bytes long",
                    });
                }
                let priority = read_priority(&mut payload);
                if priority.depends_on == stream {
                    return Err(FrameError::Stream {
                        stream,
                        code: ErrorCode::PROTOCOL_ERROR,
                        reason: "a stream that depends on itself",
                    });
                }
                Frame::Priority { stream, priority }
            }
            kind::RST_STREAM => {
                on_stream("RST_STREAM on stream 0")?;
                if len != 4 {
                    return frame_size("RST_STREAM not 4 bytes long");
                }
                Frame::RstStream {
                    stream,
                    code: ErrorCode(payload.get_u32()),
                }
            }
            kind::SETTINGS => {
                on_connection("SETTINGS on a stream")?;
                if flags & flag::ACK != 0 {
                    if len != 0 {
                        return frame_size("SETTINGS acknowledgement with a payload");
                    }
                    Frame::SettingsAck
                } else {
                    if len % 6 != 0 {
                        return frame_size("SETTINGS not a multiple of 6 bytes long");
                    }
                    let mut settings = Vec::with_capacity(len as usize / 6);
                    while payload.has_remaining() {
                        let id = payload.get_u16();
                        settings.push(Setting::parse(id, payload.get_u32())?);
                    }
                    Frame::Settings(settings)
                }
            }
            kind::PUSH_PROMISE => {
                on_stream("PUSH_PROMISE on stream 0")?;
                unpad(&mut payload, flags)?;
                if payload.len() < 4 {
                    return frame_size("PUSH_PROMISE too short for its stream");
                }
                Frame::PushPromise {
                    stream,
                    promised: payload.get_u32() & MAX_WINDOW,
                    block: payload,
                    end_headers: flags & flag::END_HEADERS != 0,
                }
            }
            kind::PING => {
                on_connection("PING on a stream")?;
                let Ok(data) = <[u8; 8]>::try_from(&payload[..]) else {
                    return frame_size("PING not 8 bytes long");
                };
                Frame::Ping {
                    ack: flags & flag::ACK != 0,
                    payload: data,
                }
            }
            kind::GOAWAY => {
                on_connection("GOAWAY on a stream")?;
                if len < 8 {
                    return frame_size("GOAWAY shorter than 8 bytes");
                }
                Frame::GoAway {
                    last_stream: payload.get_u32() & MAX_WINDOW,
                    code: ErrorCode(payload.get_u32()),
                    debug: payload,
                }
            }
            kind::WINDOW_UPDATE => {
                if len != 4 {
                    return frame_size("WINDOW_UPDATE not 4 bytes long");
                }
                let increment = payload.get_u32() & MAX_WINDOW;
                if increment == 0 {
                    let reason = "WINDOW_UPDATE of 0";
                    return Err(match stream {
                        0 => connection(ErrorCode::PROTOCOL_ERROR, reason),
                        _ => FrameError::Stream {
                            stream,
                            code: ErrorCode::PROTOCOL_ERROR,
                            reason,
                        },
                    });
                }
                Frame::WindowUpdate { stream, increment }
            }
            kind::CONTINUATION => {
                on_stream("CONTINUATION on stream 0")?;
                Frame::Continuation {
                    stream,
                    block: payload,
                    end_headers: flags & flag::END_HEADERS != 0,
                }
            }
            kind => Frame::Unknown { kind, stream },
        })
    }

    /// Appends the frame to `dst`. A header block must fit one frame here:
    /// [`write_headers`] splits a longer one into CONTINUATION frames.
    pub fn write(&self, dst: &mut BytesMut) {
        let (kind, flags, stream, len) = match self {
            Frame::Data {
                stream,
                data,
                end_stream,
                ..
            } => (
                kind::DATA,
                end_stream_flag(*end_stream),
                *stream,
                data.len(),
            ),
            Frame::Headers {
                stream,
                block,
                end_stream,
                end_headers,
                priority,
            } => {
                let mut flags = end_stream_flag(*end_stream) | end_headers_flag(*end_headers);
                if priority.is_some() {
                    flags |= flag::PRIORITY;
                }
                let len = block.len() + if priority.is_some() { 5 } else { 0 };
                (kind::HEADERS, flags, *stream, len)
            }
            Frame::Priority { stream, .. } => (kind::PRIORITY, 0, *stream, 5),
            Frame::RstStream { stream, .. } => (kind::RST_STREAM, 0, *stream, 4),
            Frame::Settings(settings) => (kind::SETTINGS, 0, 0, settings.len() * 6),
            Frame::SettingsAck => (kind::SETTINGS, flag::ACK, 0, 0),
            Frame::PushPromise {
                stream,
                block,
                end_headers,
                ..
            } => (
                kind::PUSH_PROMISE,
                end_headers_flag(*end_headers),
                *stream,
                4 + block.len(),
            ),
            Frame::Ping { ack, .. } => (kind::PING, if *ack { flag::ACK } else { 0 }, 0, 8),
            Frame::GoAway { debug, .. } => (kind::GOAWAY, 0, 0, 8 + debug.len()),
            Frame::WindowUpdate { stream, .. } => (kind::WINDOW_UPDATE, 0, *stream, 4),
            Frame::Continuation {
                stream,
                block,
                end_headers,
            } => (
                kind::CONTINUATION,
                end_headers_flag(*end_headers),
                *stream,
                block.len(),
            ),
            // Nothing to send: we only ever receive these.
            Frame::Unknown { .. } => return,
        };
        dst.reserve(HEADER_LEN + len);
        FrameHeader {
            len: len as u32,
            kind,
            flags,
            stream,
        }
        .write(dst);
        match self {
            Frame::Data { data, .. } => dst.put_slice(data),
            Frame::Headers {
                block, priority, ..
            } => {
                if let Some(priority) = priority {
                    put_priority(dst, priority);
                }
                dst.put_slice(block);
            }
            Frame::Priority { priority, .. } => put_priority(dst, priority),
            Frame::RstStream { code, .. } => dst.put_u32(code.0),
            Frame::Settings(settings) => {
                for setting in settings {
                    let (id, value) = setting.id_and_value();
                    dst.put_u16(id);
                    dst.put_u32(value);
                }
            }
            Frame::PushPromise {
                promised, block, ..
            } => {
                dst.put_u32(*promised);
                dst.put_slice(block);
            }
            Frame::Ping { payload, .. } => dst.put_slice(payload),
            Frame::GoAway {
                last_stream,
                code,
                debug,
            } => {
                dst.put_u32(*last_stream);
                dst.put_u32(code.0);
                dst.put_slice(debug);
            }
            Frame::WindowUpdate { increment, .. } => dst.put_u32(*increment),
            Frame::Continuation { block, .. } => dst.put_slice(block),
            Frame::SettingsAck | Frame::Unknown { .. } => {}
        }
    }
}

/// Appends a header block as HEADERS and as many CONTINUATION frames as
/// `max_frame_size` (the peer's `SETTINGS_MAX_FRAME_SIZE`) needs.
pub fn write_headers(
    stream: StreamId,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
    dst: &mut BytesMut,
) {
    let max = max_frame_size as usize;
    let mut chunks = block.chunks(max).peekable();
    let first = chunks.next().unwrap_or_default();
    let mut more = chunks.peek().is_some();
    FrameHeader {
        len: first.len() as u32,
        kind: kind::HEADERS,
        flags: end_stream_flag(end_stream) | end_headers_flag(!more),
        stream,
    }
    .write(dst);
    dst.put_slice(first);
    while let Some(chunk) = chunks.next() {
        more = chunks.peek().is_some();
        FrameHeader {
            len: chunk.len() as u32,
            kind: kind::CONTINUATION,
            flags: end_headers_flag(!more),
            stream,
        }
        .write(dst);
        dst.put_slice(chunk);
    }
}

/// As [`write_headers`], with the block written by `encode` straight
/// into `dst` behind room for the frame's header: no copy of the block
/// when it fits one frame, as nearly every block does.
pub fn write_headers_with(
    stream: StreamId,
    end_stream: bool,
    max_frame_size: u32,
    dst: &mut BytesMut,
    encode: impl FnOnce(&mut BytesMut),
) {
    let start = dst.len();
    dst.put_bytes(0, HEADER_LEN);
    encode(dst);
    let len = dst.len() - start - HEADER_LEN;
    if len <= max_frame_size as usize {
        let header = FrameHeader {
            len: len as u32,
            kind: kind::HEADERS,
            flags: end_stream_flag(end_stream) | flag::END_HEADERS,
            stream,
        };
        dst[start..start + HEADER_LEN].copy_from_slice(&header.bytes());
        return;
    }
    let block = dst.split_off(start + HEADER_LEN);
    dst.truncate(start);
    write_headers(stream, &block, end_stream, max_frame_size, dst);
}

fn end_stream_flag(set: bool) -> u8 {
    if set { flag::END_STREAM } else { 0 }
}

fn end_headers_flag(set: bool) -> u8 {
    if set { flag::END_HEADERS } else { 0 }
}

/// Strips the padding of a PADDED frame (§6.1): its length byte first, the
/// padding last, which must leave something of the payload.
fn unpad(payload: &mut Bytes, flags: u8) -> Result<(), FrameError> {
    if flags & flag::PADDED == 0 {
        return Ok(());
    }
    let Some(&pad) = payload.first() else {
        return Err(connection(
            ErrorCode::FRAME_SIZE_ERROR,
            "a padded frame without its pad length",
        ));
    };
    payload.advance(1);
    if pad as usize > payload.len() {
        return Err(connection(
            ErrorCode::PROTOCOL_ERROR,
            "padding longer than the frame",
        ));
    }
    payload.truncate(payload.len() - pad as usize);
    Ok(())
}

fn read_priority(payload: &mut Bytes) -> Priority {
    let word = payload.get_u32();
    Priority {
        depends_on: word & MAX_WINDOW,
        exclusive: word & !MAX_WINDOW != 0,
        weight: payload.get_u8(),
    }
}

fn put_priority(dst: &mut BytesMut, priority: &Priority) {
    let exclusive = if priority.exclusive { 1 << 31 } else { 0 };
    dst.put_u32(priority.depends_on | exclusive);
    dst.put_u8(priority.weight);
}

#[cfg(test)]
mod tests;
