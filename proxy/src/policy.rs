//! Inbound authorization: who may call the app, per app port, as Linkerd's
//! default inbound policies name it.
//!
//! | policy | admits |
//! |---|---|
//! | `all-unauthenticated` (default) | everyone, plaintext or mTLS |
//! | `all-authenticated` | mTLS clients with an identity the trust anchors vouch for |
//! | `cluster-authenticated` | those whose identity is in this proxy's trust domain |
//! | `spiffe://...,spiffe://...` | mTLS clients with one of these identities |
//! | `deny` | nobody |
//!
//! A policy that needs an identity closes plaintext connections (and TLS
//! ones without a client certificate) at once; a client with an identity
//! the policy does not admit gets `403` / `PERMISSION_DENIED` for each
//! request, or a closed connection for opaque TCP. Each refusal is counted
//! in `mesh_refused_total` by reason.

use crate::{limits::Refusal, tls::PeerTls};
use std::collections::BTreeMap;
pub use stockkube_proto::policy::Policy;

/// What a policy admits, in the proxy's terms.
pub trait Admits {
    /// Whether a connection may be served at all: `Err` closes it.
    fn admit_connection(&self, peer: &PeerTls) -> Result<(), Refusal>;

    /// Whether a client may call the app; `trust_domain` is this proxy's.
    fn authorize(&self, peer: &PeerTls, trust_domain: Option<&str>) -> Result<(), Refusal>;
}

impl Admits for Policy {
    fn admit_connection(&self, peer: &PeerTls) -> Result<(), Refusal> {
        if !self.needs_identity() {
            return Ok(());
        }
        match peer {
            PeerTls::None => Err(Refusal::TlsRequired),
            PeerTls::Mesh { id: None } => Err(Refusal::Unauthenticated),
            PeerTls::Mesh { id: Some(_) } => Ok(()),
        }
    }

    fn authorize(&self, peer: &PeerTls, trust_domain: Option<&str>) -> Result<(), Refusal> {
        let id = peer.id();
        let allowed = match self {
            Policy::AllUnauthenticated => true,
            Policy::Deny => return Err(Refusal::PolicyDenied),
            Policy::AllAuthenticated => id.is_some(),
            Policy::ClusterAuthenticated => id.is_some_and(|id| {
                let domain = stockkube_proto::identity::parse(id).map(|(domain, _, _)| domain);
                domain.is_some() && domain == trust_domain
            }),
            Policy::Identities(ids) => id.is_some_and(|id| ids.contains(id)),
        };
        match (allowed, id) {
            (true, _) => Ok(()),
            (false, None) => Err(Refusal::Unauthenticated),
            (false, Some(_)) => Err(Refusal::Unauthorized),
        }
    }
}

/// The inbound side's policies: a default and per app port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundPolicy {
    pub default: Policy,
    pub ports: BTreeMap<u16, Policy>,
}

impl Default for InboundPolicy {
    fn default() -> Self {
        Self {
            default: Policy::AllUnauthenticated,
            ports: BTreeMap::new(),
        }
    }
}

impl InboundPolicy {
    /// The policy of calls to the app's `port`.
    pub fn for_port(&self, port: u16) -> &Policy {
        self.ports.get(&port).unwrap_or(&self.default)
    }

    /// Whether any port needs an identity (then the proxy must have one).
    pub fn needs_identity(&self) -> bool {
        self.default.needs_identity() || self.ports.values().any(Policy::needs_identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const WEB: &str = "spiffe://cluster.local/ns/stocks/sa/stockweb";
    const OTHER: &str = "spiffe://other.org/ns/stocks/sa/stockweb";

    fn mesh(id: Option<&str>) -> PeerTls {
        PeerTls::Mesh {
            id: id.map(Arc::from),
        }
    }

    #[test]
    fn policies_parse_and_bad_ones_are_named() {
        assert_eq!("deny".parse::<Policy>().unwrap(), Policy::Deny);
        assert_eq!(
            format!(" {WEB} ,{OTHER}").parse::<Policy>().unwrap(),
            Policy::Identities(vec![WEB.into(), OTHER.into()])
        );
        for bad in ["", "all", "spiffe://x", "all-authenticated,deny"] {
            let err = bad.parse::<Policy>().unwrap_err();
            assert!(err.contains("cluster-authenticated"), "{err}");
        }
    }

    #[test]
    fn who_each_policy_admits() {
        let domain = Some("cluster.local");
        let peers = [
            PeerTls::None,
            mesh(None),
            mesh(Some(WEB)),
            mesh(Some(OTHER)),
        ];
        let table = |policy: &str| -> Vec<Result<(), &'static str>> {
            let policy: Policy = policy.parse().unwrap();
            peers
                .iter()
                .map(|peer| {
                    policy
                        .admit_connection(peer)
                        .and_then(|()| policy.authorize(peer, domain))
                        .map_err(Refusal::as_str)
                })
                .collect()
        };
        assert_eq!(
            table("all-unauthenticated"),
            [Ok(()), Ok(()), Ok(()), Ok(())]
        );
        assert_eq!(
            table("all-authenticated"),
            [Err("tls_required"), Err("unauthenticated"), Ok(()), Ok(())]
        );
        assert_eq!(
            table("cluster-authenticated"),
            [
                Err("tls_required"),
                Err("unauthenticated"),
                Ok(()),
                Err("unauthorized")
            ]
        );
        assert_eq!(
            table(WEB),
            [
                Err("tls_required"),
                Err("unauthenticated"),
                Ok(()),
                Err("unauthorized")
            ]
        );
        assert_eq!(table("deny"), [Err("denied"); 4]);
    }

    #[test]
    fn ports_override_the_default() {
        let policy = InboundPolicy {
            default: Policy::AllAuthenticated,
            ports: [(9090, Policy::AllUnauthenticated)].into(),
        };
        assert_eq!(policy.for_port(9090), &Policy::AllUnauthenticated);
        assert_eq!(policy.for_port(5001), &Policy::AllAuthenticated);
        assert!(policy.needs_identity());
        assert!(!InboundPolicy::default().needs_identity());
    }
}
