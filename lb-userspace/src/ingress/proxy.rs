//! The HTTP proxy (`--ingress-bind`): each request routed by the table of
//! the Ingresses of our class to one of its Service port's ready endpoints
//! (round robin), over a keep-alive pool, with `X-Forwarded-For/-Proto/-Host`
//! (the client's own `X-Forwarded-For` replaced);
//! 404 without a rule, 503 without a ready endpoint, 502 when the backend
//! fails, 504 when it is too slow. hyper serves and forwards; this module
//! routes.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{HOST, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    routes::{Backend, BackendPort, RouteTable},
    table,
};
use crate::{
    model::{DesiredState, ModelError, Protocol, ServiceName},
    source::Objects,
};

/// How long a backend may take to answer a request's headers.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pooled connection to a backend may stay idle.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The headers a proxy must not pass on (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("--ingress-bind {address}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("the ingress proxy's thread: {0}")]
    Runtime(std::io::Error),
}

#[derive(Clone, Debug)]
pub struct IngressOptions {
    pub bind: SocketAddr,
    /// The IngressClass name whose Ingresses are ours.
    pub class: String,
}

/// The running proxy; [`IngressProxy::publish`] hands it each new model.
pub struct IngressProxy {
    routes: watch::Sender<Arc<Routes>>,
    class: String,
    /// Each backend's round-robin position, kept from table to table.
    turns: std::sync::Mutex<HashMap<Backend, Arc<AtomicUsize>>>,
}

/// The table and, for every backend it names, the ready endpoints and
/// whose turn is next.
#[derive(Default)]
struct Routes {
    table: RouteTable,
    endpoints: HashMap<Backend, (Vec<SocketAddr>, Arc<AtomicUsize>)>,
}

type Body = BoxBody<Bytes, hyper::Error>;

impl IngressProxy {
    /// Listens at once; requests get 404 until the first model.
    pub fn start(opts: &IngressOptions) -> Result<Self, ProxyError> {
        let listen = |source| ProxyError::Listen { address: opts.bind, source };
        let listener = std::net::TcpListener::bind(opts.bind).map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;
        let (routes, current) = watch::channel(Arc::new(Routes::default()));
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ProxyError::Runtime)?;
        std::thread::Builder::new()
            .name("ingress".into())
            .spawn(move || runtime.block_on(serve(listener, current)))
            .map_err(ProxyError::Runtime)?;
        info!(address = %opts.bind, class = opts.class, "ingress proxy listening");
        Ok(IngressProxy { routes, class: opts.class.clone(), turns: Default::default() })
    }

    /// Routes by `objects`' Ingresses to `desired`'s endpoints from now on;
    /// the invalid Ingresses' errors.
    pub fn publish(&self, objects: &Objects, desired: &DesiredState) -> Vec<ModelError> {
        let (table, errors) = table::build(objects, &self.class);
        let mut turns = self.turns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        turns.retain(|backend, _| table.backends().any(|b| b == backend));
        let endpoints = table
            .backends()
            .map(|b| (b.clone(), (ready_endpoints(desired, b), Arc::clone(turns.entry(b.clone()).or_default()))))
            .collect();
        self.routes.send_replace(Arc::new(Routes { table, endpoints }));
        errors
    }
}

/// The ready endpoints of the Service port `backend` names (TCP).
fn ready_endpoints(desired: &DesiredState, backend: &Backend) -> Vec<SocketAddr> {
    let Some(service) = desired.services.get(&ServiceName::new(&backend.namespace, &backend.service)) else {
        return Vec::new();
    };
    let port = service.ports.iter().find(|p| {
        p.protocol == Protocol::Tcp
            && match &backend.port {
                BackendPort::Number(n) => p.port == *n,
                BackendPort::Name(name) => &p.name == name,
            }
    });
    port.map(|p| p.active_endpoints().map(|e| SocketAddr::new(e.addr, e.port)).collect()).unwrap_or_default()
}

async fn serve(listener: std::net::TcpListener, routes: watch::Receiver<Arc<Routes>>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => return warn!("the ingress proxy cannot serve: {err}"),
    };
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_keepalive(Some(POOL_IDLE));
    // The pool's idle timeout needs its timer: without, idle connections to
    // pods long gone would stay.
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors, say: wait rather than spin.
                warn!("ingress accept: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (routes, client) = (routes.clone(), client.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (routes, client) = (Arc::clone(&routes.borrow()), client.clone());
                async move { Ok::<_, std::convert::Infallible>(proxy(request, peer, &routes, &client).await) }
            });
            // The timer turns on hyper's header read timeout (30 s): a client
            // trickling its request head cannot hold a connection forever.
            let server = http1::Builder::new().timer(TokioTimer::new()).serve_connection(TokioIo::new(stream), service);
            if let Err(err) = server.await {
                debug!(%peer, "ingress connection: {err}");
            }
        });
    }
}

/// One request, routed and forwarded; the backend's answer or ours.
async fn proxy(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    routes: &Routes,
    client: &Client<HttpConnector, Incoming>,
) -> Response<Body> {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or(request.uri().host())
        .unwrap_or_default()
        .to_owned();
    let path = request.uri().path().to_owned();
    let Some(backend) = routes.table.route(&host, &path) else {
        return answer(StatusCode::NOT_FOUND, format!("no Ingress rule for {host}{path}"));
    };
    let Some((endpoints, turn)) = routes.endpoints.get(backend).filter(|(e, _)| !e.is_empty()) else {
        let reason =
            format!("Service {}/{} port {} has no ready endpoint", backend.namespace, backend.service, port(backend));
        return answer(StatusCode::SERVICE_UNAVAILABLE, reason);
    };
    let endpoint = endpoints[turn.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
    let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{endpoint}{path_and_query}").parse() else {
        return answer(StatusCode::BAD_REQUEST, format!("cannot forward {path_and_query:?}"));
    };
    *request.uri_mut() = uri;
    forwarded_headers(request.headers_mut(), peer, &host);
    match tokio::time::timeout(BACKEND_TIMEOUT, client.request(request)).await {
        Ok(Ok(mut response)) => {
            drop_hop_by_hop(response.headers_mut());
            response.map(BodyExt::boxed)
        }
        Ok(Err(err)) => answer(StatusCode::BAD_GATEWAY, format!("backend {endpoint}: {err}")),
        Err(_) => {
            answer(StatusCode::GATEWAY_TIMEOUT, format!("backend {endpoint}: no answer within {BACKEND_TIMEOUT:?}"))
        }
    }
}

fn port(backend: &Backend) -> String {
    match &backend.port {
        BackendPort::Number(n) => n.to_string(),
        BackendPort::Name(name) => name.clone(),
    }
}

/// Drops the hop-by-hop headers, and those `Connection` names but for the
/// ones a message cannot do without (`Host`, `Content-Length`).
fn drop_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let listed: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|h| h.trim().to_ascii_lowercase()))
        .filter(|h| h != "host" && h != "content-length")
        .collect();
    for name in HOP_BY_HOP.iter().map(|h| h.to_string()).chain(listed) {
        headers.remove(name.as_str());
    }
}

/// Drops the hop-by-hop headers and sets the `X-Forwarded-*` ones. The
/// client's own `X-Forwarded-For` is replaced, not trusted (as
/// ingress-nginx does by default): the backend sees who connected.
fn forwarded_headers(headers: &mut hyper::HeaderMap, peer: SocketAddr, host: &str) {
    drop_hop_by_hop(headers);
    let client = peer.ip().to_canonical().to_string();
    for (name, value) in
        [("x-forwarded-for", client.as_str()), ("x-forwarded-proto", "http"), ("x-forwarded-host", host)]
    {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

fn answer(status: StatusCode, reason: String) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{reason}\n"))).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}
