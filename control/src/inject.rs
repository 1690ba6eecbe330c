//! Injection: which pods get the sidecar and what the sidecar is, as
//! Kubernetes JSON. Pure data, no I/O: `meshctl inject --manual` writes it
//! into YAML and the injector ([`crate::injector`]) patches pods with it,
//! through the one function [`add_sidecar`], so both give the same pod.
//!
//! What the sidecar does: the pod's inbound TCP is redirected to the proxy
//! (port 4143), which forwards it to the port the peer dialled, on
//! localhost; the app's outbound TCP is redirected to the proxy (port 4140),
//! which asks the controller which Service the destination is and balances
//! its requests over the Service's endpoints, or forwards the connection
//! untouched when it is no Service. The proxy's own connections (its user,
//! 2102) are never redirected. Its metrics and probes are on port 4191.
//!
//! Two shapes ([`SidecarConfig::native`]): on Kubernetes 1.29 and later the
//! proxy is a native sidecar, an init container with `restartPolicy:
//! Always`, which the kubelet starts (and waits to be started) before the
//! app and stops after it, and which does not keep a Job's pod running; on
//! older clusters it is the first regular container, whose `postStart` hook
//! holds the app back until the proxy is ready and whose `preStop` hook
//! gives the app time to finish before the proxy stops.

mod sidecar;

pub use sidecar::{
    IDENTITY_TOKEN_DIR, IDENTITY_TOKEN_VOLUME, ProxyResources, SidecarConfig, SidecarIdentity,
    identity_token_volume, init_container, proxy_container,
};

use serde_json::{Map, Value};
use stockkube_proto::ports;

/// Annotation (on a pod, its template or its namespace) that asks for the
/// sidecar: `enabled`, or `disabled` to keep a pod out of an injected
/// namespace.
pub const INJECT_ANNOTATION: &str = "stockkube.io/inject";
/// Linkerd's annotation, honoured the same way, so manifests written for
/// Linkerd (the tutorial's) work unchanged. Ours wins when both are set.
pub const LINKERD_INJECT_ANNOTATION: &str = "linkerd.io/inject";
/// The value that enables injection.
pub const INJECT_ENABLED: &str = "enabled";
/// The value that keeps a pod out.
pub const INJECT_DISABLED: &str = "disabled";
/// Set on every injected pod template: the version of the mesh that injected
/// it (`meshctl check` compares it with its own).
pub const PROXY_VERSION_ANNOTATION: &str = "stockkube.io/proxy-version";
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

/// What [`add_sidecar`] did to a pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    AlreadyInjected,
    /// Not injected, and why.
    Skipped(String),
}

/// Whether a pod (template) spec already has the proxy, either shape.
pub fn is_injected(spec: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|list| {
        spec[*list]
            .as_array()
            .is_some_and(|list| list.iter().any(|c| c["name"] == PROXY_CONTAINER))
    })
}

/// Why a pod (template) spec cannot have the sidecar, if it cannot.
pub fn unmeshable(spec: &Value) -> Option<String> {
    (spec["hostNetwork"] == Value::Bool(true)).then(|| {
        "hostNetwork: true (the sidecar would take over the node's own traffic)".to_owned()
    })
}

/// What an object's annotations ask for: `Some(true)` enabled, `Some(false)`
/// disabled, `None` nothing (ours first, then Linkerd's).
pub fn requested(annotations: &Value) -> Option<bool> {
    [INJECT_ANNOTATION, LINKERD_INJECT_ANNOTATION]
        .iter()
        .find_map(|key| match annotations[*key].as_str() {
            Some(INJECT_ENABLED) => Some(true),
            Some(INJECT_DISABLED) => Some(false),
            _ => None,
        })
}

/// Adds the sidecar to a pod template (`metadata` and `spec`, as in a
/// Deployment's `spec.template` or a Pod itself). Keeps every other field
/// and the order of keys; adds nothing when the spec cannot have it or has
/// it already. An error means the template is malformed.
pub fn add_sidecar(template: &mut Value, config: &SidecarConfig) -> Result<Outcome, String> {
    let spec = &template["spec"];
    if let Some(why) = unmeshable(spec) {
        return Ok(Outcome::Skipped(why));
    }
    if is_injected(spec) {
        return Ok(Outcome::AlreadyInjected);
    }
    if !spec["containers"].is_array() {
        return Err("the pod template has no containers".into());
    }
    let policy_env = policy_env(&template["metadata"]["annotations"], config)?;
    let Value::Object(template_map) = template else {
        return Err("the pod template is not a mapping".into());
    };
    let annotations = object_at(object_at(template_map, "metadata")?, "annotations")?;
    annotations.insert(
        PROXY_VERSION_ANNOTATION.into(),
        Value::String(config.version.clone()),
    );
    let spec = object_at(template_map, "spec")?;
    if config.identity.is_some() {
        list_at(spec, "volumes")?.push(identity_token_volume());
    }
    let proxy = proxy_container(config, policy_env);
    let init = list_at(spec, "initContainers")?;
    init.insert(0, init_container(config));
    if config.native {
        // After the redirection, before the pod's own init containers: they
        // may need the network, which now goes through the proxy.
        init.insert(1, proxy);
    } else {
        // First, so that its postStart hook holds the app back.
        list_at(spec, "containers")?.insert(0, proxy);
    }
    Ok(Outcome::Injected)
}

/// The proxy's policy variables from the workload's annotations
/// (`config.stockkube.io/default-inbound-policy`,
/// `config.stockkube.io/inbound-port-policies`,
/// `config.stockkube.io/opaque-ports`), checked: a bad value, or one that
/// needs identities where the mesh has none, refuses the injection.
fn policy_env(annotations: &Value, config: &SidecarConfig) -> Result<Vec<Value>, String> {
    use stockkube_proto::policy::{
        DEFAULT_INBOUND_POLICY_ANNOTATION, PORT_POLICIES_ANNOTATION, Policy, parse_port_policies,
    };
    let mut env = Vec::new();
    let mut needs_identity = false;
    if let Some(value) = annotations[DEFAULT_INBOUND_POLICY_ANNOTATION].as_str() {
        let policy: Policy = value
            .parse()
            .map_err(|e| format!("{DEFAULT_INBOUND_POLICY_ANNOTATION}: {e}"))?;
        needs_identity |= policy.needs_identity();
        env.push(serde_json::json!({"name": "MESH_PROXY_INBOUND_POLICY", "value": value.trim()}));
    }
    if let Some(value) = annotations[PORT_POLICIES_ANNOTATION].as_str() {
        let ports =
            parse_port_policies(value).map_err(|e| format!("{PORT_POLICIES_ANNOTATION}: {e}"))?;
        needs_identity |= ports.iter().any(|(_, policy)| policy.needs_identity());
        env.push(
            serde_json::json!({"name": "MESH_PROXY_INBOUND_PORT_POLICY", "value": value.trim()}),
        );
    }
    if let Some(value) = annotations[stockkube_proto::ports::OPAQUE_PORTS_ANNOTATION].as_str() {
        use stockkube_proto::ports::{OPAQUE_PORTS_ANNOTATION, parse_opaque_ports};
        let ports =
            parse_opaque_ports(value).map_err(|e| format!("{OPAQUE_PORTS_ANNOTATION}: {e}"))?;
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        env.push(serde_json::json!({"name": "MESH_PROXY_OPAQUE_PORTS", "value": ports.join(",")}));
    }
    if needs_identity && config.identity.is_none() {
        return Err(
            "the workload's inbound policy admits only authenticated clients, and this mesh issues no identities"
                .into(),
        );
    }
    Ok(env)
}

/// The mapping at `key`, added (empty, at the end) if absent or null.
fn object_at<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry
        .as_object_mut()
        .ok_or_else(|| format!("`{key}` is not a mapping"))
}

/// The sequence at `key`, added (empty, at the end) if absent or null.
fn list_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, String> {
    let entry = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if entry.is_null() {
        *entry = Value::Array(Vec::new());
    }
    entry
        .as_array_mut()
        .ok_or_else(|| format!("`{key}` is not a sequence"))
}

#[cfg(test)]
mod tests;
