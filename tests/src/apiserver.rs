//! A stateful Kubernetes API server for tests, speaking the REST subset the daemon uses, over
//! real HTTP on `127.0.0.1:<ephemeral port>`. Point a `kube::Client` at [`ApiServer::url`].
//!
//! Resources are generic: any `/api/v1/...` or `/apis/<group>/<version>/...` collection works,
//! stored as JSON, namespaced (`/namespaces/<ns>/<plural>[/<name>]`) or cluster-scoped
//! (`/<plural>[/<name>]`). Supported today:
//!
//! - `GET` list (with `fieldSelector` and `labelSelector` of `k=v` / `k!=v` terms) and
//!   `GET ...?watch=true` from a `resourceVersion`: `ADDED`, `MODIFIED`, `DELETED` events as JSON
//!   lines, held open until `timeoutSeconds`;
//! - `GET` one object; `POST` create; `DELETE` one object;
//! - `PATCH` with Kubernetes semantics: `application/merge-patch+json` (RFC 7386: `null`
//!   deletes a key), `application/strategic-merge-patch+json` (the same for maps, which is all
//!   the detector patches; lists are replaced), `application/json-patch+json` (RFC 6902 `add`,
//!   `remove`, `replace`, `test`); a `metadata.resourceVersion` in the patch is a precondition
//!   (409 `Conflict` when stale);
//! - `PUT` replace, 409 `Conflict` on a stale `metadata.resourceVersion`;
//! - `POST .../pods/<name>/eviction`: the Eviction API, 429 `TooManyRequests` with a
//!   `DisruptionBudget` cause (the real server's body) while a matching `policy/v1`
//!   PodDisruptionBudget has `status.disruptionsAllowed` 0, else the pod is deleted and the
//!   budget's allowance decremented;
//! - fault injection ([`ApiServer::fail_next`], [`ApiServer::delay_next`]): the next N
//!   requests matching a method and path prefix fail with a status, or are held for a while;
//! - `/version`;
//! - API groups not served ([`ApiServer::unserve`]): 404 under them, as for a CRD not
//!   installed;
//! - Kubernetes `Status` bodies for errors (404 `NotFound`, 409 `AlreadyExists`/`Conflict`,
//!   400 `BadRequest`, 422 `Invalid`, 429 `TooManyRequests`, 500 `InternalError`).
//!
//! Every request is recorded ([`ApiServer::requests`]) for exact-request checks.
//!
//! Extending it (nodes, services, network policies, events need nothing: they are just more
//! plurals): a new verb or subresource (patch semantics, `pods/<name>/eviction`) is one more arm
//! in `dispatch`; the [`Store`] methods keep `resourceVersion` and watch events consistent.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::broadcast, task::JoinHandle};

/// Watch events kept for replay to watchers starting from an older `resourceVersion`.
const LOG_LIMIT: usize = 100_000;

/// Where an object lives: API prefix (`api/v1`, `apis/apps/v1`), plural, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// `api/v1` or `apis/<group>/<version>`.
    pub api: String,
    /// Resource plural, e.g. `pods`.
    pub plural: String,
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// One change, as watchers see it.
#[derive(Debug, Clone)]
pub struct Change {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object's key.
    pub key: Key,
    /// The object after the change (before it, for deletes, with the delete's version).
    pub object: Value,
    /// The resource version of the change.
    pub version: u64,
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string, decoded into pairs.
    pub query: BTreeMap<String, String>,
}

/// The objects, the resource version counter and the change log.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    version: u64,
    log: Vec<Change>,
    requests: Vec<RecordedRequest>,
    uids: u64,
    faults: Vec<Fault>,
    /// API groups (`apis/<group>/<version>`) this server does not serve: a CRD not installed.
    unserved: Vec<String>,
}

/// An injected fault: the next `remaining` requests matching `method` (any when `None`) and
/// starting with `path_prefix` fail with `status`, or wait `delay` before being served.
#[derive(Debug, Clone)]
struct Fault {
    method: Option<String>,
    path_prefix: String,
    remaining: u32,
    status: Option<u16>,
    delay: Duration,
}

impl Store {
    /// Creates or replaces an object, assigning uid (if missing), resourceVersion and
    /// creationTimestamp; returns the stored object.
    pub fn put(&mut self, key: Key, mut object: Value) -> Change {
        self.version += 1;
        let existed = self.objects.contains_key(&key);
        let meta = object
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
        if let Some(Value::Object(meta)) = meta {
            meta.insert("name".into(), json!(key.name));
            if !key.namespace.is_empty() {
                meta.insert("namespace".into(), json!(key.namespace));
            }
            meta.insert("resourceVersion".into(), json!(self.version.to_string()));
            if !meta.contains_key("uid") {
                self.uids += 1;
                meta.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.uids)),
                );
            }
            meta.entry("creationTimestamp")
                .or_insert_with(|| json!("2026-11-23T00:00:00Z"));
        }
        self.objects.insert(key.clone(), object.clone());
        self.record(if existed { "MODIFIED" } else { "ADDED" }, key, object)
    }

    /// Deletes an object; `None` if it does not exist.
    pub fn delete(&mut self, key: &Key) -> Option<Change> {
        let mut object = self.objects.remove(key)?;
        self.version += 1;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(self.version.to_string()));
        }
        Some(self.record("DELETED", key.clone(), object))
    }

    /// An object.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one collection (namespace `None`: all namespaces).
    pub fn list(&self, api: &str, plural: &str, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|(k, _)| {
                k.api == api && k.plural == plural && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, v)| v)
            .collect()
    }

    fn record(&mut self, kind: &'static str, key: Key, object: Value) -> Change {
        let change = Change {
            kind,
            key,
            object,
            version: self.version,
        };
        if self.log.len() >= LOG_LIMIT {
            self.log.drain(..LOG_LIMIT / 2);
        }
        self.log.push(change.clone());
        change
    }
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply(&self, f: impl FnOnce(&mut Store) -> Option<Change>) -> Option<Change> {
        let mut store = self.store();
        let change = f(&mut store)?;
        // Sent under the lock, so watchers never see changes out of order.
        let _ = self.changes.send(change.clone());
        Some(change)
    }
}

/// A running test API server; stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Starts a server on `127.0.0.1` on an ephemeral port, on the current tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces any object under its collection, e.g. `("api/v1", "pods")`.
    pub fn put(&self, api: &str, plural: &str, object: Value) -> Value {
        let meta = &object["metadata"];
        let key = Key {
            api: api.to_owned(),
            plural: plural.to_owned(),
            namespace: meta["namespace"].as_str().unwrap_or_default().to_owned(),
            name: meta["name"].as_str().unwrap_or_default().to_owned(),
        };
        self.shared
            .apply(|store| Some(store.put(key, object)))
            .map(|c| c.object)
            .unwrap_or_default()
    }

    /// Deletes an object; false when it did not exist.
    pub fn delete(&self, api: &str, plural: &str, namespace: &str, name: &str) -> bool {
        let key = Key {
            api: api.to_owned(),
            plural: plural.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.shared.apply(|store| store.delete(&key)).is_some()
    }

    /// Creates or replaces a pod; returns it as stored (with uid and resourceVersion).
    pub fn put_pod(&self, pod: &Pod) -> Pod {
        let value = serde_json::to_value(pod).unwrap_or_default();
        serde_json::from_value(self.put("api/v1", "pods", value)).unwrap_or_default()
    }

    /// Deletes a pod.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.delete("api/v1", "pods", namespace, name)
    }

    /// Creates or replaces a ReplicaSet.
    pub fn put_replica_set(&self, rs: &ReplicaSet) -> ReplicaSet {
        let value = serde_json::to_value(rs).unwrap_or_default();
        serde_json::from_value(self.put("apis/apps/v1", "replicasets", value)).unwrap_or_default()
    }

    /// Makes the next `count` requests with `method` (any when `None`) whose path starts with
    /// `path_prefix` fail with `status` (a Kubernetes `Status` body with the matching reason).
    pub fn fail_next(&self, method: Option<&str>, path_prefix: &str, count: u32, status: u16) {
        self.shared.store().faults.push(Fault {
            method: method.map(str::to_uppercase),
            path_prefix: path_prefix.to_owned(),
            remaining: count,
            status: Some(status),
            delay: Duration::ZERO,
        });
    }

    /// Stops serving `api` (`apis/<group>/<version>`), as an API server without the CRD: every
    /// request under it is a 404 `NotFound`, the real server's answer.
    pub fn unserve(&self, api: &str) {
        self.shared.store().unserved.push(api.to_owned());
    }

    /// Holds the next `count` matching requests for `delay` before serving them (client
    /// timeouts).
    pub fn delay_next(&self, method: Option<&str>, path_prefix: &str, count: u32, delay: Duration) {
        self.shared.store().faults.push(Fault {
            method: method.map(str::to_uppercase),
            path_prefix: path_prefix.to_owned(),
            remaining: count,
            status: None,
            delay,
        });
    }

    /// An object as stored, by API prefix, plural, namespace (empty: cluster-scoped) and name.
    pub fn object(&self, api: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = Key {
            api: api.to_owned(),
            plural: plural.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.shared.store().get(&key).cloned()
    }

    /// Every object, for before/after comparisons.
    pub fn snapshot(&self) -> BTreeMap<Key, Value> {
        self.shared.store().objects.clone()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.store().requests.clone()
    }

    /// Direct access to the store, for checks and for extensions.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.shared.store())
    }
}

/// The parsed path of a resource request.
#[derive(Debug)]
struct Target {
    api: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("api/v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("apis/{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] => (Some((*ns).to_owned()), {
            let mut v = vec![*plural];
            v.extend_from_slice(rest);
            v
        }),
        other => (None, other.to_vec()),
    };
    match rest.as_slice() {
        [plural] => Some(Target {
            api,
            namespace,
            plural: (*plural).to_owned(),
            name: None,
            subresource: None,
        }),
        [plural, name] => Some(Target {
            api,
            namespace,
            plural: (*plural).to_owned(),
            name: Some((*name).to_owned()),
            subresource: None,
        }),
        [plural, name, subresource] => Some(Target {
            api,
            namespace,
            plural: (*plural).to_owned(),
            name: Some((*name).to_owned()),
            subresource: Some((*subresource).to_owned()),
        }),
        _ => None,
    }
}

fn query_pairs(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(text.get(i + 1..i + 3).unwrap_or_default(), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `Status` reason Kubernetes uses for an HTTP status.
pub fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// A Kubernetes `Status` error response.
pub fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(value: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = query_pairs(request.uri().query());
    let fault = {
        let mut store = shared.store();
        store.requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
        });
        let found = store.faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.method.as_deref().is_none_or(|m| m == method.as_str())
                && path.starts_with(&f.path_prefix)
        });
        found.map(|f| {
            f.remaining -= 1;
            (f.status, f.delay)
        })
    };
    if let Some((code, delay)) = fault {
        tokio::time::sleep(delay).await;
        if let Some(code) = code {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return status(
                code,
                reason_of(code.as_u16()),
                format!("injected fault on {method} {path}"),
            );
        }
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if path == "/version" {
        return json_response(&json!({
            "major": "1", "minor": "34", "gitVersion": "v1.34.0-detector-test",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-11-23T00:00:00Z",
            "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
        }));
    }
    let Some(target) = parse_path(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource {path}"),
        );
    };
    if shared.store().unserved.contains(&target.api) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
    }
    let body = match axum::body::to_bytes(request.into_body(), 16 << 20).await {
        Ok(body) => body,
        Err(err) => return status(StatusCode::BAD_REQUEST, "BadRequest", err.to_string()),
    };
    if method == Method::PATCH {
        return patch(&shared, target, &content_type, &body);
    }
    if method == Method::PUT {
        return replace(&shared, target, &body);
    }
    if target.subresource.as_deref() == Some("eviction") && method == Method::POST {
        return evict(&shared, &target);
    }
    if target.subresource.is_some() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("subresource of {path} not supported by the test API server"),
        );
    }
    dispatch(&shared, &method, target, &query, &body).await
}

fn target_key(target: &Target) -> Key {
    Key {
        api: target.api.clone(),
        plural: target.plural.clone(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(object) = target {
        for (k, v) in patch {
            if v.is_null() {
                object.remove(k);
            } else {
                merge_patch(object.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6902 JSON patch (`add`, `remove`, `replace`, `test`).
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let unescape = |s: &str| s.replace("~1", "/").replace("~0", "~");
    for op in ops.as_array().ok_or("a JSON patch is an array")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        let (parent_path, last) = path.rsplit_once('/').ok_or("bad path")?;
        let last = unescape(last);
        let parent = target
            .pointer_mut(parent_path)
            .ok_or_else(|| format!("{parent_path} does not exist"))?;
        match op["op"].as_str().unwrap_or_default() {
            "add" | "replace" => match parent {
                Value::Object(o) => {
                    if op["op"] == "replace" && !o.contains_key(&last) {
                        return Err(format!("{path} does not exist"));
                    }
                    o.insert(last, op["value"].clone());
                }
                Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                Value::Array(a) => {
                    let i: usize = last.parse().map_err(|_| "bad index")?;
                    if i > a.len() {
                        return Err("index out of range".into());
                    }
                    if op["op"] == "replace" {
                        a[i] = op["value"].clone();
                    } else {
                        a.insert(i, op["value"].clone());
                    }
                }
                _ => return Err(format!("{parent_path} is not a container")),
            },
            "remove" => {
                let removed = match parent {
                    Value::Object(o) => o.remove(&last).is_some(),
                    Value::Array(a) => last
                        .parse::<usize>()
                        .ok()
                        .filter(|&i| i < a.len())
                        .map(|i| a.remove(i))
                        .is_some(),
                    _ => false,
                };
                if !removed {
                    return Err(format!("{path} does not exist"));
                }
            }
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test of {path} failed"));
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

fn stale(current: &Value, wanted: &Value) -> bool {
    wanted["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|v| Some(v) != current["metadata"]["resourceVersion"].as_str())
}

fn conflict(target: &Target) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
            target.plural,
            target.name.as_deref().unwrap_or_default()
        ),
    )
}

fn patch(shared: &Arc<Shared>, target: Target, content_type: &str, body: &Bytes) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "body is not JSON".into(),
        );
    };
    let key = target_key(&target);
    let mut store = shared.store();
    let Some(current) = store.get(&key).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{}\" not found", target.plural, key.name),
        );
    };
    let mut object = current.clone();
    match content_type.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if stale(&current, &patch) {
                return conflict(&target);
            }
            merge_patch(&mut object, &patch);
        }
        "application/json-patch+json" => {
            if let Err(message) = json_patch(&mut object, &patch) {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message);
            }
        }
        other => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
                ),
            );
        }
    }
    // The server owns these.
    object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    object["metadata"]["uid"] = current["metadata"]["uid"].clone();
    let change = store.put(key, object);
    let _ = shared.changes.send(change.clone());
    json_response(&change.object)
}

fn replace(shared: &Arc<Shared>, target: Target, body: &Bytes) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "body is not JSON".into(),
        );
    };
    let key = target_key(&target);
    let mut store = shared.store();
    let Some(current) = store.get(&key).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{}\" not found", target.plural, key.name),
        );
    };
    if stale(&current, &object) {
        return conflict(&target);
    }
    object["metadata"]["uid"] = current["metadata"]["uid"].clone();
    let change = store.put(key, object);
    let _ = shared.changes.send(change.clone());
    json_response(&change.object)
}

/// The Eviction API: PodDisruptionBudgets matching the pod must allow a disruption.
fn evict(shared: &Arc<Shared>, target: &Target) -> Response {
    let key = target_key(target);
    let mut store = shared.store();
    let Some(pod) = store.get(&key).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{}\" not found", key.name),
        );
    };
    let labels = pod["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let budgets: Vec<Key> = store
        .objects
        .iter()
        .filter(|(k, v)| {
            k.api == "apis/policy/v1"
                && k.plural == "poddisruptionbudgets"
                && k.namespace == key.namespace
                && v["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .is_some_and(|m| m.iter().all(|(mk, mv)| labels.get(mk) == Some(mv)))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for budget in &budgets {
        let allowed = store.objects[budget]["status"]["disruptionsAllowed"]
            .as_i64()
            .unwrap_or(0);
        if allowed <= 0 {
            // As the API server words it (`pod/storage/eviction.go`): the message, and the
            // budget named in a `DisruptionBudget` cause; no Retry-After.
            let object = &store.objects[budget];
            let body = json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                "reason": "TooManyRequests",
                "details": {"causes": [{
                    "reason": "DisruptionBudget",
                    "message": format!(
                        "The disruption budget {} needs {} healthy pods and has {} currently",
                        budget.name,
                        object["status"]["desiredHealthy"].as_i64().unwrap_or(0),
                        object["status"]["currentHealthy"].as_i64().unwrap_or(0),
                    ),
                }]},
                "code": 429,
            });
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
    }
    for budget in budgets {
        let mut object = store.objects[&budget].clone();
        let allowed = object["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
        object["status"]["disruptionsAllowed"] = json!(allowed - 1);
        let change = store.put(budget, object);
        let _ = shared.changes.send(change);
    }
    if let Some(change) = store.delete(&key) {
        let _ = shared.changes.send(change);
    }
    (
        StatusCode::CREATED,
        json_response(&json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})),
    )
        .into_response()
}

async fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    target: Target,
    query: &BTreeMap<String, String>,
    body: &Bytes,
) -> Response {
    let key = |name: &str| Key {
        api: target.api.clone(),
        plural: target.plural.clone(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.to_owned(),
    };
    let not_found = |name: &str| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", target.plural),
        )
    };
    match (method.clone(), target.name.as_deref()) {
        (Method::GET, Some(name)) => match shared.store().get(&key(name)) {
            Some(object) => json_response(object),
            None => not_found(name),
        },
        (Method::GET, None)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch(shared, &target, query)
        }
        (Method::GET, None) => {
            let store = shared.store();
            let items: Vec<Value> = store
                .list(&target.api, &target.plural, target.namespace.as_deref())
                .into_iter()
                .filter(|o| selected(o, query))
                .cloned()
                .collect();
            json_response(&json!({
                "apiVersion": if target.api == "api/v1" { "v1".to_owned() } else { target.api.trim_start_matches("apis/").to_owned() },
                "kind": "List",
                "metadata": {"resourceVersion": store.version.to_string()},
                "items": items,
            }))
        }
        (Method::POST, None) => {
            let Ok(object) = serde_json::from_slice::<Value>(body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "body is not JSON".into(),
                );
            };
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if name.is_empty() {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "metadata.name is required".into(),
                );
            }
            let change = shared.apply(|store| {
                (!store.objects.contains_key(&key(&name))).then(|| store.put(key(&name), object))
            });
            match change {
                Some(change) => {
                    (StatusCode::CREATED, json_response(&change.object)).into_response()
                }
                None => status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", target.plural),
                ),
            }
        }
        (Method::DELETE, Some(name)) => match shared.apply(|store| store.delete(&key(name))) {
            Some(change) => json_response(&change.object),
            None => not_found(name),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on this resource by the test API server"),
        ),
    }
}

/// Whether an object passes the `fieldSelector` and `labelSelector` of a query.
fn selected(object: &Value, query: &BTreeMap<String, String>) -> bool {
    let fields = query
        .get("fieldSelector")
        .map(String::as_str)
        .unwrap_or_default();
    let labels = query
        .get("labelSelector")
        .map(String::as_str)
        .unwrap_or_default();
    let terms = |selector: &str| {
        selector
            .split(',')
            .filter(|t| !t.is_empty())
            .map(|t| match t.split_once("!=") {
                Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned(), false),
                None => {
                    let (k, v) = t
                        .split_once("==")
                        .or_else(|| t.split_once('='))
                        .unwrap_or((t, ""));
                    (k.trim().to_owned(), v.trim().to_owned(), true)
                }
            })
            .collect::<Vec<_>>()
    };
    let field_ok = terms(fields).into_iter().all(|(path, value, equal)| {
        let mut at = object;
        for part in path.split('.') {
            at = &at[part];
        }
        (at.as_str().unwrap_or_default() == value) == equal
    });
    let label_ok = terms(labels).into_iter().all(|(k, v, equal)| {
        (object["metadata"]["labels"][&k]
            .as_str()
            .unwrap_or_default()
            == v)
            == equal
    });
    field_ok && label_ok
}

fn watch(shared: &Arc<Shared>, target: &Target, query: &BTreeMap<String, String>) -> Response {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let matches = {
        let target_api = target.api.clone();
        let plural = target.plural.clone();
        let namespace = target.namespace.clone();
        let query = query.clone();
        move |c: &Change| {
            c.key.api == target_api
                && c.key.plural == plural
                && namespace.as_deref().is_none_or(|ns| c.key.namespace == ns)
                && c.version > from
                && selected(&c.object, &query)
        }
    };
    // Subscribe and read the backlog under one lock: nothing is missed or sent twice.
    let (backlog, mut live) = {
        let store = shared.store();
        let backlog: Vec<Change> = store.log.iter().filter(|c| matches(c)).cloned().collect();
        (backlog, shared.changes.subscribe())
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let line = |c: &Change| {
            let mut text = json!({"type": c.kind, "object": c.object}).to_string();
            text.push('\n');
            Bytes::from(text)
        };
        for change in &backlog {
            if tx.send(Ok(line(change))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                change = live.recv() => match change {
                    Ok(change) if matches(&change) => {
                        if tx.send(Ok(line(&change))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // A watcher too slow for the channel ends its watch; kube re-lists.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        let t = parse_path("/api/v1/namespaces/shop/pods/web").unwrap();
        assert_eq!(
            (
                t.api.as_str(),
                t.namespace.as_deref(),
                t.plural.as_str(),
                t.name.as_deref()
            ),
            ("api/v1", Some("shop"), "pods", Some("web"))
        );
        let t = parse_path("/apis/apps/v1/replicasets").unwrap();
        assert_eq!(
            (t.api.as_str(), t.namespace, t.name),
            ("apis/apps/v1", None, None)
        );
        assert!(parse_path("/healthz").is_none());
        let q = query_pairs(Some("fieldSelector=spec.nodeName%3Dnode-1&watch=true"));
        assert_eq!(q["fieldSelector"], "spec.nodeName=node-1");
        let pod = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"nodeName": "node-1"}});
        assert!(selected(&pod, &q));
        let other = query_pairs(Some(
            "fieldSelector=spec.nodeName%21%3Dnode-1&labelSelector=app%3Dweb",
        ));
        assert!(!selected(&pod, &other));
    }
}
