//! Protocol detection: reads a connection's first bytes and decides whether
//! it speaks HTTP/2 with prior knowledge (gRPC), HTTP/1.x, or anything else
//! (opaque TCP). The bytes read are replayed to whatever handles the
//! connection next, through [`Prefixed`].
//!
//! Detection is bounded by a timeout and a byte limit; when either runs out
//! the connection is opaque, so server-speaks-first protocols still pass.

use bytes::{Buf as _, BytesMut};
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The connection preface every HTTP/2 client with prior knowledge sends.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http2,
    Http1,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http2 => "http2",
            Protocol::Http1 => "http1",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Classifies the bytes read so far; `None` means more bytes could decide.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    // HTTP/2 preface, or a prefix of it.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // HTTP/1: `METHOD SP request-target SP HTTP/1.x CRLF`.
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == buf.len() {
        // All method characters so far; a method longer than 16 is no method.
        return (method_len > 16).then_some(Protocol::Opaque);
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return Some(Protocol::Opaque);
    }
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        // A request line still arriving; bytes that cannot be in one decide now.
        let rest = &buf[method_len + 1..];
        return rest
            .iter()
            .any(|b| !b.is_ascii_graphic() && *b != b' ' && *b != b'\r')
            .then_some(Protocol::Opaque);
    };
    let line = &buf[..line_end];
    let is_http1 = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
    Some(if is_http1 {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

/// Reads from `io` until [`classify`] decides, `max_bytes` are read, the
/// peer stops sending for `timeout`, or it closes. `Ok(None)`: the peer
/// closed without sending anything.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
    max_bytes: usize,
) -> io::Result<Option<(Protocol, BytesMut)>> {
    let mut buf = BytesMut::with_capacity(1024.min(max_bytes));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(protocol) = classify(&buf) {
            return Ok(Some((protocol, buf)));
        }
        if buf.len() >= max_bytes {
            return Ok(Some((Protocol::Opaque, buf)));
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Err(_elapsed) => return Ok(Some((Protocol::Opaque, buf))),
            Ok(Ok(0)) if buf.is_empty() => return Ok(None),
            Ok(Ok(0)) => return Ok(Some((Protocol::Opaque, buf))),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(err),
        }
    }
}

/// An I/O stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct Prefixed<I> {
    prefix: BytesMut,
    inner: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: BytesMut, inner: I) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Read through: its allocation is not kept for the
                // connection's life.
                self.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[test]
    fn http2_preface_whole_and_partial() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0]);
        assert_eq!(classify(&with_frames), Some(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        // "PRI " is also where an HTTP/1 request with method PRI would start.
        assert_eq!(classify(b"PRI"), None);
    }

    #[test]
    fn http1_request_lines() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"POST /a?b=c HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET /slow"), None, "request line still arriving");
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET / SMTP/1.1\r\n"), Some(Protocol::Opaque));
    }

    #[test]
    fn anything_else_is_opaque() {
        assert_eq!(classify(b"hello"), Some(Protocol::Opaque));
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Protocol::Opaque), "TLS");
        assert_eq!(classify(&[0, 0, 0]), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET \x00\x01"), Some(Protocol::Opaque));
        assert_eq!(classify(b"ABCDEFGHIJKLMNOPQRS"), Some(Protocol::Opaque));
        assert_eq!(classify(b""), None);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_as_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        let (protocol, buf) = detect(&mut server, Duration::from_secs(1), 1024)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((protocol, &buf[..]), (Protocol::Opaque, &b"GE"[..]));
    }

    #[tokio::test]
    async fn byte_limit_decides_opaque() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"GET /").await.unwrap();
        client.write_all(&[b'a'; 200]).await.unwrap();
        let (protocol, _) = detect(&mut server, Duration::from_secs(5), 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(protocol, Protocol::Opaque);
    }

    #[tokio::test]
    async fn closed_without_bytes_is_none_and_prefix_is_replayed() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(
            detect(&mut server, Duration::from_secs(1), 64)
                .await
                .unwrap()
                .is_none()
        );

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"hello world").await.unwrap();
        drop(client);
        let (_, prefix) = detect(&mut server, Duration::from_secs(1), 64)
            .await
            .unwrap()
            .unwrap();
        let mut replay = Prefixed::new(prefix, server);
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }

    mod properties {
        //! Detection over arbitrary bytes, a bounded number of cases per run
        //! (the test command runs them; `PROPTEST_CASES` raises it).
        use super::super::*;
        use proptest::prelude::*;

        /// A request line an HTTP/1 client could send.
        fn request_line() -> impl Strategy<Value = Vec<u8>> {
            ("[A-Z]{1,16}", "/[!-~]{0,200}", prop::bool::ANY).prop_map(|(method, target, v11)| {
                let version = if v11 { "1.1" } else { "1.0" };
                format!("{method} {target} HTTP/{version}\r\n").into_bytes()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_bytes_are_classified_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = classify(&bytes);
            }

            /// Undecided on every prefix before the line ends (or decided
            /// HTTP/1 no sooner), HTTP/1 once it has, whatever follows.
            #[test]
            fn request_lines_are_http1(line in request_line(), rest in prop::collection::vec(any::<u8>(), 0..64)) {
                for end in 1..line.len() {
                    prop_assert_ne!(classify(&line[..end]), Some(Protocol::Opaque), "{:?}", &line[..end]);
                    prop_assert_ne!(classify(&line[..end]), Some(Protocol::Http2));
                }
                let mut all = line.clone();
                all.extend(rest);
                prop_assert_eq!(classify(&all), Some(Protocol::Http1));
            }

            /// Prefixes of the HTTP/2 preface wait; the whole preface, with
            /// anything after it, is HTTP/2.
            #[test]
            fn the_preface_is_http2(end in 1..H2_PREFACE.len(), rest in prop::collection::vec(any::<u8>(), 0..64)) {
                prop_assert_eq!(classify(&H2_PREFACE[..end]), None);
                let mut all = H2_PREFACE.to_vec();
                all.extend(rest);
                prop_assert_eq!(classify(&all), Some(Protocol::Http2));
            }
        }
    }
}
