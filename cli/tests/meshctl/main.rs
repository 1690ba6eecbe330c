//! `meshctl` as a user runs it: the demo starts the mesh beside the
//! unmeshed sample, shows the difference, and stops cleanly leaving no
//! process behind; bad flags and taken ports fail with a clear message.

use std::{
    net::{SocketAddr, TcpListener},
    process::Stdio,
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

mod bench;
mod check;
mod compose;
mod dashboard;
mod inject;
mod injector;
mod install;
mod kbox;
mod observability;
mod supervision;
mod tutorial;
mod viz;
mod webdriver;

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

/// The cargo profile the tests' `docker/build.sh` builds the images with
/// (`STOCKKUBE_IMAGE_PROFILE`): release without LTO (Cargo.toml), the same
/// code linked the same way in about two thirds of the build time; what the
/// tests check is how the images behave, not how fast. Every test that
/// builds images uses it, so the images are built once per run.
const IMAGE_PROFILE: (&str, &str) = ("STOCKKUBE_IMAGE_PROFILE", "images-test");

/// A binary of the workspace, beside `meshctl`.
pub(crate) fn bin(name: &str) -> std::path::PathBuf {
    std::path::Path::new(MESHCTL)
        .parent()
        .expect("meshctl sits in the target directory")
        .join(name)
}

/// A path in the repository.
pub(crate) fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// A YAML document as JSON (what the API server and the injector see).
pub(crate) fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> serde_json::Value {
    use serde_json::{Value, json};
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => json!(b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => json!(r.parse::<f64>().expect("a YAML real is a number")),
        Yaml::String(s) => json!(s),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(hash) => Value::Object(
            hash.iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_owned(), yaml_to_json(v)))
                .collect(),
        ),
        other => panic!("unexpected YAML: {other:?}"),
    }
}

/// StockWeb's tally as `/api/stocks` answers it: rows per server, errors,
/// rows.
pub(crate) type Stocks = (std::collections::BTreeMap<String, u64>, u64, usize);

/// Reads StockWeb's `/api/stocks` answer; `None` when it is not one.
pub(crate) fn parse_stocks(body: &[u8]) -> Option<Stocks> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let servers = json["servers"]
        .as_object()?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    Some((
        servers,
        json["errors"].as_u64()?,
        json["rows"].as_array()?.len(),
    ))
}

pub(crate) fn meshctl() -> Command {
    let mut command = Command::new(MESHCTL);
    // The service binaries sit beside meshctl; if this test binary was built
    // alone, meshctl builds them with the cargo that built it.
    command
        .env("CARGO", env!("CARGO"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Ports for the processes a test starts (see
/// [`mesh_runtime::test_ports`]).
pub(crate) use mesh_runtime::test_ports::{free_port, free_ports};

/// A port `p` with `p + 1` and `p + 2` free too: the demo's web ports.
pub(crate) fn free_port_triple() -> u16 {
    free_ports(3)
}

/// Waits (20 s at most) until the dashboard at `dashboard` has seen
/// `count` proxies up: rates come from increases between scrapes, so
/// traffic must come after the dashboard's first look at every proxy, as it
/// would for a person.
pub(crate) async fn until_proxies_up(dashboard: SocketAddr, count: usize) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let proxies: serde_json::Value =
            serde_json::from_str(&http_get(dashboard, "/api/proxies").await).unwrap();
        let up = proxies
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["up"] == true)
            .count();
        if up == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the dashboard did not see {count} proxies up: {proxies}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET path`, which must answer 200: its body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> String {
    let answer = mesh_runtime::test_http::get(addr, path).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    answer.body
}

pub(crate) async fn wait_for_line(child: &mut Child, needle: &str) -> Vec<String> {
    let stdout = child.stdout.as_mut().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let wait = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains(needle);
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("meshctl exited before printing {needle:?}: {seen:?}");
    };
    tokio::time::timeout(Duration::from_secs(300), wait)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within 300 s"));
    seen
}

/// PIDs of the live children of `parent`, from /proc.
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state, then ppid.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid: Option<u32> = fields.next().and_then(|p| p.parse().ok());
        if ppid == Some(parent) && state != Some("Z") {
            children.push(pid);
        }
    }
    children
}

pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// `meshctl demo` as a child that, should the test fail, is asked to stop
/// (SIGTERM) rather than killed, so it stops its own children too.
pub(crate) struct Demo(pub Child);

impl Demo {
    pub(crate) fn start(args: &[&str]) -> Self {
        let child = meshctl()
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(false)
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            signal(&self.0, rustix::process::Signal::TERM);
        }
    }
}

pub(crate) fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[tokio::test]
async fn demo_balances_with_the_mesh_and_not_without_and_stops_on_sigint() {
    let port = free_port_triple();
    let mut guard = Demo::start(&["--replicas", "3", "--port", &port.to_string()]);
    let demo = &mut guard.0;

    let banner = wait_for_line(demo, "Ctrl-C").await.join("\n");
    let meshed = SocketAddr::from(([127, 0, 0, 1], port));
    let plain = SocketAddr::from(([127, 0, 0, 1], port + 1));
    assert!(
        banner.contains(&format!("with the mesh     http://{meshed}/")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("without the mesh  http://{plain}/")),
        "{banner}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&http_get(meshed, "/api/stocks").await).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 100, "{json}");
    assert_eq!(json["errors"], 0, "{json}");
    let servers = json["servers"].as_object().unwrap();
    assert!(servers.len() >= 2, "the mesh spreads calls: {servers:?}");

    let json: serde_json::Value =
        serde_json::from_str(&http_get(plain, "/api/stocks").await).unwrap();
    assert_eq!(json["errors"], 0, "{json}");
    let servers = json["servers"].as_object().unwrap();
    assert_eq!(
        servers.len(),
        1,
        "without the mesh one server answers all: {servers:?}"
    );

    // Between the sidecars, every call was mTLS to the replicas' identity,
    // and a replica's sidecar answers TLS as that identity with a chain
    // the run's trust anchor verifies.
    let metrics_url = banner
        .lines()
        .find_map(|line| line.split("sidecar metrics   http://").nth(1))
        .expect("the banner names the sidecar's metrics");
    let admin: SocketAddr = metrics_url.trim_end_matches("/metrics").parse().unwrap();
    let metrics = http_get(admin, "/metrics").await;
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("mesh_requests_total{direction=\"outbound\""))
        .collect();
    assert_eq!(requests.len(), 3, "{metrics}");
    let stockdata_id = "spiffe://cluster.local/ns/demo/sa/stockdata";
    for line in &requests {
        assert!(
            line.contains(&format!(r#"tls="true",server_id="{stockdata_id}""#)),
            "{line}"
        );
    }
    let endpoint = requests[0]
        .split("endpoint=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let identity_dir =
        std::env::temp_dir().join(format!("meshctl-demo-identity-{}", demo.id().unwrap()));
    let anchors = identity_dir.join("authority/ca.crt");
    let shown = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            endpoint,
            "-verify_return_error",
            "-tls1_3",
        ])
        .args([
            "-servername",
            "stockdata.demo.serviceaccount.identity.cluster.local",
        ])
        .arg("-CAfile")
        .arg(&anchors)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );

    // `meshctl identity` shows StockWeb's sidecar's identity and a chain
    // that openssl verifies against the run's trust anchor.
    let shown = meshctl()
        .args(["identity", &admin.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let text = String::from_utf8(shown.stdout).unwrap();
    assert!(
        text.starts_with("identity      spiffe://cluster.local/ns/demo/sa/stockweb\nexpires "),
        "{text}"
    );
    let chain = &text[text.find("-----BEGIN").unwrap()..];
    let split =
        chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    let scratch =
        std::env::temp_dir().join(format!("meshctl-identity-test-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(scratch.join("leaf.pem"), &chain[..split]).unwrap();
    std::fs::write(scratch.join("issuer.pem"), &chain[split..]).unwrap();
    let verified = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&anchors)
        .arg("-untrusted")
        .arg(scratch.join("issuer.pem"))
        .arg(scratch.join("leaf.pem"))
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );

    let children = children_of(demo.id().unwrap());
    // controller, 3 replicas, 3 sidecars, stockweb and its sidecar, plain
    // stockweb, dashboard
    assert_eq!(children.len(), 11, "{children:?}");
    signal(demo, rustix::process::Signal::INT);
    let status = tokio::time::timeout(Duration::from_secs(60), demo.wait())
        .await
        .expect("the demo stops within 60 s of SIGINT")
        .unwrap();
    assert!(status.success(), "{status}");
    let left: Vec<_> = children.into_iter().filter(|pid| alive(*pid)).collect();
    assert!(left.is_empty(), "children left running: {left:?}");
    for addr in [meshed, plain] {
        assert!(TcpStream::connect(addr).await.is_err(), "{addr} still open");
    }
    assert!(!identity_dir.exists(), "the run's keys are removed");
}

#[tokio::test]
async fn demo_reports_a_taken_port_and_exits_non_zero() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let output = meshctl()
        .args(["demo", "--port", &port.to_string()])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("port {port} (P of --port {port}) is taken")),
        "{stderr}"
    );
}

#[tokio::test]
async fn unknown_flags_and_bad_values_are_refused() {
    for (args, expected) in [
        (&["demo", "--frobnicate"][..], "--frobnicate"),
        (&["demo", "--replicas", "0"][..], "--replicas"),
        (
            &["demo", "--replicas", "3", "--max-replicas", "2"][..],
            "--replicas 3 is more than --max-replicas 2",
        ),
        (&["demo", "--port", "http"][..], "--port"),
        (
            &["demo", "--bin-dir", "/nonexistent/bin"][..],
            "/nonexistent/bin",
        ),
    ] {
        let output = meshctl()
            .env_remove("CARGO")
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
