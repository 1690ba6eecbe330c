//! Demo fixtures for tests, here and in other crates (feature `test-util`):
//! in-process StockData replicas, a connection-balancing forwarder that
//! stands in for a Kubernetes Service, and a deadline-bounded wait.

use crate::{Config, Faults};
use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

/// A replica serving on `127.0.0.1` at an ephemeral port. Dropping it stops
/// the server.
#[derive(Debug)]
pub struct Replica {
    pub addr: SocketAddr,
    pub server_id: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), crate::ServeError>>,
}

/// Starts a replica with no faults.
pub async fn spawn_replica(server_id: &str) -> Replica {
    spawn_replica_with(server_id, Faults::default()).await
}

/// Starts a replica with the given demo faults.
pub async fn spawn_replica_with(server_id: &str, faults: Faults) -> Replica {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback has a free port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let config = Config {
        listen: vec![addr],
        server_id: server_id.to_owned(),
        faults,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(crate::run(config, vec![listener], async {
        let _ = stopped.await;
    }));
    Replica {
        addr,
        server_id: server_id.to_owned(),
        stop: Some(stop),
        task,
    }
}

impl Replica {
    /// `http://127.0.0.1:PORT`, as a channel takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, drains, and waits for the server to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = &mut self.task;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("replica drains within 10 s")
            .expect("replica task did not panic")
            .expect("replica served without error");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // A replica dropped without `shutdown` is aborted outright, closing
        // its connections the way a killed process would.
        self.task.abort();
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after
/// `deadline` with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects one channel to `http://ADDR`, as a tonic client takes it.
pub async fn connect(addr: impl std::fmt::Display) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an http URL from a socket address is valid")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

/// Spreads TCP *connections* round-robin over its backends, as kube-proxy
/// does for a ClusterIP Service: every request on one connection reaches the
/// backend that connection was given.
pub struct ConnectionBalancer {
    pub addr: SocketAddr,
    /// Connections handed to each backend, in backend order.
    pub connections: Arc<Vec<AtomicUsize>>,
    task: JoinHandle<()>,
}

impl ConnectionBalancer {
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = connections.clone();
        let task = tokio::spawn(async move {
            let mut next = 0;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let index = next % backends.len();
                next += 1;
                counts[index].fetch_add(1, Ordering::SeqCst);
                let backend = backends[index];
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    pub fn counts(&self) -> Vec<usize> {
        self.connections
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for ConnectionBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the Python grpcio client (`stockdata/tests/interop/client.py`,
/// stubs generated from the project's own stocks.proto) against `target`
/// and returns its JSON report as text. The interpreter comes from
/// `STOCKKUBE_PYTHON`, else the venv `scripts/test.sh` creates at
/// `target/interop-venv`. `None` when there is none and `CI` is not `true`;
/// under `CI=true` a missing interpreter panics.
pub async fn python_interop_report(target: SocketAddr) -> Option<String> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("stockdata sits inside the workspace");
    let python = std::env::var_os("STOCKKUBE_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let venv = workspace.join("target/interop-venv/bin/python");
            venv.exists().then_some(venv)
        });
    let Some(python) = python else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but no Python with grpcio: run scripts/test.sh or set STOCKKUBE_PYTHON"
        );
        eprintln!("SKIPPED: no Python interop venv; scripts/test.sh creates one");
        return None;
    };
    let output = tokio::process::Command::new(&python)
        .arg(workspace.join("stockdata/tests/interop/client.py"))
        .arg(workspace.join("proto/proto"))
        .arg(target.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the Python client finishes within 60 s")
        .expect("the Python interpreter starts");
    assert!(
        output.status.success(),
        "python client failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).expect("the client prints UTF-8 JSON"))
}
