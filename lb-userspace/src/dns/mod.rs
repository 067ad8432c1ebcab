//! The DNS responder (`--dns-address`): authoritative for the cluster
//! domain, from the model the datapath is programmed from ([`zone`]);
//! other names forwarded to `--dns-upstream` or refused. hickory-server
//! does the UDP and TCP serving and message encoding (truncation for UDP
//! included); this module decides the answer.

pub mod zone;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, Name},
};
use hickory_server::{
    Server,
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use socket2::{Domain, SockAddr, Socket, Type};
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::watch,
};
use tracing::{info, warn};

use crate::{
    cmd::metrics::AgentMetrics,
    model::{DesiredState, IpCidr},
};
use zone::{Answer, Zone, ZoneOptions};

/// How long a forwarded question waits for the upstream server.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay idle between questions.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("--cluster-domain {domain:?}: {reason}")]
    Domain { domain: String, reason: String },
    #[error("--dns-address {address}: {what}: {source}")]
    Listen { address: SocketAddr, what: &'static str, source: std::io::Error },
    #[error("the DNS responder's thread: {0}")]
    Runtime(std::io::Error),
}

#[derive(Clone, Debug)]
pub struct DnsOptions {
    pub address: SocketAddr,
    pub cluster_domain: String,
    pub upstream: Option<SocketAddr>,
    pub ttl: u32,
    pub service_cidrs: Vec<IpCidr>,
}

/// The running responder; [`DnsServer::publish`] hands it each new model.
pub struct DnsServer {
    zone: watch::Sender<Arc<Zone>>,
    opts: Arc<ZoneOptions>,
}

impl DnsServer {
    /// Listens on UDP and TCP at the address. Bound with IP_FREEBIND, so an
    /// address the node has not configured yet (NodeLocal DNSCache's, on a
    /// device made later) answers as soon as it appears.
    pub fn start(opts: &DnsOptions, metrics: Arc<AgentMetrics>) -> Result<Self, DnsError> {
        let domain_error = |reason: String| DnsError::Domain { domain: opts.cluster_domain.clone(), reason };
        let mut domain = Name::from_ascii(&opts.cluster_domain).map_err(|e| domain_error(e.to_string()))?;
        if domain.is_root() {
            return Err(domain_error("the root cannot be the cluster domain".into()));
        }
        domain.set_fqdn(true);
        let nameserver = Some(opts.address.ip()).filter(|ip| !ip.is_unspecified());
        let zone_opts =
            Arc::new(ZoneOptions { domain, ttl: opts.ttl, service_cidrs: opts.service_cidrs.clone(), nameserver });
        let (zone, current) = watch::channel(Arc::new(Zone::not_synced(Arc::clone(&zone_opts))));
        let listen = |what, ty| {
            listener(opts.address, ty).map_err(|source| DnsError::Listen { address: opts.address, what, source })
        };
        let (udp, tcp) = (listen("udp", Type::DGRAM)?, listen("tcp", Type::STREAM)?);
        let responder =
            Responder { zone: current, upstream: opts.upstream, upstream_failing: AtomicBool::new(false), metrics };
        // A thread and runtime of its own: the control loop's passes, which
        // take a while at thousands of Services, never delay an answer.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DnsError::Runtime)?;
        std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut server = Server::new(responder);
                    match (UdpSocket::from_std(udp.into()), tokio::net::TcpListener::from_std(tcp.into())) {
                        (Ok(udp), Ok(tcp)) => {
                            server.register_socket(udp);
                            server.register_listener(tcp, TCP_IDLE_TIMEOUT, 64);
                        }
                        (Err(err), _) | (_, Err(err)) => return warn!("the DNS responder cannot serve: {err}"),
                    }
                    if let Err(err) = server.block_until_done().await {
                        warn!("the DNS responder stopped: {err}");
                    }
                })
            })
            .map_err(DnsError::Runtime)?;
        info!(address = %opts.address, domain = %zone_opts.domain, upstream = ?opts.upstream, "DNS responder listening");
        Ok(DnsServer { zone, opts: zone_opts })
    }

    /// Answers from `desired` from now on.
    pub fn publish(&self, desired: &DesiredState) {
        let serial = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32);
        self.zone.send_replace(Arc::new(Zone::new(&desired.services, Arc::clone(&self.opts), serial)));
    }
}

fn listener(address: SocketAddr, ty: Type) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), ty, None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(address))?;
    if ty == Type::STREAM {
        socket.listen(1024)?;
    }
    Ok(socket)
}

struct Responder {
    zone: watch::Receiver<Arc<Zone>>,
    upstream: Option<SocketAddr>,
    /// Whether the last forwarded question failed: said once per outage.
    upstream_failing: AtomicBool,
    metrics: Arc<AgentMetrics>,
}

#[async_trait::async_trait]
impl RequestHandler for Responder {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, response: R) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns
        });
        let (outcome, info) = self.respond(request, edns.as_ref(), response).await;
        self.metrics.dns_response(outcome);
        info.unwrap_or_else(|| {
            ResponseInfo::from(hickory_proto::op::Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: Default::default(),
            })
        })
    }
}

impl Responder {
    /// Sends the answer; what kind it was (the metric's label), and what
    /// was sent (None if sending failed: the client has gone).
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        edns: Option<&Edns>,
        mut response: R,
    ) -> (&'static str, Option<ResponseInfo>) {
        let builder = || MessageResponseBuilder::new(&request.queries, edns);
        let error = |code| builder().error_msg(&request.metadata, code);
        if request.metadata.message_type != MessageType::Query || request.metadata.op_code != OpCode::Query {
            return ("notimp", response.send_response(error(ResponseCode::NotImp)).await.ok());
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return ("badvers", response.send_response(error(ResponseCode::BADVERS)).await.ok());
        }
        let Ok(info) = request.request_info() else {
            return ("formerr", response.send_response(error(ResponseCode::FormErr)).await.ok());
        };
        let query = info.query;
        let zone = Arc::clone(&self.zone.borrow());
        let answer = match query.query_class() {
            DNSClass::IN | DNSClass::ANY => zone.lookup(query.name(), query.query_type()),
            _ => Answer::Elsewhere,
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let soa = [zone.soa()];
        let (outcome, sent) = match &answer {
            Answer::Records { answers, additionals } => {
                let message = builder().build(metadata, answers, [], [], additionals);
                ("answer", response.send_response(message).await)
            }
            Answer::NoData => ("nodata", response.send_response(builder().build(metadata, [], [], &soa, [])).await),
            Answer::NxDomain => {
                metadata.response_code = ResponseCode::NXDomain;
                ("nxdomain", response.send_response(builder().build(metadata, [], [], &soa, [])).await)
            }
            Answer::NotSynced => {
                let failed = builder().error_msg(&request.metadata, ResponseCode::ServFail);
                ("notsynced", response.send_response(failed).await)
            }
            Answer::Elsewhere => return self.forward(request, builder(), response).await,
        };
        (outcome, sent.ok())
    }

    /// Relays the question to the upstream server over the client's own
    /// protocol, and its answer back; REFUSED without one, SERVFAIL when it
    /// does not answer.
    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        builder: MessageResponseBuilder<'_>,
        mut response: R,
    ) -> (&'static str, Option<ResponseInfo>) {
        let Some(upstream) = self.upstream else {
            let refused = builder.error_msg(&request.metadata, ResponseCode::Refused);
            return ("refused", response.send_response(refused).await.ok());
        };
        match ask_upstream(upstream, request).await {
            Ok(answer) => {
                if self.upstream_failing.swap(false, Ordering::Relaxed) {
                    info!(%upstream, "--dns-upstream answers again");
                }
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = answer.metadata.response_code;
                metadata.recursion_available = answer.metadata.recursion_available;
                metadata.truncation = answer.metadata.truncation;
                let message = builder.build(metadata, &answer.answers, &answer.authorities, [], &answer.additionals);
                ("forwarded", response.send_response(message).await.ok())
            }
            Err(err) => {
                if !self.upstream_failing.swap(true, Ordering::Relaxed) {
                    warn!(%upstream, "--dns-upstream: {err} (answering SERVFAIL until it answers again)");
                }
                let failed = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                ("servfail", response.send_response(failed).await.ok())
            }
        }
    }
}

/// The upstream server's answer to the request, asked as the client asked
/// (UDP or TCP), its id and question checked.
async fn ask_upstream(upstream: SocketAddr, request: &Request) -> Result<Message, String> {
    let question = request.as_slice();
    let exchange = async {
        let bytes = if request.protocol() == Protocol::Udp {
            let local: SocketAddr = match upstream.ip() {
                IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(local).await?;
            socket.connect(upstream).await?;
            socket.send(question).await?;
            let mut buffer = vec![0; 65535];
            loop {
                let len = socket.recv(&mut buffer).await?;
                // Anything but the answer to this id is a stray datagram.
                if len >= 2 && buffer[..2] == question[..2] {
                    buffer.truncate(len);
                    break buffer;
                }
            }
        } else {
            let mut stream = TcpStream::connect(upstream).await?;
            let len = u16::try_from(question.len()).map_err(std::io::Error::other)?;
            stream.write_all(&[&len.to_be_bytes()[..], question].concat()).await?;
            let len = usize::from(stream.read_u16().await?);
            let mut buffer = vec![0; len];
            stream.read_exact(&mut buffer).await?;
            buffer
        };
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {UPSTREAM_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let answer = Message::from_vec(&bytes).map_err(|e| format!("its answer does not parse: {e}"))?;
    if answer.metadata.id != request.metadata.id || answer.metadata.message_type != MessageType::Response {
        return Err("it answered another question".into());
    }
    Ok(answer)
}
