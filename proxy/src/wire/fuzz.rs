//! What the fuzz targets in `proxy/fuzz` run (`cargo +nightly fuzz run
//! wire` or `conn`), kept here so that the unit tests run the same on
//! random input with every `cargo test`, and the targets cannot fall out
//! of step with the code. Each takes arbitrary bytes and must not panic.

use super::{
    conn::{Config, Connection, Event, Role},
    frame::{DEFAULT_MAX_FRAME_SIZE, Frame, PREFACE},
    hpack::{Decoder, Encoder, Field},
};
use bytes::BytesMut;

/// `data` as what an HTTP/2 peer sends after the preface: read as frames,
/// header blocks decoded with one HPACK decoder for the whole input, as a
/// connection keeps it. Every field list decoded must come back the same
/// through our encoder and a fresh decoder.
pub fn frames_and_headers(data: &[u8]) {
    let mut src = BytesMut::from(data);
    let mut decoder = Decoder::new(4096);
    let mut encoder = Encoder::default();
    let mut again = Decoder::new(4096);
    let mut block = BytesMut::new();
    while let Ok(Some(frame)) = Frame::read(&mut src, DEFAULT_MAX_FRAME_SIZE) {
        let (part, end_headers) = match frame {
            Frame::Headers {
                block, end_headers, ..
            }
            | Frame::Continuation {
                block, end_headers, ..
            } => (block, end_headers),
            _ => continue,
        };
        block.extend_from_slice(&part);
        if !end_headers {
            continue;
        }
        let mut fields = Vec::new();
        if decoder
            .decode(&block.split().freeze(), 1 << 16, &mut fields)
            .is_err()
        {
            return;
        }
        let mut encoded = BytesMut::new();
        encoder.encode(&fields, &mut encoded);
        let mut decoded = Vec::new();
        again
            .decode(&encoded.freeze(), usize::MAX, &mut decoded)
            .expect("what our encoder writes decodes");
        assert_eq!(decoded, fields);
    }
}

/// `data[1..]` as what a client sends after a valid preface and SETTINGS,
/// fed in pieces of `data[0]` bytes to a server connection that answers
/// every request with a head, more data than a window holds and trailers,
/// and consumes what it receives.
pub fn server_connection(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut server = Connection::new(Role::Server, Config::default());
    let mut start = BytesMut::from(&PREFACE[..]);
    Frame::Settings(Vec::new()).write(&mut start);
    server.receive(&mut start).expect("a valid start");
    let mut src = BytesMut::new();
    for chunk in rest.chunks(usize::from(split).max(1)) {
        src.extend_from_slice(chunk);
        if server.receive(&mut src).is_err() {
            return;
        }
        while let Some(event) = server.event() {
            match event {
                Event::Headers {
                    stream,
                    trailers: false,
                    ..
                } => {
                    let head = vec![Field::new(":status", "200")];
                    let _ = server.send_headers(stream, head, false);
                    let _ = server.send_data(stream, vec![1; 70_000].into(), false);
                    let trailers = vec![Field::new("grpc-status", "0")];
                    let _ = server.send_headers(stream, trailers, true);
                }
                Event::Data { stream, data, .. } => server.release(stream, data.len()),
                _ => {}
            }
        }
        server.output().clear();
    }
}

/// Bytes that are mostly frames, so that the tests get past the frame
/// header more often than uniform bytes do.
#[cfg(test)]
pub(crate) fn framed() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let frame = (
        0u8..10,
        any::<u8>(),
        0u32..8,
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(kind, flags, stream, payload)| {
            let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            out.extend([kind, flags]);
            out.extend(stream.to_be_bytes());
            out.extend(payload);
            out
        });
    proptest::collection::vec(frame, 0..12).prop_map(|frames| frames.concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames_and_headers_take_anything(data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..1024),
            framed(),
        ]) {
            frames_and_headers(&data);
        }

        #[test]
        fn a_server_connection_takes_anything(split in 1u8.., data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..1024),
            framed(),
        ]) {
            let mut input = vec![split];
            input.extend(data);
            server_connection(&input);
        }
    }
}
