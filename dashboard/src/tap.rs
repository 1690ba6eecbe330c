//! Tap through the dashboard: one stream of JSON lines merged from the taps
//! of every chosen proxy (a workload's, or one instance's), each line naming
//! the proxy it came from. What the Tap page shows live and `meshctl tap`
//! prints.
//!
//! A proxy is a peer: its lines are read with a length limit, and one that
//! fails or says something unreadable is reported in the stream
//! (`{"type":"error",...}`) and left, not trusted further. The merged stream
//! ends when its reader leaves (every proxy tap is then dropped) or the
//! dashboard stops.

use crate::scrape::History;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use stockkube_proto::admin::TAP;
use tokio::sync::{mpsc, watch};

/// Merged taps at once, at most (each holds a tap on every chosen proxy).
pub const MAX_TAPS: usize = 8;
/// Proxies one merged tap reaches, at most.
pub const MAX_PROXIES: usize = 32;
/// A proxy's line longer than this ends its tap.
const MAX_LINE: usize = 64 * 1024;
/// Lines waiting for a slow reader before more are dropped.
const QUEUE: usize = 512;

/// What a tap asks for: which proxies, and the filters each proxy applies.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TapQuery {
    pub workload: Option<String>,
    pub instance: Option<String>,
    pub direction: Option<String>,
    pub method: Option<String>,
    pub authority: Option<String>,
    pub path_prefix: Option<String>,
    pub status: Option<u16>,
    pub grpc_status: Option<u8>,
    pub max_rps: Option<u32>,
}

impl TapQuery {
    /// The query each proxy's `/tap` gets: the filters, encoded.
    fn proxy_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let text = [
            ("direction", &self.direction),
            ("method", &self.method),
            ("authority", &self.authority),
            ("path_prefix", &self.path_prefix),
        ];
        for (key, value) in text {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                query.append_pair(key, value);
            }
        }
        if let Some(status) = self.status {
            query.append_pair("status", &status.to_string());
        }
        if let Some(code) = self.grpc_status {
            query.append_pair("grpc_status", &code.to_string());
        }
        if let Some(rate) = self.max_rps {
            query.append_pair("max_rps", &rate.to_string());
        }
        query.finish()
    }

    fn chooses(&self, workload: &str, instance: &str) -> bool {
        fn given(value: &Option<String>) -> Option<&str> {
            value.as_deref().filter(|v| !v.is_empty())
        }
        given(&self.workload).is_none_or(|w| w == workload)
            && given(&self.instance).is_none_or(|i| i == instance)
    }
}

/// The dashboard's taps in progress, to keep them within [`MAX_TAPS`].
#[derive(Debug, Default)]
pub struct Tapping {
    running: AtomicUsize,
}

/// One merged tap's place among [`MAX_TAPS`]; freed when dropped.
struct Running(Arc<Tapping>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a tap could not start.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("no proxy is up among those asked for (workload and instance)")]
    NoProxy,
    #[error("{MAX_TAPS} taps are running already: stop one first")]
    Busy,
}

/// A merged tap's lines: the receiving half and what keeps its place
/// among the running ones, as a stream of lines.
pub struct Merged {
    pub lines: mpsc::Receiver<Bytes>,
    _running: Running,
}

impl tokio_stream::Stream for Merged {
    type Item = Bytes;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Bytes>> {
        self.lines.poll_recv(cx)
    }
}

impl Tapping {
    /// Starts tapping the proxies `query` chooses in the latest scrape.
    pub fn start(
        self: &Arc<Self>,
        history: &History,
        query: &TapQuery,
        http: &Client<HttpConnector, Empty<Bytes>>,
        stopping: &watch::Receiver<bool>,
    ) -> Result<Merged, TapError> {
        let proxies: Vec<(String, String, SocketAddr)> = history
            .back()
            .map(|snap| {
                snap.proxies
                    .iter()
                    .filter(|p| p.up() && query.chooses(&p.target.workload, &p.target.instance))
                    .map(|p| {
                        (
                            p.target.workload.clone(),
                            p.target.instance.clone(),
                            p.target.admin_addr,
                        )
                    })
                    .take(MAX_PROXIES)
                    .collect()
            })
            .unwrap_or_default();
        if proxies.is_empty() {
            return Err(TapError::NoProxy);
        }
        if self.running.fetch_add(1, Ordering::Relaxed) >= MAX_TAPS {
            self.running.fetch_sub(1, Ordering::Relaxed);
            return Err(TapError::Busy);
        }
        let running = Running(self.clone());
        let (sender, lines) = mpsc::channel(QUEUE);
        let proxy_query = query.proxy_query();
        for (workload, instance, admin) in proxies {
            let source = ProxyTap {
                workload,
                instance,
                admin,
                query: proxy_query.clone(),
                sender: sender.clone(),
            };
            let (http, mut stopping) = (http.clone(), stopping.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = source.run(&http) => {}
                    _ = stopping.wait_for(|stop| *stop) => {}
                }
            });
        }
        Ok(Merged {
            lines,
            _running: running,
        })
    }
}

/// One proxy's tap, feeding the merged stream.
struct ProxyTap {
    workload: String,
    instance: String,
    admin: SocketAddr,
    query: String,
    sender: mpsc::Sender<Bytes>,
}

impl ProxyTap {
    async fn run(self, http: &Client<HttpConnector, Empty<Bytes>>) {
        if let Err(error) = self.read(http).await {
            let line = self.line(json!({ "type": "error", "error": error }));
            // The reader may have left already: nothing to tell then.
            let _ = self.sender.send(line).await;
        }
    }

    /// Forwards the proxy's lines until it or the reader stops; why the
    /// proxy's tap ended early, if it did.
    async fn read(&self, http: &Client<HttpConnector, Empty<Bytes>>) -> Result<(), String> {
        let uri: http::Uri = format!("http://{}{TAP}?{}", self.admin, self.query)
            .parse()
            .map_err(|e| format!("no tap URL for {}: {e}", self.admin))?;
        let response = tokio::time::timeout(Duration::from_secs(5), http.get(uri))
            .await
            .map_err(|_| "the proxy did not answer its tap within 5 s".to_owned())?
            .map_err(|e| format!("the proxy's tap failed: {e}"))?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = http_body_util::Limited::new(body, 1024)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
                .unwrap_or_default();
            return Err(format!("the proxy refused the tap ({status}): {text}"));
        }
        let mut buffered = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the proxy's tap broke off: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffered.extend_from_slice(&data);
            while let Some(end) = buffered.iter().position(|&b| b == b'\n') {
                let line = buffered.split_to(end + 1);
                let event: Value = serde_json::from_slice(&line)
                    .map_err(|e| format!("the proxy sent an unreadable tap line: {e}"))?;
                if event["type"] == "heartbeat" {
                    continue;
                }
                let line = self.line(event);
                // A slow reader loses this line, as the proxy's own drops
                // are lost; a reader gone ends the tap.
                if self.sender.try_send(line).is_err() && self.sender.is_closed() {
                    return Ok(());
                }
            }
            if buffered.len() > MAX_LINE {
                return Err(format!("the proxy sent a tap line over {MAX_LINE} bytes"));
            }
        }
        Ok(())
    }

    /// `event` with the proxy it came from, as one line.
    fn line(&self, mut event: Value) -> Bytes {
        if let Value::Object(fields) = &mut event {
            fields.insert("workload".into(), self.workload.clone().into());
            fields.insert("instance".into(), self.instance.clone().into());
        }
        let mut line = serde_json::to_vec(&event).expect("JSON values serialize");
        line.push(b'\n');
        line.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_query_carries_only_the_filters_given_encoded() {
        let query = TapQuery {
            workload: Some("stockdata".into()),
            path_prefix: Some("/StockData.Stocks/Get&x=1".into()),
            grpc_status: Some(14),
            method: Some(String::new()),
            ..TapQuery::default()
        };
        assert_eq!(
            query.proxy_query(),
            "path_prefix=%2FStockData.Stocks%2FGet%26x%3D1&grpc_status=14"
        );
        assert!(query.chooses("stockdata", "stockdata-1"));
        assert!(!query.chooses("stockweb", "stockweb-1"));
    }
}
