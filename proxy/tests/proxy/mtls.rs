//! mTLS between proxies and inbound policy, with the real controller
//! (Destination, Registry, Identity) and, as peers nobody here wrote,
//! `curl` and `openssl`.

use crate::support::{Load, parse_prometheus, spawn_proxy, sum};
use clap::Parser as _;
use mesh_controller::{
    Registry,
    backend::EndpointMeta,
    identity::{
        IdentityService,
        credentials::Credentials,
        issuer::{Authority, Issuer},
    },
};
use rcgen::{CertificateParams, KeyPair, SanType};
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use stockdata::test_util::{connect, spawn_replica};
use stockkube_proto::stockdata::{GetRequest, stocks_client::StocksClient};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

const DOMAIN: &str = "cluster.local";

fn id(account: &str) -> String {
    format!("spiffe://{DOMAIN}/ns/stocks/sa/{account}")
}

fn dns(account: &str) -> String {
    format!("{account}.stocks.serviceaccount.identity.{DOMAIN}")
}

/// A controller with the Identity service (bootstrap credentials for every
/// account named) and a registry; files in a directory of its own.
struct Mesh {
    dir: PathBuf,
    authority: Authority,
    registry: Registry,
    controller: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), mesh_controller::ServeError>>,
}

impl Mesh {
    async fn start(name: &str, lifetime: Duration, accounts: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("mesh-mtls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let authority = Authority::generate(DOMAIN, Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.join("ca.crt"), &authority.trust_anchor_pem).unwrap();
        let mut credentials = HashMap::new();
        for account in accounts {
            let credential = format!("bootstrap-credential-of-{account}");
            std::fs::write(dir.join(format!("{account}.token")), &credential).unwrap();
            credentials.insert(credential, ("stocks".to_owned(), (*account).to_owned()));
        }
        let identity = IdentityService::new(
            DOMAIN,
            Issuer::new(&authority, lifetime).unwrap(),
            Credentials::Bootstrap(credentials),
        );
        let registry = Registry::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let controller = listener.local_addr().unwrap();
        let task = tokio::spawn(mesh_controller::run_with(
            registry.clone(),
            Some(identity),
            listener,
            std::future::pending(),
        ));
        Self {
            dir,
            authority,
            registry,
            controller,
            task,
        }
    }

    fn anchors(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The flags that give a proxy the identity of `account`.
    fn identity_flags(&self, account: &str) -> Vec<String> {
        vec![
            "--destination".into(),
            format!("http://{}", self.controller),
            "--identity".into(),
            id(account),
            "--identity-token-file".into(),
            self.dir
                .join(format!("{account}.token"))
                .display()
                .to_string(),
            "--identity-trust-anchors".into(),
            self.anchors().display().to_string(),
        ]
    }

    /// A server-side proxy for `app` with the identity of `account` and
    /// `flags` added, once it holds its certificate.
    async fn inbound_proxy(
        &self,
        account: &str,
        app: SocketAddr,
        flags: &[&str],
    ) -> crate::support::Proxy {
        let app = app.to_string();
        let mut all: Vec<String> = ["--inbound", "127.0.0.1:0", "--app", &app]
            .map(String::from)
            .to_vec();
        all.extend(self.identity_flags(account));
        all.extend(flags.iter().map(|f| f.to_string()));
        let proxy = spawn(&all).await;
        wait_ready(proxy.admin).await;
        proxy
    }

    /// A client-side proxy for `stockdata` with the identity of `account`.
    async fn outbound_proxy(&self, account: &str) -> crate::support::Proxy {
        let mut all: Vec<String> = vec!["--outbound".into(), "stockdata=127.0.0.1:0".into()];
        all.extend(self.identity_flags(account));
        let proxy = spawn(&all).await;
        wait_ready(proxy.admin).await;
        proxy
    }

    /// Registers `addr` as an endpoint of `stockdata` proving `account`.
    fn register(&self, addr: SocketAddr, instance: &str, account: &str) {
        self.registry.register(
            "stockdata",
            addr,
            EndpointMeta {
                instance: instance.into(),
                meshed: true,
                identity: id(account),
                ..EndpointMeta::default()
            },
        );
    }

    /// A key and a certificate for `account` from the mesh's issuer, valid
    /// `not_before..not_after` (seconds from now), as PEM files.
    fn client_certificate(&self, account: &str, from: i64, until: i64) -> (PathBuf, PathBuf) {
        let signer = rcgen::Issuer::from_ca_cert_pem(
            &self.authority.issuer_pem,
            KeyPair::from_pem(&self.authority.issuer_key_pem).unwrap(),
        )
        .unwrap();
        certificate_files(
            &self.dir,
            account,
            (&signer, &self.authority.issuer_pem),
            from,
            until,
        )
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a key and a chain (the certificate for `account`, then its
/// issuer's, as proxies present them) signed by `signer`.
fn certificate_files(
    dir: &Path,
    account: &str,
    (signer, signer_pem): (&rcgen::Issuer<'_, KeyPair>, &str),
    from: i64,
    until: i64,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(id(account).try_into().unwrap()),
        SanType::DnsName(dns(account).try_into().unwrap()),
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let at =
        |offset: i64| (std::time::UNIX_EPOCH + Duration::from_secs((now + offset) as u64)).into();
    params.not_before = at(from);
    params.not_after = at(until);
    let cert = params.signed_by(&key, signer).unwrap();
    let name = format!("{account}-{from}-{until}");
    let (crt, pem) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, format!("{}{signer_pem}", cert.pem())).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    (crt, pem)
}

async fn spawn(flags: &[String]) -> crate::support::Proxy {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_proxy(&flags).await
}

async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = crate::support::http_get(admin, "/ready").await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy never got its certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(admin: SocketAddr) -> Vec<crate::support::Sample> {
    let (_, text) = crate::support::http_get(admin, "/metrics").await;
    parse_prometheus(&text)
}

/// Relays connections to `to`, keeping the first bytes each client sent.
async fn recording_relay(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut first = vec![0; 4096];
                let Ok(n) = client.read(&mut first).await else {
                    return;
                };
                first.truncate(n);
                let Ok(mut server) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = server.write_all(&first).await;
                record.lock().unwrap().push(first);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, seen)
}

async fn call(addr: SocketAddr) -> Result<(), tonic::Status> {
    let mut client = StocksClient::new(connect(addr).await);
    client.get(GetRequest { id: 1 }).await.map(drop)
}

#[tokio::test]
async fn meshed_calls_are_mtls_on_the_wire_and_labelled_with_both_identities() {
    let mesh = Mesh::start("wire", Duration::from_secs(600), &["stockweb", "stockdata"]).await;
    let replica = spawn_replica("stockdata-1").await;
    let server = mesh.inbound_proxy("stockdata", replica.addr, &[]).await;
    let (relay, seen) = recording_relay(server.inbound.unwrap()).await;
    mesh.register(relay, "stockdata-1", "stockdata");
    let client = mesh.outbound_proxy("stockweb").await;

    for _ in 0..20 {
        call(client.outbound).await.unwrap();
    }

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one connection, reused for every call");
    assert_eq!(seen[0][0], 0x16, "a TLS handshake record starts it");
    assert!(
        !seen[0].windows(8).any(|w| w == b"PRI * HT"),
        "no plaintext HTTP/2 preface"
    );
    let outbound = metrics(client.admin).await;
    let server_id = id("stockdata");
    let tls = [("tls", "true"), ("server_id", server_id.as_str())];
    assert_eq!(sum(&outbound, "mesh_requests_total", &tls), 20.0);
    let inbound = metrics(server.admin).await;
    let client_id = id("stockweb");
    let tls = [("tls", "true"), ("client_id", client_id.as_str())];
    assert_eq!(sum(&inbound, "mesh_requests_total", &tls), 20.0);
    assert_eq!(
        sum(&inbound, "mesh_requests_total", &[("tls", "false")]),
        0.0
    );

    // The admin server shows the certificate in use.
    let (status, body) = crate::support::http_get(server.admin, "/identity").await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["identity"], id("stockdata"));
    let chain = view["certificate_chain"].as_str().unwrap();
    assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = view["valid_until"].as_u64().unwrap() - now;
    assert!((590..=600).contains(&left), "{left}");
    let app = replica.addr.to_string();
    let plain = spawn_proxy(&["--inbound", "127.0.0.1:0", "--app", &app]).await;
    let (status, _) = crate::support::http_get(plain.admin, "/identity").await;
    assert_eq!(status, 404, "a proxy without an identity has none to show");
}

#[tokio::test]
async fn all_authenticated_closes_plaintext_and_serves_meshed_calls() {
    let mesh = Mesh::start(
        "authn",
        Duration::from_secs(600),
        &["stockweb", "stockdata"],
    )
    .await;
    let replica = spawn_replica("stockdata-1").await;
    let server = mesh
        .inbound_proxy(
            "stockdata",
            replica.addr,
            &["--inbound-policy", "all-authenticated"],
        )
        .await;
    let inbound = server.inbound.unwrap();
    mesh.register(inbound, "stockdata-1", "stockdata");
    let client = mesh.outbound_proxy("stockweb").await;

    call(client.outbound).await.unwrap();
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{inbound}"))
        .unwrap()
        .connect()
        .await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(channel) => StocksClient::new(channel)
            .get(GetRequest { id: 1 })
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext client is not served");
    let samples = metrics(server.admin).await;
    let refusals = [("direction", "inbound"), ("reason", "tls_required")];
    assert!(sum(&samples, "mesh_refused_total", &refusals) >= 1.0);
}

#[tokio::test]
async fn an_allow_list_refuses_another_meshed_client_with_permission_denied() {
    let mesh = Mesh::start(
        "allow",
        Duration::from_secs(600),
        &["stockweb", "stockdata", "intruder"],
    )
    .await;
    let replica = spawn_replica("stockdata-1").await;
    let allowed = id("stockweb");
    let server = mesh
        .inbound_proxy("stockdata", replica.addr, &["--inbound-policy", &allowed])
        .await;
    mesh.register(server.inbound.unwrap(), "stockdata-1", "stockdata");
    let web = mesh.outbound_proxy("stockweb").await;
    let intruder = mesh.outbound_proxy("intruder").await;

    call(web.outbound).await.unwrap();
    let refused = call(intruder.outbound).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains(&id("intruder")), "{refused:?}");
    let samples = metrics(server.admin).await;
    let refusals = [("direction", "inbound"), ("reason", "unauthorized")];
    assert_eq!(sum(&samples, "mesh_refused_total", &refusals), 1.0);
}

/// Runs `program` with `args`, at most 20 s.
async fn run(program: &str, args: &[&str]) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), child)
        .await
        .unwrap_or_else(|_| panic!("{program} took more than 20 s"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `curl` over TLS to the proxy at `port` as the server `stockdata`, with
/// a client certificate when given: the HTTP status, or curl's exit code.
async fn curl(mesh: &Mesh, port: u16, client: Option<&(PathBuf, PathBuf)>) -> Result<u16, i32> {
    let resolve = format!("{}:{port}:127.0.0.1", dns("stockdata"));
    let url = format!("https://{}:{port}/hello", dns("stockdata"));
    let anchors = mesh.anchors().display().to_string();
    let mut args = vec![
        "--silent",
        "--show-error",
        "--http1.1",
        "--max-time",
        "10",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code}",
        "--cacert",
        &anchors,
        "--resolve",
        &resolve,
    ];
    let files;
    if let Some((crt, key)) = client {
        files = (crt.display().to_string(), key.display().to_string());
        args.extend(["--cert", &files.0, "--key", &files.1]);
    }
    args.push(&url);
    let output = run("curl", &args).await;
    match output.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&output.stdout).parse().unwrap()),
        code => Err(code.unwrap_or(-1)),
    }
}

#[tokio::test]
async fn curl_and_openssl_as_peers_are_admitted_only_as_policy_allows() {
    let mesh = Mesh::start("peers", Duration::from_secs(600), &["stockdata"]).await;
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let router = axum::Router::new().fallback(|| async { "hello\n" });
    tokio::spawn(async move { axum::serve(app, router).await });
    let allowed = id("stockweb");
    let server = mesh
        .inbound_proxy("stockdata", app_addr, &["--inbound-policy", &allowed])
        .await;
    let port = server.inbound.unwrap().port();

    let day = 86_400;
    let web = mesh.client_certificate("stockweb", -day, day);
    assert_eq!(curl(&mesh, port, Some(&web)).await, Ok(200), "allowed");
    let other = mesh.client_certificate("someone", -day, day);
    assert_eq!(
        curl(&mesh, port, Some(&other)).await,
        Ok(403),
        "not on the list"
    );
    let expired = mesh.client_certificate("stockweb", -3 * day, -day);
    assert!(curl(&mesh, port, Some(&expired)).await.is_err(), "expired");
    let stranger = Authority::generate(DOMAIN, Duration::from_secs(3600)).unwrap();
    let signer = rcgen::Issuer::from_ca_cert_pem(
        &stranger.issuer_pem,
        KeyPair::from_pem(&stranger.issuer_key_pem).unwrap(),
    )
    .unwrap();
    let foreign = certificate_files(
        &mesh.dir,
        "stockweb",
        (&signer, &stranger.issuer_pem),
        -2 * day,
        2 * day,
    );
    assert!(
        curl(&mesh, port, Some(&foreign)).await.is_err(),
        "another CA"
    );
    assert!(curl(&mesh, port, None).await.is_err(), "no certificate");
    let plaintext = run(
        "curl",
        &[
            "--silent",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{port}/hello"),
        ],
    )
    .await;
    assert!(!plaintext.status.success(), "plaintext is closed");

    let samples = metrics(server.admin).await;
    let refused = |reason| sum(&samples, "mesh_refused_total", &[("reason", reason)]);
    assert_eq!(refused("unauthorized"), 1.0);
    assert_eq!(refused("tls_required"), 1.0);
    assert_eq!(refused("unauthenticated"), 1.0);
    assert_eq!(refused("tls_handshake"), 2.0, "expired and foreign");

    // The server's chain, as openssl sees it, verifies against the trust
    // anchor alone (the issuer comes from the server).
    let connect = format!("127.0.0.1:{port}");
    let shown = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            &dns("stockdata"),
            "-showcerts",
            "-tls1_3",
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&shown.stdout).to_string();
    let blocks: Vec<String> = text
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|rest| {
            let body = rest.split("-----END CERTIFICATE-----").next().unwrap();
            format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n")
        })
        .collect();
    assert_eq!(blocks.len(), 2, "leaf and issuer: {text}");
    let (leaf, issuer) = (mesh.dir.join("leaf.pem"), mesh.dir.join("issuer.pem"));
    std::fs::write(&leaf, &blocks[0]).unwrap();
    std::fs::write(&issuer, &blocks[1]).unwrap();
    let anchors = mesh.anchors().display().to_string();
    let verified = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            &anchors,
            "-untrusted",
            &issuer.display().to_string(),
            &leaf.display().to_string(),
        ],
    )
    .await;
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let subject = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            &leaf.display().to_string(),
        ],
    )
    .await;
    let names = String::from_utf8_lossy(&subject.stdout).to_string();
    assert!(
        names.contains(&format!("URI:{}", id("stockdata"))),
        "{names}"
    );
}

#[tokio::test]
async fn certificates_rotate_under_load_without_a_failed_call() {
    // 10 s certificates, renewed every 6-8 s: 60 s of 100 concurrent
    // streams through two sidecars sees at least 5 renewals on each.
    let mesh = Mesh::start(
        "rotate",
        Duration::from_secs(10),
        &["stockweb", "stockdata"],
    )
    .await;
    let replica = spawn_replica("stockdata-1").await;
    let server = mesh.inbound_proxy("stockdata", replica.addr, &[]).await;
    mesh.register(server.inbound.unwrap(), "stockdata-1", "stockdata");
    let client = mesh.outbound_proxy("stockweb").await;

    let expiry = |samples: &[crate::support::Sample]| {
        sum(samples, "mesh_identity_certificate_expiry_seconds", &[])
    };
    let (mut client_expiries, mut server_expiries) = (Vec::new(), Vec::new());
    let load = Load::start(&StocksClient::new(connect(client.outbound).await), 100);
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        for (admin, seen) in [
            (client.admin, &mut client_expiries),
            (server.admin, &mut server_expiries),
        ] {
            let value = expiry(&metrics(admin).await);
            if seen.last() != Some(&value) {
                seen.push(value);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{:?}",
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert!(tally.succeeded() > 1000, "{}", tally.succeeded());
    // The first value seen plus at least five renewals.
    assert!(client_expiries.len() >= 6, "{client_expiries:?}");
    assert!(server_expiries.len() >= 6, "{server_expiries:?}");
    let samples = metrics(client.admin).await;
    let server_id = id("stockdata");
    let tls = [("tls", "true"), ("server_id", server_id.as_str())];
    assert_eq!(
        sum(&samples, "mesh_requests_total", &tls) as usize,
        tally.succeeded()
    );
}

#[tokio::test]
async fn a_proxy_registers_its_endpoint_with_its_identity_and_its_credential() {
    let mesh = Mesh::start(
        "register",
        Duration::from_secs(600),
        &["stockweb", "stockdata"],
    )
    .await;
    let replica = spawn_replica("stockdata-1").await;
    let flags = [
        "--register-workload",
        "stockdata",
        "--register-service",
        "stockdata",
        "--register-instance",
        "stockdata-1",
        "--advertise",
        "127.0.0.1",
    ];
    let server = mesh.inbound_proxy("stockdata", replica.addr, &flags).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let registered = loop {
        let endpoints = mesh.registry.watch("stockdata").borrow().clone();
        if let Some(meta) = endpoints.get(&server.inbound.unwrap()) {
            break meta.clone();
        }
        assert!(Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(registered.identity, id("stockdata"));
    let client = mesh.outbound_proxy("stockweb").await;
    call(client.outbound).await.unwrap();
    let samples = metrics(client.admin).await;
    assert_eq!(
        sum(&samples, "mesh_requests_total", &[("tls", "true")]),
        1.0
    );
}

/// HTTP/1 and opaque TCP go over mTLS between two sidecars too: the client
/// proxy's HTTP/1 pool and its TCP relay, the server proxy's detection
/// inside TLS.
#[tokio::test]
async fn http1_and_opaque_tcp_are_mtls_between_sidecars() {
    let mesh = Mesh::start(
        "protocols",
        Duration::from_secs(600),
        &["stockweb", "stockdata"],
    )
    .await;
    // An HTTP/1 app, and an echo server for opaque bytes.
    let web = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = web.local_addr().unwrap();
    let router = axum::Router::new().fallback(|| async { "hello over http/1\n" });
    tokio::spawn(async move { axum::serve(web, router).await });
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = conn.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });

    let web_side = mesh.inbound_proxy("stockdata", web_addr, &[]).await;
    // Opaque bytes are relayed only to ports declared opaque: the echo
    // app's port inbound, and its endpoint's port outbound.
    let echo_port = echo_addr.port().to_string();
    let echo_side = mesh
        .inbound_proxy("stockdata", echo_addr, &["--opaque-ports", &echo_port])
        .await;
    for (service, side) in [("web", &web_side), ("echo", &echo_side)] {
        mesh.registry.register(
            service,
            side.inbound.unwrap(),
            EndpointMeta {
                instance: service.into(),
                meshed: true,
                identity: id("stockdata"),
                ..EndpointMeta::default()
            },
        );
    }
    let mut flags: Vec<String> = [
        "--outbound",
        "web=127.0.0.1:0",
        "--outbound",
        "echo=127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    flags.extend([
        "--opaque-ports".into(),
        echo_side.inbound.unwrap().port().to_string(),
    ]);
    flags.extend(mesh.identity_flags("stockweb"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let args = mesh_proxy::Args::try_parse_from(
        ["mesh-proxy", "--admin", "127.0.0.1:0"]
            .into_iter()
            .chain(flags.iter().copied()),
    )
    .unwrap();
    let config = mesh_proxy::Config::try_from(args).unwrap();
    let listeners = mesh_proxy::Listeners::bind(&config).await.unwrap();
    let outbound: HashMap<String, SocketAddr> = listeners
        .outbound
        .iter()
        .map(|(service, l)| (service.clone(), mesh_proxy::local_addr(l)))
        .collect();
    let admin = mesh_proxy::local_addr(&listeners.admin);
    let client = tokio::spawn(mesh_proxy::run(config, listeners, std::future::pending()));
    wait_ready(admin).await;

    let (status, body) = crate::support::http_get(outbound["web"], "/hello").await;
    assert_eq!((status, body.as_str()), (200, "hello over http/1\n"));
    let mut conn = TcpStream::connect(outbound["echo"]).await.unwrap();
    conn.write_all(b"\x00\x01 opaque bytes").await.unwrap();
    let mut back = [0u8; 15];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back))
        .await
        .expect("echoed within 10 s")
        .unwrap();
    assert_eq!(&back, b"\x00\x01 opaque bytes");
    drop(conn);

    let client_id = id("stockweb");
    let tls = [("tls", "true"), ("client_id", client_id.as_str())];
    let web_side = metrics(web_side.admin).await;
    assert_eq!(sum(&web_side, "mesh_requests_total", &tls), 1.0);
    let echo_side = metrics(echo_side.admin).await;
    assert_eq!(sum(&echo_side, "mesh_tcp_connections_total", &tls), 1.0);
    let server_id = id("stockdata");
    let tls = [("tls", "true"), ("server_id", server_id.as_str())];
    let outbound = metrics(admin).await;
    assert_eq!(sum(&outbound, "mesh_requests_total", &tls), 1.0);
    assert_eq!(sum(&outbound, "mesh_tcp_connections_total", &tls), 1.0);
    client.abort();
}
