//! A fake Kubernetes API server for tests (feature `test-util`), speaking
//! the real wire format over real HTTP on loopback: LIST (cluster-wide or
//! in a namespace) with a `resourceVersion`, GET of one object, streamed
//! WATCH from a version (newline-delimited events), BOOKMARK events, and
//! `410 Gone` for a version older than the server keeps; `/version`, and
//! SelfSubjectAccessReviews answered from a list of denied permissions.
//! Tests change the objects and break the server on purpose: expire old
//! versions, cut open watches, go down and come back (an API server
//! restart).

use axum::{
    body::Body,
    extract::{Query, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{broadcast, mpsc, watch};

/// The resources the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Pods,
    Namespaces,
    Secrets,
    MutatingWebhookConfigurations,
}

impl Resource {
    const ALL: [Resource; 6] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Pods,
        Resource::Namespaces,
        Resource::Secrets,
        Resource::MutatingWebhookConfigurations,
    ];

    /// The API group's path prefix and the resource's plural name.
    fn path(self) -> (&'static str, &'static str) {
        match self {
            Resource::Services => ("/api/v1", "services"),
            Resource::EndpointSlices => ("/apis/discovery.k8s.io/v1", "endpointslices"),
            Resource::Pods => ("/api/v1", "pods"),
            Resource::Namespaces => ("/api/v1", "namespaces"),
            Resource::Secrets => ("/api/v1", "secrets"),
            Resource::MutatingWebhookConfigurations => (
                "/apis/admissionregistration.k8s.io/v1",
                "mutatingwebhookconfigurations",
            ),
        }
    }

    fn namespaced(self) -> bool {
        !matches!(
            self,
            Resource::Namespaces | Resource::MutatingWebhookConfigurations
        )
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Pods => "Pod",
            Resource::Namespaces => "Namespace",
            Resource::Secrets => "Secret",
            Resource::MutatingWebhookConfigurations => "MutatingWebhookConfiguration",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::MutatingWebhookConfigurations => "admissionregistration.k8s.io/v1",
            _ => "v1",
        }
    }

    fn of_kind(kind: &str) -> Option<Self> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }
}

/// One change, as the watch stream sends it.
#[derive(Debug, Clone)]
struct Change {
    version: u64,
    resource: Resource,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Objects {
    version: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    log: Vec<Change>,
    /// Watches from a version below this answer 410 Gone.
    oldest: u64,
    down: bool,
    requests: Vec<String>,
    /// `(verb, resource)` pairs a SelfSubjectAccessReview says no to.
    denied: Vec<(String, String)>,
    /// Bearer tokens a TokenReview knows: token to its user name, the
    /// audiences it was made for, and whether it expired.
    tokens: HashMap<String, (String, Vec<String>, bool)>,
    git_version: String,
}

#[derive(Clone)]
struct Shared {
    objects: Arc<Mutex<Objects>>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch.
    cuts: Arc<watch::Sender<u64>>,
    bookmark_every: Duration,
}

/// The fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Serves on a fresh loopback port, with a bookmark every second on
    /// watches that allow them.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("an address")).await
    }

    /// Serves on `addr` (port 0: a fresh one).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the fake API server's port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Shared {
            objects: Arc::new(Mutex::new(Objects {
                version: 1,
                git_version: "v1.33.1".into(),
                ..Objects::default()
            })),
            changes: broadcast::channel(4096).0,
            cuts: Arc::new(watch::channel(0).0),
            bookmark_every: Duration::from_secs(1),
        };
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://ADDR:PORT`, as bound.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A client for in-process tests.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("a valid URL"));
        crate::kubernetes::client_for(config).expect("a client for a plain HTTP server")
    }

    /// Writes a kubeconfig for this server into `dir`, for a process that
    /// finds its API server through `KUBECONFIG`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.shared.objects.lock().expect("fake API lock")
    }

    /// Creates or replaces an object (its `kind` says which resource); it
    /// gets the next resource version, which is returned.
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let resource =
            Resource::of_kind(&kind).unwrap_or_else(|| panic!("the fake does not serve {kind:?}"));
        let namespace = if resource.namespaced() {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned()
        } else {
            String::new()
        };
        let name = object["metadata"]["name"]
            .as_str()
            .expect("an object has a name")
            .to_owned();
        object["apiVersion"] = json!(resource.api_version());
        let mut objects = self.lock();
        objects.version += 1;
        let version = objects.version;
        if resource.namespaced() {
            object["metadata"]["namespace"] = json!(namespace);
        }
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let key = (resource, namespace, name);
        let kind = if objects.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(&mut objects, resource, kind, object);
        version
    }

    /// Deletes an object, if it is there.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let resource = Resource::of_kind(kind).expect("a kind the fake serves");
        let mut objects = self.lock();
        if let Some(mut object) =
            objects
                .objects
                .remove(&(resource, namespace.to_owned(), name.to_owned()))
        {
            objects.version += 1;
            object["metadata"]["resourceVersion"] = json!(objects.version.to_string());
            self.record(&mut objects, resource, "DELETED", object);
        }
    }

    fn record(&self, objects: &mut Objects, resource: Resource, kind: &'static str, object: Value) {
        let change = Change {
            version: objects.version,
            resource,
            kind,
            object,
        };
        objects.log.push(change.clone());
        let _ = self.shared.changes.send(change);
    }

    /// Forgets every version up to now: a watch that resumes from one gets
    /// `410 Gone` and must list again. Open watches are cut, so they do.
    pub fn expire_versions(&self) {
        {
            let mut objects = self.lock();
            objects.oldest = objects.version + 1;
            objects.log.clear();
        }
        self.cut_watches();
    }

    /// Ends every open watch, as a dropped connection or a load balancer
    /// timeout does.
    pub fn cut_watches(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// Takes the server down (every request answers 503 and open watches
    /// end) or brings it back, as a restarting API server does.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
        if down {
            self.cut_watches();
        }
    }

    /// The requests served so far (`GET path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// From now on, SelfSubjectAccessReviews for `verb` on `resource` (its
    /// plural, e.g. `clusterroles`) answer not allowed.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.lock().denied.push((verb.into(), resource.into()));
    }

    /// A token TokenReviews accept for `username` (e.g.
    /// `system:serviceaccount:stocks:stockweb`) when asked for one of
    /// `audiences`, unless `expired`.
    pub fn add_token(&self, token: &str, username: &str, audiences: &[&str], expired: bool) {
        self.lock().tokens.insert(
            token.into(),
            (
                username.into(),
                audiences.iter().map(|a| a.to_string()).collect(),
                expired,
            ),
        );
    }

    /// What `/version` says (`gitVersion`, e.g. `v1.28.4`).
    pub fn set_version(&self, git_version: &str) {
        self.lock().git_version = git_version.into();
    }
}

async fn serve(
    State(shared): State<Shared>,
    method: axum::http::Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let (down, path) = {
        let mut objects = shared.objects.lock().expect("fake API lock");
        objects.requests.push(format!("{method} {uri}"));
        (objects.down, uri.path().to_owned())
    };
    if down {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server is restarting",
        );
    }
    if path == "/version" {
        return version(&shared);
    }
    if method == axum::http::Method::POST
        && path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    {
        return access_review(&shared, &body);
    }
    if method == axum::http::Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        return token_review(&shared, &body);
    }
    let Some((resource, namespace, name)) = route(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the fake does not serve {path}"),
        );
    };
    if let Some(name) = name {
        return get_one(&shared, resource, namespace.unwrap_or_default(), name);
    }
    if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        let from = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(300), Duration::from_secs);
        watch_response(shared, resource, from, bookmarks, timeout)
    } else {
        list(&shared, resource, namespace)
    }
}

/// Which resource a path names: (resource, namespace, object name).
fn route(path: &str) -> Option<(Resource, Option<&str>, Option<&str>)> {
    Resource::ALL.into_iter().find_map(|resource| {
        let (prefix, plural) = resource.path();
        let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
        let segments: Vec<&str> = rest.split('/').collect();
        match segments[..] {
            [p] if p == plural => Some((resource, None, None)),
            [p, name] if p == plural && !resource.namespaced() => {
                Some((resource, None, Some(name)))
            }
            ["namespaces", ns, p] if p == plural && resource.namespaced() => {
                Some((resource, Some(ns), None))
            }
            ["namespaces", ns, p, name] if p == plural && resource.namespaced() => {
                Some((resource, Some(ns), Some(name)))
            }
            _ => None,
        }
    })
}

fn version(shared: &Shared) -> Response {
    let git_version = shared
        .objects
        .lock()
        .expect("fake API lock")
        .git_version
        .clone();
    let numbers: Vec<&str> = git_version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .collect();
    let body = json!({
        "major": numbers.first().copied().unwrap_or("1"),
        "minor": numbers.get(1).copied().unwrap_or("0"),
        "gitVersion": git_version,
        "platform": "linux/amd64",
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

fn access_review(shared: &Shared, body: &[u8]) -> Response {
    let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let attributes = &review["spec"]["resourceAttributes"];
    let verb = attributes["verb"].as_str().unwrap_or_default().to_owned();
    let resource = attributes["resource"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let allowed = !shared
        .objects
        .lock()
        .expect("fake API lock")
        .denied
        .contains(&(verb, resource));
    review["status"] = json!({"allowed": allowed});
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        review.to_string(),
    )
        .into_response()
}

/// A TokenReview answered as the API server does: unknown and expired
/// tokens, and tokens made for none of the audiences asked, are not
/// authenticated, each with its reason.
fn token_review(shared: &Shared, body: &[u8]) -> Response {
    let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let token = review["spec"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let asked: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let known = shared
        .objects
        .lock()
        .expect("fake API lock")
        .tokens
        .get(&token)
        .cloned();
    review["status"] = match known {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some((_, _, true)) => json!({"authenticated": false, "error": "token has expired"}),
        Some((username, audiences, false)) => {
            let matching: Vec<&String> = asked.iter().filter(|a| audiences.contains(a)).collect();
            if !asked.is_empty() && matching.is_empty() {
                json!({"authenticated": false, "error": format!("token audiences {audiences:?} is invalid for the target audiences {asked:?}")})
            } else {
                json!({"authenticated": true, "user": {"username": username}, "audiences": matching})
            }
        }
    };
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        review.to_string(),
    )
        .into_response()
}

fn get_one(shared: &Shared, resource: Resource, namespace: &str, name: &str) -> Response {
    let objects = shared.objects.lock().expect("fake API lock");
    match objects
        .objects
        .get(&(resource, namespace.to_owned(), name.to_owned()))
    {
        Some(object) => {
            ([("content-type", "application/json")], object.to_string()).into_response()
        }
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "{} {name:?} not found",
                resource.kind().to_ascii_lowercase()
            ),
        ),
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn list(shared: &Shared, resource: Resource, namespace: Option<&str>) -> Response {
    let objects = shared.objects.lock().expect("fake API lock");
    let items: Vec<&Value> = objects
        .objects
        .iter()
        .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
        .map(|(_, object)| object)
        .collect();
    let body = json!({
        "apiVersion": resource.api_version(),
        "kind": format!("{}List", resource.kind()),
        "metadata": {"resourceVersion": objects.version.to_string()},
        "items": items,
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    line.into()
}

fn watch_response(
    shared: Shared,
    resource: Resource,
    from: u64,
    bookmarks: bool,
    timeout: Duration,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    // Subscribed under the lock that also reads the backlog, so no change
    // falls between the two.
    let (backlog, gone, mut live) = {
        let objects = shared.objects.lock().expect("fake API lock");
        let gone = from < objects.oldest;
        let backlog: Vec<Change> = objects
            .log
            .iter()
            .filter(|c| c.resource == resource && c.version > from)
            .cloned()
            .collect();
        (backlog, gone, shared.changes.subscribe())
    };
    let mut cuts = shared.cuts.subscribe();
    tokio::spawn(async move {
        if gone {
            let expired = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410,
            });
            let _ = tx.send(Ok(event_line("ERROR", &expired))).await;
            return;
        }
        let mut last = from;
        for change in backlog {
            last = change.version;
            if tx
                .send(Ok(event_line(change.kind, &change.object)))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut bookmark = tokio::time::interval(shared.bookmark_every);
        bookmark.tick().await;
        cuts.borrow_and_update();
        loop {
            let line = tokio::select! {
                // A cut wins over changes already waiting: nothing goes out
                // after the connection "dropped".
                biased;
                _ = cuts.changed() => return,
                _ = &mut deadline => return,
                change = live.recv() => match change {
                    Ok(change) if change.resource == resource && change.version > last => {
                        last = change.version;
                        event_line(change.kind, &change.object)
                    }
                    Ok(_) => continue,
                    // Fell behind or the server stopped: the client resumes.
                    Err(_) => return,
                },
                _ = bookmark.tick(), if bookmarks => {
                    // Every change up to `version` is in the channel by now
                    // (changes are sent under the lock): pass them on first,
                    // so the bookmark never skips one.
                    let version = shared.objects.lock().expect("fake API lock").version;
                    let mut lines = Vec::new();
                    loop {
                        match live.try_recv() {
                            Ok(change) if change.resource == resource && change.version > last => {
                                last = change.version;
                                lines.push(event_line(change.kind, &change.object));
                            }
                            Ok(_) => {}
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    last = last.max(version);
                    let object = json!({
                        "kind": resource.kind(), "apiVersion": resource.api_version(),
                        "metadata": {"resourceVersion": last.to_string()},
                    });
                    lines.push(event_line("BOOKMARK", &object));
                    for line in lines {
                        if tx.send(Ok(line)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([("content-type", "application/json")], body).into_response()
}
