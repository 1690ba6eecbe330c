//! The two containers the mesh adds to a pod, and what they are made of.

use super::{ADMIN_PORT, INBOUND_PORT, INIT_CONTAINER, OUTBOUND_PORT, PROXY_CONTAINER, PROXY_UID};
use serde_json::{Value, json};
use stockkube_proto::{admin, ports};

/// Where the proxy's images' health tool is (every image of the mesh has
/// it; they have no shell).
const PROBE: &str = "/usr/bin/mesh-probe";
/// How long a regular-container proxy's `preStop` hook holds its stop back,
/// so that the app, stopped at the same moment, can finish what it answers.
pub const PRE_STOP_WAIT_SECONDS: u32 = 10;
/// How long the app waits for the proxy to turn ready at pod start.
pub const STARTUP_WAIT_SECONDS: u32 = 120;

/// What the sidecar is made of; the defaults match the images built from
/// this repository and the mesh that `meshctl install` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarConfig {
    pub proxy_image: String,
    pub init_image: String,
    pub image_pull_policy: String,
    /// The controller's destination API, as the proxy reaches it.
    pub controller: String,
    /// A native sidecar (an init container with `restartPolicy: Always`,
    /// Kubernetes 1.29 and later) or a regular container.
    pub native: bool,
    /// The proxy's CPU and memory requests and limits.
    pub resources: ProxyResources,
    /// Written on injected pods as `stockkube.io/proxy-version`.
    pub version: String,
    /// The mesh's identity, when it issues them: the proxy then asks for
    /// its pod's ServiceAccount identity and speaks mTLS.
    pub identity: Option<SidecarIdentity>,
}

/// What an injected proxy needs for its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarIdentity {
    /// The trust domain of the identities (`cluster.local`).
    pub trust_domain: String,
    /// The trust anchors (PEM), passed to the proxy in its environment.
    pub trust_anchors_pem: String,
}

/// Where the pod's projected ServiceAccount token for the identity
/// service is mounted in the proxy, and its volume's name.
pub const IDENTITY_TOKEN_DIR: &str = "/var/run/secrets/stockkube.io/identity";
pub const IDENTITY_TOKEN_VOLUME: &str = "mesh-identity-token";
/// The token's lifetime; the kubelet renews it at 80% of it, and the
/// proxy reads the file again before each request.
const IDENTITY_TOKEN_SECONDS: u32 = 3600;

/// Kubernetes quantities, e.g. `10m`, `64Mi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyResources {
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl Default for ProxyResources {
    fn default() -> Self {
        Self {
            cpu_request: "10m".into(),
            // Half a core: one worker, on the current-thread scheduler
            // (docs/proxy.md).
            cpu_limit: "500m".into(),
            memory_request: "16Mi".into(),
            memory_limit: "64Mi".into(),
        }
    }
}

impl SidecarConfig {
    /// The sidecar of a mesh installed in `namespace` from images
    /// `REGISTRY/NAME:TAG`.
    pub fn for_install(registry: &str, tag: &str, namespace: &str) -> Self {
        Self {
            proxy_image: format!("{registry}/mesh-proxy:{tag}"),
            init_image: format!("{registry}/mesh-proxy-init:{tag}"),
            image_pull_policy: "IfNotPresent".into(),
            controller: format!(
                "http://mesh-controller.{namespace}.svc.cluster.local:{}",
                ports::CONTROLLER
            ),
            native: true,
            resources: ProxyResources::default(),
            version: env!("CARGO_PKG_VERSION").into(),
            identity: None,
        }
    }
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self::for_install("stockkube", "dev", "stockkube-mesh")
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

/// The proxy container, in the shape `config.native` says, with `env`
/// added to its environment.
pub fn proxy_container(config: &SidecarConfig, env: Vec<Value>) -> Value {
    let ready = format!("http://127.0.0.1:{ADMIN_PORT}{}", admin::READY);
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": config.image_pull_policy,
        "env": [
            {"name": "MESH_PROXY_INBOUND", "value": format!("0.0.0.0:{INBOUND_PORT}")},
            {"name": "MESH_PROXY_OUTBOUND_TRANSPARENT", "value": format!("127.0.0.1:{OUTBOUND_PORT}")},
            {"name": "MESH_PROXY_DESTINATION", "value": config.controller},
            {"name": "MESH_PROXY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "MESH_PROXY_ADMIN", "value": format!("0.0.0.0:{ADMIN_PORT}")},
            // One worker, on the current-thread scheduler (docs/proxy.md).
            {"name": "TOKIO_WORKER_THREADS", "value": "1"},
        ],
        "ports": [
            {"name": "mesh-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "mesh-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
    });
    let fields = container.as_object_mut().expect("an object");
    let all_env = fields["env"].as_array_mut().expect("a list");
    if let Some(identity) = &config.identity {
        all_env.extend(identity_env(identity));
        fields.insert(
            "volumeMounts".into(),
            json!([{"name": IDENTITY_TOKEN_VOLUME, "mountPath": IDENTITY_TOKEN_DIR, "readOnly": true}]),
        );
    }
    let all_env = fields["env"].as_array_mut().expect("a list");
    all_env.extend(env);
    if config.native {
        // Runs beside the app for the pod's life; the kubelet starts the
        // next container once the startup probe passes.
        fields.insert("restartPolicy".into(), json!("Always"));
        fields.insert(
            "startupProbe".into(),
            json!({
                "httpGet": {"path": admin::READY, "port": ADMIN_PORT},
                "periodSeconds": 1,
                "failureThreshold": STARTUP_WAIT_SECONDS,
            }),
        );
    } else {
        fields.insert(
            "lifecycle".into(),
            json!({
                // The kubelet starts the next container once this returns.
                "postStart": {"exec": {"command": [PROBE, "--wait", format!("{STARTUP_WAIT_SECONDS}s"), ready]}},
                "preStop": {"exec": {"command": [PROBE, "--sleep", format!("{PRE_STOP_WAIT_SECONDS}s")]}},
            }),
        );
    }
    fields.insert(
        "readinessProbe".into(),
        json!({"httpGet": {"path": admin::READY, "port": ADMIN_PORT}, "periodSeconds": 5}),
    );
    fields.insert(
        "livenessProbe".into(),
        json!({"httpGet": {"path": admin::LIVE, "port": ADMIN_PORT}, "periodSeconds": 10}),
    );
    let resources = &config.resources;
    fields.insert(
        "resources".into(),
        json!({
            "requests": {"cpu": resources.cpu_request, "memory": resources.memory_request},
            "limits": {"cpu": resources.cpu_limit, "memory": resources.memory_limit},
        }),
    );
    fields.insert(
        "securityContext".into(),
        hardened(PROXY_UID, json!({"drop": ["ALL"]})),
    );
    container
}

/// The proxy's identity settings: its SPIFFE ID from the pod's namespace
/// and ServiceAccount (Kubernetes expands `$(VAR)` from the variables
/// before it), the token file and the trust anchors.
fn identity_env(identity: &SidecarIdentity) -> Vec<Value> {
    vec![
        json!({"name": "MESH_POD_SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}}),
        json!({"name": "MESH_PROXY_IDENTITY", "value": format!(
            "spiffe://{}/ns/$(MESH_PROXY_NAMESPACE)/sa/$(MESH_POD_SERVICE_ACCOUNT)",
            identity.trust_domain
        )}),
        json!({"name": "MESH_PROXY_IDENTITY_TOKEN_FILE", "value": format!("{IDENTITY_TOKEN_DIR}/token")}),
        json!({"name": "MESH_PROXY_IDENTITY_TRUST_ANCHORS_PEM", "value": identity.trust_anchors_pem}),
    ]
}

/// The pod volume with its ServiceAccount token for the identity service
/// (audience `identity.stockkube.io`, so it is good for nothing else).
pub fn identity_token_volume() -> Value {
    json!({
        "name": IDENTITY_TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": crate::identity::credentials::TOKEN_AUDIENCE,
            "expirationSeconds": IDENTITY_TOKEN_SECONDS,
            "path": "token",
        }}]},
    })
}

/// The init container: redirects inbound TCP, except to the proxy's own
/// ports, and outbound TCP, except the proxy's own, to the proxy. It needs
/// NET_ADMIN and NET_RAW, and root, for the moment it runs.
pub fn init_container(config: &SidecarConfig) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": config.init_image,
        "imagePullPolicy": config.image_pull_policy,
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
