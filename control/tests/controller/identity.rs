//! The Identity service as a proxy meets it, through the `mesh-controller`
//! binary: a certificate signing request with a bootstrap credential
//! (local backend) or a ServiceAccount token checked by a TokenReview
//! (Kubernetes backend, a fake API server); the chain verifies with
//! `openssl verify` against the trust anchor alone; bad credentials are
//! refused with their gRPC code.

use mesh_controller::{identity::issuer::Authority, test_util::FakeApiServer};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use stockkube_proto::mesh::{CertifyRequest, identity_client::IdentityClient};
use tokio::process::{Child, Command};
use tonic::Code;

const WEB: &str = "spiffe://cluster.local/ns/stocks/sa/stockweb";
const CREDENTIAL: &str = "c2b1f0e8d7a6-stockweb-bootstrap";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-identity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the controller with `args`; a channel to it once it answers.
async fn controller(args: &[&str], env: &[(&str, &Path)]) -> (Child, tonic::transport::Channel) {
    let port = mesh_runtime::test_ports::free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mesh-controller"));
    command
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--certificate-lifetime",
            "10s",
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            return (child, channel);
        }
        assert!(child.try_wait().unwrap().is_none(), "the controller exited");
        assert!(Instant::now() < deadline, "the controller never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

fn request(identity: &str, token: &str) -> CertifyRequest {
    CertifyRequest {
        identity: identity.into(),
        token: token.into(),
        certificate_signing_request: csr(),
    }
}

/// `openssl verify` of the chain's leaf, trusting only the anchor.
async fn openssl_verifies(dir: &Path, chain: &str, anchor: &str) -> bool {
    let split =
        chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    let (leaf, issuer) = chain.split_at(split);
    for (name, text) in [
        ("leaf.pem", leaf),
        ("issuer.pem", issuer),
        ("anchor.pem", anchor),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let output = Command::new("openssl")
        .current_dir(dir)
        .args([
            "verify",
            "-CAfile",
            "anchor.pem",
            "-untrusted",
            "issuer.pem",
            "leaf.pem",
        ])
        .output()
        .await
        .expect("openssl is installed (scripts/test.sh)");
    output.status.success()
}

#[tokio::test]
async fn bootstrap_credentials_get_certificates_that_openssl_verifies() {
    let dir = scratch("bootstrap");
    let authority = Authority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    authority.write(&dir.join("ca")).unwrap();
    std::fs::write(
        dir.join("bootstrap"),
        format!("# the demo's workloads\nstocks/stockweb {CREDENTIAL}\n"),
    )
    .unwrap();
    let ca = dir.join("ca");
    let bootstrap = dir.join("bootstrap");
    let (_child, channel) = controller(
        &[
            "--identity-dir",
            ca.to_str().unwrap(),
            "--identity-bootstrap",
            bootstrap.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let mut client = IdentityClient::new(channel);

    let answer = client
        .certify(request(WEB, CREDENTIAL))
        .await
        .unwrap()
        .into_inner();
    assert!(openssl_verifies(&dir, &answer.certificate_chain, &authority.trust_anchor_pem).await);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (answer.valid_until - now - 10).abs() <= 2,
        "10 s lifetime: {}",
        answer.valid_until - now
    );
    let other = Authority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    assert!(
        !openssl_verifies(&dir, &answer.certificate_chain, &other.trust_anchor_pem).await,
        "another trust anchor does not verify it"
    );

    for (request, code) in [
        (
            request(WEB, "not-the-credential-at-all"),
            Code::Unauthenticated,
        ),
        (
            request("spiffe://cluster.local/ns/stocks/sa/stockdata", CREDENTIAL),
            Code::PermissionDenied,
        ),
        (request("stockweb", CREDENTIAL), Code::InvalidArgument),
        (
            CertifyRequest {
                certificate_signing_request: b"not a CSR".to_vec(),
                ..request(WEB, CREDENTIAL)
            },
            Code::InvalidArgument,
        ),
    ] {
        let status = client.certify(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn service_account_tokens_are_checked_with_a_token_review() {
    let dir = scratch("tokens");
    let authority = Authority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    authority.write(&dir.join("ca")).unwrap();
    let api = FakeApiServer::start().await;
    let audience = mesh_controller::identity::credentials::TOKEN_AUDIENCE;
    api.add_token(
        "valid",
        "system:serviceaccount:stocks:stockweb",
        &[audience],
        false,
    );
    api.add_token(
        "expired",
        "system:serviceaccount:stocks:stockweb",
        &[audience],
        true,
    );
    api.add_token(
        "for-the-api",
        "system:serviceaccount:stocks:stockweb",
        &["https://kubernetes.default.svc"],
        false,
    );
    api.add_token("a-person", "alice", &[audience], false);
    let kubeconfig = api.write_kubeconfig(&dir);
    let ca = dir.join("ca");
    let (_child, channel) = controller(
        &[
            "--backend",
            "kubernetes",
            "--identity-dir",
            ca.to_str().unwrap(),
        ],
        &[("KUBECONFIG", &kubeconfig)],
    )
    .await;
    let mut client = IdentityClient::new(channel);

    let answer = client
        .certify(request(WEB, "valid"))
        .await
        .unwrap()
        .into_inner();
    assert!(openssl_verifies(&dir, &answer.certificate_chain, &authority.trust_anchor_pem).await);
    for (token, identity, code, reason) in [
        ("expired", WEB, Code::Unauthenticated, "expired"),
        ("for-the-api", WEB, Code::Unauthenticated, "audience"),
        (
            "unknown",
            WEB,
            Code::Unauthenticated,
            "invalid bearer token",
        ),
        ("a-person", WEB, Code::Unauthenticated, "no service account"),
        (
            "valid",
            "spiffe://cluster.local/ns/stocks/sa/stockdata",
            Code::PermissionDenied,
            "stocks/stockweb",
        ),
    ] {
        let status = client.certify(request(identity, token)).await.unwrap_err();
        assert_eq!(status.code(), code, "{token}: {status:?}");
        assert!(
            status.message().contains(reason),
            "{token}: {}",
            status.message()
        );
    }
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews")),
        "{:?}",
        api.requests()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn identity_flags_that_do_not_fit_are_refused_at_start() {
    let dir = scratch("flags");
    for (args, expected) in [
        (
            vec!["--identity-bootstrap", "/nonexistent"],
            "--identity-bootstrap needs --identity-dir",
        ),
        (vec!["--identity-dir", dir.to_str().unwrap()], "cannot read"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A call's outcome as its gRPC code.
fn code<T>(result: Result<T, tonic::Status>) -> Result<(), Code> {
    result.map(drop).map_err(|s| s.code())
}

/// A Registry write carrying `credential`, if any.
fn as_caller<T>(message: T, credential: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(credential) = credential {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {credential}").parse().unwrap(),
        );
    }
    request
}

#[tokio::test]
async fn registry_writes_need_a_caller_that_may_make_them() {
    use stockkube_proto::mesh::{
        DeregisterRequest, Endpoint, ListRequest, ProxyInfo, RegisterRequest,
        registry_client::RegistryClient,
    };
    const DATA: &str = "spiffe://cluster.local/ns/stocks/sa/stockdata";
    const ADMIN: &str = "spiffe://cluster.local/ns/stocks/sa/meshctl";
    const DATA_CREDENTIAL: &str = "0f9e8d7c6b5a-stockdata-bootstrap";
    const ADMIN_CREDENTIAL: &str = "a1b2c3d4e5f6-meshctl-bootstrap";
    let dir = scratch("registry");
    Authority::generate("cluster.local", Duration::from_secs(3600))
        .unwrap()
        .write(&dir.join("ca"))
        .unwrap();
    std::fs::write(
        dir.join("bootstrap"),
        format!(
            "stocks/stockweb {CREDENTIAL}\nstocks/stockdata {DATA_CREDENTIAL}\nstocks/meshctl {ADMIN_CREDENTIAL}\n"
        ),
    )
    .unwrap();
    let (ca, bootstrap) = (dir.join("ca"), dir.join("bootstrap"));
    let (_child, channel) = controller(
        &[
            "--identity-dir",
            ca.to_str().unwrap(),
            "--identity-bootstrap",
            bootstrap.to_str().unwrap(),
            "--registry-admin",
            ADMIN,
        ],
        &[],
    )
    .await;
    let mut registry = RegistryClient::new(channel);
    let register = |identity: &str, port: u16| RegisterRequest {
        service: "stockdata".into(),
        endpoint: Some(Endpoint {
            addr: format!("127.0.0.1:{port}"),
            instance: "stockdata-1".into(),
            identity: identity.into(),
            ..Endpoint::default()
        }),
    };

    // Nobody, or a credential that proves nothing: UNAUTHENTICATED.
    let plaintext = registry.register(as_caller(register(DATA, 1), None)).await;
    assert_eq!(code(plaintext), Err(Code::Unauthenticated));
    let forged = as_caller(register(DATA, 1), Some("a-credential-nobody-issued"));
    assert_eq!(
        code(registry.register(forged).await),
        Err(Code::Unauthenticated)
    );
    let proxy = ProxyInfo {
        workload: "stockdata".into(),
        instance: "stockdata-1".into(),
        admin_addr: "127.0.0.1:4191".into(),
    };
    let anonymous = registry
        .register_proxy(as_caller(proxy.clone(), None))
        .await;
    assert_eq!(code(anonymous), Err(Code::Unauthenticated));

    // A workload registers only endpoints that prove its own identity.
    let own = as_caller(register(DATA, 1), Some(DATA_CREDENTIAL));
    assert_eq!(code(registry.register(own).await), Ok(()));
    let impostor = as_caller(register(DATA, 2), Some(CREDENTIAL));
    assert_eq!(
        code(registry.register(impostor).await),
        Err(Code::PermissionDenied)
    );
    let unproven = as_caller(register("", 3), Some(DATA_CREDENTIAL));
    assert_eq!(
        code(registry.register(unproven).await),
        Err(Code::PermissionDenied)
    );
    let theirs = DeregisterRequest {
        service: "stockdata".into(),
        addr: "127.0.0.1:1".into(),
    };
    let taken_down = registry
        .deregister(as_caller(theirs.clone(), Some(CREDENTIAL)))
        .await;
    assert_eq!(code(taken_down), Err(Code::PermissionDenied));

    // The admin writes anything; any known caller announces a proxy.
    let admin = as_caller(register("", 4), Some(ADMIN_CREDENTIAL));
    assert_eq!(code(registry.register(admin).await), Ok(()));
    let announced = registry
        .register_proxy(as_caller(proxy, Some(CREDENTIAL)))
        .await;
    assert_eq!(code(announced), Ok(()));

    // Reads stay open; what was refused is not there.
    let listed = registry.list(ListRequest {}).await.unwrap().into_inner();
    let addrs: Vec<&str> = listed.services[0]
        .endpoints
        .iter()
        .map(|e| e.addr.as_str())
        .collect();
    assert_eq!(addrs, ["127.0.0.1:1", "127.0.0.1:4"]);
    let own = registry
        .deregister(as_caller(theirs, Some(DATA_CREDENTIAL)))
        .await;
    assert!(own.unwrap().into_inner().removed);
    let _ = std::fs::remove_dir_all(&dir);
}
