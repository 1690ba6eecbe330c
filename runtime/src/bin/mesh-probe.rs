//! `mesh-probe`: the health check of the mesh's container images, which are
//! built `FROM scratch` and have no shell or curl. Exits 0 when the target
//! answers, 1 otherwise, with the reason on stderr.
//!
//! ```text
//! mesh-probe tcp://127.0.0.1:80              a TCP connection is accepted
//! mesh-probe http://127.0.0.1:4191/ready     an HTTP/1.1 GET answers 2xx
//! mesh-probe --wait 120s TARGET              tries every 250 ms until TARGET
//!                                            answers, for at most 120 s (the
//!                                            sidecar's postStart hook)
//! mesh-probe --sleep 10s                     waits 10 s, then exits 0 (the
//!                                            sidecar's preStop hook)
//! ```

// A small synchronous program: there is no async runtime to block.
#![allow(clippy::disallowed_methods)]

use mesh_runtime::parse_duration;
use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    process::ExitCode,
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_EVERY: Duration = Duration::from_millis(250);
const USAGE: &str = "usage: mesh-probe [--wait DURATION] tcp://HOST:PORT | http://HOST:PORT/PATH\n       mesh-probe --sleep DURATION";

/// What the command line asks for.
enum Task {
    Probe { target: String, wait: Duration },
    Sleep(Duration),
}

fn parse(args: &[String]) -> Result<Task, String> {
    let duration = |flag: &str, value: Option<&String>| {
        value
            .ok_or_else(|| format!("{flag} needs a duration"))
            .and_then(|v| parse_duration(v).map_err(|e| format!("{flag}: {e}")))
    };
    match args {
        [flag, value] if flag == "--sleep" => Ok(Task::Sleep(duration(flag, Some(value))?)),
        [flag, value, target] if flag == "--wait" => Ok(Task::Probe {
            target: target.clone(),
            wait: duration(flag, Some(value))?,
        }),
        [target] if !target.starts_with("--") => Ok(Task::Probe {
            target: target.clone(),
            wait: Duration::ZERO,
        }),
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = match parse(&args) {
        Ok(task) => task,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let (target, wait) = match task {
        Task::Sleep(duration) => {
            std::thread::sleep(duration);
            return ExitCode::SUCCESS;
        }
        Task::Probe { target, wait } => (target, wait),
    };
    let deadline = Instant::now() + wait;
    loop {
        match probe(&target) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(_) if Instant::now() + RETRY_EVERY <= deadline => std::thread::sleep(RETRY_EVERY),
            Err(err) => {
                eprintln!("mesh-probe: {target}: {err}");
                return ExitCode::FAILURE;
            }
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
