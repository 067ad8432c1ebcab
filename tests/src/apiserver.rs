//! A Kubernetes API server double: the list/watch protocol over real HTTP
//! with real JSON, so that the agent's kube-rs watchers and reflectors can
//! be tested against it, faults included (compaction, ended watches, reset
//! connections, a server that is down or slow).
//!
//! It serves cluster-wide and namespaced lists and watches of Services,
//! EndpointSlices, Nodes, ServiceCIDRs and Pods (Pods so that a test can
//! see the agent never reads them), single objects, the legacy discovery
//! documents (not aggregated discovery) and `/version`; JSON only, GET only. Objects are whatever JSON the test
//! applies: the server fills `resourceVersion` (one counter across all
//! kinds, as etcd's), `uid`, `creationTimestamp` and a namespaced kind's
//! `namespace`, and validates nothing else. Lists serve the current state
//! whatever `resourceVersion` they ask for (which "not older than" allows).

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    fs::File,
    future::{Future, IntoFuture},
    io,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context as TaskContext, Poll},
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{mpsc, oneshot, watch},
};

use crate::netns::Netns;

/// How often watches that allow bookmarks get one unasked.
const BOOKMARK_PERIOD: Duration = Duration::from_secs(1);

/// A resource the server knows.
struct Kind {
    kind: &'static str,
    api_version: &'static str,
    plural: &'static str,
    namespaced: bool,
}

const KINDS: [Kind; 8] = [
    Kind { kind: "Service", api_version: "v1", plural: "services", namespaced: true },
    Kind { kind: "EndpointSlice", api_version: "discovery.k8s.io/v1", plural: "endpointslices", namespaced: true },
    Kind { kind: "Node", api_version: "v1", plural: "nodes", namespaced: false },
    Kind { kind: "ServiceCIDR", api_version: "networking.k8s.io/v1", plural: "servicecidrs", namespaced: false },
    Kind { kind: "Pod", api_version: "v1", plural: "pods", namespaced: true },
    Kind { kind: "Ingress", api_version: "networking.k8s.io/v1", plural: "ingresses", namespaced: true },
    Kind { kind: "IngressClass", api_version: "networking.k8s.io/v1", plural: "ingressclasses", namespaced: false },
    Kind { kind: "Secret", api_version: "v1", plural: "secrets", namespaced: true },
];

/// An object's place within its kind: (namespace, name), namespace empty
/// for cluster-scoped kinds; ordered as etcd orders its keys.
type ObjectKey = (String, String);

/// How a watch from a resourceVersion older than the kept history is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExpiredWatch {
    /// HTTP 200 and a single ERROR event holding a 410 Expired Status:
    /// what kube-apiserver does.
    #[default]
    ErrorEvent,
    /// HTTP 410 Gone with the Status as the body.
    HttpGone,
}

/// The API server double, listening on 127.0.0.1. Dropping it shuts it down.
pub struct ApiServer {
    shared: Arc<Shared>,
    /// The network namespace it listens in, kept to listen there again
    /// after [`ApiServer::stop`]; `None` for the test's own.
    netns: Option<File>,
    serving: Mutex<Option<Serving>>,
}

impl ApiServer {
    /// Listens on 127.0.0.1 at an ephemeral port in the caller's network namespace.
    pub fn start() -> anyhow::Result<Self> {
        Self::listen(None)
    }

    /// Listens on 127.0.0.1 inside `ns`, for an agent running there
    /// ([`Netns::create`] brought `lo` up). The socket keeps its namespace
    /// while a thread of this process serves it.
    pub fn start_in(ns: &Netns) -> anyhow::Result<Self> {
        let netns = ns
            .run_in(|| File::open("/proc/thread-self/ns/net"))?
            .with_context(|| format!("cannot open the network namespace {}", ns.name()))?;
        Self::listen(Some(netns))
    }

    fn listen(netns: Option<File>) -> anyhow::Result<Self> {
        let listener = bind(netns.as_ref(), SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr().context("api server socket has no address")?;
        let shared = Arc::new(Shared { addr, store: Mutex::default(), resets: watch::Sender::new(()) });
        let serving = Serving::spawn(listener, shared.clone())?;
        Ok(Self { shared, netns, serving: Mutex::new(Some(serving)) })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Writes a kubeconfig for this server (plain http, no credentials),
    /// its context current, for `--kubeconfig` or `Config::from_custom_kubeconfig`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lb-test\n  cluster:\n    server: {}\n\
             users:\n- name: lb-test\n  user: {{}}\ncontexts:\n- name: lb-test\n  context:\n    cluster: lb-test\n    \
             user: lb-test\ncurrent-context: lb-test\n",
            self.url()
        );
        std::fs::write(path, text).with_context(|| format!("cannot write kubeconfig {}", path.display()))
    }

    /// Creates or replaces the object (by kind, namespace and name) and
    /// returns it as stored. Watches see ADDED or MODIFIED; replacing an
    /// object with an identical one changes nothing, as an update that is
    /// a no-op does nothing in Kubernetes.
    pub fn apply(&self, object: Value) -> anyhow::Result<Value> {
        apply_to(&self.shared, object)
    }

    /// Deletes the object; watches see DELETED with its last state at a new
    /// resourceVersion, which is returned. `namespace` is "" for
    /// cluster-scoped kinds.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> anyhow::Result<Value> {
        let id = kind_named(kind)?;
        let mut store = self.shared.lock();
        let prev = store.objects[id]
            .remove(&(namespace.to_owned(), name.to_owned()))
            .with_context(|| format!("no {kind} {namespace}/{name} to delete"))?;
        store.rv += 1;
        let rv = store.rv;
        let mut deleted = Value::clone(&prev);
        set_resource_version(&mut deleted, rv);
        store.record(Change { kind: id, rv, prev: Some(prev), cur: None });
        Ok(deleted)
    }

    /// The stored object, if any. `kind` is e.g. "Service"; `namespace` is
    /// "" for cluster-scoped kinds.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let id = kind_named(kind).ok()?;
        let store = self.shared.lock();
        store.objects[id].get(&(namespace.to_owned(), name.to_owned())).map(|o| Value::clone(o))
    }

    /// Forgets the change history, as etcd's compaction does: watches from
    /// an older resourceVersion and continue tokens get 410 Gone. Open
    /// watches go on.
    pub fn compact(&self) {
        let mut store = self.shared.lock();
        store.compacted = store.rv;
        store.history.clear();
        store.pages.clear();
    }

    /// Ends every open watch cleanly, after the events already due.
    pub fn end_watches(&self) {
        self.shared.lock().watches.clear();
    }

    /// Resets every open connection (RST, no clean end of a chunked body).
    pub fn drop_connections(&self) {
        self.shared.resets.send_replace(());
    }

    /// Stops listening and closes every connection: an API server that is
    /// down. The objects and history stay for [`ApiServer::restart`].
    pub fn stop(&self) {
        drop(self.serving().take());
    }

    /// Listens again on the same address with the same state (stopping
    /// first if it is serving).
    pub fn restart(&self) -> anyhow::Result<()> {
        let mut serving = self.serving();
        drop(serving.take());
        let listener = bind(self.netns.as_ref(), self.shared.addr)?;
        *serving = Some(Serving::spawn(listener, self.shared.clone())?);
        Ok(())
    }

    /// Delays every response by `delay` (a slow API server).
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Serves the `networking.k8s.io/v1` ServiceCIDR API or not (404, as
    /// a server without it); switching it off ends its open watches.
    pub fn set_service_cidrs_api(&self, on: bool) {
        let mut store = self.shared.lock();
        store.service_cidrs_off = !on;
        if !on {
            store.watches.retain(|w| KINDS[w.kind].kind != "ServiceCIDR");
        }
    }

    /// How watches from a compacted resourceVersion are refused.
    pub fn set_expired_watch(&self, how: ExpiredWatch) {
        self.shared.lock().expired_watch = how;
    }

    /// Sends a BOOKMARK with the current resourceVersion to every open
    /// watch that allows bookmarks.
    pub fn bookmark_now(&self) {
        self.shared.lock().bookmark();
    }

    /// Every request so far: method and path with the query as sent.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.lock().requests.clone()
    }

    /// The watches open now.
    pub fn watch_count(&self) -> usize {
        let mut store = self.shared.lock();
        store.watches.retain(|w| !w.tx.is_closed());
        store.watches.len()
    }

    fn serving(&self) -> MutexGuard<'_, Option<Serving>> {
        self.serving.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the test's handle and the serving thread share.
struct Shared {
    addr: SocketAddr,
    store: Mutex<Store>,
    /// Every accepted connection resets itself when this is sent.
    resets: watch::Sender<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Store {
    /// The last resourceVersion given out.
    rv: u64,
    next_uid: u64,
    objects: [BTreeMap<ObjectKey, Arc<Value>>; KINDS.len()],
    /// Every change after `compacted`, oldest first.
    history: Vec<Arc<Change>>,
    compacted: u64,
    watches: Vec<Subscriber>,
    /// The snapshots that continue tokens page through, by token id.
    pages: HashMap<u64, Page>,
    next_page: u64,
    requests: Vec<(String, String)>,
    delay: Duration,
    service_cidrs_off: bool,
    expired_watch: ExpiredWatch,
}

/// One change of one object: `prev` is None for a creation, `cur` None
/// for a deletion.
struct Change {
    kind: usize,
    rv: u64,
    prev: Option<Arc<Value>>,
    cur: Option<Arc<Value>>,
}

/// An open watch as the store sees it.
struct Subscriber {
    kind: usize,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Message>,
}

enum Message {
    Change(Arc<Change>),
    Bookmark { rv: u64, initial_events_end: bool },
}

/// A list snapshot, as of `rv`, that continue tokens page through.
#[derive(Clone)]
struct Page {
    kind: usize,
    rv: u64,
    items: Arc<Vec<Arc<Value>>>,
}

impl Store {
    /// Keeps the change and hands it to the open watches of its kind;
    /// holding the lock keeps every watch's events in resourceVersion order.
    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push(change.clone());
        self.watches.retain(|w| w.kind != change.kind || w.tx.send(Message::Change(change.clone())).is_ok());
    }

    fn bookmark(&mut self) {
        let rv = self.rv;
        let mark = || Message::Bookmark { rv, initial_events_end: false };
        self.watches.retain(|w| if w.bookmarks { w.tx.send(mark()).is_ok() } else { !w.tx.is_closed() });
    }

    fn served(&self, kind: usize) -> bool {
        !(self.service_cidrs_off && KINDS[kind].kind == "ServiceCIDR")
    }

    fn list(&mut self, kind: usize, selector: &Selector, query: &HashMap<String, String>) -> Result<Value, Failure> {
        let limit = match query.get("limit") {
            Some(limit) => {
                limit.parse::<usize>().map_err(|_| Failure::bad_request(format!("invalid limit {limit:?}")))?
            }
            None => 0,
        };
        let (token, page, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let (id, offset) = token
                    .split_once('-')
                    .and_then(|(id, offset)| Some((id.parse::<u64>().ok()?, offset.parse::<usize>().ok()?)))
                    .ok_or_else(|| Failure::bad_request(format!("continue key is not valid: {token:?}")))?;
                let page = self.pages.get(&id).ok_or_else(|| Failure::gone(EXPIRED_CONTINUE.into()))?;
                if page.kind != kind {
                    return Err(Failure::bad_request(format!("continue key {token:?} is for another resource")));
                }
                (Some(id), page.clone(), offset)
            }
            None => {
                let items = self.objects[kind].values().cloned().collect();
                (None, Page { kind, rv: self.rv, items: Arc::new(items) }, 0)
            }
        };
        let mut items = Vec::new();
        let mut next = None;
        for (i, object) in page.items.iter().enumerate().skip(offset) {
            if !selector.matches(object) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                next = Some(i);
                break;
            }
            items.push(Value::clone(object));
        }
        let mut metadata = json!({ "resourceVersion": page.rv.to_string() });
        if let Some(next) = next {
            let id = token.unwrap_or_else(|| {
                self.next_page += 1;
                self.pages.insert(self.next_page, page.clone());
                self.next_page
            });
            metadata["continue"] = format!("{id}-{next}").into();
            if selector.is_empty() {
                metadata["remainingItemCount"] = (page.items.len() - next).into();
            }
        }
        let k = &KINDS[kind];
        Ok(json!({
            "kind": format!("{}List", k.kind),
            "apiVersion": k.api_version,
            "metadata": metadata,
            "items": items,
        }))
    }

    /// Opens a watch as the query asks: from a resourceVersion (replaying
    /// the history after it), or from now with the current objects first.
    fn watch(&mut self, kind: usize, selector: Selector, query: &HashMap<String, String>) -> Result<Response, Failure> {
        let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
        let bookmarks = flag("allowWatchBookmarks");
        let initial_events = flag("sendInitialEvents");
        if initial_events && !bookmarks {
            return Err(Failure::bad_request("sendInitialEvents requires allowWatchBookmarks=true".into()));
        }
        // No timeoutSeconds, or 0: the server's own limit, here none.
        let timeout = match query.get("timeoutSeconds") {
            Some(t) => t.parse::<u64>().map_err(|_| Failure::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
            None => 0,
        };
        let deadline = (timeout > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(timeout));
        let rv = query.get("resourceVersion").map_or("", String::as_str);
        let (tx, rx) = mpsc::unbounded_channel();
        if initial_events || rv.is_empty() || rv == "0" {
            for object in self.objects[kind].values() {
                let change = Change { kind, rv: self.rv, prev: None, cur: Some(object.clone()) };
                let _ = tx.send(Message::Change(Arc::new(change)));
            }
            if initial_events {
                let _ = tx.send(Message::Bookmark { rv: self.rv, initial_events_end: true });
            }
        } else {
            let since =
                rv.parse::<u64>().map_err(|_| Failure::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            if since < self.compacted {
                let expired = Failure::gone(format!("too old resource version: {since} ({})", self.compacted));
                return match self.expired_watch {
                    ExpiredWatch::HttpGone => Err(expired),
                    ExpiredWatch::ErrorEvent => {
                        let line = json_line(&json!({ "type": "ERROR", "object": expired.status() }));
                        Ok(stream_response(futures::stream::once(std::future::ready(line))))
                    }
                };
            }
            for change in self.history.iter().filter(|c| c.kind == kind && c.rv > since) {
                let _ = tx.send(Message::Change(change.clone()));
            }
        }
        self.watches.push(Subscriber { kind, bookmarks, tx });
        let watch = Watch { kind, selector, rx, deadline };
        Ok(stream_response(futures::stream::unfold(watch, |mut watch| async move {
            let line = watch.next_line().await?;
            Some((line, watch))
        })))
    }
}

/// A watch's side of its stream.
struct Watch {
    kind: usize,
    selector: Selector,
    rx: mpsc::UnboundedReceiver<Message>,
    deadline: Option<tokio::time::Instant>,
}

impl Watch {
    /// The next event line; None ends the stream (timeoutSeconds passed, or
    /// the server dropped the watch).
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            let message = match self.deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, self.rx.recv()).await.ok()?,
                None => self.rx.recv().await,
            }?;
            let event = match message {
                Message::Change(change) => match self.selector.event(&change) {
                    Some(event) => event,
                    None => continue,
                },
                Message::Bookmark { rv, initial_events_end } => {
                    let k = &KINDS[self.kind];
                    let mut metadata = json!({ "resourceVersion": rv.to_string() });
                    if initial_events_end {
                        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
                    }
                    let object = json!({ "kind": k.kind, "apiVersion": k.api_version, "metadata": metadata });
                    json!({ "type": "BOOKMARK", "object": object })
                }
            };
            return Some(json_line(&event));
        }
    }
}

fn json_line(value: &Value) -> Bytes {
    let mut line = serde_json::to_vec(value).expect("a JSON value serializes");
    line.push(b'\n');
    Bytes::from(line)
}

/// A chunked response of newline-delimited JSON.
fn stream_response(lines: impl futures::Stream<Item = Bytes> + Send + 'static) -> Response {
    let body = Body::from_stream(lines.map(Ok::<_, Infallible>));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A request's `labelSelector` and `fieldSelector`.
#[derive(Default)]
struct Selector {
    labels: Vec<Requirement>,
    /// (field path, equal or not, value)
    fields: Vec<(String, bool, String)>,
}

enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    fn parse(query: &HashMap<String, String>) -> Result<Self, Failure> {
        let mut selector = Self::default();
        for term in query.get("labelSelector").map_or(Vec::new(), |s| split_terms(s)) {
            let requirement = parse_requirement(term)
                .ok_or_else(|| Failure::bad_request(format!("unable to parse requirement: {term:?}")))?;
            selector.labels.push(requirement);
        }
        for term in query.get("fieldSelector").map_or(Vec::new(), |s| split_terms(s)) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(Failure::bad_request(format!("invalid field selector term {term:?}")));
            };
            let field = field.trim();
            // `type` is the Secrets' own field label.
            if !["metadata.name", "metadata.namespace", "type"].contains(&field) {
                return Err(Failure::bad_request(format!("field label not supported: {field}")));
            }
            selector.fields.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(selector)
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        let in_set = |key: &str, values: &[String]| label(key).is_some_and(|v| values.iter().any(|w| w == v));
        let labels_match = self.labels.iter().all(|r| match r {
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::NotExists(key) => label(key).is_none(),
            Requirement::In(key, values) => in_set(key, values),
            Requirement::NotIn(key, values) => !in_set(key, values),
        });
        labels_match
            && self.fields.iter().all(|(field, equal, value)| {
                let path = format!("/{}", field.replace('.', "/"));
                (object.pointer(&path).and_then(Value::as_str).unwrap_or("") == value) == *equal
            })
    }

    /// The event a watch with this selector sees for `change`, as
    /// kube-apiserver's watch cache decides it: an object that starts
    /// matching is ADDED, one that stops matching is DELETED (its previous
    /// state at the change's resourceVersion).
    fn event(&self, change: &Change) -> Option<Value> {
        let cur = change.cur.as_deref().filter(|o| self.matches(o));
        let prev = change.prev.as_deref().filter(|o| self.matches(o));
        let (kind, object) = match (cur, prev) {
            (Some(cur), None) => ("ADDED", cur.clone()),
            (Some(cur), Some(_)) => ("MODIFIED", cur.clone()),
            (None, Some(prev)) => {
                let mut prev = prev.clone();
                set_resource_version(&mut prev, change.rv);
                ("DELETED", prev)
            }
            (None, None) => return None,
        };
        Some(json!({ "type": kind, "object": object }))
    }
}

/// Splits a selector at the commas outside parentheses (`a in (x,y),b`).
fn split_terms(selector: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !selector.is_empty() {
        terms.push(&selector[start..]);
    }
    terms
}

/// One label selector term: `key`, `!key`, `key=value`, `key==value`,
/// `key!=value`, `key in (a,b)`, `key notin (a,b)`.
fn parse_requirement(term: &str) -> Option<Requirement> {
    let key = |k: &str| {
        let k = k.trim();
        let valid = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        valid.then(|| k.to_owned())
    };
    let set = |values: &str| {
        let inner = values.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    let term = term.trim();
    if let Some(k) = term.strip_prefix('!') {
        Some(Requirement::NotExists(key(k)?))
    } else if let Some((k, v)) = term.split_once("!=") {
        Some(Requirement::NotIn(key(k)?, vec![v.trim().to_owned()]))
    } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        Some(Requirement::In(key(k)?, vec![v.trim().to_owned()]))
    } else if let Some((k, values)) = term.split_once(" notin ") {
        Some(Requirement::NotIn(key(k)?, set(values)?))
    } else if let Some((k, values)) = term.split_once(" in ") {
        Some(Requirement::In(key(k)?, set(values)?))
    } else {
        Some(Requirement::Exists(key(term)?))
    }
}

const EXPIRED_CONTINUE: &str = "the provided continue parameter is too old to display a consistent list result: \
                                start a new list without the continue parameter";

/// An error answered with a `Status` body.
struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl Failure {
    fn bad_request(message: String) -> Self {
        Self { code: StatusCode::BAD_REQUEST, reason: "BadRequest", message }
    }

    fn gone(message: String) -> Self {
        Self { code: StatusCode::GONE, reason: "Expired", message }
    }

    fn not_found(message: String) -> Self {
        Self { code: StatusCode::NOT_FOUND, reason: "NotFound", message }
    }

    /// What a server says for a path it does not serve.
    fn no_resource() -> Self {
        Self::not_found("the server could not find the requested resource".into())
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        })
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.code, Json(self.status())).into_response()
    }
}

/// [`ApiServer::apply`]: creates or replaces the object.
fn apply_to(shared: &Shared, object: Value) -> anyhow::Result<Value> {
    let (kind, key) = identify(&object)?;
    let mut object = object;
    let meta = object.get_mut("metadata").and_then(Value::as_object_mut).context("metadata is not an object")?;
    if KINDS[kind].namespaced {
        meta.insert("namespace".into(), key.0.clone().into());
    }
    let mut store = shared.lock();
    let prev = store.objects[kind].get(&key).cloned();
    if let Some(prev) = &prev {
        // A replacement keeps the identity the server gave the object.
        for field in ["uid", "creationTimestamp"] {
            if let Some(value) = prev["metadata"].get(field) {
                meta.entry(field).or_insert_with(|| value.clone());
            }
        }
        meta.insert("resourceVersion".into(), prev["metadata"]["resourceVersion"].clone());
        if object == **prev {
            return Ok(object);
        }
    } else {
        store.next_uid += 1;
        let uid = format!("6c620000-0000-4000-8000-{:012x}", store.next_uid);
        meta.entry("uid").or_insert(uid.into());
        meta.entry("creationTimestamp").or_insert_with(|| rfc3339(SystemTime::now()).into());
    }
    store.rv += 1;
    let rv = store.rv;
    set_resource_version(&mut object, rv);
    let object = Arc::new(object);
    store.objects[kind].insert(key, object.clone());
    store.record(Change { kind, rv, prev, cur: Some(object.clone()) });
    Ok(Value::clone(&object))
}

/// A merge patch (RFC 7386) of an object's `status` subresource, as the
/// agent writes Ingresses' load-balancer addresses.
fn patch_status(shared: &Shared, segments: &[&str], patch: &[u8]) -> Result<Response, Failure> {
    let (group_version, rest) = match segments {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return Err(Failure::no_resource()),
    };
    let ["namespaces", namespace, plural, name, "status"] = *rest else {
        return Err(Failure::no_resource());
    };
    let kind = KINDS
        .iter()
        .position(|k| k.api_version == group_version && k.plural == plural)
        .ok_or_else(Failure::no_resource)?;
    let key = (namespace.to_owned(), name.to_owned());
    let mut object = shared.lock().objects[kind]
        .get(&key)
        .map(|o| Value::clone(o))
        .ok_or_else(|| Failure::not_found(format!("{plural} {name:?} not found")))?;
    let patch: Value =
        serde_json::from_slice(patch).map_err(|e| Failure::bad_request(format!("invalid patch: {e}")))?;
    let status = patch.get("status").cloned().unwrap_or(Value::Null);
    merge(object.as_object_mut().expect("objects are JSON objects").entry("status").or_insert(Value::Null), &status);
    let stored = apply_to(shared, object).map_err(|e| Failure::bad_request(e.to_string()))?;
    Ok(Json(stored).into_response())
}

/// RFC 7386: objects merge key by key, null deletes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Every request: recorded, delayed as the test asks, then routed.
async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let delay = {
        let mut store = shared.lock();
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        store.requests.push((method.to_string(), target.to_owned()));
        store.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if method == Method::PATCH {
        let merge = headers.get(header::CONTENT_TYPE).is_some_and(|t| t == "application/merge-patch+json");
        if !merge {
            let message =
                format!("the api server double takes only merge patches, not {:?}", headers.get(header::CONTENT_TYPE));
            return Failure { code: StatusCode::UNSUPPORTED_MEDIA_TYPE, reason: "UnsupportedMediaType", message }
                .into_response();
        }
        let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        return patch_status(&shared, &segments, &body).unwrap_or_else(IntoResponse::into_response);
    }
    if method != Method::GET {
        let message = format!("the api server double serves only GET and PATCH of status, not {method}");
        return Failure { code: StatusCode::METHOD_NOT_ALLOWED, reason: "MethodNotAllowed", message }.into_response();
    }
    let query = match Query::<HashMap<String, String>>::try_from_uri(&uri) {
        Ok(Query(query)) => query,
        Err(e) => return Failure::bad_request(format!("invalid query: {e}")).into_response(),
    };
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    route(&shared, &segments, &query).unwrap_or_else(IntoResponse::into_response)
}

fn route(shared: &Shared, segments: &[&str], query: &HashMap<String, String>) -> Result<Response, Failure> {
    match *segments {
        ["version"] => Ok(Json(json!({
            "major": "1",
            "minor": "37",
            "gitVersion": "v1.37.0-lb-double",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.25.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }))
        .into_response()),
        ["api"] => Ok(Json(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string() }],
        }))
        .into_response()),
        ["apis"] => Ok(Json(api_groups(&shared.lock())).into_response()),
        ["api", "v1"] => api_resources(&shared.lock(), "v1"),
        ["apis", group, version] => api_resources(&shared.lock(), &format!("{group}/{version}")),
        ["api", "v1", ref rest @ ..] => resource(shared, "v1", rest, query),
        ["apis", group, version, ref rest @ ..] => resource(shared, &format!("{group}/{version}"), rest, query),
        _ => Err(Failure::no_resource()),
    }
}

/// A get, list or watch of a resource: `rest` is the path after the group version.
fn resource(
    shared: &Shared,
    group_version: &str,
    rest: &[&str],
    query: &HashMap<String, String>,
) -> Result<Response, Failure> {
    let (namespace, plural, name) = match *rest {
        [plural] => (None, plural, None),
        [plural, name] => (None, plural, Some(name)),
        ["namespaces", namespace, plural] => (Some(namespace), plural, None),
        ["namespaces", namespace, plural, name] => (Some(namespace), plural, Some(name)),
        _ => return Err(Failure::no_resource()),
    };
    let mut store = shared.lock();
    let kind = KINDS
        .iter()
        .position(|k| k.api_version == group_version && k.plural == plural)
        .filter(|&kind| store.served(kind) && (namespace.is_none() || KINDS[kind].namespaced))
        .ok_or_else(Failure::no_resource)?;
    if let Some(name) = name {
        let key = (namespace.unwrap_or("").to_owned(), name.to_owned());
        let object =
            store.objects[kind].get(&key).ok_or_else(|| Failure::not_found(format!("{plural} {name:?} not found")))?;
        return Ok(Json(Value::clone(object)).into_response());
    }
    let mut selector = Selector::parse(query)?;
    if let Some(namespace) = namespace {
        selector.fields.push(("metadata.namespace".into(), true, namespace.to_owned()));
    }
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        store.watch(kind, selector, query)
    } else {
        Ok(Json(store.list(kind, &selector, query)?).into_response())
    }
}

/// The `/apis` discovery document: the groups with a kind served now.
fn api_groups(store: &Store) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (_, k) in KINDS.iter().enumerate().filter(|(i, _)| store.served(*i)) {
        if let Some((group, version)) = k.api_version.split_once('/') {
            let versions = groups.entry(group).or_default();
            if !versions.contains(&version) {
                versions.push(version);
            }
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> =
                versions.iter().map(|v| json!({ "groupVersion": format!("{group}/{v}"), "version": v })).collect();
            json!({ "name": group, "versions": versions, "preferredVersion": versions[0] })
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// The discovery document of one group version (`v1` for the core group).
fn api_resources(store: &Store, group_version: &str) -> Result<Response, Failure> {
    let resources: Vec<Value> = KINDS
        .iter()
        .enumerate()
        .filter(|&(i, k)| k.api_version == group_version && store.served(i))
        .map(|(_, k)| {
            json!({
                "name": k.plural,
                "singularName": k.kind.to_lowercase(),
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": ["get", "list", "watch"],
            })
        })
        .collect();
    if resources.is_empty() {
        return Err(Failure::no_resource());
    }
    let document = json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    });
    Ok(Json(document).into_response())
}

/// The kind index and (namespace, name) of an object a test applies.
fn identify(object: &Value) -> anyhow::Result<(usize, ObjectKey)> {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty());
    let kind = text("/kind").context("object without kind")?;
    let api_version = text("/apiVersion").context("object without apiVersion")?;
    let id = KINDS
        .iter()
        .position(|k| k.kind == kind && k.api_version == api_version)
        .with_context(|| format!("the api server double does not serve {api_version} {kind}"))?;
    let name = text("/metadata/name").with_context(|| format!("{kind} without metadata.name"))?;
    let namespace = match (KINDS[id].namespaced, text("/metadata/namespace")) {
        (true, namespace) => namespace.unwrap_or("default"),
        (false, None) => "",
        (false, Some(namespace)) => bail!("{kind} {name} is cluster-scoped but names namespace {namespace}"),
    };
    Ok((id, (namespace.to_owned(), name.to_owned())))
}

fn kind_named(kind: &str) -> anyhow::Result<usize> {
    KINDS.iter().position(|k| k.kind == kind).with_context(|| format!("the api server double has no kind {kind}"))
}

/// Sets `metadata.resourceVersion` of an object whose metadata is an object.
fn set_resource_version(object: &mut Value, rv: u64) {
    object["metadata"]["resourceVersion"] = rv.to_string().into();
}

/// A time as RFC 3339 in UTC to the second, the form of `creationTimestamp`.
fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, day_secs) = ((secs / 86_400) as i64, secs % 86_400);
    // The civil date of a day number (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (day_secs / 3_600, day_secs / 60 % 60, day_secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// A listening socket bound in `netns` (the caller's namespace if None).
fn bind(netns: Option<&File>, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listen = || TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"));
    let Some(netns) = netns else { return listen() };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a namespace fd we own affects only this thread.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns into the api server's namespace: {}", io::Error::last_os_error());
                }
                listen()
            })
            .join()
            .expect("binding thread panicked")
    })
}

/// The thread that serves one listening socket, with a runtime of its
/// own; dropping it closes the socket and every connection.
struct Serving {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Serving {
    fn spawn(listener: TcpListener, shared: Arc<Shared>) -> anyhow::Result<Self> {
        listener.set_nonblocking(true).context("cannot make the api server socket non-blocking")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build the api server's runtime")?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("cannot register the api server socket")?
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::spawn(send_bookmarks(shared.clone()));
                    let app = Router::new().fallback(handle).with_state(shared.clone());
                    let server = axum::serve(Connections { listener, shared }, app).into_future();
                    tokio::select! {
                        _ = server => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every connection's task, closing its socket.
            })
            .context("cannot start the api server thread")?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn send_bookmarks(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(BOOKMARK_PERIOD);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        shared.lock().bookmark();
    }
}

/// The listening socket, handing out connections that
/// [`ApiServer::drop_connections`] can reset.
struct Connections {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for Connections {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => return (Connection::new(stream, self.shared.resets.subscribe()), peer),
                // Out of file descriptors and the like: wait, as axum's own listener does.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A TCP connection that fails every read and write once a reset is
/// signalled, so hyper drops it; its zero linger time makes that close an
/// RST. hyper reads even while streaming a response (to notice a client
/// going away), so a watch connection is reset too.
struct Connection {
    stream: tokio::net::TcpStream,
    reset: Pin<Box<dyn Future<Output = ()> + Send>>,
    was_reset: bool,
}

impl Connection {
    fn new(stream: tokio::net::TcpStream, mut resets: watch::Receiver<()>) -> Self {
        let reset = Box::pin(async move {
            let _ = resets.changed().await;
        });
        Self { stream, reset, was_reset: false }
    }

    fn poll_reset(&mut self, cx: &mut TaskContext<'_>) -> io::Result<()> {
        if !self.was_reset && self.reset.as_mut().poll(cx).is_ready() {
            self.was_reset = true;
            let _ = self.stream.set_zero_linger();
        }
        if self.was_reset { Err(io::ErrorKind::ConnectionReset.into()) } else { Ok(()) }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.poll_reset(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.poll_reset(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.poll_reset(cx)?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.poll_reset(cx)?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723);
        assert_eq!(super::rfc3339(leap_day), "2000-02-29T01:02:03Z");
    }

    #[test]
    fn label_selectors_match_as_kubernetes_does() {
        let object = serde_json::json!({ "metadata": { "labels": { "app": "kubia", "tier": "" } } });
        let matches = |selector: &str| {
            let query = [("labelSelector".to_owned(), selector.to_owned())].into();
            super::Selector::parse(&query).map_err(|f| f.message).map(|s| s.matches(&object))
        };
        for (selector, expected) in [
            ("app", true),
            ("!app", false),
            ("app=kubia", true),
            ("app==kubia", true),
            ("app!=kubia", false),
            ("app!=other,tier", true),
            ("tier=", true),
            ("missing!=x", true),
            ("missing=x", false),
            ("app in (a, kubia)", true),
            ("app notin (a,kubia),tier", false),
            ("", true),
        ] {
            assert_eq!(matches(selector), Ok(expected), "{selector:?}");
        }
        assert!(matches("app in kubia").is_err());
        assert!(matches("a,,b").is_err());
    }
}
