//! `mesh-injector` as the API server calls it: over real TLS, by a client
//! (curl) that trusts only the CA of a `meshctl install`, with
//! AdmissionReviews shaped like the API server's (`tests/fixtures/admission`).
//! The patched pods equal what `meshctl inject --manual` writes and pass
//! `kubernetes-validate --strict`; skipped and unreadable reviews are
//! allowed with the reason; a new certificate in the mounted directory is
//! served without a restart.

use crate::{
    inject::{assert_valid, kubernetes_validate, ok},
    install::certificates,
    yaml_to_json,
};
use base64::Engine as _;
use mesh_controller::test_util::FakeApiServer;
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};
use yaml_rust2::YamlLoader;

const HOST: &str = "mesh-injector.stockkube-mesh.svc";

use crate::bin;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name)
}

/// The certificate material of a fresh install, written where the injector
/// and the client read it: `DIR/tls/tls.{crt,key}` and `DIR/ca.pem`.
fn install_into(dir: &Path) {
    let (ca, cert, key) = fresh_install();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    // The way a Secret's volume changes: the new files appear at once.
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("tls.crt"), cert).unwrap();
    std::fs::write(staging.join("tls.key"), key).unwrap();
    for file in ["tls.crt", "tls.key"] {
        std::fs::rename(staging.join(file), dir.join("tls").join(file)).unwrap();
    }
    // The identity service's trust anchor, as ConfigMap
    // mesh-identity-trust-anchors holds it.
    let authority = mesh_controller::identity::issuer::Authority::generate(
        "cluster.local",
        Duration::from_secs(3600),
    )
    .unwrap();
    std::fs::write(dir.join("anchors.pem"), authority.trust_anchor_pem).unwrap();
}

/// A fresh `meshctl install`'s CA bundle, certificate and key (PEM).
fn fresh_install() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (out, _) = ok(&["install"], "");
    certificates(&YamlLoader::load_from_str(&out).unwrap())
}

/// curl, trusting only `ca`, calling the injector by its Service's name.
async fn curl(port: u16, ca: &Path, path: &str, body: Option<&Path>) -> Result<Vec<u8>, String> {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("{HOST}:{port}:127.0.0.1")]);
    if let Some(body) = body {
        command
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()));
    }
    let output = command
        .arg(format!("https://{HOST}:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(format!(
            "curl {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

async fn review(port: u16, ca: &Path, body: &Path) -> Value {
    let answer = curl(port, ca, "/inject", Some(body)).await.unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    answer["response"].clone()
}

/// The pod the answer's patch makes of the review's pod.
fn patched(request: &Value, response: &Value) -> Value {
    assert_eq!(response["uid"], request["request"]["uid"]);
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// What `meshctl inject --manual` makes of `pod`, with the trust anchors
/// in `anchors`.
fn manual(pod: &Value, anchors: &Path) -> Value {
    let anchors = anchors.to_str().unwrap();
    let args = [
        "inject",
        "--manual",
        "--identity-trust-anchors",
        anchors,
        "-",
    ];
    let (out, _) = ok(&args, &pod.to_string());
    yaml_to_json(&YamlLoader::load_from_str(&out).unwrap()[0])
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

struct Injector {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Injector {
    async fn start(dir: &Path, api: &FakeApiServer) -> Self {
        let port = crate::free_port();
        let log = dir.join("injector.log");
        let child = Command::new(bin("mesh-injector"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--reload-every",
                "200ms",
            ])
            .args(["--tls-secret", "stockkube-mesh/mesh-injector-tls"])
            .arg("--tls-dir")
            .arg(dir.join("tls"))
            .arg("--identity-trust-anchors")
            .arg(dir.join("anchors.pem"))
            .env("KUBECONFIG", api.write_kubeconfig(dir))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("mesh-injector is built beside meshctl (cargo test --workspace)");
        Self { child, port, log }
    }

    /// Polls `/ready` through `ca` until it answers.
    async fn wait_trusted(&mut self, ca: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match curl(self.port, ca, "/ready", None).await {
                Ok(_) => return,
                Err(err) if Instant::now() < deadline => {
                    assert!(
                        self.child.try_wait().unwrap().is_none(),
                        "mesh-injector exited: {}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!(
                    "mesh-injector not trusted through {}: {err}\n{}",
                    ca.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }
}

#[tokio::test]
async fn the_webhook_injects_what_inject_manual_writes_over_tls() {
    let dir = std::env::temp_dir().join(format!("mesh-injector-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    install_into(&dir);
    let api = FakeApiServer::start().await;
    for (name, annotations) in [
        ("stocks", json!({})),
        ("meshed", json!({"stockkube.io/inject": "enabled"})),
        ("stockkube-mesh", json!({})),
    ] {
        api.apply(
            json!({"kind": "Namespace", "metadata": {"name": name, "annotations": annotations}}),
        );
    }
    let mut injector = Injector::start(&dir, &api).await;
    let ca = dir.join("ca.pem");
    injector.wait_trusted(&ca).await;
    let port = injector.port;

    // Asked for by the pod (Linkerd's annotation, as the tutorial's
    // manifests carry it), by the namespace, and a Job's pod.
    let mut injected = Vec::new();
    for name in [
        "stockdata-linkerd-annotation.json",
        "namespace-annotated.json",
        "job.json",
    ] {
        let request = read(&fixture(name));
        let response = review(port, &ca, &fixture(name)).await;
        let pod = patched(&request, &response);
        let expected = manual(&request["request"]["object"], &dir.join("anchors.pem"));
        assert_eq!(pod, expected, "{name}");
        let proxy = pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "mesh-proxy")
            .unwrap_or_else(|| panic!("{name}: the proxy among init containers"));
        assert_eq!(proxy["restartPolicy"], "Always", "{name}: a native sidecar");
        injected.push((name, pod));
    }
    let job = &injected[2].1;
    assert!(
        job["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "mesh-proxy"),
        "nothing but the Job's own container keeps its pod running"
    );

    // Not asked for (disabled on the pod, in an annotated namespace): left
    // alone without a word.
    let response = review(port, &ca, &fixture("disabled-in-annotated-namespace.json")).await;
    assert!(
        response.get("patch").is_none() && response.get("warnings").is_none(),
        "{response}"
    );

    // Asked for but impossible: left alone, with the reason.
    let mut again = read(&fixture("namespace-annotated.json"));
    again["request"]["object"] = injected[1].1.clone();
    again["request"]["uid"] = json!("c0ffee00-0000-4000-8000-000000000001");
    let already = dir.join("already-injected.json");
    std::fs::write(&already, again.to_string()).unwrap();
    let mut in_control_plane = read(&fixture("stockdata-linkerd-annotation.json"));
    in_control_plane["request"]["namespace"] = json!("stockkube-mesh");
    let control_plane = dir.join("control-plane.json");
    std::fs::write(&control_plane, in_control_plane.to_string()).unwrap();
    for (file, reason) in [
        (fixture("host-network.json"), "hostNetwork"),
        (already, "already has the mesh's proxy"),
        (control_plane, "control plane"),
    ] {
        let response = review(port, &ca, &file).await;
        assert_eq!(response["uid"], read(&file)["request"]["uid"]);
        assert!(response.get("patch").is_none(), "{response}");
        let warning = response["warnings"][0].as_str().unwrap();
        assert!(warning.contains(reason), "{warning}");
    }

    // Unreadable: allowed, with the reason; the injector keeps serving.
    let garbage = dir.join("garbage.json");
    std::fs::write(
        &garbage,
        "{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": [",
    )
    .unwrap();
    let oversized = dir.join("oversized.json");
    let padding = "x".repeat(5 * 1024 * 1024);
    std::fs::write(
        &oversized,
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "padding": padding})
            .to_string(),
    )
    .unwrap();
    for (file, reason) in [(garbage, "not JSON"), (oversized, "larger than")] {
        let response = review(port, &ca, &file).await;
        assert!(response.get("patch").is_none());
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");
    }
    injector.wait_trusted(&ca).await;

    // The patched pods are valid Kubernetes objects.
    if let Some(validate) = kubernetes_validate() {
        let files: Vec<PathBuf> = injected
            .iter()
            .map(|(name, pod)| {
                let mut pod = pod.clone();
                // As the API server stores it: a name instead of a prefix.
                pod["metadata"]["name"] = json!(format!(
                    "{}x7k2p",
                    pod["metadata"]["generateName"].as_str().unwrap()
                ));
                pod["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("creationTimestamp");
                let file = dir.join(format!("patched-{name}"));
                std::fs::write(&file, pod.to_string()).unwrap();
                file
            })
            .collect();
        assert_valid(&validate, &files);
    }

    // A client trusting another install's CA does not trust this injector;
    // once that install's certificate is mounted, it does, without a
    // restart, and the first CA no longer does.
    let first = dir.join("first-ca.pem");
    std::fs::rename(&ca, &first).unwrap();
    install_into(&dir);
    injector.wait_trusted(&ca).await;
    assert!(curl(port, &first, "/ready", None).await.is_err());
    assert!(
        injector.child.try_wait().unwrap().is_none(),
        "never restarted"
    );

    // A new install applied through the API: its Secret is served as soon
    // as it is seen, while the mounted files still hold the previous one
    // (the kubelet updates them up to a minute later), and those older
    // files do not take over again.
    let (api_ca, api_cert, api_key) = fresh_install();
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    api.apply(json!({
        "kind": "Secret",
        "metadata": {"namespace": "stockkube-mesh", "name": "mesh-injector-tls"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": encode(&api_cert), "tls.key": encode(&api_key)},
    }));
    let api_ca_path = dir.join("api-ca.pem");
    std::fs::write(&api_ca_path, api_ca).unwrap();
    injector.wait_trusted(&api_ca_path).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    curl(port, &api_ca_path, "/ready", None)
        .await
        .expect("still the Secret's certificate after several file checks");
    assert!(curl(port, &ca, "/ready", None).await.is_err());

    let log = std::fs::read_to_string(&injector.log).unwrap();
    assert!(log.contains("sidecar injected"), "{log}");
    assert!(log.contains("sidecar not injected"), "{log}");
    assert!(log.contains("serving the new certificate"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
