//! `meshctl check` against a fake API server in the real wire format: a
//! healthy install (every line ✔, exit 0) and broken ones (an injector
//! certificate expiring in 10 days, a caBundle that does not match, a
//! control-plane pod not ready, RBAC that forbids installing, no API
//! server), each with its own line and a non-zero exit.

use crate::{
    inject::{docs, ok},
    yaml_to_json,
};
use base64::Engine as _;
use mesh_controller::{test_util::FakeApiServer, tls::ServingCertificate};
use serde_json::{Value, json};
use std::{path::PathBuf, process::Stdio, time::Duration};
use tokio::process::Command;

/// A kubeconfig for `api` in a scratch directory of its own, removed with it.
struct Kubeconfig(PathBuf);

impl Kubeconfig {
    fn new(api: &FakeApiServer, dir_name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("meshctl-check-{dir_name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(api.write_kubeconfig(&dir))
    }
}

impl std::ops::Deref for Kubeconfig {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What a healthy cluster with the mesh installed serves: the install's
/// namespace, Secret and webhook configuration, a ready pod per component
/// and a meshed pod whose proxy is ready.
async fn healthy(dir_name: &str) -> (FakeApiServer, Kubeconfig) {
    let api = FakeApiServer::start().await;
    let kubeconfig = Kubeconfig::new(&api, dir_name);
    let (out, _) = ok(&["install"], "");
    for document in docs(&out) {
        let kind = document["kind"].as_str().unwrap();
        if ["Namespace", "Secret", "MutatingWebhookConfiguration"].contains(&kind) {
            api.apply(yaml_to_json(&document));
        }
    }
    for component in ["mesh-controller", "mesh-injector", "mesh-dashboard"] {
        api.apply(control_plane_pod(component, true));
    }
    api.apply(json!({
        "kind": "Pod",
        "metadata": {
            "namespace": "stocks",
            "name": "stockdata-6d9f7c5b8-x7k2p",
            "annotations": {"stockkube.io/proxy-version": env!("CARGO_PKG_VERSION")},
        },
        "spec": {
            "initContainers": [
                {"name": "mesh-init", "image": "stockkube/mesh-proxy-init:dev"},
                {"name": "mesh-proxy", "image": "stockkube/mesh-proxy:dev", "restartPolicy": "Always"},
            ],
            "containers": [{"name": "stockdata", "image": "stockkube/stockdata:dev"}],
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "initContainerStatuses": [
                {"name": "mesh-init", "ready": false, "restartCount": 0, "image": "x", "imageID": ""},
                {"name": "mesh-proxy", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "started": true},
            ],
            "containerStatuses": [
                {"name": "stockdata", "ready": true, "restartCount": 0, "image": "x", "imageID": ""},
            ],
        },
    }));
    (api, kubeconfig)
}

fn control_plane_pod(component: &str, ready: bool) -> Value {
    json!({
        "kind": "Pod",
        "metadata": {
            "namespace": "stockkube-mesh",
            "name": format!("{component}-5f7d8c9b6-q2w3e"),
            "labels": {"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": "stockkube-mesh"},
        },
        "spec": {"containers": [{"name": "main", "image": format!("stockkube/{component}:dev")}]},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

/// Secret and webhook configuration with the given certificates.
fn injector_certificates(api: &FakeApiServer, served: &ServingCertificate, trusted_ca: &str) {
    let base64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    api.apply(json!({
        "kind": "Secret",
        "metadata": {"namespace": "stockkube-mesh", "name": "mesh-injector-tls"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64(&served.cert_pem), "tls.key": base64(&served.key_pem)},
    }));
    api.apply(json!({
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "stockkube-mesh-injector"},
        "webhooks": [{
            "name": "inject.stockkube.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "clientConfig": {
                "service": {"name": "mesh-injector", "namespace": "stockkube-mesh", "path": "/inject", "port": 443},
                "caBundle": base64(trusted_ca),
            },
        }],
    }));
}

fn generate(valid_for: Duration) -> ServingCertificate {
    ServingCertificate::generate(
        "test CA",
        &["mesh-injector.stockkube-mesh.svc".to_owned()],
        valid_for,
    )
    .unwrap()
}

/// Runs `meshctl check ARGS` against the kubeconfig: (success, stdout).
async fn check(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("check")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), stdout)
}

fn lines_with<'a>(text: &'a str, symbol: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(symbol)).collect()
}

#[tokio::test]
async fn a_healthy_install_passes_every_check() {
    let (_api, kubeconfig) = healthy("healthy").await;
    let (success, out) = check(&kubeconfig, &[]).await;
    assert!(success, "{out}");
    assert!(
        lines_with(&out, "×").is_empty() && lines_with(&out, "‼").is_empty(),
        "{out}"
    );
    for expected in [
        "✔ can reach the API server (v1.33.1)",
        "✔ Kubernetes 1.33 is supported, with native sidecars",
        "✔ this machine's clock agrees with the API server's",
        "✔ mesh-injector: 1 of 1 pods ready",
        "✔ the webhook's caBundle trusts the injector's certificate for mesh-injector.stockkube-mesh.svc",
        "✔ the injector's certificate is valid for 365 more days",
        "✔ the proxies of all 1 meshed pods are ready",
        "Status check results are ✔",
    ] {
        assert!(out.contains(expected), "{expected:?} in\n{out}");
    }
    let (success, json) = check(&kubeconfig, &["-o", "json"]).await;
    assert!(success);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["success"], true);
    let checks = json["checks"].as_array().unwrap();
    assert!(checks.len() >= 10, "{json}");
    assert!(checks.iter().all(|c| c["status"] == "ok"), "{json}");
    assert!(
        checks
            .iter()
            .all(|c| c["docs"].as_str().unwrap().starts_with("docs/check.md#"))
    );
}

#[tokio::test]
async fn each_broken_state_has_its_own_failing_line() {
    // The injector's certificate expires in 10 days.
    let (api, kubeconfig) = healthy("expiring").await;
    let expiring = generate(Duration::from_secs(10 * 24 * 3600));
    injector_certificates(&api, &expiring, &expiring.ca_pem);
    let (success, out) = check(&kubeconfig, &[]).await;
    assert!(!success, "{out}");
    assert_eq!(
        lines_with(&out, "×"),
        ["× the injector's certificate expires in 10 days (less than 60)"],
        "{out}"
    );
    assert!(
        out.contains("see docs/check.md#webhook-certificate"),
        "{out}"
    );

    // The caBundle is another CA's.
    let (api, kubeconfig) = healthy("mismatch").await;
    let served = generate(Duration::from_secs(365 * 24 * 3600));
    let other = generate(Duration::from_secs(365 * 24 * 3600));
    injector_certificates(&api, &served, &other.ca_pem);
    let (success, out) = check(&kubeconfig, &[]).await;
    assert!(!success);
    let failures = lines_with(&out, "×");
    assert_eq!(failures.len(), 1, "{out}");
    assert!(
        failures[0]
            .starts_with("× the webhook's caBundle does not verify the injector's certificate"),
        "{out}"
    );

    // A control-plane pod is not ready.
    let (api, kubeconfig) = healthy("not-ready").await;
    api.apply(control_plane_pod("mesh-injector", false));
    let (success, out) = check(&kubeconfig, &[]).await;
    assert!(!success);
    assert_eq!(
        lines_with(&out, "×"),
        [
            "× mesh-injector: 0 of 1 pods ready; not ready: stockkube-mesh/mesh-injector-5f7d8c9b6-q2w3e"
        ],
        "{out}"
    );

    // RBAC forbids creating ClusterRoles: the pre-install check fails.
    let api = FakeApiServer::start().await;
    let kubeconfig = Kubeconfig::new(&api, "pre");
    let (success, out) = check(&kubeconfig, &["--pre"]).await;
    assert!(success, "{out}");
    assert!(
        out.contains("✔ can create mutatingwebhookconfigurations"),
        "{out}"
    );
    assert!(
        out.contains("✔ namespace stockkube-mesh does not exist yet"),
        "{out}"
    );
    api.deny("create", "clusterroles");
    let (success, out) = check(&kubeconfig, &["--pre"]).await;
    assert!(!success);
    assert_eq!(
        lines_with(&out, "×"),
        ["× cannot create clusterroles: forbidden"],
        "{out}"
    );

    // An old cluster warns (native sidecars) but does not fail.
    api.set_version("v1.28.4");
    let api_requests = api.requests().len();
    let (_, out) = check(&kubeconfig, &["--pre"]).await;
    assert!(
        out.contains("‼ Kubernetes 1.28 has no native sidecars"),
        "{out}"
    );
    assert!(api.requests().len() > api_requests);

    // No API server at all.
    drop(api);
    let (success, out) = check(&kubeconfig, &[]).await;
    assert!(!success);
    let failures = lines_with(&out, "×");
    assert_eq!(failures.len(), 1, "{out}");
    assert!(
        failures[0].starts_with("× cannot reach the API server"),
        "{out}"
    );
}

/// Every check's `docs` anchor is a section of docs/check.md.
#[test]
fn every_check_has_its_section_in_the_docs() {
    let docs = std::fs::read_to_string(crate::repo("docs/check.md")).unwrap();
    let source = std::fs::read_to_string(crate::repo("cli/src/check/checks.rs")).unwrap();
    // Every id the checks use: the second argument of Check::ok/warning/error.
    let mut ids = std::collections::BTreeSet::new();
    for call in source.split("Check::").skip(1) {
        let Some(args) = call.split_once('(').map(|(_, rest)| rest) else {
            continue;
        };
        let mut parts = args.splitn(3, ',');
        let (Some(_), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        let id = id.trim();
        if let Some(id) = id.strip_prefix('"').and_then(|id| id.strip_suffix('"')) {
            ids.insert(id.to_owned());
        }
    }
    assert!(ids.len() >= 12, "{ids:?}");
    for id in ids {
        assert!(
            docs.contains(&format!("\n### {id}\n")),
            "docs/check.md has no section {id}"
        );
    }
}
