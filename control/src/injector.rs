//! The injector: the admission webhook that adds the sidecar to pods as
//! they are created. An HTTPS server (rustls, TLS 1.3) answering
//! `admission.k8s.io/v1` AdmissionReviews for Pods at `POST /inject`, with
//! `GET /ready` and `GET /live` for its probes.
//!
//! - [`review`]: one review, read, decided and answered (pure);
//! - here: the flags, the namespace lookup, the TLS listener and the
//!   certificate reload.
//!
//! The pod's own annotation decides first (`stockkube.io/inject` or
//! `linkerd.io/inject`, `enabled` or `disabled`), then its namespace's,
//! read from the API server for each review (a bounded wait: the API server
//! waits for the answer only `timeoutSeconds`).

pub mod review;

use crate::{
    inject::{ProxyResources, SidecarConfig, SidecarIdentity},
    tls::ReloadingCertificate,
};
use axum::{
    Router,
    body::Body,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Json},
    routing::{get, post},
};
use k8s_openapi::api::core::v1::Namespace;
use review::{Decision, NamespaceAnnotations};
use serde_json::Value;
use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// The path the webhook configuration calls.
pub const PATH: &str = "/inject";
/// The injector's HTTPS port.
pub const PORT: u16 = 8443;
/// Bodies larger than this are not read: the API server's own limit on a
/// request is 3 MiB, and a review holds the pod once.
pub const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

/// Flags and environment of the `mesh-injector` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "mesh-injector", version)]
pub struct Args {
    /// Address of the HTTPS server.
    #[arg(long, env = "MESH_INJECTOR_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], PORT)))]
    pub listen: SocketAddr,

    /// Directory with the serving certificate and key, `tls.crt` and
    /// `tls.key` (a mounted `kubernetes.io/tls` Secret); read again when they
    /// change.
    #[arg(
        long,
        env = "MESH_INJECTOR_TLS_DIR",
        default_value = "/var/run/stockkube/injector-tls"
    )]
    pub tls_dir: PathBuf,

    /// The Secret (NAMESPACE/NAME) the certificate comes from: it is also
    /// watched through the API, so a new one is served as soon as it is
    /// applied, without waiting a minute or so for the kubelet to update
    /// the mounted files (needs `get`, `list` and `watch` on it).
    #[arg(long, env = "MESH_INJECTOR_TLS_SECRET", value_name = "NAMESPACE/NAME", value_parser = parse_secret)]
    pub tls_secret: Option<(String, String)>,

    /// How often the certificate files are checked for a change.
    #[arg(long, env = "MESH_INJECTOR_RELOAD_EVERY", default_value = "10s", value_parser = mesh_runtime::parse_duration)]
    pub reload_every: Duration,

    /// The mesh's own namespace, whose pods are never injected.
    #[arg(
        long,
        env = "MESH_INJECTOR_CONTROL_PLANE_NAMESPACE",
        default_value = "stockkube-mesh"
    )]
    pub control_plane_namespace: String,

    /// How long a review waits for the pod's namespace from the API server;
    /// after it, only the pod's own annotation counts.
    #[arg(long, env = "MESH_INJECTOR_LOOKUP_TIMEOUT", default_value = "2s", value_parser = mesh_runtime::parse_duration)]
    pub lookup_timeout: Duration,

    /// The proxy's image.
    #[arg(
        long,
        env = "MESH_INJECTOR_PROXY_IMAGE",
        default_value = "stockkube/mesh-proxy:dev"
    )]
    pub proxy_image: String,

    /// The init container's image.
    #[arg(
        long,
        env = "MESH_INJECTOR_INIT_IMAGE",
        default_value = "stockkube/mesh-proxy-init:dev"
    )]
    pub init_image: String,

    /// The sidecar's `imagePullPolicy`.
    #[arg(
        long,
        env = "MESH_INJECTOR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub image_pull_policy: String,

    /// The controller's destination API, as the proxies reach it.
    #[arg(
        long,
        env = "MESH_INJECTOR_DESTINATION",
        default_value = "http://mesh-controller.stockkube-mesh.svc.cluster.local:8086"
    )]
    pub destination: String,

    /// The mesh's trust anchors (PEM file): with it, injected proxies get
    /// their pod's ServiceAccount identity from the controller and speak
    /// mTLS; without it, they have no identity.
    #[arg(
        long,
        env = "MESH_INJECTOR_IDENTITY_TRUST_ANCHORS",
        value_name = "FILE"
    )]
    pub identity_trust_anchors: Option<std::path::PathBuf>,

    /// The trust domain of the identities the controller issues.
    #[arg(
        long,
        env = "MESH_INJECTOR_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,

    /// Inject the proxy as a native sidecar (Kubernetes 1.29 and later), or
    /// with `false` as a regular container (older clusters).
    #[arg(long, env = "MESH_INJECTOR_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecar: bool,

    /// The proxy's CPU request.
    #[arg(long, env = "MESH_INJECTOR_PROXY_CPU_REQUEST", default_value = "10m")]
    pub proxy_cpu_request: String,
    /// The proxy's CPU limit.
    #[arg(long, env = "MESH_INJECTOR_PROXY_CPU_LIMIT", default_value = "500m")]
    pub proxy_cpu_limit: String,
    /// The proxy's memory request.
    #[arg(
        long,
        env = "MESH_INJECTOR_PROXY_MEMORY_REQUEST",
        default_value = "16Mi"
    )]
    pub proxy_memory_request: String,
    /// The proxy's memory limit.
    #[arg(long, env = "MESH_INJECTOR_PROXY_MEMORY_LIMIT", default_value = "64Mi")]
    pub proxy_memory_limit: String,
}

fn parse_secret(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok((namespace.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{value:?} is not NAMESPACE/NAME")),
    }
}

impl Args {
    /// The sidecar these flags describe (the trust anchors read from their file).
    pub fn sidecar(&self) -> Result<SidecarConfig, InjectorError> {
        let identity = match &self.identity_trust_anchors {
            None => None,
            Some(path) => Some(SidecarIdentity {
                trust_domain: self.trust_domain.clone(),
                trust_anchors_pem: std::fs::read_to_string(path).map_err(|source| {
                    InjectorError::TrustAnchors {
                        path: path.clone(),
                        source,
                    }
                })?,
            }),
        };
        Ok(SidecarConfig {
            proxy_image: self.proxy_image.clone(),
            init_image: self.init_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            controller: self.destination.clone(),
            native: self.native_sidecar,
            resources: ProxyResources {
                cpu_request: self.proxy_cpu_request.clone(),
                cpu_limit: self.proxy_cpu_limit.clone(),
                memory_request: self.proxy_memory_request.clone(),
                memory_limit: self.proxy_memory_limit.clone(),
            },
            version: env!("CARGO_PKG_VERSION").into(),
            identity,
        })
    }
}

/// What every review needs.
#[derive(Clone)]
struct Injector {
    client: kube::Client,
    control_plane: Arc<str>,
    sidecar: Arc<SidecarConfig>,
    lookup_timeout: Duration,
}

/// Why the injector could not serve.
#[derive(Debug, thiserror::Error)]
pub enum InjectorError {
    #[error("the serving certificate")]
    Certificate(#[from] crate::tls::TlsError),
    #[error("cannot read the trust anchors {} (--identity-trust-anchors)", path.display())]
    TrustAnchors {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Serves reviews on `listener` until `shutdown`, with the certificate in
/// `args.tls_dir`, looking namespaces up through `client`. Connections
/// open at shutdown get 10 s to finish.
pub async fn serve(
    args: &Args,
    listener: TcpListener,
    client: kube::Client,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), InjectorError> {
    let certificate = Arc::new(ReloadingCertificate::load(&args.tls_dir)?);
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(crate::tls::server_config(certificate.clone())));
    let mut background = vec![tokio::spawn(reload(certificate.clone(), args.reload_every))];
    if let Some((namespace, name)) = &args.tls_secret {
        background.push(tokio::spawn(follow_secret(
            client.clone(),
            namespace.clone(),
            name.clone(),
            certificate,
        )));
    }
    let injector = Injector {
        client,
        control_plane: args.control_plane_namespace.as_str().into(),
        sidecar: Arc::new(args.sidecar()?),
        lookup_timeout: args.lookup_timeout,
    };
    let app = Router::new()
        .route(PATH, post(inject))
        .route("/ready", get(|| async { "ready\n" }))
        .route("/live", get(|| async { "live\n" }))
        .with_state(injector);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "mesh-injector listening");
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    for task in background {
        task.abort();
    }
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
    }
    Ok(())
}

/// Reads the certificate files again every `every`, and says what changed.
async fn reload(certificate: Arc<ReloadingCertificate>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        interval.tick().await;
        match certificate.reload() {
            Ok(true) => {
                failing = false;
                tracing::info!("serving the new certificate");
            }
            Ok(false) => failing = false,
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %err, "cannot load the changed certificate; serving the previous one");
            }
            Err(_) => {}
        }
    }
}

/// Reads a review's body, up to [`MAX_REVIEW_BYTES`]. A larger one is read
/// to its end (up to 16 times the limit, within 10 s) and dropped, so the
/// client gets its answer instead of a stalled upload.
async fn read_body(body: Body) -> Result<Vec<u8>, String> {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0usize;
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("the review could not be read: {e}"))?;
            total += chunk.len();
            if total <= MAX_REVIEW_BYTES {
                bytes.extend_from_slice(&chunk);
            } else if total > 16 * MAX_REVIEW_BYTES {
                break;
            }
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Err(_) => return Err("the review did not arrive whole within 10 s".into()),
        Ok(result) => result?,
    }
    if total > MAX_REVIEW_BYTES {
        return Err(format!(
            "the review is larger than {MAX_REVIEW_BYTES} bytes"
        ));
    }
    Ok(bytes)
}

/// Follows the certificate's Secret through the API (a watch on that one
/// object) and serves each new version with a usable pair.
async fn follow_secret(
    client: kube::Client,
    namespace: String,
    name: String,
    certificate: Arc<ReloadingCertificate>,
) {
    use futures_util::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, &namespace);
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(55);
    let mut secrets = std::pin::pin!(watcher(secrets, config).default_backoff().applied_objects());
    let mut failing = false;
    while let Some(event) = secrets.next().await {
        let secret = match event {
            Ok(secret) => {
                failing = false;
                secret
            }
            Err(err) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(secret = %format!("{namespace}/{name}"), error = %err, "cannot watch the certificate's Secret; the mounted files still count");
                }
                continue;
            }
        };
        let mut data = secret.data.unwrap_or_default();
        let (Some(cert), Some(key)) = (data.remove("tls.crt"), data.remove("tls.key")) else {
            tracing::warn!(secret = %format!("{namespace}/{name}"), "the Secret has no tls.crt and tls.key");
            continue;
        };
        match certificate.install(cert.0, key.0) {
            Ok(true) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "serving the new certificate")
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(secret = %format!("{namespace}/{name}"), error = %err, "cannot use the Secret's certificate; serving the previous one")
            }
        }
    }
}

async fn inject(State(injector): State<Injector>, body: Body) -> impl IntoResponse {
    let answer = match read_body(body).await {
        Err(reason) => unreadable(review::Unreadable {
            uid: String::new(),
            reason,
        }),
        Ok(bytes) => match review::parse(&bytes) {
            Err(why) => unreadable(why),
            Ok(request) => {
                let namespace = injector.namespace_annotations(&request.namespace).await;
                let decision = review::decide(
                    &request,
                    &namespace,
                    &injector.control_plane,
                    &injector.sidecar,
                );
                let pod = format!("{}/{}", request.namespace, request.name);
                match &decision {
                    Decision::Inject(_) => tracing::info!(%pod, "sidecar injected"),
                    Decision::NotAsked => tracing::debug!(%pod, "not asked to inject"),
                    Decision::Skip(why) => tracing::warn!(%pod, %why, "sidecar not injected"),
                }
                review::answer(&request.uid, &decision)
            }
        },
    };
    (StatusCode::OK, Json(answer))
}

fn unreadable(why: review::Unreadable) -> Value {
    tracing::warn!(uid = %why.uid, reason = %why.reason, "review not understood; the pod is created without the sidecar");
    review::answer_unreadable(&why)
}

impl Injector {
    async fn namespace_annotations(&self, name: &str) -> NamespaceAnnotations {
        let namespaces: kube::Api<Namespace> = kube::Api::all(self.client.clone());
        match tokio::time::timeout(self.lookup_timeout, namespaces.get_opt(name)).await {
            Err(_) => Err(format!(
                "no answer from the API server within {:?}",
                self.lookup_timeout
            )),
            Ok(Err(err)) => Err(err.to_string()),
            Ok(Ok(None)) => Err("no such namespace".into()),
            Ok(Ok(Some(namespace))) => Ok(serde_json::to_value(
                namespace.metadata.annotations.unwrap_or_default(),
            )
            .unwrap_or(Value::Null)),
        }
    }
}
