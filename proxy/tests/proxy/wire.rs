//! `mesh_proxy::wire` against a real HTTP/2 peer, h2, over real sockets:
//! the frame and HPACK codecs read what h2 writes (Huffman, dynamic table
//! references, CONTINUATION, never-indexed fields) and write what h2
//! understands; the connection state machine serves h2's client and is a
//! client of h2's server, with bodies past every flow-control window,
//! trailers, trailers-only answers, resets and GOAWAY.

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request};
use mesh_proxy::wire::{
    conn::{Config, Connection, Event, Role},
    frame::{self, ErrorCode, Frame, Setting},
    hpack::{Decoder, Encoder, Field},
    message,
};
use std::time::Duration;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A request as the server side saw it.
#[derive(Debug)]
struct Seen {
    stream: u32,
    fields: Vec<Field>,
    body: Vec<u8>,
}

/// The server side of one connection, on nothing but the codecs.
struct Server {
    socket: TcpStream,
    read: BytesMut,
    decoder: Decoder,
    encoder: Encoder,
}

impl Server {
    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(frame) = Frame::read(&mut self.read, frame::DEFAULT_MAX_FRAME_SIZE).unwrap()
            {
                return frame;
            }
            let n = self.socket.read_buf(&mut self.read).await.unwrap();
            assert!(n > 0, "the client closed the connection");
        }
    }

    async fn accept(socket: TcpStream) -> Self {
        let mut server = Self {
            socket,
            read: BytesMut::new(),
            decoder: Decoder::new(4096),
            encoder: Encoder::default(),
        };
        while server.read.len() < frame::PREFACE.len() {
            server.socket.read_buf(&mut server.read).await.unwrap();
        }
        assert_eq!(
            &server.read.split_to(frame::PREFACE.len())[..],
            frame::PREFACE
        );
        let mut out = BytesMut::new();
        Frame::Settings(vec![
            Setting::MaxConcurrentStreams(10),
            Setting::EnablePush(false),
        ])
        .write(&mut out);
        server.socket.write_all(&out).await.unwrap();
        server
    }

    /// Reads until a request is whole, answering SETTINGS on the way.
    async fn request(&mut self) -> Seen {
        let mut block = BytesMut::new();
        let mut seen: Option<Seen> = None;
        loop {
            match self.frame().await {
                Frame::Settings(_) => {
                    let mut out = BytesMut::new();
                    Frame::SettingsAck.write(&mut out);
                    self.socket.write_all(&out).await.unwrap();
                }
                Frame::Headers {
                    stream,
                    block: part,
                    end_stream,
                    end_headers,
                    ..
                } => {
                    assert!(!end_stream, "the requests carry a body");
                    block.extend_from_slice(&part);
                    seen = Some(Seen {
                        stream,
                        fields: Vec::new(),
                        body: Vec::new(),
                    });
                    if end_headers {
                        self.decode(&mut block, seen.as_mut().unwrap());
                    }
                }
                Frame::Continuation {
                    block: part,
                    end_headers,
                    ..
                } => {
                    block.extend_from_slice(&part);
                    if end_headers {
                        self.decode(&mut block, seen.as_mut().unwrap());
                    }
                }
                Frame::Data {
                    data, end_stream, ..
                } => {
                    let request = seen.as_mut().expect("DATA after HEADERS");
                    request.body.extend_from_slice(&data);
                    if end_stream {
                        return seen.unwrap();
                    }
                }
                // WINDOW_UPDATE, PING, SETTINGS acks: nothing to do here.
                _ => {}
            }
        }
    }

    fn decode(&mut self, block: &mut BytesMut, seen: &mut Seen) {
        let block = block.split().freeze();
        let decoded = self
            .decoder
            .decode(&block, 1 << 20, &mut seen.fields)
            .unwrap();
        assert!(!decoded.over_limit);
    }

    async fn respond(&mut self, stream: u32, headers: &[Field], body: &[u8], trailers: &[Field]) {
        let mut out = BytesMut::new();
        let mut block = BytesMut::new();
        self.encoder.encode(headers, &mut block);
        frame::write_headers(
            stream,
            &block,
            false,
            frame::DEFAULT_MAX_FRAME_SIZE,
            &mut out,
        );
        Frame::Data {
            stream,
            data: Bytes::copy_from_slice(body),
            end_stream: false,
            flow_len: body.len() as u32,
        }
        .write(&mut out);
        let mut block = BytesMut::new();
        self.encoder.encode(trailers, &mut block);
        frame::write_headers(
            stream,
            &block,
            true,
            frame::DEFAULT_MAX_FRAME_SIZE,
            &mut out,
        );
        self.socket.write_all(&out).await.unwrap();
    }
}

fn value<'a>(fields: &'a [Field], name: &str) -> Option<&'a Field> {
    fields.iter().find(|f| f.name == name.as_bytes())
}

#[tokio::test]
async fn h2_and_the_codecs_understand_each_other_both_ways() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Longer than one frame: h2 and our encoder must both continue it.
    let long = "x".repeat(20_000);

    let server = {
        let long = long.clone();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut server = Server::accept(socket).await;
            for call in 0..2 {
                let seen = server.request().await;
                // What h2 sends is a well-formed request.
                let head = message::request(&seen.fields).unwrap();
                assert_eq!(head.method, "POST");
                let get = |name| value(&seen.fields, name).map(|f| f.value.clone());
                assert_eq!(get(":method").as_deref(), Some(&b"POST"[..]));
                assert_eq!(
                    get(":path").as_deref(),
                    Some(&b"/stockdata.StockData/Get"[..])
                );
                assert_eq!(
                    get(":authority").as_deref(),
                    Some(&format!("{addr}").into_bytes()[..])
                );
                assert_eq!(
                    get("content-type").as_deref(),
                    Some(&b"application/grpc"[..])
                );
                assert_eq!(get("x-long").as_deref(), Some(long.as_bytes()));
                let secret = value(&seen.fields, "authorization").unwrap();
                assert!(
                    secret.never_index,
                    "h2 sends a sensitive value never indexed"
                );
                assert_eq!(seen.body, format!("call {call}").as_bytes());
                server
                    .respond(
                        seen.stream,
                        &[
                            Field::new(":status", "200"),
                            Field::new("content-type", "application/grpc"),
                            Field::new("x-long", long.clone()),
                            Field::new("x-call", format!("{call}")),
                        ],
                        format!("answer {call}").as_bytes(),
                        &[
                            Field::new("grpc-status", "0"),
                            Field::new("grpc-message", "fine"),
                        ],
                    )
                    .await;
            }
        })
    };

    let socket = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(connection);
    let mut client = client;
    for call in 0..2 {
        client = client.ready().await.unwrap();
        let mut secret = HeaderValue::from_static("Bearer not-to-be-indexed");
        secret.set_sensitive(true);
        let request = Request::post(format!("http://{addr}/stockdata.StockData/Get"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-long", long.as_str())
            .header("authorization", secret)
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(Bytes::from(format!("call {call}")), true)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-long"], long.as_str());
        assert_eq!(response.headers()["x-call"], format!("{call}").as_str());
        let mut body = response.into_body();
        let data = body.data().await.unwrap().unwrap();
        assert_eq!(data, format!("answer {call}").as_bytes());
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "fine");
    }
    server.await.unwrap();
}

/// Writes what the connection has to say, then reads once and feeds it;
/// false when the peer has closed.
async fn exchange(
    socket: &mut TcpStream,
    connection: &mut Connection,
    read: &mut BytesMut,
) -> bool {
    let out = connection.output().split();
    if !out.is_empty() {
        socket.write_all(&out).await.unwrap();
    }
    let n = socket.read_buf(read).await.unwrap();
    if n == 0 {
        return false;
    }
    connection.receive(read).unwrap();
    true
}

fn big_body(seed: u8) -> Bytes {
    (0..1_000_000u32)
        .map(|i| (i as u8).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn an_h2_client_and_our_connection_stream_bodies_past_every_window() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The server echoes each request's body as it arrives, then trailers.
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut connection = Connection::new(Role::Server, Config::default());
        let mut read = BytesMut::new();
        let mut served = 0;
        while exchange(&mut socket, &mut connection, &mut read).await {
            while let Some(event) = connection.event() {
                match event {
                    Event::Headers {
                        stream,
                        fields,
                        trailers: false,
                        ..
                    } => {
                        assert_eq!(value(&fields, ":path").unwrap().value, "/echo");
                        connection
                            .send_headers(stream, vec![Field::new(":status", "200")], false)
                            .unwrap();
                    }
                    Event::Data {
                        stream,
                        data,
                        end_stream,
                    } => {
                        connection.release(stream, data.len());
                        connection.send_data(stream, data, false).unwrap();
                        if end_stream {
                            connection
                                .send_headers(stream, vec![Field::new("grpc-status", "0")], true)
                                .unwrap();
                            served += 1;
                        }
                    }
                    // The client's goodbye, when it is dropped.
                    Event::GoAway { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        served
    });

    let socket = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(connection);
    let mut client = client;
    for call in 0..2u8 {
        client = client.ready().await.unwrap();
        let request = Request::post(format!("http://{addr}/echo"))
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        let body = big_body(call);
        send.send_data(body.clone(), true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut received = response.into_body();
        let mut echoed = Vec::new();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), received.data())
            .await
            .unwrap()
        {
            let chunk = chunk.unwrap();
            received
                .flow_control()
                .release_capacity(chunk.len())
                .unwrap();
            echoed.extend_from_slice(&chunk);
        }
        assert!(
            echoed == body,
            "the body came back whole ({} of {} bytes)",
            echoed.len(),
            body.len()
        );
        let trailers = received.trailers().await.unwrap().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
    }
    drop(client);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn our_connection_as_a_client_of_an_h2_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // h2's server reads the request body, then answers another body, a
    // reset, or trailers only, by path.
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut connection = h2::server::handshake(socket).await.unwrap();
        // Each request in its own task: accept() drives the connection.
        while let Some(request) = connection.accept().await {
            let (request, respond) = request.unwrap();
            tokio::spawn(answer(request, respond));
        }
    });

    async fn answer(
        request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        {
            let path = request.uri().path().to_owned();
            let mut body = request.into_body();
            let mut length = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                length += chunk.len();
            }
            match path.as_str() {
                "/reset" => respond.send_reset(h2::Reason::REFUSED_STREAM),
                "/trailers-only" => {
                    let response = http::Response::builder()
                        .header("grpc-status", "5")
                        .body(())
                        .unwrap();
                    respond.send_response(response, true).unwrap();
                }
                _ => {
                    let response = http::Response::builder()
                        .header("x-received", length.to_string())
                        .body(())
                        .unwrap();
                    let mut send = respond.send_response(response, false).unwrap();
                    send.send_data(big_body(9), false).unwrap();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    send.send_trailers(trailers).unwrap();
                }
            }
        }
    }

    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut connection = Connection::new(Role::Client, Config::default());
    let mut read = BytesMut::new();
    let head = |path: &str| {
        vec![
            Field::new(":method", "POST"),
            Field::new(":scheme", "http"),
            Field::new(":path", path.to_owned()),
            Field::new(":authority", addr.to_string()),
        ]
    };
    let echo = connection.open(&head("/echo"), false).unwrap();
    connection.send_data(echo, big_body(1), true).unwrap();
    let reset = connection.open(&head("/reset"), true).unwrap();
    let trailers_only = connection.open(&head("/trailers-only"), true).unwrap();

    let mut body = Vec::new();
    let (mut echo_done, mut reset_seen, mut trailers_only_seen) = (false, false, false);
    while !(echo_done && reset_seen && trailers_only_seen) {
        assert!(
            tokio::time::timeout(
                Duration::from_secs(10),
                exchange(&mut socket, &mut connection, &mut read)
            )
            .await
            .expect("the server answers"),
            "the server closed early"
        );
        while let Some(event) = connection.event() {
            match event {
                Event::Headers {
                    stream,
                    fields,
                    trailers: false,
                    end_stream: false,
                    ..
                } if stream == echo => {
                    assert_eq!(message::response(&fields).unwrap().status, 200);
                    assert_eq!(value(&fields, "x-received").unwrap().value, "1000000");
                }
                Event::Data { stream, data, .. } if stream == echo => {
                    connection.release(stream, data.len());
                    body.extend_from_slice(&data);
                }
                Event::Headers {
                    stream,
                    fields,
                    trailers: true,
                    end_stream: true,
                    ..
                } if stream == echo => {
                    assert_eq!(value(&fields, "grpc-status").unwrap().value, "0");
                    message::trailers(&fields).unwrap();
                    echo_done = true;
                }
                Event::Reset { stream, code } if stream == reset => {
                    assert_eq!(code, ErrorCode::REFUSED_STREAM);
                    reset_seen = true;
                }
                Event::Headers {
                    stream,
                    fields,
                    trailers: false,
                    end_stream: true,
                    ..
                } if stream == trailers_only => {
                    assert_eq!(value(&fields, "grpc-status").unwrap().value, "5");
                    trailers_only_seen = true;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(
        body == big_body(9),
        "the response body whole ({} bytes)",
        body.len()
    );
    assert_eq!(connection.open_streams(), 0);
    // A GOAWAY of ours ends the server's accept loop once it is read.
    connection.go_away(ErrorCode::NO_ERROR);
    socket
        .write_all(&connection.output().split())
        .await
        .unwrap();
    drop(socket);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}
