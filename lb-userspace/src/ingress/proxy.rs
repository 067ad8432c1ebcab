//! The proxy: HTTP (`--ingress-bind`) and HTTPS (`--ingress-tls-bind`,
//! certificates by SNI from [`tls`]), HTTP/1.1 and HTTP/2 (ALPN, or h2c's
//! preface) from clients. Each request is routed by the table of the
//! Ingresses of our class to one of its Service port's ready endpoints
//! (round robin), in HTTP/1.1 over a keep-alive pool, with
//! `X-Forwarded-For/-Proto/-Host` (the client's own `X-Forwarded-For`
//! replaced); upgrades (WebSocket) are joined through. 404 without a rule,
//! 503 without a ready endpoint, 502 when the backend fails, 504 when it is
//! too slow. hyper serves and forwards, rustls terminates TLS; this module
//! routes.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Version,
    body::Incoming,
    header::{CONNECTION, HOST, HeaderName, HeaderValue, UPGRADE},
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::{ServerConfig, crypto::CryptoProvider, server::ResolvesServerCert};
use thiserror::Error;
use tokio::{io::copy_bidirectional, sync::watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{
    routes::{Backend, BackendPort, RouteTable},
    table::{self, ServedIngress},
    tls::{self, Resolver, SecretCache},
};
use crate::{
    model::{DesiredState, ModelError, Protocol, ServiceName},
    source::Objects,
};

/// How long connecting to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pooled connection to a backend may stay idle.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The headers a proxy must not pass on (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("{flag} {address}")]
    Listen { flag: &'static str, address: SocketAddr, source: std::io::Error },
    #[error("the ingress proxy's thread: {0}")]
    Runtime(std::io::Error),
    #[error("--ingress-tls-bind: {0}")]
    Tls(rustls::Error),
}

#[derive(Clone, Debug)]
pub struct IngressOptions {
    /// Where HTTP is served (`--ingress-bind`).
    pub http: Option<SocketAddr>,
    /// Where HTTPS is served (`--ingress-tls-bind`).
    pub https: Option<SocketAddr>,
    /// The IngressClass name whose Ingresses are ours.
    pub class: String,
    /// The Service that exposes the proxy (`--ingress-publish-service`),
    /// whose load-balancer and external IPs are the Ingresses' address.
    pub publish_service: Option<ServiceName>,
    /// How long a backend may take to answer a request's headers
    /// (`--ingress-backend-timeout`), then 504.
    pub backend_timeout: Duration,
}

/// The running proxy; [`IngressProxy::publish`] hands it each new model.
pub struct IngressProxy {
    routes: watch::Sender<Arc<Routes>>,
    class: String,
    /// Each backend's round-robin position, kept from table to table.
    turns: Mutex<HashMap<Backend, Arc<AtomicUsize>>>,
    /// The HTTPS listener's certificates, and the Secrets they came from.
    certificates: Option<(Arc<Resolver>, Mutex<SecretCache>)>,
    provider: Arc<CryptoProvider>,
    opts: IngressOptions,
}

/// The table and, for every backend it names, the ready endpoints and
/// whose turn is next.
#[derive(Default)]
struct Routes {
    table: RouteTable,
    endpoints: HashMap<Backend, (Vec<SocketAddr>, Arc<AtomicUsize>)>,
}

/// A listener and what it serves: HTTP, or HTTPS with this TLS acceptor.
struct Listener {
    socket: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
}

type Body = BoxBody<Bytes, hyper::Error>;

impl IngressProxy {
    /// Listens at once; requests get 404 until the first model.
    pub fn start(opts: &IngressOptions) -> Result<Self, ProxyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut listeners = Vec::new();
        if let Some(address) = opts.http {
            listeners.push(Listener { socket: listen("--ingress-bind", address)?, tls: None });
        }
        let certificates = match opts.https {
            Some(address) => {
                let resolver = Arc::new(Resolver::default());
                let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
                    .with_safe_default_protocol_versions()
                    .map_err(ProxyError::Tls)?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                let tls = Some(TlsAcceptor::from(Arc::new(config)));
                listeners.push(Listener { socket: listen("--ingress-tls-bind", address)?, tls });
                Some((resolver, Mutex::default()))
            }
            None => None,
        };
        let (routes, current) = watch::channel(Arc::new(Routes::default()));
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ProxyError::Runtime)?;
        std::thread::Builder::new()
            .name("ingress".into())
            .spawn({
                let timeout = opts.backend_timeout;
                move || runtime.block_on(serve(listeners, current, timeout))
            })
            .map_err(ProxyError::Runtime)?;
        info!(http = ?opts.http, https = ?opts.https, class = opts.class, "ingress proxy listening");
        Ok(IngressProxy {
            routes,
            class: opts.class.clone(),
            turns: Default::default(),
            certificates,
            provider,
            opts: opts.clone(),
        })
    }

    /// Routes by `objects`' Ingresses to `desired`'s endpoints from now on;
    /// the Ingresses served, with their address, and the invalid ones' errors.
    pub fn publish(&self, objects: &Objects, desired: &DesiredState) -> (Vec<ServedIngress>, Vec<ModelError>) {
        let (mut table, mut errors) = table::build(objects, &self.class);
        let address = self.address(desired);
        for served in &mut table.served {
            served.address.clone_from(&address);
            let https = self.opts.https.filter(|_| served.tls);
            served.ports = self.opts.http.iter().chain(&https).map(SocketAddr::port).collect();
        }
        if let Some((resolver, cache)) = &self.certificates {
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            let (certificates, tls_errors) = tls::build(&table.tls, &objects.secrets, &mut cache, &self.provider);
            resolver.replace(certificates);
            errors.extend(tls_errors);
        }
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        turns.retain(|backend, _| table.routes.backends().any(|b| b == backend));
        let endpoints = table
            .routes
            .backends()
            .map(|b| (b.clone(), (ready_endpoints(desired, b), Arc::clone(turns.entry(b.clone()).or_default()))))
            .collect();
        self.routes.send_replace(Arc::new(Routes { table: table.routes, endpoints }));
        (table.served, errors)
    }

    /// Where the Ingresses are reachable: the published Service's load
    /// balancer and external IPs (as ingress-nginx's --publish-service),
    /// else the addresses the proxy listens on (none for a wildcard).
    fn address(&self, desired: &DesiredState) -> Vec<IpAddr> {
        let mut address: Vec<IpAddr> = match &self.opts.publish_service {
            Some(name) => desired.services.get(name).map(|s| s.external_ips.clone()).unwrap_or_default(),
            None => self.opts.http.iter().chain(&self.opts.https).map(SocketAddr::ip).collect(),
        };
        address.retain(|ip| !ip.is_unspecified());
        address.sort();
        address.dedup();
        address
    }
}

fn listen(flag: &'static str, address: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let listen = |source| ProxyError::Listen { flag, address, source };
    let socket = std::net::TcpListener::bind(address).map_err(listen)?;
    socket.set_nonblocking(true).map_err(listen)?;
    Ok(socket)
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

async fn serve(listeners: Vec<Listener>, routes: watch::Receiver<Arc<Routes>>, timeout: Duration) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_keepalive(Some(POOL_IDLE));
    // The pool's idle timeout needs its timer: without, idle connections to
    // pods long gone would stay.
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector);
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept(listener, routes.clone(), client.clone(), timeout));
    }
    while accepting.join_next().await.is_some() {}
}

async fn accept(
    listener: Listener,
    routes: watch::Receiver<Arc<Routes>>,
    client: Client<HttpConnector, Incoming>,
    timeout: Duration,
) {
    let socket = match tokio::net::TcpListener::from_std(listener.socket) {
        Ok(socket) => socket,
        Err(err) => return warn!("the ingress proxy cannot serve: {err}"),
    };
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors, say: wait rather than spin.
                warn!("ingress accept: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (routes, client, tls) = (routes.clone(), client.clone(), listener.tls.clone());
        tokio::spawn(async move {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let service = service_fn(move |request| {
                let (routes, client) = (Arc::clone(&routes.borrow()), client.clone());
                async move { Ok::<_, Infallible>(proxy(request, peer, scheme, &routes, &client, timeout).await) }
            });
            // HTTP/1.1 or HTTP/2 as the client speaks (ALPN, or h2c's
            // preface). The timer turns on hyper's header read timeout
            // (30 s): a client trickling its request head cannot hold a
            // connection forever.
            let mut server = auto::Builder::new(TokioExecutor::new());
            server.http1().timer(TokioTimer::new());
            server.http2().timer(TokioTimer::new());
            let served = match tls {
                None => server.serve_connection_with_upgrades(TokioIo::new(stream), service).await,
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => server.serve_connection_with_upgrades(TokioIo::new(stream), service).await,
                    Ok(Err(err)) => return debug!(%peer, "ingress TLS handshake: {err}"),
                    Err(_) => return debug!(%peer, "ingress TLS handshake: no progress in {HANDSHAKE_TIMEOUT:?}"),
                },
            };
            if let Err(err) = served {
                debug!(%peer, "ingress connection: {err}");
            }
        });
    }
}

/// One request, routed and forwarded; the backend's answer or ours.
async fn proxy(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    scheme: &str,
    routes: &Routes,
    client: &Client<HttpConnector, Incoming>,
    timeout: Duration,
) -> Response<Body> {
    if request.headers().get_all(HOST).iter().nth(1).is_some() {
        return answer(StatusCode::BAD_REQUEST, "more than one Host header".into());
    }
    // The request target's authority wins over Host (RFC 9112 3.2.2); in
    // HTTP/2 it is the only one.
    let host = match request.uri().authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => request.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned(),
    };
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
    // An HTTP/1.1 upgrade (WebSocket) is passed on, and once the backend
    // agrees both connections are joined.
    let upgrade = (request.version() == Version::HTTP_11).then(|| upgrade_protocol(request.headers())).flatten();
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    *request.uri_mut() = uri;
    // Backends are spoken to in HTTP/1.1, whatever the client spoke.
    *request.version_mut() = Version::HTTP_11;
    forwarded_headers(request.headers_mut(), peer, scheme, &host);
    if let Some(protocol) = &upgrade {
        set_upgrade(request.headers_mut(), protocol);
    }
    let mut response = match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return answer(StatusCode::BAD_GATEWAY, format!("backend {endpoint}: {err}")),
        Err(_) => {
            let reason = format!("backend {endpoint}: no answer within {}", humantime::format_duration(timeout));
            return answer(StatusCode::GATEWAY_TIMEOUT, reason);
        }
    };
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let protocol = response.headers().get(UPGRADE).cloned();
    drop_hop_by_hop(response.headers_mut());
    if switched {
        let (Some(client_side), Some(protocol)) = (client_side, protocol) else {
            return answer(StatusCode::BAD_GATEWAY, format!("backend {endpoint}: switched protocols unasked"));
        };
        tokio::spawn(tunnel(client_side, hyper::upgrade::on(&mut response)));
        set_upgrade(response.headers_mut(), &protocol);
    }
    response.map(BodyExt::boxed)
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` and `Upgrade: PROTOCOL`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")));
    headers.get(UPGRADE).filter(|_| asks).cloned()
}

fn set_upgrade(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol.clone());
}

/// Copies both ways between the upgraded client and backend connections
/// until either closes.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade) {
    match tokio::try_join!(client, backend) {
        Ok((client, backend)) => {
            if let Err(err) = copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(backend)).await {
                debug!("ingress upgraded connection: {err}");
            }
        }
        Err(err) => debug!("ingress upgrade: {err}"),
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
fn drop_hop_by_hop(headers: &mut HeaderMap) {
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

/// Drops the hop-by-hop headers and sets `Host` (HTTP/2 has none) and the
/// `X-Forwarded-*` ones. The
/// client's own `X-Forwarded-For` is replaced, not trusted (as
/// ingress-nginx does by default): the backend sees who connected.
fn forwarded_headers(headers: &mut HeaderMap, peer: SocketAddr, scheme: &str, host: &str) {
    drop_hop_by_hop(headers);
    let client = peer.ip().to_canonical().to_string();
    for (name, value) in [
        ("host", host),
        ("x-forwarded-for", client.as_str()),
        ("x-forwarded-proto", scheme),
        ("x-forwarded-host", host),
    ] {
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
