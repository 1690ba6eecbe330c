//! A measuring stick for issue 22, not the proxy: the least a forwarder
//! built on `mesh_proxy::wire` costs per call. Each client connection gets
//! one task, which owns it and one upstream connection to each of two
//! replicas, and hands each stream, round robin, to an upstream, frames
//! relayed as they come. Nothing else: no discovery, balancing by load, retries, deadlines,
//! metrics, limits, TLS or header rewriting, and bodies are relayed without
//! holding the sender back beyond HTTP/2's windows upstream.
//!
//! It takes the flags `bench/ab.sh` gives the proxy, so the two can be
//! measured side by side on the same load:
//!
//! ```sh
//! cargo build --release -p mesh-proxy --example wire_forward
//! BIN_DIR=target/release bench/ab.sh --instructions target/release/mesh-proxy \
//!     target/release/examples/wire_forward
//! ```

use bytes::BytesMut;
use clap::Parser;
use foldhash::HashMap;
use mesh_proxy::wire::{
    conn::{Config, Connection, Event, Role},
    frame::{ErrorCode, StreamId},
};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

#[derive(Debug, Parser)]
struct Args {
    /// `NAME=ADDR`: where to listen (the name is not used).
    #[arg(long)]
    outbound: String,
    /// `NAME=static:ADDR;ADDR...`: the upstream replicas.
    #[arg(long)]
    discover: String,
    /// Accepted, as `bench/ab.sh` passes it, and not used.
    #[arg(long)]
    admin: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listen: SocketAddr = args
        .outbound
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--outbound NAME=ADDR"))?
        .1
        .parse()?;
    let upstreams = args
        .discover
        .split_once("=static:")
        .ok_or_else(|| anyhow::anyhow!("--discover NAME=static:ADDR;ADDR"))?
        .1
        .split(';')
        .map(str::parse)
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            loop {
                let (client, _) = listener.accept().await?;
                let upstreams = upstreams.clone();
                tokio::spawn(async move {
                    match forward(client, &upstreams).await {
                        Ok(()) => {}
                        // How load generators end their connections.
                        Err(error) if is_reset(&error) => {}
                        Err(error) => eprintln!("wire_forward: {error}"),
                    }
                });
            }
        })
}

fn is_reset(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// One side of the relay: its socket, its protocol state, what it read.
struct Side {
    socket: TcpStream,
    connection: Connection,
    read: BytesMut,
}

impl Side {
    fn new(socket: TcpStream, role: Role) -> Self {
        socket.set_nodelay(true).ok();
        let config = Config {
            stream_window: 256 * 1024,
            connection_window: 16 << 20,
            ..Config::default()
        };
        Self {
            socket,
            connection: Connection::new(role, config),
            read: BytesMut::with_capacity(64 * 1024),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let out = self.connection.output();
        if !out.is_empty() {
            let out = out.split();
            self.socket.write_all(&out).await?;
        }
        Ok(())
    }
}

async fn forward(client: TcpStream, upstreams: &[SocketAddr]) -> anyhow::Result<()> {
    let mut down = Side::new(client, Role::Server);
    let mut ups = Vec::new();
    for addr in upstreams {
        ups.push(Side::new(TcpStream::connect(addr).await?, Role::Client));
    }
    // Client stream -> (upstream, its stream), and back.
    let mut routes: HashMap<StreamId, (usize, StreamId)> = HashMap::default();
    let mut back: HashMap<(usize, StreamId), StreamId> = HashMap::default();
    let mut next = 0;
    loop {
        down.flush().await?;
        for up in &mut ups {
            up.flush().await?;
        }
        // Whichever socket has something first; the others wait their turn.
        let readable = {
            let down_read = down.socket.read_buf(&mut down.read);
            let [first, second] = &mut ups[..] else {
                anyhow::bail!("wire_forward relays to exactly two replicas");
            };
            tokio::select! {
                n = down_read => (None, n?),
                n = first.socket.read_buf(&mut first.read) => (Some(0), n?),
                n = second.socket.read_buf(&mut second.read) => (Some(1), n?),
            }
        };
        match readable {
            (_, 0) => return Ok(()),
            (None, _) => {
                down.connection.receive(&mut down.read)?;
                while let Some(event) = down.connection.event() {
                    match event {
                        Event::Headers {
                            stream,
                            fields,
                            end_stream,
                            trailers: false,
                            ..
                        } => {
                            let to = next % ups.len();
                            next += 1;
                            let Ok(up_stream) = ups[to].connection.open(&fields, end_stream) else {
                                down.connection.reset(stream, ErrorCode::REFUSED_STREAM);
                                continue;
                            };
                            routes.insert(stream, (to, up_stream));
                            back.insert((to, up_stream), stream);
                        }
                        Event::Headers { stream, fields, .. } => {
                            if let Some(&(to, up)) = routes.get(&stream) {
                                let _ = ups[to].connection.send_headers(up, fields, true);
                            }
                        }
                        Event::Data {
                            stream,
                            data,
                            end_stream,
                        } => {
                            down.connection.release(stream, data.len());
                            if let Some(&(to, up)) = routes.get(&stream) {
                                let _ = ups[to].connection.send_data(up, data, end_stream);
                            }
                        }
                        Event::Reset { stream, code } => {
                            if let Some((to, up)) = routes.remove(&stream) {
                                back.remove(&(to, up));
                                ups[to].connection.reset(up, code);
                            }
                        }
                        Event::GoAway { .. } => {}
                    }
                }
            }
            (Some(from), _) => {
                let up = &mut ups[from];
                up.connection.receive(&mut up.read)?;
                while let Some(event) = up.connection.event() {
                    let (up_stream, ended) = match &event {
                        Event::Headers {
                            stream, end_stream, ..
                        }
                        | Event::Data {
                            stream, end_stream, ..
                        } => (*stream, *end_stream),
                        Event::Reset { stream, .. } => (*stream, true),
                        Event::GoAway { .. } => continue,
                    };
                    let Some(&stream) = back.get(&(from, up_stream)) else {
                        continue;
                    };
                    match event {
                        Event::Headers {
                            fields, end_stream, ..
                        } => {
                            let _ = down.connection.send_headers(stream, fields, end_stream);
                        }
                        Event::Data {
                            data, end_stream, ..
                        } => {
                            up.connection.release(up_stream, data.len());
                            let _ = down.connection.send_data(stream, data, end_stream);
                        }
                        Event::Reset { code, .. } => down.connection.reset(stream, code),
                        Event::GoAway { .. } => {}
                    }
                    if ended {
                        back.remove(&(from, up_stream));
                        routes.remove(&stream);
                    }
                }
            }
        }
    }
}
