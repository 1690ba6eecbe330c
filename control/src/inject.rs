//! The sidecar the mesh adds to a pod, as Kubernetes JSON: the proxy
//! container and the init container that redirects the pod's TCP traffic to
//! it. Pure data, no I/O: `meshctl inject --manual` writes it into YAML, and
//! the admission webhook will patch pods with the same values.
//!
//! What the sidecar does: the pod's inbound TCP is redirected to the proxy
//! (port 4143), which forwards it to the port the peer dialled, on
//! localhost; the app's outbound TCP is redirected to the proxy (port 4140),
//! which asks the controller which Service the destination is and balances
//! its requests over the Service's endpoints, or forwards the connection
//! untouched when it is no Service. The proxy's own connections (its user,
//! 2102) are never redirected. Its metrics and probes are on port 4191.

use serde_json::{Value, json};
use stockkube_proto::{admin, ports};

/// Pod-template annotation that asks the injector for a sidecar.
pub const INJECT_ANNOTATION: &str = "mesh.stockkube.dev/inject";
/// Its value that enables injection.
pub const INJECT_ENABLED: &str = "enabled";
/// Name of the proxy container.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// Name of the init container that sets up the redirection.
pub const INIT_CONTAINER: &str = "mesh-init";
/// The proxy runs as this user; the redirection leaves its own connections
/// alone, which is what keeps them from looping back into it.
pub const PROXY_UID: i64 = 2102;
/// Where redirected inbound connections arrive.
pub const INBOUND_PORT: u16 = ports::PROXY_INBOUND;
/// Where the app's redirected outbound connections arrive.
pub const OUTBOUND_PORT: u16 = ports::PROXY_OUTBOUND;
/// The proxy's admin server: /metrics, /ready, /live, /endpoints.
pub const ADMIN_PORT: u16 = ports::PROXY_ADMIN;

/// What the sidecar is made of; the defaults match the images built from
/// this repository and the mesh's manifests in `k8s/mesh/`.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub proxy_image: String,
    pub init_image: String,
    /// The controller's destination API, as the proxy reaches it.
    pub controller: String,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            proxy_image: "stockkube/mesh-proxy:dev".into(),
            init_image: "stockkube/mesh-proxy-init:dev".into(),
            controller: format!(
                "http://mesh-controller.stockkube-mesh.svc.cluster.local:{}",
                ports::CONTROLLER
            ),
        }
    }
}

fn hardened(run_as_user: i64, capabilities: Value) -> Value {
    json!({
        "runAsUser": run_as_user,
        "runAsNonRoot": run_as_user != 0,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": capabilities,
    })
}

/// The proxy container.
pub fn proxy_container(config: &SidecarConfig) -> Value {
    json!({
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "MESH_PROXY_INBOUND", "value": format!("0.0.0.0:{INBOUND_PORT}")},
            {"name": "MESH_PROXY_OUTBOUND_TRANSPARENT", "value": format!("127.0.0.1:{OUTBOUND_PORT}")},
            {"name": "MESH_PROXY_DESTINATION", "value": config.controller},
            {"name": "MESH_PROXY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "MESH_PROXY_ADMIN", "value": format!("0.0.0.0:{ADMIN_PORT}")},
            // Its CPU limit is half a core: one worker, on the
            // current-thread scheduler (docs/proxy.md).
            {"name": "TOKIO_WORKER_THREADS", "value": "1"},
        ],
        "ports": [
            {"name": "mesh-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "mesh-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": admin::READY, "port": ADMIN_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": admin::LIVE, "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "500m", "memory": "64Mi"},
        },
        "securityContext": hardened(PROXY_UID, json!({"drop": ["ALL"]})),
    })
}

/// The init container: redirects inbound TCP, except to the proxy's own
/// ports, and outbound TCP, except the proxy's own, to the proxy. It needs
/// NET_ADMIN and NET_RAW, and root, for the moment it runs.
pub fn init_container(config: &SidecarConfig) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": config.init_image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "--inbound-port", INBOUND_PORT.to_string(),
            "--ignore-inbound-ports", format!("{ADMIN_PORT},{INBOUND_PORT}"),
            "--outbound-port", OUTBOUND_PORT.to_string(),
            "--proxy-uid", PROXY_UID.to_string(),
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
        "securityContext": hardened(0, json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_intercepts_both_ways_and_is_probed_on_admin() {
        let proxy = proxy_container(&SidecarConfig::default());
        assert_eq!(proxy["name"], PROXY_CONTAINER);
        let env = |name: &str| {
            proxy["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .unwrap_or_else(|| panic!("{name}"))
                .clone()
        };
        assert_eq!(
            env("MESH_PROXY_OUTBOUND_TRANSPARENT")["value"],
            "127.0.0.1:4140"
        );
        assert_eq!(
            env("MESH_PROXY_DESTINATION")["value"],
            "http://mesh-controller.stockkube-mesh.svc.cluster.local:8086"
        );
        assert_eq!(
            env("MESH_PROXY_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 4191);
        assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
        assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    }

    #[test]
    fn the_init_container_skips_the_proxy_ports_and_its_user() {
        let init = init_container(&SidecarConfig::default());
        let args: Vec<_> = init["args"].as_array().unwrap().iter().collect();
        let pair = |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag && w[1] == value);
        assert!(pair("--ignore-inbound-ports", "4191,4143"));
        assert!(pair("--outbound-port", "4140"));
        assert!(pair("--proxy-uid", "2102"));
        assert_eq!(init["securityContext"]["runAsNonRoot"], false);
    }
}
