//! The proxy's workload identity: a key made here and never sent anywhere,
//! and a certificate for it from the controller's Identity service
//! (`--identity`), asked for with the workload's credential
//! (`--identity-token-file`: in Kubernetes the pod's projected
//! ServiceAccount token, read again before each request because the kubelet
//! rotates it).
//!
//! The first certificate comes before the proxy reports ready. It is renewed
//! after about 70% of its lifetime (with ±10% jitter, so that proxies started
//! together do not renew together); a failed renewal is retried (1 s,
//! doubling to 30 s) while the current certificate stays in use until it
//! expires. Each attempt is counted by result, and the current certificate's
//! expiry is a gauge.
//!
//! The key and the current certificate are what [`crate::tls`] presents in
//! every handshake, to clients and to servers; a renewed certificate is used
//! from the next handshake on (connections already made keep theirs).

use crate::metrics::Metrics;
use rcgen::{CertificateParams, KeyPair};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject as _},
    sign::CertifiedKey,
};
use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use stockkube_proto::mesh::{CertifyRequest, identity_client::IdentityClient};
use tokio::{sync::watch, time::Instant};

/// Share of a certificate's lifetime after which it is renewed.
const RENEW_AFTER: f64 = 0.7;
/// The renewal time is moved by up to this share of itself, either way.
const JITTER: f64 = 0.1;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What the proxy asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT`.
    pub identity: String,
    /// The credential that proves it, read before each request.
    pub token_file: PathBuf,
    /// The controller (`--destination`).
    pub controller: http::Uri,
    /// The mesh's trust anchors.
    pub trust_anchors: TrustAnchors,
}

/// Where the trust anchors (PEM) come from.
#[derive(Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    File(PathBuf),
    Pem(String),
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustAnchors::File(path) => write!(f, "File({})", path.display()),
            TrustAnchors::Pem(pem) => write!(f, "Pem({} bytes)", pem.len()),
        }
    }
}

impl TrustAnchors {
    /// The PEM text, and where it came from (for errors).
    pub fn read(&self) -> Result<(Vec<u8>, String), String> {
        match self {
            TrustAnchors::File(path) => std::fs::read(path)
                .map(|pem| {
                    (
                        pem,
                        format!("{} (--identity-trust-anchors)", path.display()),
                    )
                })
                .map_err(|e| {
                    format!(
                        "cannot read the trust anchors {} (--identity-trust-anchors): {e}",
                        path.display()
                    )
                }),
            TrustAnchors::Pem(pem) => Ok((
                pem.clone().into_bytes(),
                "--identity-trust-anchors-pem".into(),
            )),
        }
    }
}

/// A certificate for the proxy's key.
#[derive(Debug, Clone)]
pub struct Certified {
    /// The certificate, then its issuer's (PEM).
    pub chain_pem: String,
    /// When it expires.
    pub valid_until: SystemTime,
    /// When it was received.
    pub received: SystemTime,
    /// The chain with the key, as TLS presents them.
    pub key: Arc<CertifiedKey>,
}

impl Certified {
    /// How long it has left, when renewal is overdue (past 85% of its
    /// lifetime; renewal comes at 63-77%): the proxy still serves with it,
    /// degraded. `None` while all is well.
    pub fn overdue(&self, now: SystemTime) -> Option<Duration> {
        let lifetime = self.valid_until.duration_since(self.received).ok()?;
        let renew_by = self.received + lifetime.mul_f64(0.85);
        (now >= renew_by).then(|| self.valid_until.duration_since(now).unwrap_or_default())
    }
}

/// The certificate in use, if any; `None` before the first and after one
/// expired without renewal.
pub type Current = watch::Receiver<Option<Arc<Certified>>>;

/// How a certificate is asked for: the controller, or a script in tests.
pub trait Certifier: Send + Sync + 'static {
    /// The chain and its expiry (seconds since the Unix epoch) for a CSR.
    fn certify(
        &self,
        csr_der: Vec<u8>,
    ) -> impl Future<Output = Result<(String, i64), String>> + Send;
}

/// The controller's Identity service.
pub struct Controller {
    config: IdentityConfig,
    channel: tonic::transport::Channel,
}

impl Controller {
    pub fn new(config: IdentityConfig) -> Self {
        let channel = tonic::transport::Endpoint::from(config.controller.clone())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Self { config, channel }
    }
}

impl Certifier for Controller {
    async fn certify(&self, csr_der: Vec<u8>) -> Result<(String, i64), String> {
        let token = tokio::fs::read_to_string(&self.config.token_file)
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.config.token_file.display()))?;
        let request = CertifyRequest {
            identity: self.config.identity.clone(),
            token: token.trim().to_owned(),
            certificate_signing_request: csr_der,
        };
        let answer = IdentityClient::new(self.channel.clone())
            .certify(request)
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
            .into_inner();
        Ok((answer.certificate_chain, answer.valid_until))
    }
}

/// The proxy's key and the certificate signing request for it.
pub struct Key {
    csr_der: Vec<u8>,
    /// PKCS#8; it stays in this process.
    key_der: Vec<u8>,
}

impl Key {
    /// A new ECDSA P-256 key. The request names nothing: the controller
    /// names the certificate by the identity the credential proves.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let csr_der = CertificateParams::default()
            .serialize_request(&key)?
            .der()
            .to_vec();
        Ok(Self {
            csr_der,
            key_der: key.serialize_der(),
        })
    }

    /// The certificate signing request (DER) for the key.
    pub fn csr_der(&self) -> &[u8] {
        &self.csr_der
    }

    /// The key with a certificate chain (PEM) issued for it; an error when
    /// the chain cannot be read or is not for this key.
    pub fn certified(&self, chain_pem: &str) -> Result<Arc<CertifiedKey>, String> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate chain: {e}"))?;
        if chain.is_empty() {
            return Err("the certificate chain is empty".into());
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        CertifiedKey::from_der(chain, key, &mesh_runtime::tls_provider())
            .map(Arc::new)
            .map_err(|e| format!("the certificate is not for this proxy's key: {e}"))
    }
}

/// When to renew a certificate received at `now` with `remaining`
/// lifetime; `unit` in [0, 1) picks the jitter.
pub fn renew_at(now: Instant, remaining: Duration, unit: f64) -> Instant {
    let share = RENEW_AFTER * (1.0 + JITTER * (2.0 * unit - 1.0));
    now + remaining.mul_f64(share)
}

/// Keeps a valid certificate in `current` until `stop` turns true.
pub async fn maintain(
    certifier: impl Certifier,
    key: Key,
    current: watch::Sender<Option<Arc<Certified>>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut retry = FIRST_RETRY;
    let mut expires: Option<Instant> = None;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if expires.is_some_and(|at| Instant::now() >= at) {
            tracing::error!("the identity certificate expired without renewal");
            current.send_replace(None);
            metrics.identity_expiry(None);
            expires = None;
        }
        let certified =
            certifier
                .certify(key.csr_der.clone())
                .await
                .and_then(|(chain_pem, valid_until)| {
                    let certified = key.certified(&chain_pem)?;
                    Ok((chain_pem, valid_until, certified))
                });
        match certified {
            Ok((chain_pem, valid_until, certified)) => {
                let valid_until = UNIX_EPOCH + Duration::from_secs(valid_until.max(0) as u64);
                let remaining = valid_until
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                let now = Instant::now();
                next = renew_at(now, remaining, fastrand::f64());
                expires = Some(now + remaining);
                retry = FIRST_RETRY;
                metrics.identity_certified("ok");
                metrics.identity_expiry(Some(valid_until));
                tracing::info!(valid_for = ?remaining, "identity certificate received");
                current.send_replace(Some(Arc::new(Certified {
                    chain_pem,
                    valid_until,
                    received: SystemTime::now(),
                    key: certified,
                })));
            }
            Err(err) => {
                metrics.identity_certified("error");
                tracing::warn!(error = %err, retry_in = ?retry, "cannot get an identity certificate");
                next = Instant::now() + retry;
                // Retry in time to replace a certificate before it expires.
                if let Some(at) = expires {
                    next = next.min(at.max(Instant::now()));
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests;
