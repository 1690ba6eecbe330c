//! `mesh-probe`: the health check of the mesh's container images, which are
//! built `FROM scratch` and have no shell or curl. Exits 0 when the target
//! answers, 1 otherwise, with the reason on stderr.
//!
//! ```text
//! mesh-probe tcp://127.0.0.1:80              a TCP connection is accepted
//! mesh-probe http://127.0.0.1:4191/ready     an HTTP/1.1 GET answers 2xx
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let Some(target) = std::env::args().nth(1) else {
        eprintln!("usage: mesh-probe tcp://HOST:PORT | http://HOST:PORT/PATH");
        return ExitCode::from(2);
    };
    match probe(&target) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mesh-probe: {target}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn connect(authority: &str) -> Result<TcpStream, String> {
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

fn probe(target: &str) -> Result<(), String> {
    if let Some(authority) = target.strip_prefix("tcp://") {
        return connect(authority).map(drop);
    }
    let Some(rest) = target.strip_prefix("http://") else {
        return Err("expected tcp:// or http://".into());
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = connect(authority)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    // "HTTP/1.1 200"
    match &head[..9] {
        b"HTTP/1.1 " | b"HTTP/1.0 " if head[9] == b'2' => Ok(()),
        _ => Err(format!(
            "answered {:?}",
            String::from_utf8_lossy(&head).trim_end()
        )),
    }
}
