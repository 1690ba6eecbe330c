//! What proves an identity: a Kubernetes ServiceAccount token, checked by
//! the API server (TokenReview), or a bootstrap credential from a file the
//! set-up wrote (the local demo and compose, which have no API server).

use super::IdentityError;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use std::{collections::HashMap, path::Path, time::Duration};

/// The audience the proxies' projected tokens are made for.
pub const TOKEN_AUDIENCE: &str = "identity.stockkube.io";

/// How a credential is checked.
pub enum Credentials {
    /// A TokenReview for tokens made for `audience`.
    Kubernetes {
        client: kube::Client,
        audience: String,
    },
    /// Credential to (namespace, service account).
    Bootstrap(HashMap<String, (String, String)>),
}

impl Credentials {
    /// Reads a bootstrap file: one `NAMESPACE/ACCOUNT CREDENTIAL` per line
    /// (`#` comments and blank lines allowed).
    pub fn bootstrap_file(path: &Path) -> Result<Self, IdentityError> {
        Self::read_bootstrap(path).map(Credentials::Bootstrap)
    }

    /// The credentials a bootstrap file lists (see [`Self::bootstrap_file`]).
    pub fn read_bootstrap(path: &Path) -> Result<HashMap<String, (String, String)>, IdentityError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| IdentityError::Setup(format!("cannot read {}: {e}", path.display())))?;
        let mut credentials = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || {
                IdentityError::Setup(format!(
                    "{}:{}: expected NAMESPACE/ACCOUNT CREDENTIAL",
                    path.display(),
                    number + 1
                ))
            };
            let (who, credential) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
            let (namespace, account) = who.split_once('/').ok_or_else(bad)?;
            let credential = credential.trim();
            if credential.len() < 16 {
                return Err(IdentityError::Setup(format!(
                    "{}:{}: a credential of fewer than 16 characters is too easy to guess",
                    path.display(),
                    number + 1
                )));
            }
            credentials.insert(
                credential.to_owned(),
                (namespace.to_owned(), account.to_owned()),
            );
        }
        Ok(credentials)
    }

    /// The (namespace, service account) `token` proves.
    pub async fn authenticate(&self, token: &str) -> Result<(String, String), IdentityError> {
        if token.is_empty() {
            return Err(IdentityError::Unauthenticated("no credential".into()));
        }
        match self {
            Credentials::Bootstrap(credentials) => {
                credentials.get(token).cloned().ok_or_else(|| {
                    IdentityError::Unauthenticated("unknown bootstrap credential".into())
                })
            }
            Credentials::Kubernetes { client, audience } => review(client, token, audience).await,
        }
    }
}

async fn review(
    client: &kube::Client,
    token: &str,
    audience: &str,
) -> Result<(String, String), IdentityError> {
    let reviews: kube::Api<TokenReview> = kube::Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        reviews.create(&Default::default(), &review),
    )
    .await
    .map_err(|_| {
        IdentityError::Unavailable(
            "the API server did not answer the TokenReview within 5 s".into(),
        )
    })?
    .map_err(|e| IdentityError::Unavailable(format!("TokenReview: {e}")))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(IdentityError::Unauthenticated(status.error.unwrap_or_else(
            || "the API server does not accept the token".into(),
        )));
    }
    // The API server answers the audiences the token is valid for among
    // those asked; none means the token was made for someone else.
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == audience)
    {
        return Err(IdentityError::Unauthenticated(format!(
            "the token is not for audience {audience}"
        )));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((namespace, account)) if !namespace.is_empty() && !account.is_empty() => {
            Ok((namespace.to_owned(), account.to_owned()))
        }
        _ => Err(IdentityError::Unauthenticated(format!(
            "{username:?} is no service account"
        ))),
    }
}
