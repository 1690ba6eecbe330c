//! Two connections of ours talking (bodies past every window, trailers,
//! resets, GOAWAY), and a server fed frames no peer should send.

use super::*;

fn fields(list: &[(&str, &str)]) -> Vec<Field> {
    list.iter()
        .map(|(n, v)| Field::new(n.to_string(), v.to_string()))
        .collect()
}

fn request() -> Vec<Field> {
    fields(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/stockdata.StockData/Get"),
        (":authority", "stockdata:8080"),
        ("content-type", "application/grpc"),
    ])
}

/// Moves what each side wrote to the other until neither writes more;
/// returns the events each side saw, data released as it arrives unless
/// `hold` says not to.
struct Pair {
    client: Connection,
    server: Connection,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
    hold_server_data: bool,
}

impl Pair {
    fn new(client: Config, server: Config) -> Self {
        let mut pair = Self {
            client: Connection::new(Role::Client, client),
            server: Connection::new(Role::Server, server),
            client_events: Vec::new(),
            server_events: Vec::new(),
            hold_server_data: false,
        };
        pair.pump();
        pair
    }

    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut to_server = self.client.output().split();
            let mut to_client = self.server.output().split();
            if to_server.is_empty() && to_client.is_empty() {
                return;
            }
            self.server.receive(&mut to_server).unwrap();
            assert!(to_server.is_empty());
            self.client.receive(&mut to_client).unwrap();
            assert!(to_client.is_empty());
            while let Some(event) = self.server.event() {
                if let Event::Data { stream, data, .. } = &event
                    && !self.hold_server_data
                {
                    self.server.release(*stream, data.len());
                }
                self.server_events.push(event);
            }
            while let Some(event) = self.client.event() {
                if let Event::Data { stream, data, .. } = &event {
                    self.client.release(*stream, data.len());
                }
                self.client_events.push(event);
            }
        }
        panic!("the two sides never went quiet");
    }
}

fn body_of(events: &[Event], of: StreamId) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    let mut ended = false;
    for event in events {
        match event {
            Event::Data {
                stream,
                data,
                end_stream,
            } if *stream == of => {
                assert!(!ended, "data after the end");
                body.extend_from_slice(data);
                ended |= end_stream;
            }
            Event::Headers {
                stream, end_stream, ..
            } if *stream == of => ended |= end_stream,
            _ => {}
        }
    }
    (body, ended)
}

#[test]
fn bodies_larger_than_every_window_pass_both_ways_with_trailers() {
    let mut pair = Pair::new(Config::default(), Config::default());
    let request_body: Bytes = (0..1_000_000u32)
        .map(|i| i as u8)
        .collect::<Vec<u8>>()
        .into();
    let stream = pair.client.open(&request(), false).unwrap();
    pair.client
        .send_data(stream, request_body.clone(), true)
        .unwrap();
    // Most of it waits for windows until the server reads.
    assert!(pair.client.queued(stream) > 900_000);
    pair.pump();
    assert_eq!(pair.client.queued(stream), 0);
    assert!(
        matches!(&pair.server_events[0], Event::Headers { fields, trailers: false, end_stream: false, .. } if *fields == request())
    );
    assert_eq!(
        body_of(&pair.server_events, stream),
        (request_body.to_vec(), true)
    );

    let response_body: Bytes = vec![7u8; 300_000].into();
    pair.server
        .send_headers(stream, fields(&[(":status", "200")]), false)
        .unwrap();
    pair.server
        .send_data(stream, response_body.clone(), false)
        .unwrap();
    pair.server
        .send_headers(stream, fields(&[("grpc-status", "0")]), true)
        .unwrap();
    pair.pump();
    assert_eq!(
        body_of(&pair.client_events, stream),
        (response_body.to_vec(), true)
    );
    let trailers = pair.client_events.last().unwrap();
    assert!(
        matches!(trailers, Event::Headers { trailers: true, end_stream: true, fields, .. } if *fields == [Field::new("grpc-status", "0")])
    );
    assert!(!pair.client.is_open(stream) && !pair.server.is_open(stream));
    assert_eq!(
        (pair.client.open_streams(), pair.server.open_streams()),
        (0, 0)
    );
}

#[test]
fn a_reader_that_does_not_release_stalls_its_peer_at_the_window() {
    let mut pair = Pair::new(Config::default(), Config::default());
    pair.hold_server_data = true;
    let stream = pair.client.open(&request(), false).unwrap();
    pair.client
        .send_data(stream, vec![1u8; 200_000].into(), true)
        .unwrap();
    pair.pump();
    // Exactly one stream window (and connection window) went through.
    let (received, ended) = body_of(&pair.server_events, stream);
    assert_eq!((received.len(), ended), (DEFAULT_WINDOW as usize, false));
    assert_eq!(
        pair.client.queued(stream),
        200_000 - DEFAULT_WINDOW as usize
    );
    // Released, the rest follows.
    pair.server.release(stream, received.len());
    pair.hold_server_data = false;
    pair.pump();
    assert_eq!(body_of(&pair.server_events, stream).0.len(), 200_000);
}

#[test]
fn streams_share_the_connection_window_in_turn() {
    let mut pair = Pair::new(
        Config::default(),
        Config {
            stream_window: 1 << 20,
            ..Config::default()
        },
    );
    pair.hold_server_data = true;
    let one = pair.client.open(&request(), false).unwrap();
    let two = pair.client.open(&request(), false).unwrap();
    pair.client
        .send_data(one, vec![1u8; 100_000].into(), true)
        .unwrap();
    pair.client
        .send_data(two, vec![2u8; 100_000].into(), true)
        .unwrap();
    pair.pump();
    // The first took the connection's whole window as it queued.
    let received = |pair: &Pair, stream| body_of(&pair.server_events, stream).0.len();
    assert_eq!(
        (received(&pair, one), received(&pair, two)),
        (DEFAULT_WINDOW as usize, 0)
    );
    // The window given back goes out a frame from each in turn.
    pair.server.release(one, DEFAULT_WINDOW as usize);
    pair.pump();
    let (a, b) = (received(&pair, one), received(&pair, two));
    assert_eq!(a + b, 2 * DEFAULT_WINDOW as usize);
    assert!(
        b >= 16_384 && a - DEFAULT_WINDOW as usize >= 16_384,
        "each got a share: {a} and {b}"
    );
}

#[test]
fn resets_go_both_ways_and_late_frames_of_a_reset_stream_are_dropped() {
    let mut pair = Pair::new(Config::default(), Config::default());
    let stream = pair.client.open(&request(), false).unwrap();
    pair.pump();
    // The server answers while the client resets: the answer crosses the
    // reset and is dropped, not treated as an error.
    pair.server
        .send_headers(stream, fields(&[(":status", "200")]), false)
        .unwrap();
    pair.server
        .send_data(stream, vec![0u8; 10].into(), false)
        .unwrap();
    pair.client.reset(stream, ErrorCode::CANCEL);
    pair.pump();
    assert!(pair.server_events.contains(&Event::Reset {
        stream,
        code: ErrorCode::CANCEL
    }));
    assert!(
        !pair
            .client_events
            .iter()
            .any(|e| matches!(e, Event::Data { .. }))
    );
    assert_eq!(
        (pair.client.open_streams(), pair.server.open_streams()),
        (0, 0)
    );
    assert_eq!(
        pair.client.send_data(stream, Bytes::new(), true),
        Err(SendError::NotOpen(stream))
    );

    // And from the server's side.
    let stream = pair.client.open(&request(), false).unwrap();
    pair.pump();
    pair.server.reset(stream, ErrorCode::REFUSED_STREAM);
    pair.pump();
    assert_eq!(
        pair.client_events.last(),
        Some(&Event::Reset {
            stream,
            code: ErrorCode::REFUSED_STREAM
        })
    );
}

#[test]
fn goaway_refuses_the_streams_past_its_last_and_new_ones() {
    let mut pair = Pair::new(Config::default(), Config::default());
    let first = pair.client.open(&request(), false).unwrap();
    pair.pump();
    pair.server.go_away(ErrorCode::NO_ERROR);
    // Opened before the GOAWAY arrives: the server will not take it.
    let second = pair.client.open(&request(), true).unwrap();
    pair.pump();
    assert!(pair.client_events.contains(&Event::Reset {
        stream: second,
        code: ErrorCode::REFUSED_STREAM
    }));
    assert!(
        pair.client_events
            .iter()
            .any(|e| matches!(e, Event::GoAway { last_stream, .. } if *last_stream == first))
    );
    assert_eq!(
        pair.client.open(&request(), true),
        Err(SendError::GoingAway)
    );
    assert!(!pair.client.can_open());
    // The first goes on to its end.
    pair.server
        .send_headers(first, fields(&[(":status", "200")]), true)
        .unwrap();
    pair.pump();
    assert!(
        matches!(pair.client_events.last(), Some(Event::Headers { stream, end_stream: true, .. }) if *stream == first)
    );
}

#[test]
fn a_graceful_goaway_takes_the_streams_sent_before_the_peer_saw_it() {
    let mut pair = Pair::new(Config::default(), Config::default());
    let first = pair.client.open(&request(), true).unwrap();
    pair.pump();
    pair.server.go_away_gracefully();
    assert!(!pair.server.goaway_sent());
    // On its way before the client read the GOAWAY: taken, not refused.
    let second = pair.client.open(&request(), true).unwrap();
    let mut to_server = pair.client.output().split();
    pair.server.receive(&mut to_server).unwrap();
    let mut to_client = pair.server.output().split();
    let (mut goaways, mut pings) = (Vec::new(), 0);
    let mut reader = to_client.clone();
    while let Some(frame) = Frame::read(&mut reader, DEFAULT_MAX_FRAME_SIZE).unwrap() {
        match frame {
            Frame::GoAway { last_stream, .. } => goaways.push(last_stream),
            Frame::Ping { ack: false, .. } => pings += 1,
            _ => {}
        }
    }
    assert_eq!((goaways, pings), (vec![MAX_WINDOW], 1));
    pair.client.receive(&mut to_client).unwrap();
    // The client answers the PING: then the last GOAWAY names the last
    // stream taken, and nothing after it is.
    pair.pump();
    assert!(pair.server.goaway_sent());
    let last = pair.client_events.iter().rev().find_map(|e| match e {
        Event::GoAway { last_stream, .. } => Some(*last_stream),
        _ => None,
    });
    assert_eq!(last, Some(second));
    let opened: Vec<StreamId> = pair
        .server_events
        .iter()
        .filter_map(|e| match e {
            Event::Headers { stream, .. } => Some(*stream),
            _ => None,
        })
        .collect();
    assert_eq!(opened, [first, second]);
    assert!(
        !pair
            .client_events
            .iter()
            .any(|e| matches!(e, Event::Reset { .. })),
        "{:?}",
        pair.client_events
    );
    assert_eq!(
        pair.client.open(&request(), true),
        Err(SendError::GoingAway)
    );
}

#[test]
fn the_peer_stream_limit_is_kept_both_ways() {
    let mut pair = Pair::new(
        Config::default(),
        Config {
            max_concurrent_streams: 1,
            ..Config::default()
        },
    );
    let first = pair.client.open(&request(), false).unwrap();
    assert!(!pair.client.can_open());
    assert_eq!(
        pair.client.open(&request(), false),
        Err(SendError::AtStreamLimit)
    );
    pair.client.reset(first, ErrorCode::CANCEL);
    assert!(pair.client.can_open());

    // A client that ignores the limit gets REFUSED_STREAM.
    let mut server = Connection::new(
        Role::Server,
        Config {
            max_concurrent_streams: 1,
            ..Config::default()
        },
    );
    let mut client = Connection::new(Role::Client, Config::default());
    client.peer_max_streams = u32::MAX;
    let a = client.open(&request(), false).unwrap();
    let b = client.open(&request(), false).unwrap();
    let mut bytes = client.output().split();
    bytes.extend_from_slice(&settings_frame());
    // The client's own SETTINGS are first in its output already.
    server.receive(&mut bytes).unwrap();
    let mut answer = server.output().split();
    let mut frames = Vec::new();
    while let Some(frame) = Frame::read(&mut answer, DEFAULT_MAX_FRAME_SIZE).unwrap() {
        frames.push(frame);
    }
    assert!(frames.contains(&Frame::RstStream {
        stream: b,
        code: ErrorCode::REFUSED_STREAM
    }));
    assert!(server.is_open(a) && !server.is_open(b));
}

fn settings_frame() -> BytesMut {
    let mut out = BytesMut::new();
    Frame::Settings(vec![]).write(&mut out);
    out
}

/// A server that has read a client's preface and settings.
fn server() -> Connection {
    server_with(Config::default())
}

fn server_with(config: Config) -> Connection {
    let mut server = Connection::new(Role::Server, config);
    let mut src = BytesMut::from(&frame::PREFACE[..]);
    Frame::Settings(vec![]).write(&mut src);
    server.receive(&mut src).unwrap();
    server.output().clear();
    server
}

fn frames(frames: &[Frame]) -> BytesMut {
    let mut out = BytesMut::new();
    for frame in frames {
        frame.write(&mut out);
    }
    out
}

fn head_block(fields: &[Field]) -> Bytes {
    let mut block = BytesMut::new();
    Encoder::default().encode(fields, &mut block);
    block.freeze()
}

fn headers(stream: StreamId, end_stream: bool) -> Frame {
    Frame::Headers {
        stream,
        block: head_block(&request()),
        end_stream,
        end_headers: true,
        priority: None,
    }
}

fn data(stream: StreamId, len: usize) -> Frame {
    Frame::Data {
        stream,
        data: vec![0; len].into(),
        end_stream: false,
        flow_len: len as u32,
    }
}

/// What the server wrote, as frames.
fn written(server: &mut Connection) -> Vec<Frame> {
    let mut out = server.output().split();
    let mut frames = Vec::new();
    while let Some(frame) = Frame::read(&mut out, frame::MAX_MAX_FRAME_SIZE).unwrap() {
        frames.push(frame);
    }
    frames
}

/// The bytes of DATA the server wrote.
fn data_written(server: &mut Connection) -> usize {
    written(server)
        .iter()
        .map(|f| match f {
            Frame::Data { data, .. } => data.len(),
            _ => 0,
        })
        .sum()
}

fn refused_with(input: &[Frame], code: ErrorCode) {
    let mut server = server();
    let result = server.receive(&mut frames(input));
    assert!(
        matches!(&result, Err(ConnError::Protocol { code: c, .. }) if *c == code),
        "{input:?}: {result:?}"
    );
    assert!(
        written(&mut server)
            .iter()
            .any(|f| matches!(f, Frame::GoAway { code: c, .. } if *c == code)),
        "a GOAWAY with {code:?}"
    );
}

fn reset_with(input: &[Frame], stream: StreamId, code: ErrorCode) {
    // A connection window large enough for a stream's to be the limit.
    let mut server = server_with(Config {
        connection_window: 1 << 20,
        ..Config::default()
    });
    server.receive(&mut frames(input)).unwrap();
    assert!(
        written(&mut server).contains(&Frame::RstStream { stream, code }),
        "{input:?}: RST_STREAM {code:?}"
    );
}

#[test]
fn what_breaks_the_protocol_ends_the_connection_with_the_rfcs_code() {
    use ErrorCode as E;
    refused_with(&[data(1, 1)], E::PROTOCOL_ERROR);
    refused_with(&[headers(2, false)], E::PROTOCOL_ERROR);
    refused_with(
        &[Frame::RstStream {
            stream: 5,
            code: E::CANCEL,
        }],
        E::PROTOCOL_ERROR,
    );
    refused_with(
        &[Frame::WindowUpdate {
            stream: 3,
            increment: 1,
        }],
        E::PROTOCOL_ERROR,
    );
    refused_with(
        &[
            Frame::Headers {
                stream: 1,
                block: head_block(&request()),
                end_stream: false,
                end_headers: false,
                priority: None,
            },
            data(1, 1),
        ],
        E::PROTOCOL_ERROR,
    );
    refused_with(
        &[Frame::Continuation {
            stream: 1,
            block: Bytes::new(),
            end_headers: true,
        }],
        E::PROTOCOL_ERROR,
    );
    refused_with(
        &[Frame::Headers {
            stream: 1,
            block: Bytes::from_static(b"\xff\xff\xff\xff\x0f"),
            end_stream: true,
            end_headers: true,
            priority: None,
        }],
        E::COMPRESSION_ERROR,
    );
    // Past the connection's window: two streams of 40,000 each.
    refused_with(
        &[
            headers(1, false),
            headers(3, false),
            data(1, 16_000),
            data(1, 16_000),
            data(1, 8_000),
            data(3, 16_000),
            data(3, 16_000),
            data(3, 8_000),
        ],
        E::FLOW_CONTROL_ERROR,
    );
    refused_with(
        &[Frame::WindowUpdate {
            stream: 0,
            increment: MAX_WINDOW,
        }],
        E::FLOW_CONTROL_ERROR,
    );
    refused_with(
        &[Frame::PushPromise {
            stream: 1,
            promised: 2,
            block: Bytes::new(),
            end_headers: true,
        }],
        E::PROTOCOL_ERROR,
    );

    // The first frame after the preface must be SETTINGS.
    let mut fresh = Connection::new(Role::Server, Config::default());
    let mut src = BytesMut::from(&frame::PREFACE[..]);
    Frame::Ping {
        ack: false,
        payload: [0; 8],
    }
    .write(&mut src);
    assert!(matches!(
        fresh.receive(&mut src),
        Err(ConnError::Protocol {
            code: E::PROTOCOL_ERROR,
            ..
        })
    ));
    let mut fresh = Connection::new(Role::Server, Config::default());
    assert_eq!(
        fresh.receive(&mut BytesMut::from(&b"GET / HTTP/1.1\r\n"[..])),
        Err(ConnError::Preface)
    );
    // And says so again: nothing more is read.
    assert_eq!(
        fresh.receive(&mut BytesMut::from(&frame::PREFACE[..])),
        Err(ConnError::Preface)
    );
    assert!(!fresh.can_open());
}

#[test]
fn what_breaks_one_stream_resets_that_stream_only() {
    use ErrorCode as E;
    // Trailers that do not end the stream.
    reset_with(
        &[headers(1, false), headers(1, false)],
        1,
        E::PROTOCOL_ERROR,
    );
    // Past a stream's window, not the connection's.
    let mut big_window = Vec::new();
    big_window.push(headers(1, false));
    for _ in 0..4 {
        big_window.push(data(1, 16_384));
    }
    reset_with(&big_window, 1, E::FLOW_CONTROL_ERROR);
    // DATA after the stream's end.
    reset_with(&[headers(1, true), data(1, 1)], 1, E::STREAM_CLOSED);
    // A stream's window past 2^31-1.
    reset_with(
        &[
            headers(1, false),
            Frame::WindowUpdate {
                stream: 1,
                increment: MAX_WINDOW,
            },
        ],
        1,
        E::FLOW_CONTROL_ERROR,
    );
    // A stream that depends on itself: its block is still decoded, so the
    // next block, which refers to the table, decodes too.
    let mut server = server();
    let mut encoder = Encoder::default();
    let mut block = |fields: &[Field]| {
        let mut out = BytesMut::new();
        encoder.encode(fields, &mut out);
        out.freeze()
    };
    let on_itself = Frame::Headers {
        stream: 1,
        block: block(&request()),
        end_stream: true,
        end_headers: true,
        priority: Some(frame::Priority {
            depends_on: 1,
            exclusive: false,
            weight: 1,
        }),
    };
    let next = Frame::Headers {
        stream: 3,
        block: block(&request()),
        end_stream: true,
        end_headers: true,
        priority: None,
    };
    server.receive(&mut frames(&[on_itself, next])).unwrap();
    assert!(written(&mut server).contains(&Frame::RstStream {
        stream: 1,
        code: E::PROTOCOL_ERROR
    }));
    let events: Vec<Event> = std::iter::from_fn(|| server.event()).collect();
    assert!(
        matches!(&events[..], [Event::Headers { stream: 3, fields, .. }] if *fields == request()),
        "{events:?}"
    );
    // And the connection goes on.
    let mut server = self::server();
    server
        .receive(&mut frames(&[
            headers(1, false),
            headers(1, false),
            headers(3, true),
        ]))
        .unwrap();
    assert!(server.is_open(3));
}

#[test]
fn pings_are_answered_and_settings_acknowledged_and_applied() {
    let mut server = server();
    server
        .receive(&mut frames(&[
            Frame::Ping {
                ack: false,
                payload: *b"12345678",
            },
            Frame::Settings(vec![
                Setting::MaxFrameSize(20_000),
                Setting::InitialWindowSize(10),
            ]),
            headers(1, false),
        ]))
        .unwrap();
    let out = written(&mut server);
    assert_eq!(
        out[0],
        Frame::Ping {
            ack: true,
            payload: *b"12345678"
        }
    );
    assert_eq!(out[1], Frame::SettingsAck);
    // The peer's new initial window (10) holds our response data back.
    server
        .send_headers(1, fields(&[(":status", "200")]), false)
        .unwrap();
    server.send_data(1, vec![9u8; 25].into(), true).unwrap();
    let sent = data_written(&mut server);
    assert_eq!((sent, server.queued(1)), (10, 15));
    // Lowering it below what is in flight makes the window negative.
    server
        .receive(&mut frames(&[
            Frame::Settings(vec![Setting::InitialWindowSize(0)]),
            Frame::WindowUpdate {
                stream: 1,
                increment: 12,
            },
        ]))
        .unwrap();
    let sent = data_written(&mut server);
    assert_eq!(
        (sent, server.queued(1)),
        (2, 13),
        "12 - 10 = 2 bytes of window"
    );
}
