//! The one HTTP/1.1 client the tests of every crate use (hyper's): a request
//! on a fresh connection with exactly the headers a test gives (its `Host`
//! too, when it gives one), and the whole answer read.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use std::{net::SocketAddr, time::Duration};

/// How long an answer may take, whole.
const WITHIN: Duration = Duration::from_secs(60);

/// A request as a test writes it.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    pub fn host(self, host: &str) -> Self {
        self.header("host", host)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// An `application/x-www-form-urlencoded` body, as a form posts.
    pub fn form(mut self, body: &str) -> Self {
        self.body = body.into();
        self.header("content-type", "application/x-www-form-urlencoded")
    }
}

/// An answer: its status line and headers as the wire had them, and its
/// body as text.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// `HTTP/1.1 403 Forbidden` and the header lines, `\r\n` apart.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// Head, blank line and body, as the bytes came.
    pub fn text(&self) -> String {
        format!("{}\r\n\r\n{}", self.head, self.body)
    }
}

/// Sends `request` to `addr` on a fresh connection; the answer, or why the
/// exchange failed (a refused connection is an `Err`, not a panic).
pub async fn send(addr: SocketAddr, request: Request) -> std::io::Result<Answer> {
    let failed = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let mut builder = http::Request::builder()
        .method(request.method.as_str())
        .uri(format!("http://{addr}{}", request.path));
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let outgoing = builder
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|e| failed(&e))?;
    let exchange = async {
        let response = client.request(outgoing).await.map_err(|e| failed(&e))?;
        let status = response.status();
        let mut head = format!(
            "HTTP/1.1 {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        for (name, value) in response.headers() {
            head.push_str(&format!(
                "\r\n{name}: {}",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(&e))?
            .to_bytes();
        Ok(Answer {
            status: status.as_u16(),
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(WITHIN, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 60 s"))?
}

/// `GET path` with `Host: addr`; panics when the exchange fails.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, Request::get(path).host(&addr.to_string()))
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}
