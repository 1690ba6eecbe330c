//! Wire contracts shared by every crate of the workspace.
//!
//! - [`stockdata`]: the StockData API (`package StockData; service Stocks`),
//!   generated from `proto/stocks.proto` by `build.rs`, with its encoded
//!   descriptor set for server reflection.
//! - [`mesh`]: the mesh's control APIs (`Destination`, `Registry`).
//! - [`headers`]: names of the metadata headers the apps and the mesh agree on.
//! - [`ports`], [`admin`], [`metrics`]: the sidecar's contract with everything
//!   around it: its well-known ports, its admin routes, and the names and
//!   labels of the metrics it exports (the dashboard reads them, the
//!   injector wires the ports).
//!
//! Nothing here does I/O; the crates above decide how the contracts are served.

/// The StockData gRPC API: messages, the `Stocks` client and server.
pub mod stockdata {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("stock_data");

    /// Encoded `FileDescriptorSet` of `stocks.proto`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/stockdata_descriptor.bin"));

    /// Fully qualified gRPC service name, as reflection and health report it.
    pub const SERVICE_NAME: &str = "StockData.Stocks";
}

/// The mesh's control APIs: `Destination` (discovery) and `Registry` (the
/// local backend's write side), package `stockkube.mesh.v1`.
pub mod mesh {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("stockkube.mesh.v1");

    /// Encoded `FileDescriptorSet` of `mesh.proto`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mesh_descriptor.bin"));
}

/// Metadata header names.
pub mod headers {
    /// Response header naming the replica that answered a StockData call.
    /// Stable for the life of one process.
    pub const SERVER_ID: &str = "server-id";

    /// Response header the outbound proxy adds: the endpoint (address) that
    /// served the request, so any client can see the balancing.
    pub const MESH_ENDPOINT: &str = "x-mesh-endpoint";

    /// Response header the outbound proxy adds: how many attempts the
    /// request took (1 when it was not retried).
    pub const MESH_ATTEMPTS: &str = "x-mesh-attempts";
}

/// Workload identities: `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT`,
/// and the DNS name that stands for one where TLS needs a DNS name (the
/// server name a client proxy asks for, the certificate's DNS SAN beside
/// its URI SAN), as Linkerd names identities:
/// `ACCOUNT.NAMESPACE.serviceaccount.identity.TRUST-DOMAIN`.
pub mod identity {
    /// The parts of a SPIFFE ID the mesh issues, or `None` when `text` is
    /// not one: lowercase DNS-label characters (and dots) in each part.
    pub fn parse(text: &str) -> Option<(&str, &str, &str)> {
        let rest = text.strip_prefix("spiffe://")?;
        let part = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        let mut parts = rest.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(domain), Some("ns"), Some(namespace), Some("sa"), Some(account), None)
                if part(domain) && part(namespace) && part(account) =>
            {
                Some((domain, namespace, account))
            }
            _ => None,
        }
    }

    /// The DNS name of an identity (see the module's documentation).
    pub fn dns_name(trust_domain: &str, namespace: &str, service_account: &str) -> String {
        format!("{service_account}.{namespace}.serviceaccount.identity.{trust_domain}")
    }

    /// The DNS name of a SPIFFE ID, if it is one.
    pub fn dns_name_of(spiffe_id: &str) -> Option<String> {
        parse(spiffe_id).map(|(domain, ns, sa)| dns_name(domain, ns, sa))
    }

    /// The SPIFFE ID of a workload.
    pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
    }
}

/// Inbound authorization policies, as the proxy's flags and the workload
/// annotations the injector reads name them (the proxy applies them).
pub mod policy {
    use std::sync::Arc;

    /// The annotation with a workload's default inbound policy.
    pub const DEFAULT_INBOUND_POLICY_ANNOTATION: &str =
        "config.stockkube.io/default-inbound-policy";
    /// The annotation with per-port policies, `PORT=POLICY;PORT=POLICY`.
    pub const PORT_POLICIES_ANNOTATION: &str = "config.stockkube.io/inbound-port-policies";

    /// One port's policy.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Policy {
        AllUnauthenticated,
        AllAuthenticated,
        ClusterAuthenticated,
        /// Only these identities.
        Identities(Vec<Arc<str>>),
        Deny,
    }

    impl std::str::FromStr for Policy {
        type Err = String;

        fn from_str(text: &str) -> Result<Self, String> {
            Ok(match text.trim() {
                "all-unauthenticated" => Policy::AllUnauthenticated,
                "all-authenticated" => Policy::AllAuthenticated,
                "cluster-authenticated" => Policy::ClusterAuthenticated,
                "deny" => Policy::Deny,
                list => {
                    let ids: Vec<Arc<str>> = list
                        .split(',')
                        .map(str::trim)
                        .filter(|id| !id.is_empty())
                        .map(Arc::from)
                        .collect();
                    if ids.is_empty() || ids.iter().any(|id| super::identity::parse(id).is_none()) {
                        let shown: String = text.chars().take(120).collect();
                        return Err(format!(
                            "{shown:?} is none of all-unauthenticated, all-authenticated, \
                             cluster-authenticated, deny, or a comma-separated list of \
                             spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT identities"
                        ));
                    }
                    Policy::Identities(ids)
                }
            })
        }
    }

    impl Policy {
        /// Whether a connection must be mTLS with a client identity before
        /// any of its requests is considered.
        pub fn needs_identity(&self) -> bool {
            matches!(
                self,
                Policy::AllAuthenticated | Policy::ClusterAuthenticated | Policy::Identities(_)
            )
        }
    }

    /// Parses `PORT=POLICY;PORT=POLICY` (the per-port annotation and the
    /// proxy's variable), refusing port 0, a port given twice, and bad policies.
    pub fn parse_port_policies(text: &str) -> Result<Vec<(u16, Policy)>, String> {
        let mut ports: Vec<(u16, Policy)> = Vec::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((port, policy)) = entry.split_once('=') else {
                return Err(format!("expected PORT=POLICY, got {entry:?}"));
            };
            let port: u16 = port
                .trim()
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{port:?} is not a port"))?;
            if ports.iter().any(|(p, _)| *p == port) {
                return Err(format!("port {port} is given twice"));
            }
            ports.push((port, policy.parse()?));
        }
        Ok(ports)
    }
}

/// The mesh's well-known ports, as Linkerd numbers its own.
pub mod ports {
    /// The sidecar's outbound listener, where the local app's calls arrive.
    pub const PROXY_OUTBOUND: u16 = 4140;
    /// The sidecar's inbound listener, where other proxies' calls arrive.
    pub const PROXY_INBOUND: u16 = 4143;
    /// The sidecar's admin server (see [`super::admin`]).
    pub const PROXY_ADMIN: u16 = 4191;
    /// The controller's gRPC APIs (`Destination`, `Registry`).
    pub const CONTROLLER: u16 = 8086;
    /// The dashboard's web server.
    pub const DASHBOARD: u16 = 8084;

    /// The annotation listing a workload's opaque ports (Linkerd's
    /// `config.linkerd.io/opaque-ports`): comma-separated ports whose
    /// traffic is not HTTP and is relayed as TCP.
    pub const OPAQUE_PORTS_ANNOTATION: &str = "config.stockkube.io/opaque-ports";

    /// Ports from an opaque-ports value (`3306,6379`, spaces allowed).
    pub fn parse_opaque_ports(value: &str) -> Result<Vec<u16>, String> {
        value
            .split(',')
            .map(str::trim)
            .filter(|port| !port.is_empty())
            .map(|port| match port.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{port:?} is not a port (1-65535)")),
                Ok(port) => Ok(port),
            })
            .collect()
    }
}

/// The routes of the sidecar's admin server.
pub mod admin {
    /// Prometheus metrics: text 0.0.4, or OpenMetrics when asked for (see
    /// [`super::metrics`]).
    pub const METRICS: &str = "/metrics";
    /// 200 while serving, 503 once draining: the readiness probe.
    pub const READY: &str = "/ready";
    /// 200 while the process runs: the liveness probe.
    pub const LIVE: &str = "/live";
    /// JSON: each outbound service, its balancing and its endpoints.
    pub const ENDPOINTS: &str = "/endpoints";
    /// JSON: the proxy's identity, certificate chain and expiry.
    pub const IDENTITY: &str = "/identity";
    /// JSON lines: the requests passing through, as they are answered.
    pub const TAP: &str = "/tap";
}

/// Names and label keys of the metrics the sidecar exports. Names are
/// registered without the [`PREFIX`]; the exported sample names (with the
/// prefix and, for counters, `_total`) are the `*_TOTAL`-style constants.
pub mod metrics {
    /// Every metric's prefix.
    pub const PREFIX: &str = "mesh";

    /// Registered names (the prefix and the counter suffix are added on export).
    pub mod names {
        pub const REQUESTS: &str = "requests";
        pub const RESPONSES: &str = "responses";
        pub const RESPONSE_LATENCY: &str = "response_latency_seconds";
        pub const TCP_CONNECTIONS: &str = "tcp_connections";
        pub const CONNECTIONS: &str = "connections";
        pub const RETRIES: &str = "retries";
        pub const RETRIES_SKIPPED: &str = "retries_skipped";
        pub const REQUEST_TIMEOUTS: &str = "request_timeouts";
        pub const REFUSED: &str = "refused";
        pub const RESOLUTIONS: &str = "resolutions";
        pub const ENDPOINT_EJECTED: &str = "endpoint_ejected";
        pub const ENDPOINT_EJECTIONS: &str = "endpoint_ejections";
        pub const IDENTITY_CERTIFICATIONS: &str = "identity_certifications";
        pub const IDENTITY_CERTIFICATE_EXPIRY: &str = "identity_certificate_expiry_seconds";
        pub const ROUTE_REQUESTS: &str = "route_requests";
        pub const ROUTE_RESPONSES: &str = "route_responses";
        pub const ROUTE_RESPONSE_LATENCY: &str = "route_response_latency_seconds";
    }

    /// Sample names as scraped.
    pub const REQUESTS_TOTAL: &str = "mesh_requests_total";
    pub const RESPONSES_TOTAL: &str = "mesh_responses_total";
    pub const RESPONSE_LATENCY_BUCKET: &str = "mesh_response_latency_seconds_bucket";
    pub const ENDPOINT_EJECTED: &str = "mesh_endpoint_ejected";
    pub const REFUSED_TOTAL: &str = "mesh_refused_total";
    pub const RETRIES_TOTAL: &str = "mesh_retries_total";
    pub const ROUTE_REQUESTS_TOTAL: &str = "mesh_route_requests_total";
    pub const ROUTE_RESPONSES_TOTAL: &str = "mesh_route_responses_total";
    pub const ROUTE_RESPONSE_LATENCY_BUCKET: &str = "mesh_route_response_latency_seconds_bucket";

    /// Label keys, and the values that are fixed.
    pub mod labels {
        /// `inbound` or `outbound`.
        pub const DIRECTION: &str = "direction";
        pub const INBOUND: &str = "inbound";
        pub const OUTBOUND: &str = "outbound";
        /// The service (outbound), or `app` (inbound).
        pub const TARGET: &str = "target";
        /// The inbound side's target.
        pub const APP: &str = "app";
        /// The `ip:port` that served the request.
        pub const ENDPOINT: &str = "endpoint";
        pub const STATUS_CODE: &str = "status_code";
        pub const GRPC_STATUS: &str = "grpc_status";
        /// `success` or `failure`.
        pub const CLASSIFICATION: &str = "classification";
        pub const SUCCESS: &str = "success";
        pub const FAILURE: &str = "failure";
        pub const PROTOCOL: &str = "protocol";
        pub const REASON: &str = "reason";
        /// `true` when the request went over mesh mTLS between proxies.
        pub const TLS: &str = "tls";
        /// The calling proxy's identity (inbound, mTLS).
        pub const CLIENT_ID: &str = "client_id";
        /// The called proxy's identity (outbound, mTLS).
        pub const SERVER_ID: &str = "server_id";
        /// The request's path, one of the first few per target.
        pub const ROUTE: &str = "route";
        /// The route of every request past that bound.
        pub const OTHER_ROUTE: &str = "other";
    }
}

#[cfg(test)]
mod tests {
    use super::stockdata;
    use prost::Message as _;

    #[test]
    fn identities_parse_and_map_to_dns_names() {
        use super::identity::*;
        let id = spiffe_id("cluster.local", "stocks", "default");
        assert_eq!(parse(&id), Some(("cluster.local", "stocks", "default")));
        assert_eq!(
            dns_name_of(&id).as_deref(),
            Some("default.stocks.serviceaccount.identity.cluster.local")
        );
        for bad in [
            "spiffe://cluster.local/ns/stocks/sa/",
            "spiffe://cluster.local/ns/stocks/sa/a/b",
            "spiffe://Cluster/ns/a/sa/b",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a b/sa/b",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sample_names_are_the_prefixed_registered_names() {
        use super::metrics::{names, *};
        let exported = |name: &str, suffix: &str| format!("{PREFIX}_{name}{suffix}");
        assert_eq!(REQUESTS_TOTAL, exported(names::REQUESTS, "_total"));
        assert_eq!(RESPONSES_TOTAL, exported(names::RESPONSES, "_total"));
        assert_eq!(
            RESPONSE_LATENCY_BUCKET,
            exported(names::RESPONSE_LATENCY, "_bucket")
        );
        assert_eq!(ENDPOINT_EJECTED, exported(names::ENDPOINT_EJECTED, ""));
        assert_eq!(REFUSED_TOTAL, exported(names::REFUSED, "_total"));
    }

    #[test]
    fn descriptor_set_describes_the_original_package_and_service() {
        let fds = prost_types::FileDescriptorSet::decode(stockdata::FILE_DESCRIPTOR_SET)
            .expect("build.rs writes a valid descriptor set");
        let file = fds
            .file
            .iter()
            .find(|f| f.name() == "stocks.proto")
            .expect("stocks.proto is in the set");
        assert_eq!(file.package(), "StockData");
        let service = &file.service[0];
        assert_eq!(service.name(), "Stocks");
        assert_eq!(service.method[0].name(), "Get");
        assert_eq!(service.method[0].input_type(), ".StockData.GetRequest");
        assert_eq!(service.method[0].output_type(), ".StockData.GetResponse");
    }

    #[test]
    fn messages_keep_the_original_field_numbers() {
        // GetRequest { id = 7 } as any proto3 encoder writes it: field 1, varint.
        let decoded = stockdata::GetRequest::decode(&[0x08, 0x07][..]).expect("valid GetRequest");
        assert_eq!(decoded.id, 7);

        let stock = stockdata::Stock {
            id: 1,
            symbol: "A".into(),
            name: "B".into(),
        };
        // id = 1 (0x08), symbol = 2 (0x12, length-delimited), name = 3 (0x1a).
        assert_eq!(
            stock.encode_to_vec(),
            vec![0x08, 0x01, 0x12, 0x01, b'A', 0x1a, 0x01, b'B']
        );
    }
}
