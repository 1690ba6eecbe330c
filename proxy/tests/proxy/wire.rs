//! The frame and HPACK codecs (`mesh_proxy::wire`) against a real HTTP/2
//! peer, h2's client, over a real socket: what h2 writes (Huffman, dynamic
//! table references, CONTINUATION, never-indexed fields) is read, and what
//! the codecs write (the same, the other way) is understood by h2.

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request};
use mesh_proxy::wire::{
    frame::{self, Frame, Setting},
    hpack::{Decoder, Encoder, Field},
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
