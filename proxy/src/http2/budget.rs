//! A budget for the frames a client sends that carry no request data:
//! PING, SETTINGS, WINDOW_UPDATE, PRIORITY, and DATA frames that are empty
//! and do not end their stream. Each costs the proxy a wake-up and some
//! work, and HTTP/2 lets a client send millions a second (a flood of them
//! took 84% of a worker). The client's byte stream is read through
//! [`Budgeted`], which follows its frame boundaries (9-byte headers; the
//! payloads are not looked at) and counts such frames per second; past the
//! budget it tells the connection to close with GOAWAY(ENHANCE_YOUR_CALM)
//! and feeds the HTTP/2 layer no more bytes.
//!
//! The budget grows with what the proxy writes to the client: a client that
//! downloads a lot sends WINDOW_UPDATEs in proportion, so each KiB written
//! in the second allows one more frame beyond the fixed part.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

/// The client connection preface, before the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

/// Two counts that start over each second; what every per-connection
/// budget here counts with.
#[derive(Debug)]
pub struct PerSecond {
    started: Instant,
    /// The second the counts are for, since `started`.
    second: AtomicU64,
    counts: [AtomicU64; 2],
}

impl Default for PerSecond {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            second: AtomicU64::new(0),
            counts: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

impl PerSecond {
    /// Adds `n` to count `i` of this second; its new value.
    pub fn add(&self, i: usize, n: u64) -> u64 {
        let now = self.started.elapsed().as_secs();
        // Read first: the second changes rarely, a write every time would
        // cost every caller the cache line.
        if self.second.load(Ordering::Relaxed) != now
            && self.second.swap(now, Ordering::Relaxed) != now
        {
            for count in &self.counts {
                count.store(0, Ordering::Relaxed);
            }
        }
        self.counts[i].fetch_add(n, Ordering::Relaxed) + n
    }

    /// Count `i` of this second (as last added to).
    pub fn get(&self, i: usize) -> u64 {
        self.counts[i].load(Ordering::Relaxed)
    }
}

/// What a connection's budget allows, and whether it was exceeded.
#[derive(Debug)]
pub struct FrameBudget {
    per_second: u64,
    /// Frames that carried nothing, and bytes written.
    counts: PerSecond,
    exceeded: AtomicBool,
    /// Told once when the budget is exceeded.
    pub notify: Notify,
    /// Whether the client acknowledged the proxy's SETTINGS (the reader
    /// sees every frame, so it notes that too).
    settings_acked: AtomicBool,
}

const FRAMES: usize = 0;
const WRITTEN: usize = 1;

impl FrameBudget {
    /// `per_second` frames that carry no data, plus one per KiB written.
    pub fn new(per_second: u32) -> Arc<Self> {
        Arc::new(Self {
            per_second: per_second.into(),
            counts: PerSecond::default(),
            exceeded: AtomicBool::new(false),
            notify: Notify::new(),
            settings_acked: AtomicBool::new(false),
        })
    }

    /// Whether the client has acknowledged the proxy's SETTINGS.
    pub fn settings_acked(&self) -> bool {
        self.settings_acked.load(Ordering::Relaxed)
    }

    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    fn wrote(&self, bytes: usize) {
        self.counts.add(WRITTEN, bytes as u64);
    }

    /// One frame that carries nothing; `false` once past the budget.
    fn empty_frame(&self) -> bool {
        let frames = self.counts.add(FRAMES, 1);
        let allowed = self.per_second + self.counts.get(WRITTEN) / 1024;
        if frames > allowed && !self.exceeded.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
        !self.exceeded()
    }
}

/// Where the reader is in the client's byte stream.
#[derive(Debug)]
enum Position {
    Preface {
        left: usize,
    },
    Header {
        have: usize,
        bytes: [u8; FRAME_HEADER_LEN],
    },
    Payload {
        left: usize,
    },
}

/// A client's connection, its frames counted against a [`FrameBudget`].
#[derive(Debug)]
pub struct Budgeted<I> {
    io: I,
    budget: Arc<FrameBudget>,
    position: Position,
    /// Reads refused since the budget was exceeded.
    refused: u8,
}

impl<I> Budgeted<I> {
    pub fn new(io: I, budget: Arc<FrameBudget>) -> Self {
        Self {
            io,
            budget,
            position: Position::Preface { left: PREFACE_LEN },
            refused: 0,
        }
    }

    /// Follows the frames in `bytes`, counting the empty ones; `false`
    /// once the budget is exceeded.
    fn follow(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.position {
                Position::Preface { left } | Position::Payload { left } => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.position = Position::Header {
                            have: 0,
                            bytes: [0; FRAME_HEADER_LEN],
                        };
                    }
                }
                Position::Header {
                    have,
                    bytes: header,
                } => {
                    let n = (FRAME_HEADER_LEN - *have).min(bytes.len());
                    header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < FRAME_HEADER_LEN {
                        continue;
                    }
                    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                    let (kind, flags) = (header[3], header[4]);
                    if kind == SETTINGS && flags & ACK != 0 {
                        self.budget.settings_acked.store(true, Ordering::Relaxed);
                    }
                    if carries_nothing(kind, flags, len) && !self.budget.empty_frame() {
                        return false;
                    }
                    self.position = if len == 0 {
                        Position::Header {
                            have: 0,
                            bytes: [0; FRAME_HEADER_LEN],
                        }
                    } else {
                        Position::Payload { left: len }
                    };
                }
            }
        }
        true
    }
}

/// PING, SETTINGS, WINDOW_UPDATE, PRIORITY, and an empty DATA frame that
/// does not end its stream.
const SETTINGS: u8 = 0x4;
/// SETTINGS' flag that acknowledges the peer's.
const ACK: u8 = 0x1;

fn carries_nothing(kind: u8, flags: u8, len: usize) -> bool {
    const DATA: u8 = 0x0;
    const PRIORITY: u8 = 0x2;
    const PING: u8 = 0x6;
    const WINDOW_UPDATE: u8 = 0x8;
    const END_STREAM: u8 = 0x1;
    match kind {
        DATA => len == 0 && flags & END_STREAM == 0,
        PRIORITY | SETTINGS | PING | WINDOW_UPDATE => true,
        _ => false,
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Budgeted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.budget.exceeded() {
            // Nothing more for the HTTP/2 layer to work through. Once, a
            // pause (and a wake-up), so that the serve loop can queue its
            // GOAWAY, which the layer writes before it reads again; then
            // an error, which ends the connection.
            this.refused = this.refused.saturating_add(1);
            if this.refused == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "too many frames that carry nothing",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled
            && !this.follow(&buf.filled()[before..])
        {
            // What came with the frame that broke the budget is dropped.
            buf.set_filled(before);
            this.refused = 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Budgeted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.budget.wrote(*n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.budget.wrote(*n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend([0, 0, 0, 1]);
        out.extend(std::iter::repeat_n(0xaa, len));
        out
    }

    #[tokio::test(start_paused = true)]
    async fn frames_are_followed_across_reads_and_empty_ones_counted() {
        let budget = FrameBudget::new(3);
        let mut reader = Budgeted::new(tokio::io::empty(), budget.clone());
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 6)); // SETTINGS: 1
        bytes.extend(frame(0x1, 0x4, 40)); // HEADERS
        bytes.extend(frame(0x0, 0x0, 100)); // DATA with data
        bytes.extend(frame(0x0, 0x1, 0)); // empty DATA ending its stream
        bytes.extend(frame(0x6, 0, 8)); // PING: 2
        bytes.extend(frame(0x8, 0, 4)); // WINDOW_UPDATE: 3
        // In pieces of 5 bytes: headers and payloads split anywhere.
        for piece in bytes.chunks(5) {
            assert!(reader.follow(piece));
        }
        assert!(!budget.exceeded());
        // The fourth breaks the budget of 3.
        assert!(!reader.follow(&frame(0x0, 0x0, 0)));
        assert!(budget.exceeded());
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_grows_with_what_is_written_and_renews_each_second() {
        let budget = FrameBudget::new(2);
        let mut reader = Budgeted::new(tokio::io::empty(), budget.clone());
        reader.position = Position::Header {
            have: 0,
            bytes: [0; FRAME_HEADER_LEN],
        };
        budget.wrote(10 * 1024);
        for _ in 0..12 {
            assert!(reader.follow(&frame(0x8, 0, 4)));
        }
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        for _ in 0..2 {
            assert!(reader.follow(&frame(0x6, 0, 8)));
        }
        assert!(!reader.follow(&frame(0x6, 0, 8)));
    }
}
