//! The demo in real containers: `docker/build.sh` builds the images,
//! `docker-compose up` runs the mesh under a project name of its own on free
//! host ports, and the test checks what a user would: StockWeb with the mesh
//! spreads over all 3 replicas, without it sticks to 1, the dashboard serves,
//! a killed replica costs no row, and `down` leaves nothing behind.

use crate::free_port_triple;
use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `docker-compose` (1.29 on these machines), else the `docker compose` plugin.
fn compose_command() -> Option<Vec<&'static str>> {
    let works = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    [&["docker-compose"][..], &["docker", "compose"][..]]
        .into_iter()
        .find(|args| works(args))
        .map(<[&str]>::to_vec)
}

fn docker_ready() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One compose project; `down` on drop, so a failing test leaves nothing.
struct Project {
    compose: Vec<&'static str>,
    name: String,
    ports: [u16; 3],
}

impl Project {
    fn command(&self) -> Command {
        let mut command = Command::new(self.compose[0]);
        command
            .args(&self.compose[1..])
            .args(["--project-name", &self.name])
            .current_dir(repo())
            .env("STOCKWEB_PORT", self.ports[0].to_string())
            .env("STOCKWEB_PLAIN_PORT", self.ports[1].to_string())
            .env("DASHBOARD_PORT", self.ports[2].to_string());
        command
    }

    fn down(&self) -> Output {
        self.command()
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "5"])
            .output()
            .unwrap()
    }

    fn left_behind(&self, what: &str) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut args = vec![what];
        if what == "ps" {
            args.push("-a");
        } else {
            args.push("ls");
        }
        let output = run(Command::new("docker")
            .args(&args)
            .args(["--filter", &label, "-q"]));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// StockWeb's `/api/stocks`: rows per server and errors, if it answers.
fn stocks(port: u16) -> Option<crate::Stocks> {
    let output = Command::new("curl")
        .args(["-fsS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/api/stocks"))
        .output()
        .ok()?;
    crate::parse_stocks(&output.stdout)
}

fn status(port: u16, path: &str) -> String {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `check` every half second until it gives a value, for at most
/// `limit`. (The checks run blocking commands; nothing else runs here.)
async fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < give_up, "no {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn docker_compose_runs_the_demo_in_containers() {
    let compose = compose_command();
    if compose.is_none() || !docker_ready() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Docker with docker-compose (or the compose plugin) is required with CI=true: \
             this project's machines have a Docker engine; is the daemon running?"
        );
        eprintln!("SKIPPED: no Docker engine or no docker-compose");
        return;
    }
    run(Command::new(repo().join("docker/build.sh"))
        .env(crate::IMAGE_PROFILE.0, crate::IMAGE_PROFILE.1)
        .current_dir(repo()));

    let first = free_port_triple();
    let project = Project {
        compose: compose.unwrap(),
        name: format!("stockkube-test-{}", std::process::id()),
        ports: [first, first + 1, first + 2],
    };
    run(project.command().args(["up", "-d"]));

    let [meshed, plain, dashboard] = project.ports;
    let (servers, errors, rows) = wait_for(
        "StockWeb spreading over 3 replicas",
        Duration::from_secs(90),
        || stocks(meshed).filter(|(servers, _, _)| servers.len() == 3),
    )
    .await;
    assert_eq!((errors, rows), (0, 100), "{servers:?}");
    let (servers, errors, _) =
        wait_for("StockWeb without the mesh", Duration::from_secs(60), || {
            stocks(plain)
        })
        .await;
    assert_eq!(servers.len(), 1, "one connection, one replica: {servers:?}");
    assert_eq!(servers.values().sum::<u64>(), 100);
    assert_eq!(errors, 0);
    for path in ["/", "/topology", "/servers", "/api/overview"] {
        assert_eq!(status(dashboard, path), "200", "dashboard {path}");
    }

    // Between the sidecars it is mTLS: the dashboard reads it from the
    // metrics, and a replica's sidecar answers TLS as its workload's
    // identity with a chain the project's trust anchor verifies.
    let replicas = wait_for(
        "every serving replica reached over mTLS",
        Duration::from_secs(30),
        || {
            // Traffic within the dashboard's window: it counts increases.
            stocks(meshed)?;
            let output = Command::new("curl")
                .args(["-fsS", "--max-time", "10"])
                .arg(format!("http://127.0.0.1:{dashboard}/api/servers"))
                .output()
                .ok()?;
            let view: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            let replicas: Vec<serde_json::Value> = view["services"][0]["replicas"]
                .as_array()?
                .iter()
                .filter(|r| r["served"].as_f64() > Some(0.0))
                .cloned()
                .collect();
            (replicas.len() == 3 && replicas.iter().all(|r| r["security"]["state"] == "mtls"))
                .then_some(replicas)
        },
    )
    .await;
    assert_eq!(
        replicas[0]["security"]["identities"][0],
        "spiffe://cluster.local/ns/compose/sa/stockdata"
    );
    let container = |service: &str| {
        let id = run(project.command().args(["ps", "-q", service]));
        String::from_utf8_lossy(&id.stdout).trim().to_owned()
    };
    let scratch = std::env::temp_dir().join(format!("compose-identity-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let anchors = scratch.join("ca.crt");
    run(Command::new("docker")
        .arg("cp")
        .arg(format!(
            "{}:/var/run/stockkube/identity/ca.crt",
            container("controller")
        ))
        .arg(&anchors));
    let ip = run(Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &container("stockdata-1-proxy"),
    ]));
    let ip = String::from_utf8_lossy(&ip.stdout).trim().to_owned();
    let shown = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("{ip}:4143"),
            "-tls1_3",
            "-verify_return_error",
        ])
        .args([
            "-servername",
            "stockdata.compose.serviceaccount.identity.cluster.local",
        ])
        .arg("-CAfile")
        .arg(&anchors)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");

    // A replica's app container killed outright: its sidecar answers
    // UNAVAILABLE for it and the client's proxy retries elsewhere.
    let id = run(project.command().args(["ps", "-q", "stockdata-2"]));
    let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    assert!(!id.is_empty(), "stockdata-2 has a container");
    run(Command::new("docker").args(["kill", &id]));
    for _ in 0..3 {
        let (servers, errors, rows) = stocks(meshed).expect("StockWeb answers");
        assert_eq!((errors, rows), (0, 100), "no row lost: {servers:?}");
        assert!(!servers.contains_key("stockdata-2"), "{servers:?}");
    }

    // The init container's image loads its rules (into its own namespace),
    // inbound only, both ways and for IPv6, as the injected sidecar asks.
    for args in [
        &[][..],
        &["--outbound-port", "4140", "--proxy-uid", "2102", "--ipv6"][..],
    ] {
        run(Command::new("docker")
            .args([
                "run",
                "--rm",
                // Read-only, as the injected init container's securityContext says.
                "--read-only",
                "--cap-add",
                "NET_ADMIN",
                "--cap-add",
                "NET_RAW",
            ])
            .arg("stockkube/mesh-proxy-init:dev")
            .args(args));
    }

    let down = project.down();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(
        project.left_behind("ps"),
        Vec::<String>::new(),
        "containers left"
    );
    assert_eq!(
        project.left_behind("network"),
        Vec::<String>::new(),
        "networks left"
    );
}
