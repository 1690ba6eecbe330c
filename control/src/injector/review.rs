//! One AdmissionReview: what the API server asks, what the injector
//! decides, and the answer. Pure: the namespace's annotations are looked up
//! by the caller and passed in.
//!
//! Every answer allows the pod: the injector only ever adds the sidecar,
//! and a review it cannot read is answered `allowed: true` with the reason,
//! so the pod is created as it is and the reason is visible.

use crate::inject::{self, Outcome, SidecarConfig};
use base64::Engine as _;
use serde_json::{Value, json};

/// The reviews this injector answers.
const API_VERSION: &str = "admission.k8s.io/v1";

/// A review's request, as far as the injector needs it.
#[derive(Debug, Clone)]
pub struct Request {
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod, as the API server would create it.
    pub pod: Value,
    /// For logs: the pod's name, or its `generateName` prefix.
    pub name: String,
}

/// A review that cannot be answered as asked; the `uid`, when it could be
/// read, lets the API server match the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub uid: String,
    pub reason: String,
}

/// Reads an AdmissionReview for a Pod.
pub fn parse(body: &[u8]) -> Result<Request, Unreadable> {
    let review: Value = serde_json::from_slice(body).map_err(|e| Unreadable {
        uid: String::new(),
        reason: format!("the review is not JSON: {e}"),
    })?;
    let request = &review["request"];
    let uid = request["uid"].as_str().unwrap_or_default().to_owned();
    let fail = |reason: String| Unreadable {
        uid: uid.clone(),
        reason,
    };
    if review["apiVersion"] != API_VERSION || review["kind"] != "AdmissionReview" {
        return Err(fail(format!(
            "expected an {API_VERSION} AdmissionReview, got apiVersion {} kind {}",
            review["apiVersion"], review["kind"]
        )));
    }
    if uid.is_empty() {
        return Err(fail("the review has no request.uid".into()));
    }
    let kind = &request["kind"];
    if kind["group"] != "" || kind["kind"] != "Pod" {
        return Err(fail(format!(
            "the injector reviews Pods, not {}",
            kind["kind"].as_str().unwrap_or("(no kind)")
        )));
    }
    let pod = &request["object"];
    if !pod.is_object() || !pod["spec"].is_object() {
        return Err(fail("the review has no pod in request.object".into()));
    }
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| pod["metadata"]["namespace"].as_str())
        .unwrap_or_default()
        .to_owned();
    let name = pod["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| pod["metadata"]["generateName"].as_str())
        .unwrap_or("(unnamed)")
        .to_owned();
    Ok(Request {
        uid,
        namespace,
        pod: pod.clone(),
        name,
    })
}

/// The namespace's annotations, or why they could not be read.
pub type NamespaceAnnotations = Result<Value, String>;

/// What the injector decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Add the sidecar with this RFC 6902 patch.
    Inject(json_patch::Patch),
    /// Leave the pod as it is; nobody asked for the sidecar.
    NotAsked,
    /// Leave the pod as it is, although injection was asked for: why.
    Skip(String),
}

/// Decides for `request`. `control_plane` is the mesh's own namespace,
/// never injected.
pub fn decide(
    request: &Request,
    namespace: &NamespaceAnnotations,
    control_plane: &str,
    config: &SidecarConfig,
) -> Decision {
    let asked = match inject::requested(&request.pod["metadata"]["annotations"]) {
        Some(false) => return Decision::NotAsked,
        Some(true) => true,
        None => match namespace {
            Ok(annotations) => inject::requested(annotations) == Some(true),
            Err(reason) => {
                return Decision::Skip(format!(
                    "cannot read namespace {}'s annotations ({reason}); the pod does not ask for the sidecar itself",
                    request.namespace
                ));
            }
        },
    };
    if !asked {
        return Decision::NotAsked;
    }
    if request.namespace == control_plane {
        return Decision::Skip(format!(
            "namespace {control_plane} is the mesh's own control plane"
        ));
    }
    let mut injected = request.pod.clone();
    match inject::add_sidecar(&mut injected, config) {
        Ok(Outcome::Injected) => Decision::Inject(json_patch::diff(&request.pod, &injected)),
        Ok(Outcome::AlreadyInjected) => {
            Decision::Skip("the pod already has the mesh's proxy".into())
        }
        Ok(Outcome::Skipped(why)) => Decision::Skip(why),
        Err(why) => Decision::Skip(format!("the pod cannot take the sidecar: {why}")),
    }
}

/// The AdmissionReview that answers `uid` with `decision`.
pub fn answer(uid: &str, decision: &Decision) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    match decision {
        Decision::Inject(patch) => {
            let patch = serde_json::to_vec(patch).expect("a patch serializes");
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
        }
        Decision::NotAsked => {}
        Decision::Skip(why) => {
            response["warnings"] = json!([format!("stockkube-mesh: sidecar not injected: {why}")]);
        }
    }
    review(response)
}

/// The AdmissionReview that answers a review that could not be read.
pub fn answer_unreadable(unreadable: &Unreadable) -> Value {
    let message = format!(
        "stockkube-mesh: sidecar not injected: {}",
        unreadable.reason
    );
    review(json!({
        "uid": unreadable.uid,
        "allowed": true,
        "status": {"message": message},
        "warnings": [message],
    }))
}

fn review(response: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(pod: Value, namespace: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "object": pod,
            }
        }))
        .unwrap()
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "metadata": {"generateName": "stockdata-5d4f-", "annotations": annotations},
            "spec": {"containers": [{"name": "stockdata", "image": "stockkube/stockdata:dev"}]},
        })
    }

    fn decide_for(pod: Value, namespace: NamespaceAnnotations) -> Decision {
        let request = parse(&review_of(pod, "stocks")).unwrap();
        decide(
            &request,
            &namespace,
            "stockkube-mesh",
            &SidecarConfig::default(),
        )
    }

    #[test]
    fn the_patch_yields_the_injected_pod() {
        let pod = pod(json!({"linkerd.io/inject": "enabled"}));
        let Decision::Inject(patch) = decide_for(pod.clone(), Ok(json!({}))) else {
            panic!("injects")
        };
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let mut expected = pod;
        inject::add_sidecar(&mut expected, &SidecarConfig::default()).unwrap();
        assert_eq!(patched, expected);
        let answer = answer("u", &Decision::Inject(patch));
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        assert_eq!(answer["response"]["allowed"], true);
    }

    #[test]
    fn the_pod_decides_first_then_its_namespace() {
        let enabled = json!({"stockkube.io/inject": "enabled"});
        assert!(matches!(
            decide_for(pod(json!({})), Ok(enabled.clone())),
            Decision::Inject(_)
        ));
        assert_eq!(
            decide_for(pod(json!({"stockkube.io/inject": "disabled"})), Ok(enabled)),
            Decision::NotAsked,
            "disabled on the pod wins over its namespace"
        );
        assert_eq!(
            decide_for(pod(json!({})), Ok(json!({}))),
            Decision::NotAsked
        );
        assert_eq!(
            decide_for(pod(Value::Null), Ok(Value::Null)),
            Decision::NotAsked
        );
        // The namespace cannot be read: only the pod's own ask counts.
        assert!(matches!(
            decide_for(
                pod(json!({"linkerd.io/inject": "enabled"})),
                Err("timed out".into())
            ),
            Decision::Inject(_)
        ));
        assert!(matches!(
            decide_for(pod(json!({})), Err("timed out".into())),
            Decision::Skip(why) if why.contains("timed out")
        ));
    }

    #[test]
    fn host_network_injected_and_control_plane_pods_are_skipped_with_a_warning() {
        let asked = json!({"stockkube.io/inject": "enabled"});
        let mut host = pod(asked.clone());
        host["spec"]["hostNetwork"] = json!(true);
        let mut injected = pod(asked.clone());
        inject::add_sidecar(&mut injected, &SidecarConfig::default()).unwrap();
        for (pod, namespace, expected) in [
            (host, "stocks", "hostNetwork"),
            (injected, "stocks", "already has"),
            (pod(asked), "stockkube-mesh", "control plane"),
        ] {
            let request = parse(&review_of(pod, namespace)).unwrap();
            let decision = decide(
                &request,
                &Ok(json!({})),
                "stockkube-mesh",
                &SidecarConfig::default(),
            );
            let Decision::Skip(why) = &decision else {
                panic!("{decision:?}")
            };
            assert!(why.contains(expected), "{why}");
            let answer = answer(&request.uid, &decision);
            assert_eq!(answer["response"]["allowed"], true);
            assert!(answer["response"].get("patch").is_none());
            assert!(
                answer["response"]["warnings"][0]
                    .as_str()
                    .unwrap()
                    .contains(expected)
            );
        }
    }

    #[test]
    fn unreadable_reviews_say_why_and_keep_the_uid_when_there_is_one() {
        for (body, uid, reason) in [
            (&b"{not json"[..], "", "not JSON"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"a"}}"#, "a", "expected"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#, "", "uid"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"b","kind":{"group":"apps","kind":"Deployment"}}}"#, "b", "Deployment"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"c","kind":{"group":"","kind":"Pod"},"object":7}}"#, "c", "no pod"),
            (b"[]", "", "expected"),
        ] {
            let unreadable = parse(body).unwrap_err();
            assert_eq!(unreadable.uid, uid);
            assert!(unreadable.reason.contains(reason), "{}", unreadable.reason);
            let answer = answer_unreadable(&unreadable);
            assert_eq!(answer["response"]["allowed"], true);
            assert_eq!(answer["response"]["uid"], uid);
            assert!(answer["response"]["status"]["message"].as_str().unwrap().contains(reason));
        }
    }
}
