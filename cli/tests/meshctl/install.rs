//! `meshctl install` / `uninstall`: the committed `k8s/mesh/` files are
//! its default output, everything validates strictly, the webhook's
//! `caBundle` verifies the serving certificate in the Secret, and the
//! options reach the objects.

use crate::{
    inject::{assert_valid, docs, fails, kubernetes_validate, ok},
    repo,
};
use base64::Engine as _;
use mesh_controller::tls;
use std::{path::PathBuf, time::SystemTime};
use yaml_rust2::Yaml;

fn find<'a>(documents: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    documents
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn decode(yaml: &Yaml) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(yaml.as_str().expect("a base64 string"))
        .expect("valid base64")
}

/// The certificate material of an install: (CA bundle, serving certificate,
/// key), all PEM.
pub(crate) fn certificates(documents: &[Yaml]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let secret = find(documents, "Secret", "mesh-injector-tls");
    let webhook = find(
        documents,
        "MutatingWebhookConfiguration",
        "stockkube-mesh-injector",
    );
    (
        decode(&webhook["webhooks"][0]["clientConfig"]["caBundle"]),
        decode(&secret["data"]["tls.crt"]),
        decode(&secret["data"]["tls.key"]),
    )
}

const GENERATED: [&str; 3] = ["Secret", "ConfigMap", "MutatingWebhookConfiguration"];

#[test]
fn the_committed_manifests_are_the_default_install_without_its_certificates() {
    let (out, _) = ok(&["install"], "");
    let printed: Vec<Yaml> = docs(&out)
        .into_iter()
        .filter(|d| !GENERATED.contains(&d["kind"].as_str().unwrap()))
        .collect();
    let mut committed = Vec::new();
    for file in ["namespace", "controller", "injector", "dashboard"] {
        let text = std::fs::read_to_string(repo(&format!("k8s/mesh/{file}.yml"))).unwrap();
        committed.extend(docs(&text));
    }
    assert_eq!(
        printed, committed,
        "k8s/mesh/*.yml must be what `meshctl install` prints, without the Secret and the webhook configuration"
    );
}

#[test]
fn the_ca_bundle_verifies_the_serving_certificate_and_each_install_has_its_own() {
    let (out, _) = ok(&["install"], "");
    let documents = docs(&out);
    let (ca, cert, key) = certificates(&documents);
    let now = SystemTime::now();
    for name in [
        "mesh-injector.stockkube-mesh.svc",
        "mesh-injector.stockkube-mesh.svc.cluster.local",
    ] {
        tls::verify_serving(&ca, &cert, name, now).unwrap();
    }
    assert!(tls::verify_serving(&ca, &cert, "mesh-controller.stockkube-mesh.svc", now).is_err());
    tls::certified_key(&cert, &key).expect("the key fits the certificate");
    let days_left = (tls::not_after(&cert, "cert").unwrap()
        - now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64)
        / 86_400;
    assert!((364..=365).contains(&days_left), "{days_left} days");

    // The key is printed once, in the Secret, and the CA's key not at all.
    let key_base64 = base64::engine::general_purpose::STANDARD.encode(&key);
    assert_eq!(out.matches(&key_base64).count(), 1);
    assert!(
        !out.contains("PRIVATE KEY"),
        "keys only base64 in the Secret"
    );
    // Clear text only for what is public: the trust anchor, in its ConfigMap.
    assert_eq!(
        out.matches("-----BEGIN").count(),
        1,
        "no other PEM in clear text"
    );
    let anchors = find(&documents, "ConfigMap", "mesh-identity-trust-anchors");
    assert!(
        anchors["data"]["ca.crt"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    let (again, _) = ok(&["install"], "");
    let (other_ca, other_cert, _) = certificates(&docs(&again));
    assert_ne!(other_ca, ca, "a fresh CA per install");
    assert!(
        tls::verify_serving(&ca, &other_cert, "mesh-injector.stockkube-mesh.svc", now).is_err()
    );
    tls::verify_serving(
        &other_ca,
        &other_cert,
        "mesh-injector.stockkube-mesh.svc",
        now,
    )
    .unwrap();
}

#[test]
fn options_reach_the_objects() {
    let (out, _) = ok(
        &[
            "install",
            "--namespace",
            "mesh-system",
            "--registry",
            "registry.example/stockkube",
            "--tag",
            "v0.1.0",
            "--ha",
            "--native-sidecar=false",
            "--proxy-memory-limit",
            "96Mi",
        ],
        "",
    );
    let documents = docs(&out);
    let controller = find(&documents, "Deployment", "mesh-controller");
    assert_eq!(
        controller["metadata"]["namespace"].as_str(),
        Some("mesh-system")
    );
    assert_eq!(controller["spec"]["replicas"].as_i64(), Some(3));
    assert_eq!(
        controller["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
        Some("registry.example/stockkube/mesh-controller:v0.1.0")
    );
    assert!(!controller["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_badvalue());
    for name in ["mesh-controller", "mesh-injector"] {
        find(&documents, "PodDisruptionBudget", name);
    }
    let injector = find(&documents, "Deployment", "mesh-injector");
    assert_eq!(injector["spec"]["replicas"].as_i64(), Some(3));
    let env: Vec<(&str, &str)> = injector["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    for expected in [
        ("MESH_INJECTOR_NATIVE_SIDECAR", "false"),
        ("MESH_INJECTOR_PROXY_MEMORY_LIMIT", "96Mi"),
        (
            "MESH_INJECTOR_PROXY_IMAGE",
            "registry.example/stockkube/mesh-proxy:v0.1.0",
        ),
        ("MESH_INJECTOR_CONTROL_PLANE_NAMESPACE", "mesh-system"),
        (
            "MESH_INJECTOR_DESTINATION",
            "http://mesh-controller.mesh-system.svc.cluster.local:8086",
        ),
    ] {
        assert!(env.contains(&expected), "{expected:?} in {env:?}");
    }
    let (ca, cert, _) = certificates(&documents);
    tls::verify_serving(
        &ca,
        &cert,
        "mesh-injector.mesh-system.svc",
        SystemTime::now(),
    )
    .unwrap();
    let webhook = find(
        &documents,
        "MutatingWebhookConfiguration",
        "stockkube-mesh-injector",
    );
    assert_eq!(
        webhook["webhooks"][0]["clientConfig"]["service"]["namespace"].as_str(),
        Some("mesh-system")
    );

    let (out, _) = ok(&["install", "--replicas", "2"], "");
    let documents = docs(&out);
    assert_eq!(
        find(&documents, "Deployment", "mesh-controller")["spec"]["replicas"].as_i64(),
        Some(2)
    );
    assert!(
        documents
            .iter()
            .all(|d| d["kind"].as_str() != Some("PodDisruptionBudget"))
    );

    for bad in [
        &["install", "--replicas", "0"][..],
        &["install", "--namespace", ""],
        &["install", "--native-sidecar=maybe"],
    ] {
        let err = fails(bad, "");
        assert!(!err.is_empty(), "{bad:?}");
    }
}

#[test]
fn uninstall_removes_the_webhook_first_and_the_namespace_last() {
    let (out, _) = ok(&["uninstall"], "");
    let documents = docs(&out);
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"MutatingWebhookConfiguration"));
    assert_eq!(kinds.last(), Some(&"Namespace"));
    assert_eq!(kinds.iter().filter(|k| **k == "ClusterRole").count(), 2);
}

#[test]
fn install_and_uninstall_validate_strictly() {
    let Some(validate) = kubernetes_validate() else {
        eprintln!("SKIPPED: kubernetes-validate is not installed (scripts/test.sh installs it)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("meshctl-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, args) in [
        ("default", &["install"][..]),
        ("ha", &["install", "--ha", "--native-sidecar=false"]),
        ("uninstall", &["uninstall"]),
    ] {
        let (out, _) = ok(args, "");
        let file = dir.join(format!("{name}.yml"));
        std::fs::write(&file, out).unwrap();
        files.push(file);
    }
    assert_valid(&validate, &files);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The identity service's authority: the issuer chains to the trust anchor
/// (`openssl verify`), its key is the certificate's, and the controller
/// reads them from where the Secret is mounted.
#[test]
fn the_identity_issuer_chains_to_its_trust_anchor_and_the_controller_mounts_it() {
    let (out, _) = ok(&["install"], "");
    let documents = docs(&out);
    let secret = find(&documents, "Secret", "mesh-identity-issuer");
    let dir = std::env::temp_dir().join(format!("meshctl-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["ca.crt", "issuer.crt", "issuer.key"] {
        std::fs::write(dir.join(file), decode(&secret["data"][file])).unwrap();
    }
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("openssl is installed (scripts/test.sh)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    openssl(&["verify", "-CAfile", "ca.crt", "issuer.crt"]);
    assert_eq!(
        openssl(&["x509", "-noout", "-pubkey", "-in", "issuer.crt"]),
        openssl(&["pkey", "-pubout", "-in", "issuer.key"]),
        "the issuer's key is its certificate's"
    );
    let controller = find(&documents, "Deployment", "mesh-controller");
    let pod = &controller["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"].as_str(),
        Some("mesh-identity-issuer")
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["volumeMounts"][0]["mountPath"].as_str(),
        Some("/var/run/stockkube/identity")
    );
    let role = find(&documents, "ClusterRole", "stockkube-mesh-controller");
    assert!(
        role["rules"]
            .as_vec()
            .unwrap()
            .iter()
            .any(|r| r["resources"][0].as_str() == Some("tokenreviews")
                && r["verbs"][0].as_str() == Some("create")),
        "the controller may ask for TokenReviews"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
