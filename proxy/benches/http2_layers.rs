//! One unary gRPC call's HTTP/2 protocol work, both ends, in memory: on
//! `wire::conn` (two connections of ours, bytes handed across) against h2
//! (a client and a server over an in-memory pipe, on one thread, as the
//! proxy runs it). No sockets and no proxy logic: what the protocol layer
//! alone costs per call, the part issue 22's profile puts in h2.
//! `cargo bench -p mesh-proxy --bench http2_layers`.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use mesh_proxy::wire::{
    conn::{Config, Connection, Event, Role},
    hpack::Field,
};
use std::hint::black_box;

/// A gRPC message: the 5-byte prefix and a small protobuf.
fn message() -> Bytes {
    let mut out = vec![0, 0, 0, 0, 20];
    out.extend_from_slice(b"\x0a\x04ACME\x10\x01\x18\x02\x22\x08stockdat");
    out.into()
}

fn request_head() -> Vec<Field> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/stockdata.StockData/Get"),
        (":authority", "stockdata:8080"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "4999m"),
        ("user-agent", "grpc-dotnet/2.59.0"),
    ]
    .into_iter()
    .map(|(n, v)| Field::new(n, v))
    .collect()
}

fn wire_call(client: &mut Connection, server: &mut Connection, head: &[Field]) {
    let stream = client.open(head, false).unwrap();
    client.send_data(stream, message(), true).unwrap();
    let mut bytes = client.output().split();
    server.receive(&mut bytes).unwrap();
    while let Some(event) = server.event() {
        match event {
            Event::Headers { stream, .. } => {
                let head = vec![
                    Field::new(":status", "200"),
                    Field::new("content-type", "application/grpc"),
                ];
                server.send_headers(stream, head, false).unwrap();
            }
            Event::Data {
                stream,
                data,
                end_stream,
            } => {
                server.release(stream, data.len());
                if end_stream {
                    server.send_data(stream, message(), false).unwrap();
                    let trailers = vec![Field::new("grpc-status", "0")];
                    server.send_headers(stream, trailers, true).unwrap();
                }
            }
            other => panic!("{other:?}"),
        }
    }
    let mut bytes = server.output().split();
    client.receive(&mut bytes).unwrap();
    while let Some(event) = client.event() {
        if let Event::Data { stream, data, .. } = &event {
            client.release(*stream, data.len());
        }
        black_box(event);
    }
}

fn wire(c: &mut Criterion) {
    let mut client = Connection::new(Role::Client, Config::default());
    let mut server = Connection::new(Role::Server, Config::default());
    // The prefaces and settings, both ways.
    for _ in 0..2 {
        let mut bytes = client.output().split();
        server.receive(&mut bytes).unwrap();
        let mut bytes = server.output().split();
        client.receive(&mut bytes).unwrap();
    }
    let head = request_head();
    c.bench_function("one gRPC call, both ends: wire::conn", |b| {
        b.iter(|| wire_call(&mut client, &mut server, &head))
    });
}

fn h2(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let mut client = runtime.block_on(async {
        tokio::spawn(async move {
            let mut server = h2::server::handshake(server_io).await.unwrap();
            while let Some(request) = server.accept().await {
                let (request, mut respond) = request.unwrap();
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    while let Some(chunk) = body.data().await {
                        let chunk = chunk.unwrap();
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let mut send = respond.send_response(response, false).unwrap();
                    send.send_data(message(), false).unwrap();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    send.send_trailers(trailers).unwrap();
                });
            }
        });
        let (client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        client
    });
    let request = || {
        let mut builder = http::Request::post("http://stockdata:8080/stockdata.StockData/Get");
        for field in request_head().iter().filter(|f| !f.name.starts_with(b":")) {
            builder = builder.header(&field.name[..], &field.value[..]);
        }
        builder.body(()).unwrap()
    };
    c.bench_function("one gRPC call, both ends: h2", |b| {
        b.iter(|| {
            runtime.block_on(async {
                client = client.clone().ready().await.unwrap();
                let (response, mut send) = client.send_request(request(), false).unwrap();
                send.send_data(message(), true).unwrap();
                let mut body = response.await.unwrap().into_body();
                let mut received = BytesMut::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                    received.extend_from_slice(&chunk);
                }
                black_box(body.trailers().await.unwrap());
                black_box(received);
            })
        })
    });
}

criterion_group!(benches, wire, h2);
criterion_main!(benches);
