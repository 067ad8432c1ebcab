//! lb-agent: the per-node agent of the XDP/TC Service datapath.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{
    cmd::{
        env, explain, get,
        run::{self, AgentConfig, SourceConfig},
        status,
    },
    datapath::interfaces::InterfacePatterns,
    datapath::{
        loader::{LoadOptions, XdpAttachMode},
        maps::{DatapathMaps, monotonic_ns},
        sockets::SocketLb,
    },
    dns::DnsOptions,
    ingress::proxy::IngressOptions,
    model::{Controllers, IpCidr, ModelOptions, ServiceName},
    plan::datapath_cidr,
    source::api::ApiConfig,
};

#[derive(Parser)]
#[command(name = "lb-agent", version, about = "Kubernetes Services in XDP and TC: the per-node agent")]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object a line) for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Program the datapath from a manifest directory or a Kubernetes API
    /// server and keep it in sync.
    // Boxed: its many flags would make every Command that size.
    Run(Box<RunArgs>),
    /// Print what the datapath is programmed with (reads the pinned maps).
    Get {
        #[arg(value_enum)]
        what: GetWhat,
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        bpf_dir: PathBuf,
        /// `wide` for more columns, `json` or `yaml` for the same rows to
        /// script against (the table by default).
        #[arg(short, long, value_enum)]
        output: Option<OutputArg>,
        #[command(flatten)]
        filter: ConntrackFilterArgs,
        /// The agent's --metrics-bind-address, asked by `get ingresses`.
        #[arg(long, default_value = "127.0.0.1:10249")]
        agent: std::net::SocketAddr,
    },
    /// Say what the datapath would do with one packet, step by step: its own
    /// decision run over the live maps, which it leaves unchanged.
    Explain(ExplainArgs),
    /// Print the agent's state: kernel, source, last sync, map fill, and
    /// how each interface is attached (asks the agent's /status).
    Status {
        /// The agent's --metrics-bind-address.
        #[arg(long, default_value = "127.0.0.1:10249")]
        agent: std::net::SocketAddr,
        #[arg(short, long, value_enum)]
        output: Option<OutputArg>,
    },
    /// Print the variables kubelet would inject into a pod of NAMESPACE
    /// for the Services programmed now (KUBIA_SERVICE_HOST=...).
    Env {
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        bpf_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The packet's source, ADDR:PORT.
    #[arg(long, required_unless_present = "pcap", requires = "to")]
    from: Option<std::net::SocketAddr>,
    /// Its destination, ADDR:PORT.
    #[arg(long, requires = "from", conflicts_with = "pcap")]
    to: Option<std::net::SocketAddr>,
    /// A capture to take the packet from instead (pcap or pcapng of
    /// Ethernet frames, as `tcpdump -i IFACE -w FILE` writes).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Which frame of the capture, from 1.
    #[arg(long, default_value_t = 1, requires = "pcap", value_parser = clap::value_parser!(u64).range(1..))]
    frame: u64,
    #[arg(long, value_enum, default_value_t = ProtoArg::Tcp, conflicts_with = "pcap")]
    proto: ProtoArg,
    /// TCP flags, comma-separated (syn, ack, fin, rst): `syn` opens a
    /// connection, `ack` is a packet of one under way.
    #[arg(long, default_value = "syn", value_parser = explain::parse_tcp_flags, conflicts_with = "pcap")]
    flags: u8,
    /// The interface the packet arrives on: a node device (XDP) or a pod's
    /// veth, host side (TC).
    #[arg(long)]
    on: String,
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpf_dir: PathBuf,
    /// The agent's --metrics-bind-address, asked for what the programs were
    /// loaded with (service CIDR, conntrack timeouts).
    #[arg(long, default_value = "127.0.0.1:10249")]
    agent: std::net::SocketAddr,
    /// `json` or `yaml` for the same fields to script against.
    #[arg(short, long, value_enum)]
    output: Option<OutputArg>,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

#[derive(Parser)]
struct RunArgs {
    /// Directory of Service, Pod, Endpoints and EndpointSlice manifests
    /// (*.yaml, *.yml, *.json): standalone, without an API server.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API server this kubeconfig names. Without it and
    /// without --manifests, the in-cluster config is used when
    /// KUBERNETES_SERVICE_HOST is set (in a pod).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name, as pods' spec.nodeName uses it.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Node devices to attach to: names or wildcards (repeatable).
    #[arg(long = "device", value_name = "PATTERN")]
    devices: Vec<String>,
    /// Pod veths (host side) to attach to, e.g. 'h-*' (repeatable); ones created later are attached as the kernel announces them.
    #[arg(long = "pod-device", value_name = "PATTERN")]
    pod_devices: Vec<String>,
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
    /// Devices whose receiving side takes frames sent from XDP (repeatable):
    /// rewritten packets routed out of them skip the kernel's stack
    /// (bpf_fib_lookup + XDP_TX/XDP_REDIRECT). Physical NICs with native
    /// XDP do; a veth only when its peer runs XDP.
    #[arg(long = "xdp-redirect-device", value_name = "PATTERN")]
    redirect_devices: Vec<String>,
    /// How pod traffic leaves once translated: `redirect` sends it from TC
    /// straight into a local pod (bpf_redirect_peer) or out of the FIB's
    /// device (bpf_redirect_neigh), skipping the node's netfilter FORWARD
    /// chain; `stack` hands it to the kernel's routing.
    #[arg(long, value_enum, default_value_t = PodForwarding::Redirect)]
    pod_forwarding: PodForwarding,
    /// Where the maps are pinned; two agents on one host need two directories.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpf_dir: PathBuf,
    /// Log every datapath verdict through aya-log (with RUST_LOG=info,lb_datapath=debug).
    #[arg(long)]
    datapath_debug: bool,
    /// Let cluster IPs answer traffic arriving on the node's devices (by
    /// default only pods reach them, as in Kubernetes).
    #[arg(long)]
    cluster_ip_external: bool,
    /// The cluster's service CIDR of a family (repeatable, at most one per
    /// family; the first is the primary family): unallocated addresses in
    /// it are dropped; standalone, clusterIPs of Services whose manifest has
    /// none come from it.
    #[arg(long = "service-cidr", value_name = "CIDR", default_value = "10.96.0.0/12")]
    service_cidrs: Vec<String>,
    /// Conntrack capacity in entries (two per flow); when full, the least
    /// recently used entries make room.
    #[arg(long, default_value_t = lb_common::MAX_CONNTRACK)]
    ct_max: u32,
    /// Idle timeout of a TCP flow whose SYN is not answered yet.
    #[arg(long, default_value = "60s", value_parser = parse_seconds)]
    ct_timeout_tcp_syn: u32,
    #[arg(long, default_value = "6h", value_parser = parse_seconds)]
    ct_timeout_tcp_established: u32,
    /// After a FIN or RST.
    #[arg(long, default_value = "10s", value_parser = parse_seconds)]
    ct_timeout_tcp_closing: u32,
    #[arg(long, default_value = "60s", value_parser = parse_seconds)]
    ct_timeout_udp: u32,
    /// How often expired conntrack entries are removed (the datapath ignores
    /// them at once).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ct_sweep_interval: std::time::Duration,
    /// Room for all Maglev tables, in entries of 2 bytes (a frontend with N
    /// backends takes the smallest listed prime >= 1 000 x N).
    #[arg(long, default_value_t = lb_common::MAX_MAGLEV_ENTRIES)]
    maglev_entries: u32,
    /// Detach the programs when the agent stops. By default they stay
    /// attached (links and maps pinned) and keep forwarding until the next
    /// agent takes them over.
    #[arg(long)]
    detach_on_exit: bool,
    /// Run in a private mount namespace (as `ip netns exec` makes) with a
    /// bpffs of its own: its pins vanish with that namespace, unseen by
    /// `lb-agent get` and the next agent. Refused without this flag.
    #[arg(long)]
    allow_private_bpffs: bool,
    /// Which sockets reach Services without per-packet translation, their
    /// destination rewritten at connect()/sendmsg() by cgroup hooks: `host`
    /// the node's own network namespace (host processes, hostNetwork
    /// pods), which no packet hook sees; `all` pods' too; `off` none.
    #[arg(long, value_enum, default_value_t = SocketLbArg::Host)]
    socket_lb: SocketLbArg,
    /// The cgroup v2 directory the socket hooks attach to (they serve its
    /// processes and its descendants'); by default the unified hierarchy's
    /// root, mounted on /run/lb/cgroup2 if it is mounted nowhere.
    #[arg(long, value_name = "DIR")]
    cgroup_root: Option<PathBuf>,
    /// Node ports answer the node's own sockets on 127.0.0.1 too (never
    /// packets from a device).
    #[arg(long)]
    nodeport_localhost: bool,
    /// Where /healthz and /livez answer (kube-proxy's port); empty for nowhere.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:10256", value_parser = parse_bind_address)]
    health_bind_address: BindAddress,
    /// /healthz and /livez answer 503 once a failed datapath update has
    /// waited this long for a complete one.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    health_timeout: std::time::Duration,
    /// Where Prometheus metrics answer (`/metrics`, kube-proxy's port); empty for nowhere.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249", value_parser = parse_bind_address)]
    metrics_bind_address: BindAddress,
    /// Answer DNS on this address (UDP and TCP): the cluster domain's names
    /// from the same model the datapath is programmed from. Standalone
    /// (--manifests) it is 169.254.20.10:53 (NodeLocal DNSCache's address,
    /// answering once the node has it, e.g. on its loopback) unless given;
    /// with the API server, off unless given (CoreDNS's job there). The
    /// empty string turns it off.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_bind_address)]
    dns_address: Option<BindAddress>,
    /// The domain the DNS responder is authoritative for.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Where questions outside the cluster domain go (ADDR or ADDR:PORT);
    /// without it they are answered REFUSED.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_upstream)]
    dns_upstream: Option<std::net::SocketAddr>,
    /// How long resolvers may cache an answer, negative ones too.
    #[arg(long, default_value = "5s", value_parser = parse_seconds)]
    dns_ttl: u32,
    /// Serve the Ingresses of --ingress-class as an HTTP proxy here (off
    /// unless given).
    #[arg(long, value_name = "ADDR:PORT")]
    ingress_bind: Option<std::net::SocketAddr>,
    /// Serve them as an HTTPS proxy here, with the certificates of their
    /// `spec.tls` Secrets (off unless given).
    #[arg(long, value_name = "ADDR:PORT")]
    ingress_tls_bind: Option<std::net::SocketAddr>,
    /// The IngressClass whose Ingresses are ours (and those without a
    /// class, when this one is marked the default).
    #[arg(long, default_value = "lb")]
    ingress_class: String,
    /// The Service (NAMESPACE/NAME) that exposes the Ingress proxy: its
    /// load-balancer and external IPs are written to the served Ingresses'
    /// `status.loadBalancer` (with the API server).
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_service_name)]
    ingress_publish_service: Option<ServiceName>,
    /// How long a backend may take to answer a proxied request's headers
    /// before the client gets 504 (nginx's proxy_read_timeout).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ingress_backend_timeout: std::time::Duration,
}

/// Where the standalone agent answers DNS unless told: NodeLocal DNSCache's
/// address, which the seeds' pods can be given as their nameserver.
const DEFAULT_DNS_ADDRESS: ([u8; 4], u16) = ([169, 254, 20, 10], 53);

/// A DNS server's address; port 53 when none is given.
fn parse_upstream(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("{text:?} is neither an IP address nor ADDR:PORT"))
}

/// `NAMESPACE/NAME`.
fn parse_service_name(text: &str) -> Result<ServiceName, String> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ServiceName::new(namespace, name))
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
}

/// An address to listen on, or none (the empty string).
#[derive(Clone, Copy)]
struct BindAddress(Option<std::net::SocketAddr>);

fn parse_bind_address(text: &str) -> Result<BindAddress, String> {
    if text.is_empty() {
        return Ok(BindAddress(None));
    }
    let addr = text.parse().map_err(|_| format!("{text:?} is neither ADDR:PORT (such as 0.0.0.0:10256) nor empty"))?;
    Ok(BindAddress(Some(addr)))
}

/// A duration such as `90s` or `6h`, in whole seconds (at least one).
fn parse_seconds(text: &str) -> Result<u32, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    u32::try_from(d.as_secs()).ok().filter(|s| *s > 0).ok_or_else(|| format!("{text} is not between 1s and 136 years"))
}

#[derive(Clone, Copy, ValueEnum)]
enum PodForwarding {
    Redirect,
    Stack,
}

#[derive(Clone, Copy, ValueEnum)]
enum SocketLbArg {
    Host,
    All,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    /// Native where the driver supports it, generic (skb) otherwise.
    Auto,
    Native,
    Skb,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputArg {
    Wide,
    Json,
    Yaml,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum GetWhat {
    Services,
    /// Every endpoint with its ready/serving/terminating conditions.
    Endpoints,
    Counters,
    /// Every flow (client, frontend, backend, state, age), with the filters below.
    Conntrack,
    /// The Ingresses the proxy serves, with their address (asks the
    /// agent's /status at --agent).
    #[value(alias = "ingress")]
    Ingresses,
}

/// Filters of `get conntrack`.
#[derive(clap::Args)]
struct ConntrackFilterArgs {
    /// Only flows of this Service: NAMESPACE/NAME (or NAME in default).
    #[arg(long)]
    service: Option<String>,
    /// Only flows from this client address.
    #[arg(long)]
    client: Option<std::net::IpAddr>,
    /// Only flows to this backend address.
    #[arg(long)]
    backend: Option<std::net::IpAddr>,
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Tcp,
    Udp,
}

impl ConntrackFilterArgs {
    fn is_empty(&self) -> bool {
        self.service.is_none() && self.client.is_none() && self.backend.is_none() && self.protocol.is_none()
    }

    fn filter(self) -> get::ConntrackFilter {
        let service = self.service.map(|s| match s.split_once('/') {
            Some((ns, name)) => (ns.to_owned(), name.to_owned()),
            None => ("default".to_owned(), s),
        });
        let proto = self.protocol.map(|p| match p {
            ProtocolArg::Tcp => lb_common::IPPROTO_TCP,
            ProtocolArg::Udp => lb_common::IPPROTO_UDP,
        });
        get::ConntrackFilter { service, client: self.client, backend: self.backend, proto }
    }
}

/// Errors end the agent with one line on stderr (the causes joined by
/// colons) and exit status 1.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // hickory-server logs every DNS question at info: only when asked by name.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("hickory")) {
        filter = filter.add_directive("hickory_server=warn".parse().expect("a valid directive"));
    }
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let json = cli.log_format == LogFormat::Json;
    match try_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if json => {
            tracing::error!("lb-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("lb-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb-agent needs root (it loads eBPF programs and reads pinned maps): run it with sudo");
    }
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Get { what, bpf_dir, output, filter, agent } => {
            if what != GetWhat::Conntrack && !filter.is_empty() {
                bail!("--service, --client, --backend and --protocol filter `get conntrack` only");
            }
            let output = output_of(output);
            let maps = || DatapathMaps::open_pinned(&bpf_dir);
            let out = match what {
                GetWhat::Services => get::format_services(get::programmed_services(&maps()?)?, output)?,
                GetWhat::Endpoints => get::format_endpoints(get::programmed_endpoints(&maps()?)?, output)?,
                GetWhat::Counters => get::format_counters(&get::counters(&maps()?)?, output)?,
                GetWhat::Conntrack => {
                    get::format_conntrack(&get::conntrack(&maps()?, &filter.filter(), monotonic_ns())?, output)?
                }
                GetWhat::Ingresses => get::format_ingresses(status::fetch(agent)?.ingresses, output)?,
            };
            print!("{out}");
            Ok(())
        }
        Command::Explain(args) => explain(args),
        Command::Status { agent, output } => {
            print!("{}", status::format_status(&status::node_status(agent)?, output_of(output))?);
            Ok(())
        }
        Command::Env { namespace, bpf_dir } => {
            let maps = DatapathMaps::open_pinned(&bpf_dir)?;
            for (name, value) in env::service_env(&get::env_services(&maps)?, &namespace) {
                println!("{name}={value}");
            }
            Ok(())
        }
    }
}

fn output_of(output: Option<OutputArg>) -> get::Output {
    match output {
        None => get::Output::Table,
        Some(OutputArg::Wide) => get::Output::Wide,
        Some(OutputArg::Json) => get::Output::Json,
        Some(OutputArg::Yaml) => get::Output::Yaml,
    }
}

fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let ifindex = InterfacePatterns::new([args.on.as_str()])?
        .present()?
        .get(&args.on)
        .copied()
        .with_context(|| format!("interface {} does not exist in this network namespace", args.on))?;
    let (proto, tcp_flags) = match args.proto {
        ProtoArg::Tcp => (lb_common::IPPROTO_TCP, args.flags),
        ProtoArg::Udp => (lb_common::IPPROTO_UDP, 0),
    };
    let question = match (&args.pcap, args.from, args.to) {
        (Some(path), _, _) => explain::Question::captured(path, args.frame as usize, ifindex)?,
        (None, Some(from), Some(to)) => explain::Question::built(from, to, proto, tcp_flags, ifindex)?,
        _ => bail!("give --from and --to, or --pcap"),
    };
    let explanation = explain::explain_live(&question, &args.on, &args.bpf_dir, args.agent)?;
    print!("{}", explain::format_explanation(&explanation, output_of(args.output))?);
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.devices.is_empty() && args.pod_devices.is_empty() {
        bail!("nothing to attach to: give at least one --device or --pod-device");
    }
    let (source, controllers) = match (args.manifests, args.kubeconfig) {
        (Some(dir), _) if !dir.is_dir() => {
            bail!("manifest directory {} does not exist or is not a directory", dir.display())
        }
        (Some(dir), _) => (SourceConfig::Manifests(dir), Controllers::Emulated),
        (None, Some(file)) => (SourceConfig::Api(ApiConfig::File(file)), Controllers::Cluster),
        (None, None) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            (SourceConfig::Api(ApiConfig::InCluster), Controllers::Cluster)
        }
        (None, None) => bail!("no source of Services: give --manifests DIR or --kubeconfig FILE, or run in a pod"),
    };
    let patterns = args.devices.iter().chain(&args.pod_devices).map(String::as_str);
    // A device named outright must be there; a wildcard may match later.
    let named: Vec<&str> = args.devices.iter().map(String::as_str).filter(|d| !d.contains(['*', '?', '['])).collect();
    let present = InterfacePatterns::new(named.iter().copied())?.present()?;
    if let Some(absent) = named.iter().find(|name| !present.contains_key(**name)) {
        bail!("device {absent} does not exist in this network namespace");
    }
    if args.ct_sweep_interval.is_zero() {
        bail!("--ct-sweep-interval must be longer than 0s");
    }
    if args.ingress_backend_timeout.is_zero() {
        bail!("--ingress-backend-timeout must be longer than 0s");
    }
    if args.health_timeout.is_zero() {
        bail!("--health-timeout must be longer than 0s");
    }
    let service_cidrs = args
        .service_cidrs
        .iter()
        .map(|text| text.parse::<IpCidr>().map_err(|e| anyhow::anyhow!("--service-cidr {text}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let service_cidrs = ModelOptions::service_cidrs(service_cidrs).context("--service-cidr")?;
    let dns_address = match (args.dns_address, &source) {
        (Some(BindAddress(given)), _) => given,
        (None, SourceConfig::Manifests(_)) => Some(DEFAULT_DNS_ADDRESS.into()),
        (None, SourceConfig::Api(_)) => None,
    };
    let config = AgentConfig {
        source,
        load: LoadOptions {
            xdp_mode: match args.xdp_mode {
                XdpModeArg::Auto => XdpAttachMode::Auto,
                XdpModeArg::Native => XdpAttachMode::Native,
                XdpModeArg::Skb => XdpAttachMode::Skb,
            },
            debug_log: args.datapath_debug,
            fast_path: !args.redirect_devices.is_empty(),
            tc_redirect: matches!(args.pod_forwarding, PodForwarding::Redirect),
            service_cidr: datapath_cidr(&service_cidrs),
            service_cidr6: datapath_cidr(&service_cidrs),
            ct_max: args.ct_max,
            ct_timeouts: lb_common::CtTimeouts {
                tcp_syn_s: args.ct_timeout_tcp_syn,
                tcp_established_s: args.ct_timeout_tcp_established,
                tcp_closing_s: args.ct_timeout_tcp_closing,
                udp_s: args.ct_timeout_udp,
            },
            maglev_entries: args.maglev_entries,
            allow_private_bpffs: args.allow_private_bpffs,
            socket_lb: match args.socket_lb {
                SocketLbArg::Host => SocketLb::Host,
                SocketLbArg::All => SocketLb::All,
                SocketLbArg::Off => SocketLb::Off,
            },
        },
        cgroup_root: args.cgroup_root,
        nodeport_localhost: args.nodeport_localhost,
        ct_sweep_interval: args.ct_sweep_interval,
        detach_on_exit: args.detach_on_exit,
        cluster_ips_external: args.cluster_ip_external,
        node_name: args.node_name,
        interfaces: InterfacePatterns::new(patterns)?,
        node_devices: InterfacePatterns::new(args.devices.iter().map(String::as_str))?,
        redirect_devices: InterfacePatterns::new(args.redirect_devices.iter().map(String::as_str))?,
        bpf_dir: args.bpf_dir,
        model: ModelOptions { service_cidrs: service_cidrs.clone(), controllers },
        health_bind: args.health_bind_address.0,
        health_timeout: args.health_timeout,
        metrics_bind: args.metrics_bind_address.0,
        dns: dns_address.map(|address| DnsOptions {
            address,
            cluster_domain: args.cluster_domain,
            upstream: args.dns_upstream,
            ttl: args.dns_ttl,
            service_cidrs: service_cidrs.clone(),
        }),
        ingress: (args.ingress_bind.is_some() || args.ingress_tls_bind.is_some()).then_some(IngressOptions {
            http: args.ingress_bind,
            https: args.ingress_tls_bind,
            class: args.ingress_class,
            publish_service: args.ingress_publish_service,
            backend_timeout: args.ingress_backend_timeout,
        }),
    };
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run::run(config))
}
