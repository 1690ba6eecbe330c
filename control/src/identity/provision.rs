//! Identity for one machine or one compose project, where no
//! `meshctl install` made the authority and no kubelet projects tokens:
//! the controller makes its authority when there is none
//! (`--identity-generate`), and publishes the trust anchor and a random
//! credential per workload in a directory the proxies read
//! (`--identity-publish`, `--identity-workload`). Whoever can read that
//! directory can act as those workloads: it is for demos and development,
//! not for clusters (there, ServiceAccount tokens prove who a pod is).

use super::{IdentityError, issuer::Authority};
use std::{
    collections::HashMap,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

/// How long a generated trust anchor and issuer are valid.
const GENERATED_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The authority in `dir`, made there first when `dir` holds none.
pub fn ensure_authority(dir: &Path, trust_domain: &str) -> Result<Authority, IdentityError> {
    if !dir.join("issuer.key").exists() {
        let authority = Authority::generate(trust_domain, GENERATED_LIFETIME)?;
        authority
            .write(dir)
            .map_err(|e| IdentityError::Setup(format!("cannot write {}: {e}", dir.display())))?;
        tracing::info!(dir = %dir.display(), "made a trust anchor and an issuer");
        return Ok(authority);
    }
    Authority::read(dir)
}

/// Where a workload's published credential is: `DIR/NAMESPACE/ACCOUNT/token`.
pub fn credential_file(dir: &Path, namespace: &str, account: &str) -> PathBuf {
    dir.join(namespace).join(account).join("token")
}

/// Writes `DIR/ca.crt` and, for each workload without one, a credential;
/// returns every workload's credential, as a bootstrap file would list it.
pub fn publish(
    dir: &Path,
    authority: &Authority,
    workloads: &[(String, String)],
) -> Result<HashMap<String, (String, String)>, IdentityError> {
    let setup = |path: &Path, e: std::io::Error| {
        IdentityError::Setup(format!("cannot write {}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| setup(dir, e))?;
    let anchors = dir.join("ca.crt");
    std::fs::write(&anchors, &authority.trust_anchor_pem).map_err(|e| setup(&anchors, e))?;
    let mut credentials = HashMap::new();
    for (namespace, account) in workloads {
        let file = credential_file(dir, namespace, account);
        let credential = match std::fs::read_to_string(&file) {
            Ok(existing) if existing.trim().len() >= 16 => existing.trim().to_owned(),
            _ => {
                let credential = random_credential()?;
                let parent = file.parent().expect("a credential file has a directory");
                std::fs::create_dir_all(parent).map_err(|e| setup(parent, e))?;
                // Readable by the proxies' user, which is not the controller's.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    .open(&file)
                    .and_then(|mut f| f.write_all(credential.as_bytes()))
                    .map_err(|e| setup(&file, e))?;
                credential
            }
        };
        credentials.insert(credential, (namespace.clone(), account.clone()));
    }
    Ok(credentials)
}

/// 32 random bytes from the kernel, as hex: a credential nobody guesses.
pub fn random_credential() -> Result<String, IdentityError> {
    mesh_runtime::random_hex(32)
        .map_err(|e| IdentityError::Setup(format!("cannot read /dev/urandom: {e}")))
}

/// `NAMESPACE/ACCOUNT`, checked as the parts of an identity.
pub fn parse_workload(text: &str) -> Result<(String, String), String> {
    let (namespace, account) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not NAMESPACE/ACCOUNT"))?;
    let id = stockkube_proto::identity::spiffe_id("x", namespace, account);
    if stockkube_proto::identity::parse(&id).is_none() {
        return Err(format!(
            "{text:?}: namespace and account are lowercase letters, digits, '-' and '.'"
        ));
    }
    Ok((namespace.to_owned(), account.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_is_made_once_and_credentials_are_kept_across_restarts() {
        let dir = std::env::temp_dir().join(format!("mesh-provision-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = ensure_authority(&dir.join("ca"), "cluster.local").unwrap();
        let again = ensure_authority(&dir.join("ca"), "cluster.local").unwrap();
        assert_eq!(
            first.trust_anchor_pem, again.trust_anchor_pem,
            "read, not remade"
        );
        let key_mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("ca/issuer.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(key_mode & 0o077, 0, "the issuer's key is its owner's alone");

        let workloads = [
            ("compose".to_owned(), "stockweb".to_owned()),
            ("compose".to_owned(), "stockdata".to_owned()),
        ];
        let public = dir.join("public");
        let credentials = publish(&public, &first, &workloads).unwrap();
        assert_eq!(credentials.len(), 2);
        let web = std::fs::read_to_string(credential_file(&public, "compose", "stockweb")).unwrap();
        assert_eq!(credentials[&web], workloads[0]);
        assert_eq!(
            std::fs::read_to_string(public.join("ca.crt")).unwrap(),
            first.trust_anchor_pem
        );
        let kept = publish(&public, &first, &workloads).unwrap();
        assert_eq!(kept, credentials, "a restart keeps what the proxies hold");

        assert!(parse_workload("compose/stockweb").is_ok());
        for bad in ["stockweb", "Compose/web", "a/b/c", "/web"] {
            assert!(parse_workload(bad).is_err(), "{bad}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
