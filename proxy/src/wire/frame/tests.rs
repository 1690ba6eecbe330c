//! Frames written and read back, every refusal RFC 9113 asks of a
//! receiver, and arbitrary bytes.

use super::*;
use proptest::prelude::*;

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> BytesMut {
    let mut dst = BytesMut::new();
    FrameHeader {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    }
    .write(&mut dst);
    dst.put_slice(payload);
    dst
}

fn read_one(mut src: BytesMut) -> Result<Frame, FrameError> {
    let frame = Frame::read(&mut src, DEFAULT_MAX_FRAME_SIZE)?.expect("a whole frame");
    assert!(
        src.is_empty(),
        "the frame's bytes, and only them, were taken"
    );
    Ok(frame)
}

#[test]
fn padding_is_stripped_and_still_counted_for_flow_control() {
    // DATA: pad length 3, "hello", 3 bytes of padding.
    let frame = read_one(raw(
        kind::DATA,
        flag::PADDED | flag::END_STREAM,
        1,
        b"\x03hello\0\0\0",
    ))
    .unwrap();
    assert_eq!(
        frame,
        Frame::Data {
            stream: 1,
            data: Bytes::from_static(b"hello"),
            end_stream: true,
            flow_len: 9,
        }
    );
    // HEADERS, padded and with a priority: pad length, priority, block, padding.
    let frame = read_one(raw(
        kind::HEADERS,
        flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
        3,
        b"\x02\x80\0\0\x01\x0f\x82\x86\0\0",
    ))
    .unwrap();
    assert_eq!(
        frame,
        Frame::Headers {
            stream: 3,
            block: Bytes::from_static(b"\x82\x86"),
            end_stream: false,
            end_headers: true,
            priority: Some(Priority {
                depends_on: 1,
                exclusive: true,
                weight: 15,
            }),
        }
    );
}

#[test]
fn what_a_receiver_must_refuse_is_refused_as_the_rfc_says() {
    use ErrorCode as E;
    use Expected::*;
    #[derive(Debug)]
    enum Expected {
        Connection(ErrorCode),
        Stream(StreamId, ErrorCode),
    }
    let cases = [
        (
            "DATA on stream 0",
            raw(kind::DATA, 0, 0, b"x"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "HEADERS on stream 0",
            raw(kind::HEADERS, flag::END_HEADERS, 0, b"\x82"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "padding past the end",
            raw(kind::DATA, flag::PADDED, 1, b"\x05abc"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "padding that leaves nothing is fine, past it is not",
            raw(kind::DATA, flag::PADDED, 1, b"\x04abc"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "a padded frame with no pad length",
            raw(kind::DATA, flag::PADDED, 1, b""),
            Connection(E::FRAME_SIZE_ERROR),
        ),
        (
            "HEADERS too short for its priority",
            raw(kind::HEADERS, flag::PRIORITY, 1, b"\0\0\0"),
            Connection(E::FRAME_SIZE_ERROR),
        ),
        (
            "PRIORITY depending on itself",
            raw(kind::PRIORITY, 0, 5, b"\0\0\0\x05\x10"),
            Stream(5, E::PROTOCOL_ERROR),
        ),
        (
            "PRIORITY of 4 bytes",
            raw(kind::PRIORITY, 0, 7, b"\0\0\0\x01"),
            Stream(7, E::FRAME_SIZE_ERROR),
        ),
        (
            "PRIORITY on stream 0",
            raw(kind::PRIORITY, 0, 0, b"\0\0\0\x01\x10"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "RST_STREAM of 3 bytes",
            raw(kind::RST_STREAM, 0, 1, b"\0\0\x08"),
            Connection(E::FRAME_SIZE_ERROR),
        ),
        (
            "RST_STREAM on stream 0",
            raw(kind::RST_STREAM, 0, 0, b"\0\0\0\x08"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "SETTINGS on a stream",
            raw(kind::SETTINGS, 0, 1, b""),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "SETTINGS of 5 bytes",
            raw(kind::SETTINGS, 0, 0, b"\0\x01\0\0\0"),
            Connection(E::FRAME_SIZE_ERROR),
        ),
        (
            "a SETTINGS ack with a payload",
            raw(kind::SETTINGS, flag::ACK, 0, b"\0\x01\0\0\0\0"),
            Connection(E::FRAME_SIZE_ERROR),
        ),
        (
            "ENABLE_PUSH 2",
            raw(kind::SETTINGS, 0, 0, b"\0\x02\0\0\0\x02"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "INITIAL_WINDOW_SIZE 2^31",
            raw(kind::SETTINGS, 0, 0, b"\0\x04\x80\0\0\0"),
            Connection(E::FLOW_CONTROL_ERROR),
        ),
        (
            "MAX_FRAME_SIZE 16383",
            raw(kind::SETTINGS, 0, 0, b"\0\x05\0\0\x3f\xff"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "MAX_FRAME_SIZE 2^24",
            raw(kind::SETTINGS, 0, 0, b"\0\x05\x01\0\0\0"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "PUSH_PROMISE too short",
            raw(kind::PUSH_PROMISE, 0, 1, b"\0\0"),
            Connection(E::FRAME_SIZE_ERROR),
        ),
        (
            "PING of 7 bytes",
            raw(kind::PING, 0, 0, b"1234567"),
            Connection(E::FRAME_SIZE_ERROR),
        ),
        (
            "PING on a stream",
            raw(kind::PING, 0, 1, b"12345678"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "GOAWAY of 7 bytes",
            raw(kind::GOAWAY, 0, 0, b"\0\0\0\0\0\0\0"),
            Connection(E::FRAME_SIZE_ERROR),
        ),
        (
            "GOAWAY on a stream",
            raw(kind::GOAWAY, 0, 3, b"\0\0\0\0\0\0\0\0"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "WINDOW_UPDATE of 0 on the connection",
            raw(kind::WINDOW_UPDATE, 0, 0, b"\0\0\0\0"),
            Connection(E::PROTOCOL_ERROR),
        ),
        (
            "WINDOW_UPDATE of 0 on a stream",
            raw(kind::WINDOW_UPDATE, 0, 9, b"\0\0\0\0"),
            Stream(9, E::PROTOCOL_ERROR),
        ),
        (
            "WINDOW_UPDATE of 3 bytes",
            raw(kind::WINDOW_UPDATE, 0, 0, b"\0\0\x01"),
            Connection(E::FRAME_SIZE_ERROR),
        ),
        (
            "CONTINUATION on stream 0",
            raw(kind::CONTINUATION, 0, 0, b"\x82"),
            Connection(E::PROTOCOL_ERROR),
        ),
    ];
    for (what, bytes, expected) in cases {
        match read_one(bytes) {
            Err(error) => assert!(
                match (error, &expected) {
                    (FrameError::Connection { code, .. }, Connection(want)) => code == *want,
                    (FrameError::Stream { code, stream, .. }, Stream(id, want)) => {
                        code == *want && stream == *id
                    }
                    _ => false,
                },
                "{what}: {error}, not {expected:?}"
            ),
            Ok(frame) => panic!("{what}: accepted as {frame:?}"),
        }
    }
    // What must pass: padding that leaves an empty payload, unknown types
    // and settings, the reserved bit of a stream identifier.
    assert!(
        matches!(read_one(raw(kind::DATA, flag::PADDED, 1, b"\x03abc")), Ok(Frame::Data { data, .. }) if data.is_empty())
    );
    assert_eq!(
        read_one(raw(0xfa, 0xff, 3, b"whatever")),
        Ok(Frame::Unknown {
            kind: 0xfa,
            stream: 3
        })
    );
    assert_eq!(
        read_one(raw(kind::SETTINGS, 0, 0, b"\0\x99\0\0\0\x07")),
        Ok(Frame::Settings(vec![Setting::Unknown(0x99, 7)]))
    );
    assert_eq!(
        read_one(raw(kind::RST_STREAM, 0, 0x8000_0001, b"\0\0\0\x08")),
        Ok(Frame::RstStream {
            stream: 1,
            code: ErrorCode::CANCEL
        })
    );
}

#[test]
fn frames_are_read_only_once_whole_and_never_past_the_size_limit() {
    let mut src = BytesMut::new();
    src.extend_from_slice(&raw(kind::PING, 0, 0, b"12345678"));
    src.extend_from_slice(&raw(kind::DATA, flag::END_STREAM, 1, &[7; 100]));
    let whole = src.clone();
    // Byte by byte: nothing until a frame is whole, then exactly it.
    let mut partial = BytesMut::new();
    let mut frames = Vec::new();
    for byte in whole.iter() {
        partial.put_u8(*byte);
        while let Some(frame) = Frame::read(&mut partial, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            frames.push(frame);
        }
    }
    assert!(partial.is_empty());
    assert_eq!(frames.len(), 2);
    assert!(matches!(&frames[0], Frame::Ping { ack: false, payload } if payload == b"12345678"));
    assert!(
        matches!(&frames[1], Frame::Data { stream: 1, data, end_stream: true, .. } if data.len() == 100)
    );
    // Longer than our limit: refused from its header alone.
    let mut big = raw(kind::DATA, 0, 1, &[0; 100]);
    big.truncate(HEADER_LEN);
    assert!(matches!(
        Frame::read(&mut big, 99),
        Err(FrameError::Connection {
            code: ErrorCode::FRAME_SIZE_ERROR,
            ..
        })
    ));
}

#[test]
fn a_long_header_block_goes_out_as_headers_and_continuations() {
    let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut dst = BytesMut::new();
    write_headers(5, &block, true, DEFAULT_MAX_FRAME_SIZE, &mut dst);
    let mut frames = Vec::new();
    while let Some(frame) = Frame::read(&mut dst, DEFAULT_MAX_FRAME_SIZE).unwrap() {
        frames.push(frame);
    }
    let mut joined = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let last = i == frames.len() - 1;
        match frame {
            Frame::Headers {
                stream: 5,
                block,
                end_stream: true,
                end_headers,
                priority: None,
            } if i == 0 => {
                assert_eq!(*end_headers, last);
                joined.extend_from_slice(block);
            }
            Frame::Continuation {
                stream: 5,
                block,
                end_headers,
            } if i > 0 => {
                assert_eq!(*end_headers, last);
                joined.extend_from_slice(block);
            }
            other => panic!("frame {i}: {other:?}"),
        }
    }
    assert_eq!(frames.len(), 3);
    assert_eq!(joined, block);
    // A short block, and an empty one, in one HEADERS frame.
    for len in [0, 10] {
        let mut dst = BytesMut::new();
        write_headers(1, &block[..len], false, DEFAULT_MAX_FRAME_SIZE, &mut dst);
        assert!(matches!(
            Frame::read(&mut dst, DEFAULT_MAX_FRAME_SIZE),
            Ok(Some(Frame::Headers { end_headers: true, end_stream: false, block, .. })) if block.len() == len
        ));
    }
}

#[test]
fn a_block_encoded_in_place_is_framed_as_one_copied_in() {
    let block: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
    for len in [0, 10, DEFAULT_MAX_FRAME_SIZE as usize, 16_385, 40_000] {
        for end_stream in [false, true] {
            // Behind a frame already in the buffer, as in a connection's output.
            let mut copied = BytesMut::from(&b"earlier"[..]);
            write_headers(
                3,
                &block[..len],
                end_stream,
                DEFAULT_MAX_FRAME_SIZE,
                &mut copied,
            );
            let mut in_place = BytesMut::from(&b"earlier"[..]);
            write_headers_with(
                3,
                end_stream,
                DEFAULT_MAX_FRAME_SIZE,
                &mut in_place,
                |dst| dst.extend_from_slice(&block[..len]),
            );
            assert_eq!(in_place, copied, "{len} bytes, end_stream {end_stream}");
        }
    }
}

fn arb_stream() -> impl Strategy<Value = StreamId> {
    1..=MAX_WINDOW
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_priority(stream: StreamId) -> impl Strategy<Value = Priority> {
    (0..=MAX_WINDOW, any::<bool>(), any::<u8>())
        .prop_filter("not on itself", move |(d, _, _)| *d != stream)
        .prop_map(|(depends_on, exclusive, weight)| Priority {
            depends_on,
            exclusive,
            weight,
        })
}

fn arb_setting() -> impl Strategy<Value = Setting> {
    prop_oneof![
        any::<u32>().prop_map(Setting::HeaderTableSize),
        any::<bool>().prop_map(Setting::EnablePush),
        any::<u32>().prop_map(Setting::MaxConcurrentStreams),
        (0..=MAX_WINDOW).prop_map(Setting::InitialWindowSize),
        (DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).prop_map(Setting::MaxFrameSize),
        any::<u32>().prop_map(Setting::MaxHeaderListSize),
        (7u16.., any::<u32>()).prop_map(|(id, v)| Setting::Unknown(id, v)),
    ]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (arb_stream(), arb_bytes(300), any::<bool>()).prop_map(|(stream, data, end_stream)| {
            Frame::Data {
                stream,
                flow_len: data.len() as u32,
                data,
                end_stream,
            }
        }),
        arb_stream()
            .prop_flat_map(|stream| (
                Just(stream),
                arb_bytes(300),
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(arb_priority(stream)),
            ))
            .prop_map(
                |(stream, block, end_stream, end_headers, priority)| Frame::Headers {
                    stream,
                    block,
                    end_stream,
                    end_headers,
                    priority,
                }
            ),
        arb_stream()
            .prop_flat_map(|stream| (Just(stream), arb_priority(stream)))
            .prop_map(|(stream, priority)| Frame::Priority { stream, priority }),
        (arb_stream(), any::<u32>()).prop_map(|(stream, code)| Frame::RstStream {
            stream,
            code: ErrorCode(code)
        }),
        proptest::collection::vec(arb_setting(), 0..8).prop_map(Frame::Settings),
        Just(Frame::SettingsAck),
        (arb_stream(), arb_stream(), arb_bytes(100), any::<bool>()).prop_map(
            |(stream, promised, block, end_headers)| {
                Frame::PushPromise {
                    stream,
                    promised,
                    block,
                    end_headers,
                }
            }
        ),
        (any::<bool>(), any::<[u8; 8]>()).prop_map(|(ack, payload)| Frame::Ping { ack, payload }),
        (0..=MAX_WINDOW, any::<u32>(), arb_bytes(50)).prop_map(|(last_stream, code, debug)| {
            Frame::GoAway {
                last_stream,
                code: ErrorCode(code),
                debug,
            }
        }),
        (0..=MAX_WINDOW, 1..=MAX_WINDOW)
            .prop_map(|(stream, increment)| Frame::WindowUpdate { stream, increment }),
        (arb_stream(), arb_bytes(300), any::<bool>()).prop_map(|(stream, block, end_headers)| {
            Frame::Continuation {
                stream,
                block,
                end_headers,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn every_frame_reads_back_as_written(frames in proptest::collection::vec(arb_frame(), 1..8)) {
        let mut dst = BytesMut::new();
        for frame in &frames {
            frame.write(&mut dst);
        }
        for frame in &frames {
            let read = Frame::read(&mut dst, DEFAULT_MAX_FRAME_SIZE).unwrap();
            prop_assert_eq!(read.as_ref(), Some(frame));
        }
        prop_assert!(dst.is_empty());
    }

    #[test]
    fn any_bytes_read_as_frames_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut src = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = Frame::read(&mut src, DEFAULT_MAX_FRAME_SIZE) {}
    }
}
