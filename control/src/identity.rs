//! The identity service: proxies send a certificate signing request for
//! their own key, with a credential proving who they are, and get a
//! short-lived certificate naming them by SPIFFE ID
//! (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`).
//!
//! - [`issuer`]: the trust anchor and the issuer that signs;
//! - [`credentials`]: what proves an identity: in Kubernetes the pod's
//!   ServiceAccount token, checked with a TokenReview; elsewhere a
//!   per-workload bootstrap credential written by the set-up;
//! - here: the SPIFFE ID, the errors, and the gRPC service.
//!
//! Not yet: the proxies do not ask for certificates, and traffic between
//! them is not TLS (issue 18 continues there).

pub mod credentials;
pub mod issuer;
pub mod provision;

use credentials::Credentials;
use issuer::Issuer;
use std::sync::Arc;
use stockkube_proto::mesh::{CertifyRequest, CertifyResponse, identity_server};
use tonic::{Request, Response, Status};

/// A workload's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    /// The name TLS uses for this identity (a server name, a DNS SAN).
    pub fn dns_name(&self) -> String {
        stockkube_proto::identity::dns_name(
            &self.trust_domain,
            &self.namespace,
            &self.service_account,
        )
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, IdentityError> {
        let bad = || {
            let shown: String = text.chars().take(120).collect();
            IdentityError::BadRequest(format!(
                "{shown:?} is not spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT"
            ))
        };
        let (domain, namespace, account) =
            stockkube_proto::identity::parse(text).ok_or_else(bad)?;
        Ok(Self {
            trust_domain: domain.into(),
            namespace: namespace.into(),
            service_account: account.into(),
        })
    }
}

/// Why a certificate was not issued; each decides its gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the credential proves nothing: {0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
    #[error("cannot check the credential now: {0}")]
    Unavailable(String),
    #[error("the identity service is not set up: {0}")]
    Setup(String),
    #[error("cannot sign: {0}")]
    Sign(#[from] rcgen::Error),
}

impl From<IdentityError> for Status {
    fn from(err: IdentityError) -> Self {
        let message = err.to_string();
        match err {
            IdentityError::BadRequest(_) => Status::invalid_argument(message),
            IdentityError::Unauthenticated(_) => Status::unauthenticated(message),
            IdentityError::Denied(_) => Status::permission_denied(message),
            IdentityError::Unavailable(_) => Status::unavailable(message),
            IdentityError::Setup(_) | IdentityError::Sign(_) => Status::internal(message),
        }
    }
}

/// The `Identity` gRPC service.
#[derive(Clone)]
pub struct IdentityService {
    trust_domain: Arc<str>,
    issuer: Arc<Issuer>,
    credentials: Arc<Credentials>,
    /// Who may write any Registry entry (see [`IdentityService::may_register`]).
    registry_admins: Arc<[String]>,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityService")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl IdentityService {
    pub fn new(trust_domain: &str, issuer: Issuer, credentials: Credentials) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            issuer: Arc::new(issuer),
            credentials: Arc::new(credentials),
            registry_admins: Arc::new([]),
        }
    }

    /// Lets `admins` write any Registry entry (a supervisor such as
    /// `meshctl demo` that registers its replicas).
    pub fn with_registry_admins(mut self, admins: Vec<String>) -> Self {
        self.registry_admins = admins.into();
        self
    }

    /// The identity a credential proves (a ServiceAccount token, a
    /// bootstrap credential).
    pub async fn caller(&self, token: &str) -> Result<SpiffeId, IdentityError> {
        let (namespace, service_account) = self.credentials.authenticate(token).await?;
        Ok(SpiffeId {
            trust_domain: self.trust_domain.to_string(),
            namespace,
            service_account,
        })
    }

    /// Whether `caller` may register, or deregister, an endpoint that
    /// proves `endpoint_identity` (empty: none): a workload only itself,
    /// an admin anything.
    pub fn may_register(&self, caller: &SpiffeId, endpoint_identity: &str) -> bool {
        let caller = caller.to_string();
        self.registry_admins.contains(&caller)
            || (!endpoint_identity.is_empty() && endpoint_identity == caller)
    }

    /// Checks the request and signs it.
    pub async fn certify(&self, request: &CertifyRequest) -> Result<(String, i64), IdentityError> {
        let identity: SpiffeId = request.identity.parse()?;
        if identity.trust_domain != *self.trust_domain {
            return Err(IdentityError::BadRequest(format!(
                "{identity} is not in trust domain {}",
                self.trust_domain
            )));
        }
        let (namespace, account) = self.credentials.authenticate(&request.token).await?;
        if (namespace.as_str(), account.as_str())
            != (
                identity.namespace.as_str(),
                identity.service_account.as_str(),
            )
        {
            return Err(IdentityError::Denied(format!(
                "the credential is service account {namespace}/{account}'s, not {identity}'s"
            )));
        }
        self.issuer
            .certify(&request.certificate_signing_request, &identity)
    }
}

#[tonic::async_trait]
impl identity_server::Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let request = request.into_inner();
        // What the caller claims is logged, but never more than a line of it.
        let claimed: String = request.identity.chars().take(120).collect();
        match IdentityService::certify(self, &request).await {
            Ok((certificate_chain, valid_until)) => {
                tracing::info!(identity = %claimed, valid_until, "certified");
                Ok(Response::new(CertifyResponse {
                    certificate_chain,
                    valid_until,
                }))
            }
            Err(err) => {
                tracing::warn!(identity = %claimed, error = %err, "not certified");
                Err(err.into())
            }
        }
    }
}

#[cfg(test)]
mod tests;
