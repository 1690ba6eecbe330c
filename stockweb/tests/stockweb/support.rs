//! Test plumbing: an in-process StockWeb and a minimal HTTP GET.

use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

/// A StockWeb served in-process on an ephemeral port; stops on drop.
pub struct StockWeb {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<std::io::Result<()>>,
}

pub async fn spawn_stockweb(stockdata_address: &str) -> StockWeb {
    use clap::Parser as _;
    let args = stockweb::Args::try_parse_from([
        "stockweb",
        "--listen",
        "127.0.0.1:0",
        "--stockdata-address",
        stockdata_address,
        "--call-timeout",
        "3000",
    ])
    .expect("test flags parse");
    let config = stockweb::Config::try_from(args).expect("test flags are valid");
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(stockweb::run(config, listener, async {
        let _ = stopped.await;
    }));
    StockWeb {
        addr,
        _stop: stop,
        _task: task,
    }
}

/// A response to [`get`].
pub struct Page {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET path` over a fresh HTTP/1.1 connection that the server closes.
pub async fn get(addr: SocketAddr, path: &str) -> Page {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} answered within 30 s"));
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Page {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// `GET /api/stocks`, parsed.
pub async fn get_json(addr: SocketAddr) -> serde_json::Value {
    let page = get(addr, "/api/stocks").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.content_type.starts_with("application/json"));
    serde_json::from_str(&page.body).expect("valid JSON")
}
