//! The proxy: HTTP (`--ingress-bind`) and HTTPS (`--ingress-tls-bind`,
//! certificates by SNI from [`tls`]), HTTP/1.1 and HTTP/2 (ALPN, or h2c's
//! preface) from clients. Each request is routed by the table of the
//! Ingresses of our class to one of its Service port's ready endpoints
//! (round robin), in HTTP/1.1 over a keep-alive pool, with
//! `X-Forwarded-*` and `X-Real-IP` (what the client sent of them
//! replaced); WebSocket upgrades are joined through. 404 without a rule,
//! 503 without a ready endpoint, 502 when the backend fails, 504 when it is
//! too slow. Each request the handler answers is counted in the agent's
//! metrics by Service port and status code (hyper refuses malformed heads
//! before that). hyper serves and forwards, rustls terminates TLS; this
//! module routes.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Version,
    body::Incoming,
    header::{CONNECTION, CONTENT_TYPE, COOKIE, HOST, HeaderName, HeaderValue, UPGRADE, X_CONTENT_TYPE_OPTIONS},
    server::conn::{http1, http2},
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::{ServerConfig, crypto::CryptoProvider, server::ResolvesServerCert};
use thiserror::Error;
use tokio::{io::copy_bidirectional, sync::watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{
    opening,
    routes::{Backend, BackendPort, RouteTable},
    table::{self, ServedIngress},
    tls::{self, Resolver, SecretCache},
};
use crate::{
    cmd::metrics::{AgentMetrics, ServicePortLabels, UNROUTED, service_port_labels},
    model::{DesiredState, ModelError, Protocol, ServiceName},
    source::Objects,
};

/// How long connecting to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's head (or its first
/// bytes), hyper's default.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle HTTP/2 client is pinged, and how long its answer
/// may take before the connection is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pooled connection to a backend may stay idle.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The headers a proxy must not pass on (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"];

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
    /// Each backend's round-robin position, kept from table to table.
    turns: Mutex<HashMap<Backend, Arc<AtomicUsize>>>,
    /// The HTTPS listener's certificates, and the Secrets they came from.
    certificates: Option<(Arc<Resolver>, Mutex<SecretCache>)>,
    provider: Arc<CryptoProvider>,
    opts: IngressOptions,
}

/// The table and where each backend it names sends requests.
#[derive(Default)]
struct Routes {
    table: RouteTable,
    upstreams: HashMap<Backend, Upstream>,
}

/// A backend's ready endpoints, whose turn is next, and the labels its
/// requests are counted under.
struct Upstream {
    endpoints: Vec<SocketAddr>,
    turn: Arc<AtomicUsize>,
    labels: ServicePortLabels,
}

/// A listener and what it serves: HTTP, or HTTPS with this TLS acceptor.
struct Listener {
    socket: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
}

type Body = BoxBody<Bytes, hyper::Error>;

impl IngressProxy {
    /// Listens at once; requests get 404 until the first model.
    pub fn start(opts: &IngressOptions, metrics: Arc<AgentMetrics>) -> Result<Self, ProxyError> {
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
                move || runtime.block_on(serve_listeners(listeners, current, timeout, metrics))
            })
            .map_err(ProxyError::Runtime)?;
        info!(http = ?opts.http, https = ?opts.https, class = opts.class, "ingress proxy listening");
        Ok(IngressProxy { routes, turns: Default::default(), certificates, provider, opts: opts.clone() })
    }

    /// Routes by `objects`' Ingresses to `desired`'s endpoints from now on;
    /// the Ingresses served, with their address, and the invalid ones' errors.
    pub fn publish(&self, objects: &Objects, desired: &DesiredState) -> (Vec<ServedIngress>, Vec<ModelError>) {
        let (mut table, mut errors) = table::build(objects, &self.opts.class);
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
        let upstreams = table
            .routes
            .backends()
            .map(|b| (b.clone(), upstream(desired, b, Arc::clone(turns.entry(b.clone()).or_default()))))
            .collect();
        self.routes.send_replace(Arc::new(Routes { table: table.routes, upstreams }));
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

/// The ready endpoints of the Service port `backend` names (TCP), and its
/// labels: by the port's number, however the Ingress names it (as written
/// when the Service has no such port).
fn upstream(desired: &DesiredState, backend: &Backend, turn: Arc<AtomicUsize>) -> Upstream {
    let service = desired.services.get(&ServiceName::new(&backend.namespace, &backend.service));
    let port = service.and_then(|service| {
        service.ports.iter().find(|p| {
            p.protocol == Protocol::Tcp
                && match &backend.port {
                    BackendPort::Number(n) => p.port == *n,
                    BackendPort::Name(name) => &p.name == name,
                }
        })
    });
    let endpoints =
        port.map(|p| p.active_endpoints().map(|e| SocketAddr::new(e.addr, e.port)).collect()).unwrap_or_default();
    let number = port.map_or_else(|| backend.port.to_string(), |p| p.port.to_string());
    Upstream { endpoints, turn, labels: service_port_labels(&backend.namespace, &backend.service, &number) }
}

async fn serve_listeners(
    listeners: Vec<Listener>,
    routes: watch::Receiver<Arc<Routes>>,
    timeout: Duration,
    metrics: Arc<AgentMetrics>,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_keepalive(Some(POOL_IDLE));
    // Requests and answers are written whole: Nagle would only hold back
    // the tail of one that spans several segments (or TLS records).
    connector.set_nodelay(true);
    // The pool's idle timeout needs its timer: without, idle connections to
    // pods long gone would stay.
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector);
    let forwarder = Forwarder { routes, client, metrics };
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept(listener, forwarder.clone(), timeout));
    }
    while accepting.join_next().await.is_some() {}
}

/// What every connection's requests are routed by, forwarded with and
/// counted in.
#[derive(Clone)]
struct Forwarder {
    routes: watch::Receiver<Arc<Routes>>,
    client: Client<HttpConnector, Incoming>,
    metrics: Arc<AgentMetrics>,
}

async fn accept(listener: Listener, forwarder: Forwarder, timeout: Duration) {
    let socket = match tokio::net::TcpListener::from_std(listener.socket) {
        Ok(socket) => socket,
        Err(err) => return warn!("the ingress proxy cannot serve: {err}"),
    };
    let port = socket.local_addr().map_or(0, |a| a.port());
    let scheme = if listener.tls.is_some() { "https" } else { "http" };
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
        if let Err(err) = stream.set_nodelay(true) {
            debug!(%peer, "ingress connection: TCP_NODELAY: {err}");
        }
        let connection = Connection { peer, scheme, port, backend_timeout: timeout };
        let (forwarder, tls) = (forwarder.clone(), listener.tls.clone());
        tokio::spawn(async move {
            // HTTP/2 when the client opens with its preface (after ALPN
            // agreed on h2, or in clear text: h2c with prior knowledge),
            // else HTTP/1.1; a client that sends nothing is dropped.
            let served = match tls {
                None => match opening::open(stream, HEAD_TIMEOUT).await {
                    Ok((h2, stream)) => serve_connection(TokioIo::new(stream), h2, connection, forwarder).await,
                    Err(err) => return debug!(%peer, "ingress connection: {err}"),
                },
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => match opening::open(stream, HEAD_TIMEOUT).await {
                        Ok((h2, stream)) => serve_connection(TokioIo::new(stream), h2, connection, forwarder).await,
                        Err(err) => return debug!(%peer, "ingress connection: {err}"),
                    },
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

/// Where a request came from and in on.
#[derive(Clone, Copy)]
struct Connection {
    peer: SocketAddr,
    scheme: &'static str,
    /// The listener's port, for `X-Forwarded-Port`.
    port: u16,
    backend_timeout: Duration,
}

/// Serves one connection's requests in HTTP/2 or HTTP/1.1. Each has its
/// timer: HTTP/1.1's head read timeout (30 s, also between requests), so
/// a client trickling its request head cannot hold a connection forever;
/// HTTP/2's pings, so a vanished client's connection is closed.
async fn serve_connection<I>(io: I, h2: bool, connection: Connection, forwarder: Forwarder) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let (routes, client, metrics) =
            (Arc::clone(&forwarder.routes.borrow()), forwarder.client.clone(), Arc::clone(&forwarder.metrics));
        async move {
            let started = Instant::now();
            let (response, upstream) = proxy(request, connection, &routes, &client).await;
            let labels = upstream.map_or(&*UNROUTED, |u| &u.labels);
            metrics.ingress_request(labels, response.status().as_u16(), started.elapsed());
            Ok::<_, Infallible>(response)
        }
    });
    if h2 {
        http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .serve_connection(io, service)
            .await
    } else {
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .serve_connection(io, service)
            .with_upgrades()
            .await
    }
}

/// One request, routed and forwarded: the backend's answer or ours, and
/// where it was routed to.
async fn proxy<'r>(
    request: Request<Incoming>,
    connection: Connection,
    routes: &'r Routes,
    client: &Client<HttpConnector, Incoming>,
) -> (Response<Body>, Option<&'r Upstream>) {
    if request.method() == Method::CONNECT {
        return (answer(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied".into()), None);
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    let (host_header, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return (answer(StatusCode::BAD_REQUEST, "more than one Host header".into()), None);
    }
    // The request target's authority wins over Host (RFC 9112 3.2.2); in
    // HTTP/2 it is the only one. HTTP/1.1 requires one of them.
    let host = match (request.uri().authority(), host_header.map(HeaderValue::to_str)) {
        // Without any user info the target may carry.
        (Some(authority), _) => match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_owned(),
        },
        (None, Some(Ok(host))) if !host.is_empty() => host.to_owned(),
        _ if request.version() < Version::HTTP_11 => String::new(),
        _ => return (answer(StatusCode::BAD_REQUEST, "no valid Host header".into()), None),
    };
    let path = request.uri().path().to_owned();
    let Some(backend) = routes.table.route(&host, &path) else {
        return (answer(StatusCode::NOT_FOUND, format!("no Ingress rule for {host}{path}")), None);
    };
    let upstream = routes.upstreams.get(backend);
    (forward(request, connection, backend, upstream, (&host, &path), client).await, upstream)
}

/// `request` for `host` and `path` forwarded to one of `backend`'s ready
/// endpoints: the endpoint's answer, or ours.
async fn forward(
    mut request: Request<Incoming>,
    connection: Connection,
    backend: &Backend,
    upstream: Option<&Upstream>,
    (host, path): (&str, &str),
    client: &Client<HttpConnector, Incoming>,
) -> Response<Body> {
    let Some(Upstream { endpoints, turn, .. }) = upstream.filter(|u| !u.endpoints.is_empty()) else {
        let reason =
            format!("Service {}/{} port {} has no ready endpoint", backend.namespace, backend.service, backend.port);
        return answer(StatusCode::SERVICE_UNAVAILABLE, reason);
    };
    let endpoint = endpoints[turn.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
    let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{endpoint}{path_and_query}").parse() else {
        return answer(StatusCode::BAD_REQUEST, format!("cannot forward {path_and_query:?}"));
    };
    // A WebSocket upgrade (HTTP/1.1) is passed on, and once the backend
    // agrees both connections are joined. Other upgrades (h2c, a way to
    // smuggle requests past the proxy) are dropped with the hop-by-hop
    // headers.
    let upgrade = (request.version() == Version::HTTP_11).then(|| websocket_upgrade(request.headers())).flatten();
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    *request.uri_mut() = uri;
    // Backends are spoken to in HTTP/1.1, whatever the client spoke; an
    // HTTP/2 client's cookie fields become one header (RFC 9113 8.2.3).
    if request.version() == Version::HTTP_2 {
        join_cookies(request.headers_mut());
    }
    *request.version_mut() = Version::HTTP_11;
    forwarded_headers(request.headers_mut(), connection, host);
    if let Some(protocol) = &upgrade {
        set_upgrade(request.headers_mut(), protocol);
    }
    let peer = connection.peer;
    let mut response = match tokio::time::timeout(connection.backend_timeout, client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            // The details are the operator's, not the client's.
            warn!(%peer, host, path, %endpoint, "ingress backend failed: {err}");
            return answer(StatusCode::BAD_GATEWAY, "the backend failed".into());
        }
        Err(_) => {
            let waited = humantime::format_duration(connection.backend_timeout);
            warn!(%peer, host, path, %endpoint, "ingress backend did not answer within {waited}");
            return answer(StatusCode::GATEWAY_TIMEOUT, format!("the backend did not answer within {waited}"));
        }
    };
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let protocol = response.headers().get(UPGRADE).cloned();
    drop_hop_by_hop(response.headers_mut());
    if switched {
        let (Some(client_side), Some(protocol)) = (client_side, protocol) else {
            warn!(%peer, host, path, %endpoint, "ingress backend switched protocols unasked");
            return answer(StatusCode::BAD_GATEWAY, "the backend failed".into());
        };
        tokio::spawn(tunnel(client_side, hyper::upgrade::on(&mut response)));
        set_upgrade(response.headers_mut(), &protocol);
    }
    response.map(BodyExt::boxed)
}

/// The tokens of the `Connection` headers, lowercase.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|token| token.trim().to_ascii_lowercase()))
}

/// `Upgrade: websocket` when the request asks to switch to it (with
/// `Connection: upgrade`).
fn websocket_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = connection_tokens(headers).any(|token| token == "upgrade");
    headers.get(UPGRADE).filter(|protocol| asks && protocol.as_bytes().eq_ignore_ascii_case(b"websocket")).cloned()
}

fn set_upgrade(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol.clone());
}

/// HTTP/2's separate `cookie` fields as HTTP/1.1's one, `; `-joined.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<u8> =
        headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes).collect::<Vec<_>>().join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
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

/// Drops the hop-by-hop headers, and those `Connection` names but for the
/// ones a message cannot do without (`Host`, `Content-Length`).
fn drop_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = connection_tokens(headers).filter(|h| h != "host" && h != "content-length").collect();
    for name in HOP_BY_HOP.iter().map(|h| h.to_string()).chain(listed) {
        headers.remove(name.as_str());
    }
}

/// Drops the hop-by-hop headers and sets `Host` (HTTP/2 has none) and the
/// forwarding headers ingress-nginx sets. What the client sent of them
/// (or of `Forwarded`) is replaced or dropped, not trusted: the backend
/// sees who connected, and how.
fn forwarded_headers(headers: &mut HeaderMap, connection: Connection, host: &str) {
    drop_hop_by_hop(headers);
    // Every forwarding header a framework might trust (X-Forwarded-Ssl,
    // X-Scheme, X-Original-Forwarded-For, ...), not only ours.
    let claimed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name == "forwarded"
                || name == "x-scheme"
                || name.starts_with("x-forwarded-")
                || name.starts_with("x-original-")
        })
        .cloned()
        .collect();
    for name in claimed {
        headers.remove(name);
    }
    let client = connection.peer.ip().to_canonical().to_string();
    let port = connection.port.to_string();
    for (name, value) in [
        ("host", host),
        ("x-forwarded-for", client.as_str()),
        ("x-real-ip", client.as_str()),
        ("x-forwarded-proto", connection.scheme),
        ("x-forwarded-host", host),
        ("x-forwarded-port", port.as_str()),
    ] {
        // An HTTP/1.0 request may have no host: then none is claimed.
        match HeaderValue::from_str(value) {
            Ok(value) if !value.is_empty() || name == "host" => headers.insert(HeaderName::from_static(name), value),
            _ => headers.remove(name),
        };
    }
}

/// Our own answer: the reason as plain text, never sniffed as anything else.
fn answer(status: StatusCode, reason: String) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{reason}\n"))).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
