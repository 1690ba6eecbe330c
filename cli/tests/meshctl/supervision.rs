//! `meshctl demo` supervises its processes as a kubelet does: a replica
//! SIGKILLed from outside, while StockWeb is loaded in a loop, costs no
//! row, is shown crashed and then up again on the dashboard, and the demo
//! runs on; only the controller's death ends the demo, with a clear
//! message and no process left behind.

use crate::{Demo, alive, children_of, free_port_triple, http_get, parse_stocks, wait_for_line};
use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::io::AsyncReadExt as _;

/// The command line of `pid`.
fn args_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The child of `parent` whose command line holds every one of `words`
/// (as arguments, or the ends of them).
fn child_with(parent: u32, words: &[&str]) -> u32 {
    children_of(parent)
        .into_iter()
        .find(|pid| {
            let args = args_of(*pid);
            words.iter().all(|w| args.iter().any(|a| a.ends_with(w)))
        })
        .unwrap_or_else(|| panic!("no child of {parent} runs {words:?}"))
}

/// Kills `victim` and waits until the dashboard shows `replica` crashed
/// (or restarting) and then up again, within 15 s; returns what it showed.
async fn kill_and_watch(victim: u32, dashboard: SocketAddr, replica: &str) -> Vec<String> {
    sigkill(victim);
    let killed_at = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    while seen.last().map(String::as_str) != Some("up") {
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "{replica} not shown crashed and up again within 15 s: {seen:?}"
        );
        // From the first state that is not "up": the supervisor notices
        // within a quarter of a second.
        if let Some(state) = shown_state(dashboard, replica).await
            && seen.last() != Some(&state)
            && (state != "up" || !seen.is_empty())
        {
            seen.push(state);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

fn sigkill(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
}

/// The demo state the dashboard's Servers page shows for `replica`.
async fn shown_state(dashboard: SocketAddr, replica: &str) -> Option<String> {
    let page = http_get(dashboard, "/servers").await;
    let marker = format!(r#"data-replica="{replica}" data-demo-state=""#);
    let rest = page.split(&marker).nth(1)?;
    Some(rest.split('"').next()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_from_outside_is_restarted_and_costs_no_row() {
    let port = free_port_triple();
    let mut guard = Demo::start(&["--replicas", "3", "--port", &port.to_string()]);
    let demo = &mut guard.0;
    wait_for_line(demo, "Ctrl-C").await;
    let demo_pid = demo.id().unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], port));
    let dashboard = SocketAddr::from(([127, 0, 0, 1], port + 2));
    assert_eq!(
        shown_state(dashboard, "stockdata-2").await.as_deref(),
        Some("up")
    );

    // StockWeb loaded in a loop, as a user reloading the page.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut pages, mut failed, mut by_killed) = (0u64, Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let body = http_get(web, "/api/stocks").await;
                let (servers, _, rows) = parse_stocks(body.as_bytes()).expect("StockWeb's JSON");
                assert_eq!(rows, 100);
                pages += 1;
                // Each failed row with why, so that a failure says it.
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                failed.extend(
                    json["rows"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|row| row["error"].as_str().map(str::to_owned)),
                );
                by_killed += servers.get("stockdata-2").copied().unwrap_or(0);
            }
            (pages, failed, by_killed)
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let victim = child_with(demo_pid, &["stockdata", "stockdata-2"]);
    let seen = kill_and_watch(victim, dashboard, "stockdata-2").await;
    assert_eq!(
        seen.first().map(String::as_str),
        Some("crashed"),
        "{seen:?}"
    );
    let page = http_get(dashboard, "/servers").await;
    let row = page
        .split(r#"data-replica="stockdata-2""#)
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .unwrap();
    assert!(
        row.contains(r#"<td class="num">1</td>"#),
        "one restart: {row}"
    );
    assert!(row.contains("signal: 9 (SIGKILL)"), "{row}");
    let restarted = child_with(demo_pid, &["stockdata", "stockdata-2"]);
    assert_ne!(restarted, victim);

    // A sidecar killed: restarted too, and it fetches a new certificate.
    let app = args_of(child_with(demo_pid, &["stockdata", "stockdata-3"]))
        .windows(2)
        .find(|pair| pair[0] == "--listen")
        .map(|pair| pair[1].clone())
        .unwrap();
    let sidecar = child_with(demo_pid, &["mesh-proxy", "--app", &app]);
    let seen = kill_and_watch(sidecar, dashboard, "stockdata-3").await;
    assert_eq!(
        seen.first().map(String::as_str),
        Some("crashed"),
        "{seen:?}"
    );

    // It serves again, and the load never lost a row.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (pages, failed, by_killed) = load.await.unwrap();
    assert!(pages >= 5, "{pages} page loads");
    assert!(
        failed.is_empty(),
        "{} rows failed in {pages} page loads: {failed:?}",
        failed.len()
    );
    assert!(
        by_killed > 0,
        "stockdata-2 served nothing after its restart"
    );
    assert!(demo.try_wait().unwrap().is_none(), "the demo runs on");
}

#[tokio::test]
async fn the_controllers_death_ends_the_demo_with_a_clear_message() {
    let port = free_port_triple();
    let child = crate::meshctl()
        .args(["demo", "--replicas", "1", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false)
        .spawn()
        .unwrap();
    let mut guard = Demo(child);
    let demo = &mut guard.0;
    wait_for_line(demo, "Ctrl-C").await;
    let demo_pid = demo.id().unwrap();
    let children = children_of(demo_pid);
    // A front end first: restarted, the demo goes on.
    sigkill(child_with(
        demo_pid,
        &["stockweb", &format!("127.0.0.1:{}", port + 1)],
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        demo.try_wait().unwrap().is_none(),
        "a front end's death is survived"
    );

    sigkill(child_with(demo_pid, &["mesh-controller"]));
    let status = tokio::time::timeout(Duration::from_secs(60), demo.wait())
        .await
        .expect("the demo ends within 60 s of its controller's death")
        .unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    demo.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.contains(
            "stockweb (no mesh) exited unexpectedly (signal: 9 (SIGKILL)); restarting it in 1s"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("mesh-controller exited unexpectedly (signal: 9 (SIGKILL)); the demo cannot go on without its controller"),
        "{stderr}"
    );
    let left: Vec<u32> = children_of(demo_pid)
        .into_iter()
        .chain(children)
        .filter(|pid| alive(*pid))
        .collect();
    assert!(left.is_empty(), "children left running: {left:?}");
}

/// The dashboard's token from the Servers page's forms.
async fn form_token(dashboard: SocketAddr) -> String {
    let page = http_get(dashboard, "/servers").await;
    page.split(r#"name="token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form token")
        .to_owned()
}

/// A form POST to the dashboard, as its own page sends it: the status line
/// and the body.
async fn post_form(dashboard: SocketAddr, path: &str, token: &str) -> (String, String) {
    use mesh_runtime::test_http::{Request, send};
    let request = Request::post(path)
        .host(&dashboard.to_string())
        .header("origin", &format!("http://{dashboard}"))
        .header("sec-fetch-site", "same-origin")
        .form(&format!("token={token}"));
    let answer = send(dashboard, request).await.unwrap();
    (answer.head.lines().next().unwrap().to_owned(), answer.body)
}

#[tokio::test]
async fn replicas_are_capped_and_the_demo_api_answers_only_the_dashboard() {
    let port = free_port_triple();
    let mut guard = Demo::start(&[
        "--replicas",
        "1",
        "--max-replicas",
        "2",
        "--port",
        &port.to_string(),
    ]);
    let demo = &mut guard.0;
    wait_for_line(demo, "Ctrl-C").await;
    let dashboard = SocketAddr::from(([127, 0, 0, 1], port + 2));
    let token = form_token(dashboard).await;
    let (status, _) = post_form(dashboard, "/demo/replicas", &token).await;
    assert_eq!(status, "HTTP/1.1 303 See Other");
    let (status, body) = post_form(dashboard, "/demo/replicas", &token).await;
    assert!(status.starts_with("HTTP/1.1 409"), "{status}");
    assert!(
        body.contains("2 replicas run already, the most this demo runs (--max-replicas 2)"),
        "{body}"
    );
    assert_eq!(
        shown_state(dashboard, "stockdata-2").await.as_deref(),
        Some("up")
    );
    assert_eq!(shown_state(dashboard, "stockdata-3").await, None);

    // The demo API itself, found on the dashboard's command line: nothing
    // without the token the dashboard was given.
    let dashboard_pid = child_with(demo.id().unwrap(), &["mesh-dashboard"]);
    let api: SocketAddr = args_of(dashboard_pid)
        .windows(2)
        .find(|pair| pair[0] == "--demo-api")
        .and_then(|pair| pair[1].strip_prefix("http://")?.parse().ok())
        .unwrap();
    for (method, path, auth) in [
        ("GET", "/replicas", None),
        ("POST", "/replicas", None),
        ("POST", "/replicas/stockdata-1/kill", Some("Bearer guessed")),
    ] {
        let mut request =
            mesh_runtime::test_http::Request::new(method, path).host(&api.to_string());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let answer = mesh_runtime::test_http::send(api, request).await.unwrap();
        assert_eq!(answer.status, 401, "{method} {path}: {}", answer.text());
    }
    assert_eq!(
        shown_state(dashboard, "stockdata-1").await.as_deref(),
        Some("up")
    );
}

/// Outside the demo (compose, a VM), a sidecar registers itself; SIGKILLed,
/// it cannot withdraw, and the controller's lease drops it: gone from the
/// dashboard within three of its renewal intervals.
#[tokio::test]
async fn a_sigkilled_self_registered_sidecar_leaves_the_dashboard_within_three_renewals() {
    use tokio::process::Command;
    let free = || std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
    let (controller, admin, dashboard) = (free(), free(), free());
    let spawn = |name: &str, args: &[String]| {
        Command::new(crate::bin(name))
            .args(args)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    // A 5 s lease: renewals every 2 s.
    let _controller = spawn(
        "mesh-controller",
        &[
            "--listen".into(),
            controller.to_string(),
            "--registration-lease".into(),
            "5s".into(),
        ],
    );
    let _dashboard = spawn(
        "mesh-dashboard",
        &[
            "--listen".into(),
            dashboard.to_string(),
            "--controller".into(),
            format!("http://{controller}"),
            "--scrape-interval".into(),
            "250ms".into(),
            "--window".into(),
            "10s".into(),
        ],
    );
    let proxy = spawn(
        "mesh-proxy",
        &[
            "--outbound".into(),
            "stockdata=127.0.0.1:0".into(),
            "--admin".into(),
            admin.to_string(),
            "--destination".into(),
            format!("http://{controller}"),
            "--register-workload".into(),
            "stockweb".into(),
            "--register-instance".into(),
            "stockweb-9".into(),
            "--advertise".into(),
            "127.0.0.1".into(),
        ],
    );
    let listed = || async {
        // Not listening yet reads as not listed.
        tokio::net::TcpStream::connect(dashboard).await.ok()?;
        let proxies: serde_json::Value =
            serde_json::from_str(&http_get(dashboard, "/api/proxies").await).ok()?;
        Some(
            proxies
                .as_array()?
                .iter()
                .any(|p| p["instance"] == "stockweb-9"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed().await != Some(true) {
        assert!(Instant::now() < deadline, "the sidecar never showed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Listed through several leases: it renews.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(listed().await, Some(true), "dropped while it ran");

    sigkill(proxy.id().unwrap());
    let killed_at = Instant::now();
    while listed().await != Some(false) {
        assert!(
            killed_at.elapsed() <= Duration::from_secs(6),
            "still on the dashboard 3 renewal intervals (6 s) after SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "gone from the dashboard {:?} after SIGKILL",
        killed_at.elapsed()
    );
}
