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
    op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, Record, RecordType},
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
    sync::{Semaphore, watch},
};
use tracing::{info, warn};

use crate::{
    cmd::metrics::AgentMetrics,
    model::{DesiredState, IpCidr},
};
use zone::{Answer, Zone, ZoneOptions, cname_target};

/// How long a forwarded question waits for each of its two tries.
const UPSTREAM_TRY: Duration = Duration::from_secs(1);
/// Forwarded questions waiting at once; beyond, SERVFAIL at once, so that a
/// silent upstream cannot exhaust the agent's file descriptors.
const MAX_FORWARDS: usize = 256;
/// How long a TCP client may stay idle between questions.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("--cluster-domain {domain:?}: {reason}")]
    Domain { domain: String, reason: String },
    #[error("--dns-address {address}: {what}")]
    Listen { address: SocketAddr, what: &'static str, source: std::io::Error },
    #[error("the DNS responder's thread: {0}")]
    Runtime(std::io::Error),
    #[error(
        "--dns-address {0}: give one of the node's addresses, not a wildcard (UDP answers would leave from whatever address the route to the client has)"
    )]
    Wildcard(SocketAddr),
    #[error("--dns-upstream {0}: the responder's own address would forward to itself")]
    UpstreamIsSelf(SocketAddr),
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
        if opts.address.ip().is_unspecified() {
            return Err(DnsError::Wildcard(opts.address));
        }
        if opts.upstream == Some(opts.address) {
            return Err(DnsError::UpstreamIsSelf(opts.address));
        }
        let nameserver = opts.address.ip();
        let zone_opts =
            Arc::new(ZoneOptions { domain, ttl: opts.ttl, service_cidrs: opts.service_cidrs.clone(), nameserver });
        let (zone, current) = watch::channel(Arc::new(Zone::not_synced(Arc::clone(&zone_opts))));
        let listen = |what, ty| {
            listener(opts.address, ty).map_err(|source| DnsError::Listen { address: opts.address, what, source })
        };
        let (udp, tcp) = (listen("udp", Type::DGRAM)?, listen("tcp", Type::STREAM)?);
        let responder = Responder {
            zone: current,
            upstream: opts.upstream,
            forwards: Semaphore::new(MAX_FORWARDS),
            upstream_failing: AtomicBool::new(false),
            metrics,
        };
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
    /// Bounds the forwarded questions in flight.
    forwards: Semaphore,
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
        let (name, qtype) = (info.query.original().name(), info.query.query_type());
        let zone = Arc::clone(&self.zone.borrow());
        let mut answer = match info.query.query_class() {
            DNSClass::IN | DNSClass::ANY => zone.lookup(name, qtype),
            _ => Answer::Elsewhere,
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let soa = || [zone.soa_for(name)];
        let (outcome, sent) = match &mut answer {
            Answer::Records { answers, additionals } => {
                // An ExternalName outside the domain: the upstream server's
                // records of its target too, as CoreDNS adds them (a stub
                // resolver such as glibc's does not chase the alias).
                let address = matches!(qtype, RecordType::A | RecordType::AAAA);
                let outside = cname_target(answers, qtype).filter(|t| address && !zone.domain().zone_of(t)).cloned();
                if let Some(target) = outside {
                    answers.extend(self.resolve_elsewhere(target, qtype, request.protocol()).await);
                }
                let message = builder().build(metadata, answers.iter(), [], [], additionals.iter());
                ("answer", response.send_response(message).await)
            }
            Answer::NoData => ("nodata", response.send_response(builder().build(metadata, [], [], &soa(), [])).await),
            Answer::NxDomain => {
                metadata.response_code = ResponseCode::NXDomain;
                ("nxdomain", response.send_response(builder().build(metadata, [], [], &soa(), [])).await)
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
        let Ok(_permit) = self.forwards.try_acquire() else {
            let busy = builder.error_msg(&request.metadata, ResponseCode::ServFail);
            return ("servfail", response.send_response(busy).await.ok());
        };
        let asked = request.queries.queries().first().map(|q| q.original().clone());
        let tcp = request.protocol() != Protocol::Udp;
        match self.note(upstream, ask_upstream(upstream, tcp, request.as_slice(), asked.as_ref()).await) {
            Some(answer) => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = answer.metadata.response_code;
                metadata.recursion_available = answer.metadata.recursion_available;
                metadata.authentic_data = answer.metadata.authentic_data;
                metadata.truncation = answer.metadata.truncation;
                let message = builder.build(metadata, &answer.answers, &answer.authorities, [], &answer.additionals);
                ("forwarded", response.send_response(message).await.ok())
            }
            None => {
                let failed = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                ("servfail", response.send_response(failed).await.ok())
            }
        }
    }

    /// The upstream server's records for `name` (its aliases and
    /// addresses); none without an upstream server or an answer.
    async fn resolve_elsewhere(&self, name: Name, qtype: RecordType, protocol: Protocol) -> Vec<Record> {
        let (Some(upstream), Ok(_permit)) = (self.upstream, self.forwards.try_acquire()) else { return Vec::new() };
        // A random id of its own (the clients' ids stay on what is relayed).
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        let query = Query::query(name, qtype);
        message.add_query(query.clone());
        let Ok(bytes) = message.to_vec() else { return Vec::new() };
        let answer = ask_upstream(upstream, protocol != Protocol::Udp, &bytes, Some(&query)).await;
        self.note(upstream, answer).map(|a| a.answers).unwrap_or_default()
    }

    /// The answer, if any; an outage of the upstream server said once.
    fn note(&self, upstream: SocketAddr, answer: Result<Message, String>) -> Option<Message> {
        match answer {
            Ok(answer) => {
                if self.upstream_failing.swap(false, Ordering::Relaxed) {
                    info!(%upstream, "--dns-upstream answers again");
                }
                Some(answer)
            }
            Err(err) => {
                if !self.upstream_failing.swap(true, Ordering::Relaxed) {
                    warn!(%upstream, "--dns-upstream: {err} (answering SERVFAIL until it answers again)");
                }
                None
            }
        }
    }
}

/// The upstream server's answer to `question` (encoded, `asked` its
/// question), over TCP or UDP (tried twice), its id and question checked.
async fn ask_upstream(
    upstream: SocketAddr,
    tcp: bool,
    question: &[u8],
    asked: Option<&Query>,
) -> Result<Message, String> {
    // A lost datagram is asked again; a TCP connection loses nothing.
    let (tries, each) = if tcp { (1, UPSTREAM_TRY * 2) } else { (2, UPSTREAM_TRY) };
    let mut bytes = Err("no answer".to_owned());
    for _ in 0..tries {
        bytes = match tokio::time::timeout(each, exchange(upstream, tcp, question)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {:?}", UPSTREAM_TRY * 2)),
        };
        if bytes.is_ok() {
            break;
        }
    }
    let answer = Message::from_vec(&bytes?).map_err(|e| format!("its answer does not parse: {e}"))?;
    let same_question = match (asked, answer.queries.first()) {
        (Some(asked), Some(answered)) => asked.name() == answered.name() && asked.query_type() == answered.query_type(),
        (None, _) => true,
        (Some(_), None) => false,
    };
    if answer.metadata.id != u16::from_be_bytes([question[0], question[1]])
        || answer.metadata.message_type != MessageType::Response
        || !same_question
    {
        return Err("it answered another question".into());
    }
    Ok(answer)
}

/// One question and its answer's bytes: on a fresh UDP socket (a datagram
/// of another id is stray and skipped), or a TCP connection of its own.
async fn exchange(upstream: SocketAddr, tcp: bool, question: &[u8]) -> std::io::Result<Vec<u8>> {
    if tcp {
        let mut stream = TcpStream::connect(upstream).await?;
        let len = u16::try_from(question.len()).map_err(std::io::Error::other)?;
        stream.write_all(&[&len.to_be_bytes()[..], question].concat()).await?;
        let len = usize::from(stream.read_u16().await?);
        let mut buffer = vec![0; len];
        stream.read_exact(&mut buffer).await?;
        return Ok(buffer);
    }
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
        if len >= 12 && buffer[..2] == question[..2] {
            buffer.truncate(len);
            return Ok(buffer);
        }
    }
}
