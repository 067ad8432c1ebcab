//! The desired state: plain Rust Services with their endpoints, computed from
//! Kubernetes objects the way the API server (defaults, validation, ClusterIP
//! allocation) and the endpoints controllers would. [`build`] is a pure function.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use thiserror::Error;
use tracing::{debug, warn};

use crate::source::{Objects, Sourced};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ModelError {
    /// `object` is `Kind namespace/name`, `field` a path such as `spec.ports[0].port`.
    #[error("{file}: {object}: {field}: {reason}")]
    Invalid { file: PathBuf, object: String, field: String, reason: String },
    #[error("{file}: Service {service}: spec.clusterIP: {ip} is already used by Service {holder}")]
    ClusterIpTaken { file: PathBuf, service: ServiceName, ip: Ipv4Addr, holder: ServiceName },
    #[error("{file}: Service {service}: spec.clusterIP: {ip} is not in the service CIDR {cidr}")]
    OutsideServiceCidr { file: PathBuf, service: ServiceName, ip: Ipv4Addr, cidr: Ipv4Cidr },
    #[error("{file}: Service {service}: no free address left in the service CIDR {cidr}")]
    CidrExhausted { file: PathBuf, service: ServiceName, cidr: Ipv4Cidr },
    #[error("Service {service}: nodePort {node_port}/{protocol} is already used by Service {holder}")]
    NodePortTaken { service: ServiceName, node_port: u16, protocol: Protocol, holder: ServiceName },
    #[error("Service {service}: no free node port left in 30000-32767")]
    NodePortsExhausted { service: ServiceName },
    #[error("{value:?} is not an IPv4 CIDR: {reason}")]
    BadCidr { value: String, reason: String },
}

/// A Service's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceName { namespace: namespace.into(), name: name.into() }
    }

    /// The name of any object; the source has defaulted its namespace.
    fn of(meta: &ObjectMeta) -> Self {
        ServiceName::new(
            meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Kubernetes' spelling; absent means TCP.
    fn parse(text: Option<&str>) -> Result<Protocol, String> {
        match text {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Err("SCTP is not supported".to_owned()),
            Some(other) => Err(format!("unknown protocol {other:?}")),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterIp {
    Ip(Ipv4Addr),
    /// Headless (`clusterIP: None`), and every ExternalName service.
    None,
}

/// `spec.sessionAffinity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    /// A client's new connections go to the backend of its last one, as long
    /// as that was less than `timeout_seconds` ago.
    ClientIp {
        timeout_seconds: u32,
    },
}

/// `spec.externalTrafficPolicy` / `spec.internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on the node the traffic arrived at; none there means
    /// the traffic is dropped.
    Local,
}

/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 h).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// Kubernetes' upper bound for it (one day).
const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86_400;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceName,
    pub service_type: ServiceType,
    pub cluster_ip: ClusterIp,
    pub external_name: Option<String>,
    /// Addresses outside the cluster network the Service also answers on
    /// (its ports, from outside too): `spec.externalIPs` and, for
    /// LoadBalancer, `status.loadBalancer.ingress[].ip`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `loadBalancerSourceRanges`: the only clients its load-balancer and
    /// external IPs take (empty: everyone).
    pub source_ranges: Vec<Ipv4Cidr>,
    /// For traffic from outside (node ports, external IPs).
    pub external_traffic_policy: TrafficPolicy,
    /// For traffic from pods to the cluster IP.
    pub internal_traffic_policy: TrafficPolicy,
    /// LoadBalancer with `externalTrafficPolicy: Local`: where the agent
    /// tells the load balancer whether this node has local endpoints.
    pub health_check_node_port: Option<u16>,
    pub session_affinity: SessionAffinity,
    pub backend_selection: BackendSelection,
    pub ports: Vec<ServicePort>,
}

/// How a new flow's backend is chosen (annotation [`BACKEND_SELECTION_ANNOTATION`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendSelection {
    /// Maglev consistent hashing of the flow: the same on every node, and a
    /// backend change moves few flows.
    #[default]
    Maglev,
    /// A random backend per new flow.
    Random,
}

/// The annotation choosing a Service's [`BackendSelection`]: `maglev`
/// (default) or `random`.
pub const BACKEND_SELECTION_ANNOTATION: &str = "lb.dev/backend-selection";

impl Service {
    /// Headless and ExternalName services are answered by DNS, not by a
    /// virtual IP: they are listed but nothing is programmed for them.
    pub fn programs_datapath(&self) -> bool {
        self.service_type != ServiceType::ExternalName && matches!(self.cluster_ip, ClusterIp::Ip(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `""` when unnamed.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The port every node answers on (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
    /// Sorted by (addr, port), one per (addr, port).
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// The endpoints that take new connections: the ready ones or, when
    /// none is ready, the serving ones that are terminating (kube-proxy's
    /// fallback, so a rolling update never leaves the Service empty);
    /// sorted by (addr, port) and deduplicated, so every node picks from
    /// the same list.
    pub fn active_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.active_endpoints_on(None)
    }

    /// Like [`ServicePort::active_endpoints`], among the endpoints on
    /// `node` only when given (traffic policy Local; the terminating
    /// fallback applies per node, as kube-proxy does).
    pub fn active_endpoints_on(&self, node: Option<&str>) -> impl Iterator<Item = &Endpoint> {
        let candidates: Vec<&Endpoint> =
            self.endpoints.iter().filter(|e| node.is_none_or(|n| e.node_name.as_deref() == Some(n))).collect();
        let any_ready = candidates.iter().any(|e| e.ready);
        let mut active: Vec<&Endpoint> =
            candidates.into_iter().filter(|e| if any_ready { e.ready } else { e.serving && e.terminating }).collect();
        active.sort_by_key(|e| (e.addr, e.port));
        active.dedup_by_key(|e| (e.addr, e.port));
        active.into_iter()
    }
}

/// One backend of a service port, with EndpointSlice condition semantics:
/// `ready` takes new connections (never while terminating, unless the service
/// publishes not-ready addresses), `serving` passes its readiness probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    /// The pod's name, when the endpoint is a pod.
    pub target: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    /// Shared: a rebuild that changes one service copies only that one.
    pub services: BTreeMap<ServiceName, Arc<Service>>,
    /// What each service was realised from: the next build reuses a service
    /// none of whose objects changed instead of working it out again.
    memo: Memo,
}

impl DesiredState {
    pub fn new(services: impl IntoIterator<Item = Service>) -> Self {
        let services = services.into_iter().map(|s| (s.name.clone(), Arc::new(s))).collect();
        DesiredState { services, memo: Memo::default() }
    }
}

/// The desired state is its services; the memo only saves work.
impl PartialEq for DesiredState {
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
    }
}

impl Eq for DesiredState {}

#[derive(Clone, Debug, Default)]
struct Memo {
    services: HashMap<ServiceName, Arc<Realised>>,
    /// Each namespace's pods, which selectors pick from.
    pods: HashMap<String, Vec<Arc<core::Pod>>>,
    /// Every Service object (with its file) in directory order, and the
    /// options the state was built with.
    sources: Vec<(Arc<core::Service>, Arc<Path>)>,
    opts: Option<ModelOptions>,
    /// The errors not of one service's endpoints: those before them and
    /// those after them in the build's list.
    errors_before: Vec<ModelError>,
    errors_after: Vec<ModelError>,
}

impl Memo {
    /// Whether `objects` has the Services and pods the memo was made from.
    fn same_services_and_pods(&self, objects: &Objects, pods: &HashMap<String, Vec<Arc<core::Pod>>>) -> bool {
        self.sources.len() == objects.services.len()
            && self.sources.iter().zip(&objects.services).all(|((o, f), s)| Arc::ptr_eq(o, &s.object) && *f == s.file)
            && self.pods.len() == pods.len()
            && self.pods.keys().all(|ns| self.same_pods(ns, pods))
    }

    fn same_pods(&self, namespace: &str, pods: &HashMap<String, Vec<Arc<core::Pod>>>) -> bool {
        let (now, before) = (pods.get(namespace), self.pods.get(namespace));
        now.map_or(0, Vec::len) == before.map_or(0, Vec::len)
            && now.into_iter().flatten().zip(before.into_iter().flatten()).all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// The whole list of errors of a build, the services' in name order.
    fn errors(&self, services: &BTreeMap<ServiceName, Arc<Service>>) -> Vec<ModelError> {
        let of_services = services.keys().filter_map(|name| self.services.get(name)).flat_map(|r| &r.errors);
        self.errors_before.iter().chain(of_services).chain(&self.errors_after).cloned().collect()
    }
}

/// A service as [`realise`] made it (node ports as written, any cluster
/// IP), and what from. Holding the objects keeps their addresses from
/// being reused, so pointer equality means "the same object".
#[derive(Clone, Debug)]
struct Realised {
    /// Where the Service is in the directory's list.
    at: usize,
    service: Arc<core::Service>,
    file: Arc<Path>,
    endpoints: Option<Arc<core::Endpoints>>,
    slices: Vec<Arc<EndpointSlice>>,
    address: Address,
    realised: Arc<Service>,
    errors: Vec<ModelError>,
}

impl Realised {
    fn new(at: usize, spec: Spec<'_>, index: &Index<'_>) -> Self {
        let inputs = index.inputs(&spec.name);
        let endpoints = inputs.endpoints.map(|e| Arc::clone(&e.object));
        let slices = inputs.slices.iter().map(|s| Arc::clone(&s.object)).collect();
        let (service, file, address) = (Arc::clone(spec.service), Arc::clone(spec.file), spec.address);
        let mut errors = Vec::new();
        let realised = Arc::new(realise(spec, ClusterIp::None, index, &mut errors));
        Realised { at, service, file, endpoints, slices, address, realised, errors }
    }

    /// Whether it was made from exactly these objects.
    fn made_from(&self, service: &Sourced<core::Service>, inputs: &Inputs<'_>) -> bool {
        Arc::ptr_eq(&self.service, &service.object)
            && self.file == service.file
            && match (&self.endpoints, inputs.endpoints) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, &b.object),
                (None, None) => true,
                _ => false,
            }
            && self.slices.len() == inputs.slices.len()
            && self.slices.iter().zip(inputs.slices).all(|(a, b)| Arc::ptr_eq(a, &b.object))
    }
}

/// The objects a service's endpoints may come from.
struct Inputs<'a> {
    endpoints: Option<&'a Sourced<core::Endpoints>>,
    slices: &'a [&'a Sourced<EndpointSlice>],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelOptions {
    /// Where services without an explicit `spec.clusterIP` get theirs.
    pub service_cidr: Ipv4Cidr,
}

impl Default for ModelOptions {
    fn default() -> Self {
        // Kubernetes' (kubeadm's) default service CIDR.
        ModelOptions { service_cidr: Ipv4Cidr { network: Ipv4Addr::new(10, 96, 0, 0), prefix_len: 12 } }
    }
}

/// An IPv4 network such as `10.96.0.0/12` (host bits must be zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn network(self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    /// The first assignable address and how many there are: all but the
    /// network and broadcast addresses.
    fn hosts(self) -> (u32, u64) {
        let size = 1u64 << (32 - u32::from(self.prefix_len));
        (u32::from(self.network).wrapping_add(1), size.saturating_sub(2))
    }

    fn contains_host(self, ip: Ipv4Addr) -> bool {
        let (first, count) = self.hosts();
        u32::from(ip).checked_sub(first).is_some_and(|offset| u64::from(offset) < count)
    }

    /// The first free address from the name's hash on (linear probing), so
    /// every node computes the same address for the same services.
    fn free_host(self, name: &ServiceName, taken: &BTreeMap<Ipv4Addr, ServiceName>) -> Option<Ipv4Addr> {
        let (first, count) = self.hosts();
        if count == 0 {
            return None;
        }
        let start = fnv1a(name.to_string().as_bytes()) % count;
        (0..count)
            // The offset is below `count` <= 2^32 - 2, so it fits.
            .map(|i| Ipv4Addr::from(first.wrapping_add(((start + i) % count) as u32)))
            .find(|ip| !taken.contains_key(ip))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ModelError;

    fn from_str(value: &str) -> Result<Self, ModelError> {
        let bad = |reason: &str| ModelError::BadCidr { value: value.to_owned(), reason: reason.to_owned() };
        let (addr, prefix) = value.split_once('/').ok_or_else(|| bad("expected ADDRESS/PREFIX-LENGTH"))?;
        let network: Ipv4Addr = addr.parse().map_err(|_| bad("the address is not IPv4"))?;
        let prefix_len: u8 =
            prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| bad("the prefix length is not 0-32"))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
        if u32::from(network) & !mask != 0 {
            return Err(bad("host bits are set"));
        }
        Ok(Ipv4Cidr { network, prefix_len })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// 64-bit FNV-1a: tiny, stable across builds and platforms (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A Service with this label belongs to another proxy (kube-proxy's
/// `--service-proxy-name`); this agent has none, so it leaves them alone.
const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// A Service with this label is treated as headless, as kube-proxy does.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

fn service_label<'a>(service: &'a Sourced<core::Service>, label: &str) -> Option<&'a str> {
    service.object.metadata.labels.as_ref()?.get(label).map(String::as_str)
}

/// Computes the desired state. A Service that fails validation keeps its
/// model from `previous` as it was, endpoints included (if it had one), so
/// that a bad edit does not take a working service down. Everything else,
/// allocated cluster IPs and node ports included, comes from `objects` alone.
pub fn build(objects: &Objects, previous: DesiredState, opts: &ModelOptions) -> (DesiredState, Vec<ModelError>) {
    let pods = pods_by_namespace(objects);
    if previous.memo.opts.as_ref() == Some(opts) && previous.memo.same_services_and_pods(objects, &pods) {
        return rebuild_endpoints(objects, previous);
    }
    let previous = &previous;
    let mut errors = Vec::new();
    let mut entries = BTreeMap::new();
    let index = Index::new(objects, &mut errors);
    let mut memo = Memo {
        pods,
        sources: objects.services.iter().map(|s| (Arc::clone(&s.object), Arc::clone(&s.file))).collect(),
        opts: Some(opts.clone()),
        ..Memo::default()
    };
    for (at, service) in objects.services.iter().enumerate() {
        if let Some(proxy) = service_label(service, SERVICE_PROXY_NAME_LABEL) {
            debug!(service = %ServiceName::of(&service.object.metadata), proxy, "left to another proxy");
            continue;
        }
        let name = ServiceName::of(&service.object.metadata);
        let inputs = index.inputs(&name);
        let reusable = previous.memo.services.get(&name).filter(|r| {
            let selects = service.object.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty());
            r.made_from(service, &inputs) && (!selects || previous.memo.same_pods(&name.namespace, &memo.pods))
        });
        if let Some(realised) = reusable {
            let realised = Arc::new(Realised { at, ..Realised::clone(realised) });
            entries.insert(name, Entry::Reused(&service.file, realised));
            continue;
        }
        match validate(service) {
            Ok((spec, skipped_ports)) => {
                errors.extend(skipped_ports);
                entries.insert(spec.name.clone(), Entry::New(at, spec));
            }
            Err(err) => {
                errors.push(err);
                if let Some(kept) = previous.services.get(&name) {
                    entries.insert(name, Entry::Kept(&service.file, kept.clone()));
                }
            }
        }
    }
    let seniority = Seniority::of(objects);
    let mut addresses = assign_addresses(&mut entries, previous, &seniority, opts.service_cidr, &mut errors);
    let services = entries
        .into_iter()
        .map(|(name, entry)| {
            let cluster_ip = addresses.remove(&name).unwrap_or(ClusterIp::None);
            let realised = match entry {
                Entry::Kept(_, service) => return (name, service),
                Entry::Reused(_, realised) => realised,
                Entry::New(at, spec) => Arc::new(Realised::new(at, spec, &index)),
            };
            let service = Arc::new(Service { cluster_ip, ..Service::clone(&realised.realised) });
            memo.services.insert(name.clone(), realised);
            (name, service)
        })
        .collect();
    let mut state = DesiredState { services, memo: Memo::default() };
    let mut errors_after = Vec::new();
    assign_node_ports(&mut state, &seniority, &mut errors_after);
    assign_health_check_ports(&mut state, &seniority);
    state.memo = Memo { errors_before: errors, errors_after, ..memo };
    let errors = state.memo.errors(&state.services);
    (state, errors)
}

/// Only Endpoints and EndpointSlices changed since `previous` was built (the
/// same Service objects, pods and options): cluster IPs and node ports stay,
/// and only the services whose endpoint objects changed are realised again.
fn rebuild_endpoints(objects: &Objects, previous: DesiredState) -> (DesiredState, Vec<ModelError>) {
    let mut state = previous;
    // Its errors are the pods', which did not change: they are in the memo.
    let index = Index::new(objects, &mut Vec::new());
    for (name, realised) in &mut state.memo.services {
        let service = &objects.services[realised.at];
        if realised.made_from(service, &index.inputs(name)) {
            continue;
        }
        // It validated when it was realised, and it is the same object.
        let Ok((spec, _)) = validate(service) else { continue };
        let fresh = Realised::new(realised.at, spec, &index);
        if let Some(service) = state.services.get_mut(name) {
            for (port, fresh) in Arc::make_mut(service).ports.iter_mut().zip(&fresh.realised.ports) {
                port.endpoints = fresh.endpoints.clone();
            }
        }
        *realised = Arc::new(fresh);
    }
    let errors = state.memo.errors(&state.services);
    (state, errors)
}

/// The order in which claims two Services make on one thing (a cluster IP,
/// a node port) are settled: the older first by `metadata.creationTimestamp`
/// (one without counts as the newest), then by name. As the API server
/// would, it never lets a newcomer take what an older Service holds, and it
/// comes from the objects alone, so every node settles claims alike
/// whatever it saw before.
struct Seniority(HashMap<ServiceName, usize>);

impl Seniority {
    fn of(objects: &Objects) -> Self {
        let mut services: Vec<_> = objects
            .services
            .iter()
            .map(|s| {
                let created = s.object.metadata.creation_timestamp.as_ref();
                (created.is_none(), created, ServiceName::of(&s.object.metadata))
            })
            .collect();
        services.sort();
        let mut rank = HashMap::new();
        for (at, (_, _, name)) in services.into_iter().enumerate() {
            rank.entry(name).or_insert(at);
        }
        Seniority(rank)
    }

    fn rank(&self, name: &ServiceName) -> usize {
        self.0.get(name).copied().unwrap_or(usize::MAX)
    }

    /// `names`, the eldest first.
    fn eldest_first<'a>(&self, names: impl Iterator<Item = &'a ServiceName>) -> Vec<ServiceName> {
        let mut names: Vec<ServiceName> = names.cloned().collect();
        names.sort_by_key(|name| (self.rank(name), name.clone()));
        names
    }
}

/// Gives every LoadBalancer with `externalTrafficPolicy: Local` without a
/// written `healthCheckNodePort` one from a hash of its name (eldest
/// Service first), never a TCP node port in use.
fn assign_health_check_ports(state: &mut DesiredState, seniority: &Seniority) {
    let needs =
        |s: &Service| s.service_type == ServiceType::LoadBalancer && s.external_traffic_policy == TrafficPolicy::Local;
    let mut taken: BTreeSet<u16> = state
        .services
        .values()
        .flat_map(|s| s.ports.iter().filter(|p| p.protocol == Protocol::Tcp).filter_map(|p| p.node_port))
        .chain(state.services.values().filter_map(|s| s.health_check_node_port))
        .collect();
    let count = u64::from(NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start()) + 1;
    let wanting = state.services.iter().filter(|(_, s)| needs(s) && s.health_check_node_port.is_none());
    for name in seniority.eldest_first(wanting.map(|(name, _)| name)) {
        let start = fnv1a(format!("{name}/health").as_bytes()) % count;
        let port =
            (0..count).map(|k| NODE_PORT_RANGE.start() + ((start + k) % count) as u16).find(|p| !taken.contains(p));
        Arc::make_mut(state.services.get_mut(&name).expect("listed")).health_check_node_port = port;
        taken.extend(port);
    }
}

/// Gives every NodePort/LoadBalancer port its node port, the same on every
/// node: written ones first (a younger Service writing a taken one loses it,
/// with an error naming both), then new ones from a hash of
/// namespace/name/port, probing linearly, eldest Service first.
fn assign_node_ports(state: &mut DesiredState, seniority: &Seniority, errors: &mut Vec<ModelError>) {
    type PortKey = (ServiceName, usize);
    let exposed = |s: &Service| matches!(s.service_type, ServiceType::NodePort | ServiceType::LoadBalancer);
    let mut taken: BTreeMap<(u16, Protocol), PortKey> = BTreeMap::new();
    let mut wanted: Vec<PortKey> = Vec::new();
    let names = seniority.eldest_first(state.services.iter().filter(|(_, s)| exposed(s)).map(|(name, _)| name));
    for name in names {
        let service = state.services.get_mut(&name).expect("listed");
        for (i, port) in Arc::make_mut(service).ports.iter_mut().enumerate() {
            match port.node_port {
                Some(node_port) => match taken.get(&(node_port, port.protocol)) {
                    Some((holder, _)) => {
                        errors.push(ModelError::NodePortTaken {
                            service: name.clone(),
                            node_port,
                            protocol: port.protocol,
                            holder: holder.clone(),
                        });
                        port.node_port = None;
                    }
                    None => drop(taken.insert((node_port, port.protocol), (name.clone(), i))),
                },
                None => wanted.push((name.clone(), i)),
            }
        }
    }
    let count = u64::from(NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start()) + 1;
    for (name, i) in wanted {
        let port = &state.services[&name].ports[i];
        let protocol = port.protocol;
        let start = fnv1a(format!("{name}/{}/{protocol}", port.port).as_bytes()) % count;
        let free = (0..count)
            .map(|k| NODE_PORT_RANGE.start() + ((start + k) % count) as u16)
            .find(|p| !taken.contains_key(&(*p, protocol)));
        match free {
            Some(node_port) => {
                taken.insert((node_port, protocol), (name.clone(), i));
                Arc::make_mut(state.services.get_mut(&name).expect("listed")).ports[i].node_port = Some(node_port);
            }
            None => errors.push(ModelError::NodePortsExhausted { service: name }),
        }
    }
}

enum Entry<'a> {
    /// A validated Service, and where it is in the directory's list.
    New(usize, Spec<'a>),
    /// A service realised earlier from the same objects; only its cluster
    /// IP is settled again.
    Reused(&'a Path, Arc<Realised>),
    /// The previous model of a service that no longer validates.
    Kept(&'a Path, Arc<Service>),
}

/// A Service that passed validation, before its address is settled.
struct Spec<'a> {
    file: &'a Arc<Path>,
    service: &'a Arc<core::Service>,
    name: ServiceName,
    service_type: ServiceType,
    address: Address,
    external_name: Option<String>,
    external_ips: Vec<Ipv4Addr>,
    source_ranges: Vec<Ipv4Cidr>,
    external_traffic_policy: TrafficPolicy,
    internal_traffic_policy: TrafficPolicy,
    health_check_node_port: Option<u16>,
    session_affinity: SessionAffinity,
    backend_selection: BackendSelection,
    ports: Vec<PortSpec>,
    /// Present and non-empty: endpoints come from pods.
    selector: Option<&'a BTreeMap<String, String>>,
    publish_not_ready: bool,
}

#[derive(Clone, Copy, Debug)]
enum Address {
    Explicit(Ipv4Addr),
    Allocate,
    None,
}

struct PortSpec {
    name: String,
    port: u16,
    protocol: Protocol,
    target: Target,
    /// `spec.ports[].nodePort` as written; allocated later when absent.
    node_port: Option<u16>,
}

enum Target {
    Port(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

fn invalid(file: &Path, object: String, field: impl Into<String>, reason: impl Into<String>) -> ModelError {
    ModelError::Invalid { file: file.to_owned(), object, field: field.into(), reason: reason.into() }
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// An address of a backend: `Ok(None)` for IPv6, which is skipped.
fn ipv4(text: &str) -> Result<Option<Ipv4Addr>, String> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(Some(ip)),
        Ok(IpAddr::V6(_)) => Ok(None),
        Err(_) => Err(format!("{text:?} is not an IP address")),
    }
}

/// The Service's spec, and an error for each port it has but the datapath
/// cannot serve (SCTP), which leaves the others served.
fn validate(service: &Sourced<core::Service>) -> Result<(Spec<'_>, Vec<ModelError>), ModelError> {
    let name = ServiceName::of(&service.object.metadata);
    let bad = |field: &str, reason: String| invalid(&service.file, format!("Service {name}"), field, reason);
    let no_spec = core::ServiceSpec::default();
    let spec = service.object.spec.as_ref().unwrap_or(&no_spec);

    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => return Err(bad("spec.type", format!("unknown type {other:?}"))),
    };
    let external_name = match (service_type, spec.external_name.as_deref()) {
        (ServiceType::ExternalName, Some(name)) if !name.is_empty() => Some(name.to_owned()),
        (ServiceType::ExternalName, _) => {
            return Err(bad("spec.externalName", "required for type ExternalName".into()));
        }
        _ => None,
    };
    let headless_label = service_label(service, HEADLESS_LABEL).is_some();
    let address = match (service_type, spec.cluster_ip.as_deref()) {
        (ServiceType::ExternalName, _) => Address::None,
        (ServiceType::ClusterIp, _) if headless_label => Address::None,
        (_, None | Some("")) => Address::Allocate,
        (ServiceType::ClusterIp, Some("None")) => Address::None,
        (_, Some("None")) => {
            return Err(bad("spec.clusterIP", "None (headless) is only allowed for type ClusterIP".into()));
        }
        (_, Some(text)) => match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Address::Explicit(ip),
            Ok(IpAddr::V6(_)) => {
                return Err(bad("spec.clusterIP", "ipv6 is not supported yet".into()));
            }
            Err(_) => {
                return Err(bad("spec.clusterIP", format!("{text:?} is not an IP address")));
            }
        },
    };

    let raw_ports = spec.ports.as_deref().unwrap_or_default();
    if raw_ports.is_empty() && matches!(address, Address::Explicit(_) | Address::Allocate) {
        return Err(bad("spec.ports", "a service with a cluster IP needs at least one port".into()));
    }
    let mut names = BTreeSet::new();
    let mut frontends = BTreeSet::new();
    let mut ports = Vec::with_capacity(raw_ports.len());
    let mut skipped_ports = Vec::new();
    for (i, raw) in raw_ports.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let port =
            port_number(raw.port).ok_or_else(|| bad(&field("port"), format!("{} is not in 1-65535", raw.port)))?;
        if raw.protocol.as_deref() == Some("SCTP") {
            let reason = "SCTP is not supported: this port is not served, the Service's others are";
            skipped_ports.push(bad(&field("protocol"), reason.into()));
            continue;
        }
        let protocol = Protocol::parse(raw.protocol.as_deref()).map_err(|reason| bad(&field("protocol"), reason))?;
        let target = match &raw.target_port {
            None => Target::Port(port),
            Some(IntOrString::Int(n)) => Target::Port(
                port_number(*n).ok_or_else(|| bad(&field("targetPort"), format!("{n} is not in 1-65535")))?,
            ),
            Some(IntOrString::String(name)) if name.chars().any(|c| c.is_ascii_alphabetic()) => {
                Target::Name(name.clone())
            }
            // Kubernetes port names contain a letter; "8080" is a quoted number.
            Some(IntOrString::String(name)) => {
                return Err(bad(&field("targetPort"), format!("{name:?} is neither a port number nor a port name")));
            }
        };
        let name = raw.name.clone().unwrap_or_default();
        if name.is_empty() && raw_ports.len() > 1 {
            return Err(bad(&field("name"), "required when a service has more than one port".into()));
        }
        if !names.insert(name.clone()) {
            return Err(bad(&field("name"), format!("{name:?} names two ports")));
        }
        if !frontends.insert((port, protocol)) {
            return Err(bad(&field("port"), format!("{port}/{protocol} is listed twice")));
        }
        let exposed = matches!(service_type, ServiceType::NodePort | ServiceType::LoadBalancer);
        let node_port = match raw.node_port {
            None | Some(0) => None,
            Some(n) if !exposed => {
                return Err(bad(
                    &field("nodePort"),
                    format!("{n} given, but only NodePort and LoadBalancer have node ports"),
                ));
            }
            Some(n) => Some(
                u16::try_from(n)
                    .ok()
                    .filter(|p| NODE_PORT_RANGE.contains(p))
                    .ok_or_else(|| bad(&field("nodePort"), format!("{n} is not in 30000-32767")))?,
            ),
        };
        ports.push(PortSpec { name, port, protocol, target, node_port });
    }

    let load_balancer_ips = service
        .object
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|_| service_type == ServiceType::LoadBalancer)
        .filter_map(|ingress| ingress.ip.as_deref())
        .map(|ip| ("status.loadBalancer.ingress[].ip", ip));
    let external_ips =
        spec.external_ips.as_deref().unwrap_or_default().iter().map(|ip| ("spec.externalIPs", ip.as_str()));
    let mut all_external_ips = Vec::new();
    for (field, text) in external_ips.chain(load_balancer_ips) {
        match ipv4(text) {
            Ok(Some(ip)) if !all_external_ips.contains(&ip) => all_external_ips.push(ip),
            Ok(_) => {}
            Err(reason) => return Err(bad(field, reason)),
        }
    }

    let source_ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|_| service_type == ServiceType::LoadBalancer)
        .map(|text| text.trim().parse::<Ipv4Cidr>().map_err(|e| bad("spec.loadBalancerSourceRanges", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = |field: &str, value: Option<&str>| match value {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(bad(field, format!("unknown value {other:?} (Cluster or Local)"))),
    };
    let external_traffic_policy = policy("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref())?;
    let internal_traffic_policy = policy("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref())?;
    let health_checked = service_type == ServiceType::LoadBalancer && external_traffic_policy == TrafficPolicy::Local;
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(_) if !health_checked => {
            let reason = "only a LoadBalancer with externalTrafficPolicy Local has one".to_owned();
            return Err(bad("spec.healthCheckNodePort", reason));
        }
        Some(n) => Some(
            u16::try_from(n)
                .ok()
                .filter(|p| NODE_PORT_RANGE.contains(p))
                .ok_or_else(|| bad("spec.healthCheckNodePort", format!("{n} is not in 30000-32767")))?,
        ),
    };

    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => SessionAffinity::None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS as i32);
            if !(1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&timeout) {
                return Err(bad(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{timeout} is not in 1-{MAX_AFFINITY_TIMEOUT_SECONDS}"),
                ));
            }
            SessionAffinity::ClientIp { timeout_seconds: timeout as u32 }
        }
        Some(other) => {
            return Err(bad("spec.sessionAffinity", format!("unknown value {other:?} (None or ClientIP)")));
        }
    };

    let annotations = service.object.metadata.annotations.as_ref();
    let backend_selection = match annotations.and_then(|a| a.get(BACKEND_SELECTION_ANNOTATION)).map(String::as_str) {
        None | Some("maglev") => BackendSelection::Maglev,
        Some("random") => BackendSelection::Random,
        Some(other) => {
            let field = format!("metadata.annotations.{BACKEND_SELECTION_ANNOTATION}");
            return Err(bad(&field, format!("unknown value {other:?} (maglev or random)")));
        }
    };

    let spec = Spec {
        file: &service.file,
        service: &service.object,
        name,
        service_type,
        address,
        external_name,
        external_ips: all_external_ips,
        source_ranges,
        external_traffic_policy,
        internal_traffic_policy,
        health_check_node_port,
        session_affinity,
        backend_selection,
        ports,
        selector: service.object.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()),
        publish_not_ready: spec.publish_not_ready_addresses == Some(true),
    };
    Ok((spec, skipped_ports))
}

/// Settles every cluster IP. Explicit addresses first: the eldest Service
/// naming an address holds it; younger ones, and addresses outside the
/// service CIDR, are refused (one that had a model keeps it while its old
/// address is free, like an update the API server refuses). Then allocated ones, eldest first, each from a hash of
/// its name into the CIDR. Services left without an address are removed
/// from `entries`.
fn assign_addresses(
    entries: &mut BTreeMap<ServiceName, Entry<'_>>,
    previous: &DesiredState,
    seniority: &Seniority,
    cidr: Ipv4Cidr,
    errors: &mut Vec<ModelError>,
) -> BTreeMap<ServiceName, ClusterIp> {
    let previous_ip = |name: &ServiceName| match previous.services.get(name).map(|s| s.cluster_ip) {
        Some(ClusterIp::Ip(ip)) => Some(ip),
        _ => None,
    };
    let mut taken: BTreeMap<Ipv4Addr, ServiceName> = BTreeMap::new();
    let mut assigned = BTreeMap::new();

    // (address, seniority, name): sorting puts each address's holder first.
    let mut claims: Vec<(Ipv4Addr, usize, ServiceName)> = Vec::new();
    let mut refused = Vec::new();
    for (name, entry) in entries.iter() {
        let file = entry.file().to_owned();
        match (entry, entry.address()) {
            (Entry::Kept(_, kept), _) if let ClusterIp::Ip(ip) = kept.cluster_ip => {
                claims.push((ip, seniority.rank(name), name.clone()))
            }
            (_, Some(Address::Explicit(ip))) if !cidr.contains_host(ip) => {
                refused.push((name.clone(), ModelError::OutsideServiceCidr { file, service: name.clone(), ip, cidr }))
            }
            (_, Some(Address::Explicit(ip))) => claims.push((ip, seniority.rank(name), name.clone())),
            _ => {}
        }
    }
    claims.sort();
    for (ip, _, name) in claims {
        match taken.get(&ip) {
            Some(holder) => {
                let file = entries[&name].file().to_owned();
                let error = ModelError::ClusterIpTaken { file, service: name.clone(), ip, holder: holder.clone() };
                refused.push((name, error));
            }
            None => {
                taken.insert(ip, name.clone());
                assigned.insert(name, ClusterIp::Ip(ip));
            }
        }
    }
    for (name, error) in refused {
        let file = entries[&name].file();
        errors.push(error);
        match (previous_ip(&name).filter(|p| !taken.contains_key(p)), previous.services.get(&name)) {
            (Some(kept_ip), Some(kept)) => {
                taken.insert(kept_ip, name.clone());
                entries.insert(name, Entry::Kept(file, kept.clone()));
            }
            _ => {
                entries.remove(&name);
            }
        }
    }

    let mut allocate = Vec::new();
    for (name, entry) in entries.iter() {
        match entry.address() {
            Some(Address::Allocate) => allocate.push(name),
            Some(Address::None) => drop(assigned.insert(name.clone(), ClusterIp::None)),
            _ => {}
        }
    }
    for name in seniority.eldest_first(allocate.into_iter()) {
        match cidr.free_host(&name, &taken) {
            Some(ip) => {
                if let Some(before) = previous_ip(&name).filter(|before| *before != ip) {
                    // Only on a hash collision with a Service that has no
                    // creationTimestamp and sorts first by name.
                    warn!(service = %name, %before, now = %ip, holder = %taken.get(&before).map_or(String::new(), ToString::to_string),
                        "cluster IP moved to another address; write spec.clusterIP or metadata.creationTimestamp to pin it");
                }
                taken.insert(ip, name.clone());
                assigned.insert(name, ClusterIp::Ip(ip));
            }
            None => {
                if let Some(entry) = entries.remove(&name) {
                    errors.push(ModelError::CidrExhausted { file: entry.file().to_owned(), service: name, cidr });
                }
            }
        }
    }
    assigned
}

/// The objects endpoints are made from, indexed by what services look them up by.
struct Index<'a> {
    /// Pods that can be endpoints, by namespace.
    pods: BTreeMap<&'a str, Vec<PodInfo<'a>>>,
    endpoints: BTreeMap<(&'a str, &'a str), &'a Sourced<core::Endpoints>>,
    /// By namespace and the `kubernetes.io/service-name` label.
    slices: BTreeMap<(&'a str, &'a str), Vec<&'a Sourced<EndpointSlice>>>,
}

struct PodInfo<'a> {
    name: &'a str,
    labels: Option<&'a BTreeMap<String, String>>,
    addr: Ipv4Addr,
    /// The pod's `Ready` condition.
    ready: bool,
    terminating: bool,
    node_name: Option<&'a str>,
    containers: &'a [core::Container],
}

fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

impl<'a> Index<'a> {
    fn new(objects: &'a Objects, errors: &mut Vec<ModelError>) -> Self {
        let mut pods: BTreeMap<&str, Vec<PodInfo>> = BTreeMap::new();
        for pod in &objects.pods {
            match PodInfo::new(pod) {
                Ok(Some(info)) => pods.entry(namespace(&pod.object.metadata)).or_default().push(info),
                Ok(None) => {}
                Err(err) => errors.push(err),
            }
        }
        let endpoints = objects
            .endpoints
            .iter()
            .map(|e| ((namespace(&e.object.metadata), e.object.metadata.name.as_deref().unwrap_or_default()), e))
            .collect();
        let mut slices: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for slice in &objects.endpoint_slices {
            let meta = &slice.object.metadata;
            if let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                slices.entry((namespace(meta), service.as_str())).or_default().push(slice);
            }
        }
        Index { pods, endpoints, slices }
    }

    /// The Endpoints object and EndpointSlices named after `service`.
    fn inputs<'s>(&'s self, service: &'s ServiceName) -> Inputs<'s> {
        let key = (service.namespace.as_str(), service.name.as_str());
        Inputs {
            endpoints: self.endpoints.get(&key).copied(),
            slices: self.slices.get(&key).map_or(&[], Vec::as_slice),
        }
    }

    /// The Endpoints subsets and EndpointSlices of a service without selector.
    fn manual_groups(&self, service: &ServiceName, errors: &mut Vec<ModelError>) -> Vec<Group> {
        let inputs = self.inputs(service);
        let mut groups = inputs.endpoints.map(|e| Group::from_endpoints(e, errors)).unwrap_or_default();
        for slice in inputs.slices {
            groups.extend(Group::from_slice(slice, errors));
        }
        groups
    }
}

impl<'a> PodInfo<'a> {
    /// `None` for a pod that cannot be an endpoint (finished, no IPv4 address yet).
    fn new(pod: &'a Sourced<core::Pod>) -> Result<Option<Self>, ModelError> {
        let meta = &pod.object.metadata;
        let name = meta.name.as_deref().unwrap_or_default();
        let status = pod.object.status.as_ref();
        if let Some(phase @ ("Succeeded" | "Failed")) = status.and_then(|s| s.phase.as_deref()) {
            debug!(pod = name, phase, "pod has finished: not an endpoint");
            return Ok(None);
        }
        let ips = status
            .and_then(|s| s.pod_ip.as_deref())
            .into_iter()
            .chain(status.and_then(|s| s.pod_ips.as_deref()).unwrap_or_default().iter().map(|ip| ip.ip.as_str()));
        let mut addr = None;
        for ip in ips {
            let parsed = ipv4(ip).map_err(|reason| {
                invalid(&pod.file, format!("Pod {}", ServiceName::of(meta)), "status.podIP", reason)
            })?;
            if parsed.is_some() {
                addr = parsed;
                break;
            }
        }
        let Some(addr) = addr else {
            debug!(pod = name, "pod has no IPv4 address: not an endpoint");
            return Ok(None);
        };
        let ready = status
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let spec = pod.object.spec.as_ref();
        Ok(Some(PodInfo {
            name,
            labels: meta.labels.as_ref(),
            addr,
            ready,
            terminating: meta.deletion_timestamp.is_some(),
            node_name: spec.and_then(|s| s.node_name.as_deref()),
            containers: spec.map(|s| s.containers.as_slice()).unwrap_or_default(),
        }))
    }

    fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.and_then(|l| l.get(k)) == Some(v))
    }

    /// The number a container port name stands for in this pod.
    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.containers
            .iter()
            .flat_map(|c| c.ports.as_deref().unwrap_or_default())
            .find(|p| p.name.as_deref() == Some(name) && Protocol::parse(p.protocol.as_deref()) == Ok(protocol))
            .and_then(|p| port_number(p.container_port))
    }
}

/// Addresses sharing one list of ports: an Endpoints subset or an EndpointSlice.
#[derive(Default)]
struct Group {
    backends: Vec<Backend>,
    ports: Vec<(String, u16, Protocol)>,
}

struct Backend {
    addr: Ipv4Addr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: Option<String>,
    target: Option<String>,
}

impl Group {
    fn from_endpoints(endpoints: &Sourced<core::Endpoints>, errors: &mut Vec<ModelError>) -> Vec<Group> {
        let object = format!("Endpoints {}", ServiceName::of(&endpoints.object.metadata));
        let mut groups = Vec::new();
        for (s, subset) in endpoints.object.subsets.iter().flatten().enumerate() {
            let mut group = Group::default();
            let lists =
                [("addresses", &subset.addresses, true), ("notReadyAddresses", &subset.not_ready_addresses, false)];
            for (list, addresses, ready) in lists {
                for (a, address) in addresses.iter().flatten().enumerate() {
                    match ipv4(&address.ip) {
                        Ok(Some(addr)) => group.backends.push(Backend {
                            addr,
                            ready,
                            serving: ready,
                            terminating: false,
                            node_name: address.node_name.clone(),
                            target: address.target_ref.as_ref().and_then(|t| t.name.clone()),
                        }),
                        Ok(None) => debug!(%object, ip = address.ip, "skipping an IPv6 address"),
                        Err(reason) => errors.push(invalid(
                            &endpoints.file,
                            object.clone(),
                            format!("subsets[{s}].{list}[{a}].ip"),
                            reason,
                        )),
                    }
                }
            }
            for (p, port) in subset.ports.iter().flatten().enumerate() {
                let field = |f: &str| format!("subsets[{s}].ports[{p}].{f}");
                let Some(number) = port_number(port.port) else {
                    errors.push(invalid(
                        &endpoints.file,
                        object.clone(),
                        field("port"),
                        format!("{} is not in 1-65535", port.port),
                    ));
                    continue;
                };
                match Protocol::parse(port.protocol.as_deref()) {
                    Ok(protocol) => group.ports.push((port.name.clone().unwrap_or_default(), number, protocol)),
                    Err(reason) => errors.push(invalid(&endpoints.file, object.clone(), field("protocol"), reason)),
                }
            }
            groups.push(group);
        }
        groups
    }

    fn from_slice(slice: &Sourced<EndpointSlice>, errors: &mut Vec<ModelError>) -> Option<Group> {
        let object = format!("EndpointSlice {}", ServiceName::of(&slice.object.metadata));
        if slice.object.address_type != "IPv4" {
            debug!(%object, address_type = slice.object.address_type, "skipping a slice that is not IPv4");
            return None;
        }
        let mut group = Group::default();
        for (e, endpoint) in slice.object.endpoints.iter().flatten().enumerate() {
            // Consumers use only the first address (the others are reserved).
            let addr = match endpoint.addresses.first().map(|a| ipv4(a).map(|ip| (a, ip))) {
                Some(Ok((_, Some(addr)))) => addr,
                Some(Ok((text, None))) => {
                    errors.push(invalid(
                        &slice.file,
                        object.clone(),
                        format!("endpoints[{e}].addresses[0]"),
                        format!("{text:?} is not IPv4 in an IPv4 slice"),
                    ));
                    continue;
                }
                Some(Err(reason)) => {
                    errors.push(invalid(&slice.file, object.clone(), format!("endpoints[{e}].addresses[0]"), reason));
                    continue;
                }
                None => {
                    errors.push(invalid(
                        &slice.file,
                        object.clone(),
                        format!("endpoints[{e}].addresses"),
                        "needs an address",
                    ));
                    continue;
                }
            };
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            group.backends.push(Backend {
                addr,
                ready,
                serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                node_name: endpoint.node_name.clone(),
                target: endpoint.target_ref.as_ref().and_then(|t| t.name.clone()),
            });
        }
        for (p, port) in slice.object.ports.iter().flatten().enumerate() {
            let field = |f: &str| format!("ports[{p}].{f}");
            // An absent port means "all ports", which a frontend cannot use.
            let Some(raw) = port.port else { continue };
            let Some(number) = port_number(raw) else {
                errors.push(invalid(&slice.file, object.clone(), field("port"), format!("{raw} is not in 1-65535")));
                continue;
            };
            match Protocol::parse(port.protocol.as_deref()) {
                Ok(protocol) => group.ports.push((port.name.clone().unwrap_or_default(), number, protocol)),
                Err(reason) => errors.push(invalid(&slice.file, object.clone(), field("protocol"), reason)),
            }
        }
        Some(group)
    }
}

/// Adds an endpoint once per (addr, port); a ready copy beats a not-ready one.
fn add_endpoint(endpoints: &mut BTreeMap<(Ipv4Addr, u16), Endpoint>, endpoint: Endpoint) {
    match endpoints.entry((endpoint.addr, endpoint.port)) {
        MapEntry::Vacant(slot) => {
            slot.insert(endpoint);
        }
        MapEntry::Occupied(mut slot) => {
            if endpoint.ready && !slot.get().ready {
                slot.insert(endpoint);
            }
        }
    }
}

impl<'a> Entry<'a> {
    fn file(&self) -> &'a Path {
        match self {
            Entry::New(_, spec) => spec.file,
            Entry::Reused(file, _) | Entry::Kept(file, _) => file,
        }
    }

    /// The cluster IP its spec asks for; `None` for a kept model.
    fn address(&self) -> Option<Address> {
        match self {
            Entry::New(_, spec) => Some(spec.address),
            Entry::Reused(_, realised) => Some(realised.address),
            Entry::Kept(..) => None,
        }
    }
}

/// Each namespace's pods, in directory order.
fn pods_by_namespace(objects: &Objects) -> HashMap<String, Vec<Arc<core::Pod>>> {
    let mut pods: HashMap<String, Vec<Arc<core::Pod>>> = HashMap::new();
    for pod in &objects.pods {
        pods.entry(namespace(&pod.object.metadata).to_owned()).or_default().push(Arc::clone(&pod.object));
    }
    pods
}

/// A validated spec with its address, plus its endpoints.
fn realise(spec: Spec<'_>, cluster_ip: ClusterIp, index: &Index<'_>, errors: &mut Vec<ModelError>) -> Service {
    let external = spec.service_type == ServiceType::ExternalName;
    let groups = match spec.selector {
        None if !external => index.manual_groups(&spec.name, errors),
        _ => Vec::new(),
    };
    if spec.selector.is_some()
        && let Some(endpoints) = index.inputs(&spec.name).endpoints
    {
        errors.push(invalid(
            &endpoints.file,
            format!("Endpoints {}", spec.name),
            "subsets",
            format!("ignored: Service {} has a selector, its endpoints come from pods", spec.name),
        ));
    }
    let pods: Vec<&PodInfo> = match spec.selector {
        Some(selector) if !external => index
            .pods
            .get(spec.name.namespace.as_str())
            .into_iter()
            .flatten()
            .filter(|pod| pod.matches(selector))
            .collect(),
        _ => Vec::new(),
    };
    let single_port = spec.ports.len() == 1;
    let ports = spec
        .ports
        .into_iter()
        .map(|port| {
            let mut endpoints = BTreeMap::new();
            for pod in &pods {
                let number = match &port.target {
                    Target::Port(n) => *n,
                    Target::Name(name) => match pod.named_port(name, port.protocol) {
                        Some(n) => n,
                        None => {
                            debug!(service = %spec.name, pod = pod.name, port = name, "pod has no such named port");
                            continue;
                        }
                    },
                };
                add_endpoint(
                    &mut endpoints,
                    Endpoint {
                        addr: pod.addr,
                        port: number,
                        ready: spec.publish_not_ready || (pod.ready && !pod.terminating),
                        serving: pod.ready,
                        terminating: pod.terminating,
                        node_name: pod.node_name.map(str::to_owned),
                        target: Some(pod.name.to_owned()),
                    },
                );
            }
            for group in &groups {
                let matching = group.ports.iter().filter(|(name, _, protocol)| {
                    *protocol == port.protocol && (*name == port.name || (single_port && name.is_empty()))
                });
                for (_, number, _) in matching {
                    for b in &group.backends {
                        add_endpoint(
                            &mut endpoints,
                            Endpoint {
                                addr: b.addr,
                                port: *number,
                                ready: spec.publish_not_ready || b.ready,
                                serving: b.serving,
                                terminating: b.terminating,
                                node_name: b.node_name.clone(),
                                target: b.target.clone(),
                            },
                        );
                    }
                }
            }
            ServicePort {
                name: port.name,
                port: port.port,
                protocol: port.protocol,
                node_port: port.node_port,
                endpoints: endpoints.into_values().collect(),
            }
        })
        .collect();
    Service {
        name: spec.name,
        service_type: spec.service_type,
        cluster_ip,
        external_name: spec.external_name,
        external_ips: spec.external_ips,
        source_ranges: spec.source_ranges,
        external_traffic_policy: spec.external_traffic_policy,
        internal_traffic_policy: spec.internal_traffic_policy,
        health_check_node_port: spec.health_check_node_port,
        session_affinity: spec.session_affinity,
        backend_selection: spec.backend_selection,
        ports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::objects_from_yaml;

    const KUBIA: &str = "
apiVersion: v1
kind: Service
metadata:
  name: kubia
spec:
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: kubia
";

    fn pod(name: &str, ip: &str, ready: bool, labels: &str, extra: &str) -> String {
        format!(
            "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {labels}
{extra}status:
  phase: Running
  podIP: {ip}
  conditions:
  - type: Ready
    status: \"{}\"
",
            if ready { "True" } else { "False" }
        )
    }

    fn build_yaml(yaml: &str) -> (DesiredState, Vec<ModelError>) {
        build(&objects_from_yaml(yaml), DesiredState::default(), &ModelOptions::default())
    }

    fn service<'a>(state: &'a DesiredState, name: &str) -> &'a Service {
        &state.services[&ServiceName::new("default", name)]
    }

    fn active(port: &ServicePort) -> Vec<String> {
        port.active_endpoints().map(|e| format!("{}:{}", e.addr, e.port)).collect()
    }

    fn messages(errors: &[ModelError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn kubia_selector_endpoints_only_ready_pods_are_active() {
        let yaml = [
            KUBIA.to_owned(),
            pod("kubia-7nogl", "10.108.2.6", true, "{app: kubia}", "spec:\n  nodeName: node-2\n  containers: []\n"),
            pod("kubia-3inly", "10.108.1.4", true, "{app: kubia}", ""),
            pod("kubia-xk2q1", "10.108.2.5", false, "{app: kubia}", ""),
            pod("other", "10.108.2.9", true, "{app: other}", ""),
        ]
        .concat();
        let (state, errors) = build_yaml(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let kubia = service(&state, "kubia");
        assert_eq!(kubia.service_type, ServiceType::ClusterIp);
        assert!(kubia.programs_datapath());
        let ClusterIp::Ip(ip) = kubia.cluster_ip else { panic!("no cluster IP") };
        assert!(ModelOptions::default().service_cidr.contains_host(ip));
        let port = &kubia.ports[0];
        assert_eq!((port.name.as_str(), port.port, port.protocol), ("", 80, Protocol::Tcp));
        assert_eq!(port.endpoints.len(), 3);
        assert_eq!(active(port), ["10.108.1.4:8080", "10.108.2.6:8080"]);
        let ep = &port.endpoints[2];
        assert_eq!(
            (ep.target.as_deref(), ep.node_name.as_deref(), ep.serving),
            (Some("kubia-7nogl"), Some("node-2"), true)
        );
    }

    #[test]
    fn named_target_port_resolves_per_pod() {
        let containers = |http: u16| {
            format!(
                "spec:\n  containers:\n  - name: kubia\n    ports:\n    - name: http\n      containerPort: {http}\n    - name: dns\n      containerPort: 53\n      protocol: UDP\n"
            )
        };
        let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  selector: {app: kubia}\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n  - name: dns\n    port: 53\n    protocol: UDP\n    targetPort: dns\n  - name: dns-tcp\n    port: 53\n    targetPort: dns\n";
        let yaml = [
            svc.to_owned(),
            pod("a", "10.0.0.1", true, "{app: kubia}", &containers(8080)),
            pod("b", "10.0.0.2", true, "{app: kubia}", &containers(9090)),
            pod("c", "10.0.0.3", true, "{app: kubia}", "spec:\n  containers: []\n"),
        ]
        .concat();
        let (state, errors) = build_yaml(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let ports = &service(&state, "kubia").ports;
        assert_eq!(active(&ports[0]), ["10.0.0.1:8080", "10.0.0.2:9090"]);
        assert_eq!(active(&ports[1]), ["10.0.0.1:53", "10.0.0.2:53"]);
        // "dns" is a UDP port in the pods, so it does not serve TCP.
        assert_eq!(active(&ports[2]), Vec::<String>::new());
    }

    #[test]
    fn terminating_and_finished_pods() {
        let yaml = [
            KUBIA.to_owned(),
            pod("going", "10.0.0.1", true, "{app: kubia}", "  deletionTimestamp: \"2024-01-01T00:00:00Z\"\n"),
            pod("done", "10.0.0.2", true, "{app: kubia}", "").replace("phase: Running", "phase: Succeeded"),
            pod("v6", "fd00::1", true, "{app: kubia}", ""),
        ]
        .concat();
        let (state, errors) = build_yaml(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let port = &service(&state, "kubia").ports[0];
        assert_eq!(port.endpoints.len(), 1);
        let ep = &port.endpoints[0];
        assert_eq!((ep.ready, ep.serving, ep.terminating), (false, true, true));
    }

    /// The model is rebuilt from objects of which only some changed (the
    /// source keeps the others' `Arc`s): the changed ones take effect, the
    /// others are reused, not realised again.
    #[test]
    fn rebuild_reuses_services_whose_objects_did_not_change() {
        let yaml = |manual_ip: &str, pod_ip: &str| {
            format!(
                "{KUBIA}{}---
apiVersion: v1
kind: Service
metadata: {{name: manual}}
spec:
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: manual}}
subsets: [{{addresses: [{{ip: {manual_ip}}}], ports: [{{port: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: other}}
spec:
  ports: [{{port: 80}}]
",
                pod("kubia-1", pod_ip, true, "{app: kubia}", "")
            )
        };
        let first = objects_from_yaml(&yaml("1.1.1.1", "10.0.0.1"));
        let (state, _) = build(&first, DesiredState::default(), &ModelOptions::default());
        let realised = |state: &DesiredState, name: &str| {
            Arc::clone(&state.memo.services[&ServiceName::new("default", name)].realised)
        };

        // The Endpoints object changes; the Services and the pod stay.
        let changed = objects_from_yaml(&yaml("2.2.2.2", "10.0.0.1"));
        let mut second = first.clone();
        second.endpoints = changed.endpoints.clone();
        let (next, errors) = build(&second, state.clone(), &ModelOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(active(&service(&next, "manual").ports[0]), ["2.2.2.2:8080"]);
        assert_eq!(active(&service(&next, "kubia").ports[0]), ["10.0.0.1:8080"]);
        assert!(Arc::ptr_eq(&realised(&state, "other"), &realised(&next, "other")));
        assert!(Arc::ptr_eq(&realised(&state, "kubia"), &realised(&next, "kubia")));
        assert!(!Arc::ptr_eq(&realised(&state, "manual"), &realised(&next, "manual")));
        assert_eq!(service(&next, "other"), service(&state, "other"));
        assert_eq!(next, build(&second, DesiredState::default(), &ModelOptions::default()).0);

        // A pod changes: the Service selecting it is realised again.
        let mut third = second.clone();
        third.pods = objects_from_yaml(&yaml("2.2.2.2", "10.0.0.9")).pods;
        let (last, _) = build(&third, next.clone(), &ModelOptions::default());
        assert_eq!(active(&service(&last, "kubia").ports[0]), ["10.0.0.9:8080"]);
        assert!(Arc::ptr_eq(&realised(&next, "manual"), &realised(&last, "manual")));
        // Every reuse gives what a build from scratch gives.
        assert_eq!(last, build(&third, DesiredState::default(), &ModelOptions::default()).0);
    }

    #[test]
    fn endpoints_without_selector() {
        let yaml = "
apiVersion: v1
kind: Service
metadata: {name: external-service}
spec:
  ports:
  - name: web
    port: 80
---
apiVersion: v1
kind: Endpoints
metadata: {name: external-service}
subsets:
- addresses: [{ip: 22.22.22.22}, {ip: 11.11.11.11, nodeName: n1}]
  notReadyAddresses: [{ip: 33.33.33.33}]
  ports: [{port: 8080}]
- addresses: [{ip: '11. 11. 11. 11'}, {ip: 'fd00::1'}]
  ports: [{port: 9090, name: other}]
---
apiVersion: v1
kind: Service
metadata: {name: multi}
spec:
  ports: [{name: a, port: 80}, {name: b, port: 81}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: multi}
subsets:
- addresses: [{ip: 1.1.1.1}]
  ports: [{name: a, port: 8080}, {name: b, port: 8081}, {port: 9999}]
";
        let (state, errors) = build_yaml(yaml);
        assert_eq!(
            messages(&errors),
            [
                "test.yaml: Endpoints default/external-service: subsets[1].addresses[0].ip: \"11. 11. 11. 11\" is not an IP address"
            ]
        );
        let port = &service(&state, "external-service").ports[0];
        assert_eq!(active(port), ["11.11.11.11:8080", "22.22.22.22:8080"]);
        assert_eq!(port.endpoints.len(), 3);
        assert_eq!(port.endpoints[0].node_name.as_deref(), Some("n1"));
        let multi = &service(&state, "multi").ports;
        assert_eq!(active(&multi[0]), ["1.1.1.1:8080"]);
        assert_eq!(active(&multi[1]), ["1.1.1.1:8081"]);
    }

    #[test]
    fn endpoint_slice_conditions_and_union_with_endpoints() {
        let yaml = "
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: s-abc
  labels: {kubernetes.io/service-name: s}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.1]
  nodeName: n1
  targetRef: {kind: Pod, name: s-1}
- addresses: [10.0.0.2]
  conditions: {ready: false}
- addresses: [10.0.0.3]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.4]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: s-v6
  labels: {kubernetes.io/service-name: s}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ['fd00::1']}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other
  labels: {kubernetes.io/service-name: t}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.9.9.9]}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: s}
subsets:
- addresses: [{ip: 10.0.0.4}, {ip: 10.0.0.5}]
  ports: [{name: http, port: 8080}]
";
        let (state, errors) = build_yaml(yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let port = &service(&state, "s").ports[0];
        let conditions: Vec<_> =
            port.endpoints.iter().map(|e| (e.addr.to_string(), e.ready, e.serving, e.terminating)).collect();
        assert_eq!(
            conditions,
            [
                ("10.0.0.1".to_owned(), true, true, false),
                ("10.0.0.2".to_owned(), false, false, false),
                ("10.0.0.3".to_owned(), false, true, true),
                ("10.0.0.4".to_owned(), true, true, false),
                ("10.0.0.5".to_owned(), true, true, false),
            ]
        );
        assert_eq!(port.endpoints[0].target.as_deref(), Some("s-1"));
        assert_eq!(active(port), ["10.0.0.1:8080", "10.0.0.4:8080", "10.0.0.5:8080"]);
    }

    fn named(names: &[&str], extra: &str) -> String {
        names
            .iter()
            .map(|n| format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\nspec:\n  ports: [{{port: 80}}]\n{extra}"))
            .collect()
    }

    fn ips(state: &DesiredState) -> Vec<(String, ClusterIp)> {
        state.services.values().map(|s| (s.name.name.clone(), s.cluster_ip)).collect()
    }

    #[test]
    fn cluster_ip_allocation_is_deterministic_stable_and_avoids_explicit_ones() {
        let names = ["a", "b", "c", "kubia"];
        let (first, errors) = build_yaml(&named(&names, ""));
        assert!(errors.is_empty(), "{errors:?}");
        let mut reversed = objects_from_yaml(&named(&names, ""));
        reversed.services.reverse();
        let (again, _) = build(&reversed, DesiredState::default(), &ModelOptions::default());
        assert_eq!(ips(&first), ips(&again));

        // An explicit address on the slot kubia would hash to: kubia moves on.
        let cidr = ModelOptions::default().service_cidr;
        let slot = cidr.free_host(&ServiceName::new("default", "kubia"), &BTreeMap::new()).unwrap();
        assert_eq!(service(&first, "kubia").cluster_ip, ClusterIp::Ip(slot));
        let explicit = format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: z}}\nspec:\n  clusterIP: {slot}\n  ports: [{{port: 80}}]\n",
            named(&["kubia"], "")
        );
        let (state, _) = build_yaml(&explicit);
        assert_eq!(service(&state, "z").cluster_ip, ClusterIp::Ip(slot));
        let ClusterIp::Ip(moved) = service(&state, "kubia").cluster_ip else { panic!() };
        assert_eq!(u32::from(moved), u32::from(slot) + 1, "probing goes on to the next address");

        // History plays no part: a node that saw other addresses before
        // computes what a fresh node does.
        let mut previous = first.clone();
        Arc::make_mut(previous.services.get_mut(&ServiceName::new("default", "kubia")).unwrap()).cluster_ip =
            ClusterIp::Ip(Ipv4Addr::new(10, 96, 0, 77));
        let (state, _) = build(&objects_from_yaml(&named(&names, "")), previous, &ModelOptions::default());
        assert_eq!(ips(&state), ips(&first));
    }

    /// A Service named `name`, created at `created` (RFC 3339) when given.
    fn aged(name: &str, created: Option<&str>, spec: &str) -> String {
        let created = created.map_or(String::new(), |c| format!(", creationTimestamp: \"{c}\""));
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}{created}}}\nspec:\n{spec}  ports: [{{port: 80}}]\n"
        )
    }

    #[test]
    fn a_newer_service_never_takes_the_allocated_address_of_an_older_one() {
        // Two names hashing to the same address of a small CIDR.
        let opts = ModelOptions { service_cidr: "10.0.0.0/28".parse().unwrap() };
        let slot = |name: &str| opts.service_cidr.free_host(&ServiceName::new("default", name), &BTreeMap::new());
        let (young, old) = (1..100)
            .map(|i| format!("s{i}"))
            .find_map(|y| (1..100).map(|i| format!("t{i}")).find(|o| slot(o) == slot(&y)).map(|o| (y, o)))
            .expect("a hash collision among 200 names in 14 addresses");
        assert!(young < old, "the younger one sorts first by name");
        let build_with = |yaml: &str| build(&objects_from_yaml(yaml), DesiredState::default(), &opts).0;
        let older_alone = build_with(&aged(&old, Some("2026-01-01T00:00:00Z"), ""));
        let both = build_with(&format!(
            "{}{}",
            aged(&young, Some("2026-06-01T00:00:00Z"), ""),
            aged(&old, Some("2026-01-01T00:00:00Z"), "")
        ));
        assert_eq!(service(&both, &old).cluster_ip, service(&older_alone, &old).cluster_ip);
        assert_ne!(service(&both, &young).cluster_ip, service(&both, &old).cluster_ip);
        // Without timestamps the name decides, the same way on every node.
        let unaged = build_with(&format!("{}{}", aged(&young, None, ""), aged(&old, None, "")));
        assert_eq!(service(&unaged, &young).cluster_ip, service(&older_alone, &old).cluster_ip);
    }

    #[test]
    fn duplicate_explicit_cluster_ip_the_older_service_keeps_it() {
        let yaml = named(&["a", "b"], "  clusterIP: 10.96.0.10\n");
        let (state, errors) = build_yaml(&yaml);
        assert_eq!(
            messages(&errors),
            ["test.yaml: Service default/b: spec.clusterIP: 10.96.0.10 is already used by Service default/a"]
        );
        assert_eq!(ips(&state), [("a".to_owned(), ClusterIp::Ip(Ipv4Addr::new(10, 96, 0, 10)))]);

        // The older one keeps it, even when later in name order; the
        // newcomer is refused as the API server would refuse it.
        let yaml = format!(
            "{}{}",
            aged("a", Some("2026-06-01T00:00:00Z"), "  clusterIP: 10.96.0.10\n"),
            aged("b", Some("2026-01-01T00:00:00Z"), "  clusterIP: 10.96.0.10\n")
        );
        let (state, errors) = build_yaml(&yaml);
        assert_eq!(
            messages(&errors),
            ["test.yaml: Service default/a: spec.clusterIP: 10.96.0.10 is already used by Service default/b"]
        );
        assert_eq!(ips(&state), [("b".to_owned(), ClusterIp::Ip(Ipv4Addr::new(10, 96, 0, 10)))]);

        let (state, errors) = build_yaml(&named(&["c"], "  clusterIP: 192.168.0.10\n"));
        assert_eq!(
            messages(&errors),
            ["test.yaml: Service default/c: spec.clusterIP: 192.168.0.10 is not in the service CIDR 10.96.0.0/12"]
        );
        assert!(state.services.is_empty());
    }

    #[test]
    fn exhausted_cidr_is_an_error() {
        let opts = ModelOptions { service_cidr: "192.168.0.0/30".parse().unwrap() };
        let (state, errors) = build(&objects_from_yaml(&named(&["a", "b", "c"], "")), DesiredState::default(), &opts);
        assert_eq!(state.services.len(), 2);
        let addrs: BTreeSet<_> = state.services.values().map(|s| format!("{:?}", s.cluster_ip)).collect();
        assert_eq!(addrs.len(), 2);
        assert_eq!(
            messages(&errors),
            ["test.yaml: Service default/c: no free address left in the service CIDR 192.168.0.0/30"]
        );
    }

    #[test]
    fn invalid_service_keeps_its_previous_model() {
        let (good, _) = build_yaml(KUBIA);
        let broken = KUBIA.replace("port: 80", "port: 0");
        let (state, errors) = build(&objects_from_yaml(&broken), good.clone(), &ModelOptions::default());
        assert_eq!(messages(&errors), ["test.yaml: Service default/kubia: spec.ports[0].port: 0 is not in 1-65535"]);
        assert_eq!(state, good);
        // Without a previous model there is nothing to keep.
        let (state, _) = build_yaml(&broken);
        assert!(state.services.is_empty());
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            ("  type: Weird\n  ports: [{port: 80}]\n", "spec.type: unknown type \"Weird\""),
            (
                "  ports: [{port: 80, protocol: SCTP}]\n",
                "spec.ports[0].protocol: SCTP is not supported: this port is not served, the Service's others are",
            ),
            ("  clusterIP: fd00::10\n  ports: [{port: 80}]\n", "spec.clusterIP: ipv6 is not supported yet"),
            (
                "  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n",
                "spec.clusterIP: \"10.96.0.300\" is not an IP address",
            ),
            ("  ports: [{port: 80, targetPort: 70000}]\n", "spec.ports[0].targetPort: 70000 is not in 1-65535"),
            (
                "  ports: [{port: 80, targetPort: ''}]\n",
                "spec.ports[0].targetPort: \"\" is neither a port number nor a port name",
            ),
            (
                "  ports: [{port: 80}, {port: 81}]\n",
                "spec.ports[0].name: required when a service has more than one port",
            ),
            ("  ports: [{name: a, port: 80}, {name: b, port: 80}]\n", "spec.ports[1].port: 80/TCP is listed twice"),
            ("  type: ExternalName\n", "spec.externalName: required for type ExternalName"),
            (
                "  type: NodePort\n  clusterIP: None\n  ports: [{port: 80}]\n",
                "spec.clusterIP: None (headless) is only allowed for type ClusterIP",
            ),
            ("  ports: []\n", "spec.ports: a service with a cluster IP needs at least one port"),
            (
                "  sessionAffinity: Sticky\n  ports: [{port: 80}]\n",
                "spec.sessionAffinity: unknown value \"Sticky\" (None or ClientIP)",
            ),
            (
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n  ports: [{port: 80}]\n",
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not in 1-86400",
            ),
        ];
        for (spec, reason) in cases {
            let (_, errors) =
                build_yaml(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n{spec}"));
            assert_eq!(messages(&errors), [format!("test.yaml: Service default/s: {reason}")], "{spec}");
        }
    }

    /// kube-proxy serves a Service's TCP and UDP ports whatever its others.
    #[test]
    fn an_sctp_port_is_reported_and_the_other_ports_are_served() {
        let yaml = KUBIA.replace(
            "  ports:\n  - port: 80\n",
            "  ports:\n  - name: sctp\n    port: 9\n    protocol: SCTP\n  - name: http\n    port: 80\n",
        );
        assert_ne!(yaml, KUBIA, "the test edits the kubia Service's ports");
        let (state, errors) = build_yaml(&yaml);
        assert_eq!(
            messages(&errors),
            [
                "test.yaml: Service default/kubia: spec.ports[0].protocol: SCTP is not supported: this port is not served, the Service's others are"
            ]
        );
        let kubia = service(&state, "kubia");
        assert_eq!(kubia.ports.iter().map(|p| (p.port, p.protocol)).collect::<Vec<_>>(), [(80, Protocol::Tcp)]);
        assert!(kubia.programs_datapath());
    }

    #[test]
    fn headless_and_external_name_are_listed_but_not_programmed() {
        let yaml = format!(
            "{KUBIA}---\napiVersion: v1\nkind: Service\nmetadata: {{name: headless}}\nspec:\n  clusterIP: None\n  selector: {{app: kubia}}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: external-service}}\nspec:\n  type: ExternalName\n  externalName: someapi.somecompany.com\n  ports: [{{port: 80}}]\n{}",
            pod("kubia-1", "10.0.0.1", true, "{app: kubia}", "")
        );
        let (state, errors) = build_yaml(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let headless = service(&state, "headless");
        assert_eq!(headless.cluster_ip, ClusterIp::None);
        assert!(!headless.programs_datapath());
        assert_eq!(active(&headless.ports[0]), ["10.0.0.1:8080"]);
        let external = service(&state, "external-service");
        assert_eq!(external.service_type, ServiceType::ExternalName);
        assert_eq!(external.external_name.as_deref(), Some("someapi.somecompany.com"));
        assert_eq!(external.cluster_ip, ClusterIp::None);
        assert!(!external.programs_datapath());
        assert!(service(&state, "kubia").programs_datapath());
    }

    #[test]
    fn cidr_parsing() {
        let cidr: Ipv4Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(cidr, ModelOptions::default().service_cidr);
        assert_eq!(cidr.to_string(), "10.96.0.0/12");
        assert!(cidr.contains_host(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!cidr.contains_host(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!cidr.contains_host(Ipv4Addr::new(10, 96, 0, 0)));
        assert_eq!(
            "10.96.0.1/12".parse::<Ipv4Cidr>().unwrap_err().to_string(),
            "\"10.96.0.1/12\" is not an IPv4 CIDR: host bits are set"
        );
        assert!("10.96.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("10.96.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Ipv4Cidr>().is_ok());
    }

    #[test]
    fn with_no_ready_endpoint_the_serving_terminating_ones_take_new_connections() {
        let terminating = "  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n";
        let yaml = format!(
            "{KUBIA}{}{}",
            pod("a", "10.244.0.2", true, "{app: kubia}", terminating),
            pod("b", "10.244.0.3", false, "{app: kubia}", "")
        );
        let (state, errors) = build_yaml(&yaml);
        assert_eq!(messages(&errors), Vec::<String>::new());
        assert_eq!(active(&service(&state, "kubia").ports[0]), ["10.244.0.2:8080"]);
        // A ready pod beside it wins again.
        let yaml = format!("{yaml}{}", pod("c", "10.244.0.4", true, "{app: kubia}", ""));
        let (state, _) = build_yaml(&yaml);
        assert_eq!(active(&service(&state, "kubia").ports[0]), ["10.244.0.4:8080"]);
    }

    #[test]
    fn proxy_labels_leave_a_service_to_another_proxy_or_make_it_headless() {
        let labelled =
            |label: &str| KUBIA.replace("  name: kubia\n", &format!("  name: kubia\n  labels: {{{label}}}\n"));
        let pods = pod("a", "10.244.0.2", true, "{app: kubia}", "");
        let (state, _) = build_yaml(&format!("{}{pods}", labelled("service.kubernetes.io/service-proxy-name: other")));
        assert!(state.services.is_empty(), "a service of another proxy is ignored");
        let (state, _) = build_yaml(&format!("{}{pods}", labelled("service.kubernetes.io/headless: ''")));
        let kubia = service(&state, "kubia");
        assert_eq!(kubia.cluster_ip, ClusterIp::None);
        assert!(!kubia.programs_datapath());
    }

    #[test]
    fn an_endpoints_object_beside_a_selector_is_ignored_with_an_error_naming_both() {
        let endpoints = "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: kubia}\nsubsets: [{addresses: [{ip: 1.2.3.4}], ports: [{port: 80}]}]\n";
        let yaml = format!("{KUBIA}{}{endpoints}", pod("a", "10.244.0.2", true, "{app: kubia}", ""));
        let (state, errors) = build_yaml(&yaml);
        assert_eq!(active(&service(&state, "kubia").ports[0]), ["10.244.0.2:8080"]);
        let errors = messages(&errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("Endpoints default/kubia") && errors[0].contains("Service default/kubia has a selector")
        );
    }

    #[test]
    fn publish_not_ready_addresses_serves_unready_manual_endpoints_too() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  publishNotReadyAddresses: true\n  ports: [{port: 80}]\n";
        let endpoints = "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: db}\nsubsets: [{notReadyAddresses: [{ip: 1.2.3.4}], ports: [{port: 80}]}]\n";
        let (state, _) = build_yaml(&format!("{svc}{endpoints}"));
        assert_eq!(active(&service(&state, "db").ports[0]), ["1.2.3.4:80"]);
    }

    #[test]
    fn node_ports_are_kept_when_written_allocated_in_range_otherwise_and_never_shared() {
        let svc = |name: &str, node_port: &str| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: NodePort\n  ports: [{{port: 80{node_port}}}]\n"
            )
        };
        let yaml = format!(
            "{}{}{}",
            svc("kubia-nodeport", ", nodePort: 30123"),
            svc("auto", ""),
            svc("thief", ", nodePort: 30123")
        );
        let (state, errors) = build_yaml(&yaml);
        assert_eq!(service(&state, "kubia-nodeport").ports[0].node_port, Some(30123));
        let auto = service(&state, "auto").ports[0].node_port.unwrap();
        assert!(NODE_PORT_RANGE.contains(&auto) && auto != 30123);
        assert_eq!(
            messages(&errors),
            ["Service default/thief: nodePort 30123/TCP is already used by Service default/kubia-nodeport"]
        );
        // The same answer on every node, and across rescans.
        let (again, _) = build(&objects_from_yaml(&yaml), state.clone(), &ModelOptions::default());
        assert_eq!(service(&again, "auto").ports[0].node_port, Some(auto));
        let (fresh, _) = build_yaml(&yaml);
        assert_eq!(service(&fresh, "auto").ports[0].node_port, Some(auto));

        // The older writer holds the port, whatever the names.
        let yaml = format!(
            "{}{}",
            svc("kubia-nodeport", ", nodePort: 30123").replace(
                "{name: kubia-nodeport}",
                "{name: kubia-nodeport, creationTimestamp: \"2026-06-01T00:00:00Z\"}"
            ),
            svc("thief", ", nodePort: 30123")
                .replace("{name: thief}", "{name: thief, creationTimestamp: \"2026-01-01T00:00:00Z\"}"),
        );
        let (state, errors) = build_yaml(&yaml);
        assert_eq!(service(&state, "thief").ports[0].node_port, Some(30123));
        assert_eq!(
            messages(&errors),
            ["Service default/kubia-nodeport: nodePort 30123/TCP is already used by Service default/thief"]
        );
    }

    #[test]
    fn node_ports_outside_the_range_or_on_a_cluster_ip_service_are_refused() {
        let (_, errors) = build_yaml(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 8080}]\n",
        );
        assert_eq!(
            messages(&errors),
            ["test.yaml: Service default/a: spec.ports[0].nodePort: 8080 is not in 30000-32767"]
        );
        let (_, errors) = build_yaml(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80, nodePort: 30080}]\n",
        );
        assert!(messages(&errors)[0].contains("only NodePort and LoadBalancer have node ports"), "{errors:?}");
    }

    #[test]
    fn external_and_load_balancer_ips_are_service_addresses() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec:\n  type: LoadBalancer\n  externalIPs: [203.0.113.20]\n  ports: [{port: 80}]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.10}, {hostname: lb.example}]\n";
        let (state, errors) = build_yaml(yaml);
        assert_eq!(messages(&errors), Vec::<String>::new());
        let lb = service(&state, "lb");
        assert_eq!(lb.external_ips, [Ipv4Addr::new(203, 0, 113, 20), Ipv4Addr::new(203, 0, 113, 10)]);
        assert!(lb.ports[0].node_port.is_some(), "a LoadBalancer is a NodePort too");
        let ranged = yaml.replace("  ports:", "  loadBalancerSourceRanges: [192.0.2.0/24]\n  ports:");
        let (state, _) = build_yaml(&ranged);
        assert_eq!(service(&state, "lb").source_ranges, ["192.0.2.0/24".parse().unwrap()]);
        let (_, errors) = build_yaml(&ranged.replace("192.0.2.0/24", "192.0.2.1/24"));
        assert!(
            messages(&errors)[0].contains("spec.loadBalancerSourceRanges: \"192.0.2.1/24\" is not an IPv4 CIDR"),
            "{errors:?}"
        );
        let (_, errors) = build_yaml(&yaml.replace("203.0.113.20", "not-an-ip"));
        assert!(messages(&errors)[0].contains("spec.externalIPs: \"not-an-ip\" is not an IP address"), "{errors:?}");
    }

    #[test]
    fn traffic_policies_are_read_and_local_keeps_this_nodes_endpoints() {
        let yaml = format!(
            "{}  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n{}{}",
            KUBIA,
            pod("a", "10.244.0.2", true, "{app: kubia}", "spec: {nodeName: node-a}\n"),
            pod("b", "10.244.0.3", true, "{app: kubia}", "spec: {nodeName: node-b}\n"),
        );
        let (state, errors) = build_yaml(&yaml);
        assert_eq!(messages(&errors), Vec::<String>::new());
        let kubia = service(&state, "kubia");
        assert_eq!(
            (kubia.external_traffic_policy, kubia.internal_traffic_policy),
            (TrafficPolicy::Local, TrafficPolicy::Local)
        );
        let on = |node| kubia.ports[0].active_endpoints_on(node).map(|e| e.addr.to_string()).collect::<Vec<_>>();
        assert_eq!(on(Some("node-a")), ["10.244.0.2"]);
        assert_eq!(on(Some("node-c")), Vec::<String>::new());
        assert_eq!(on(None).len(), 2);
        let (_, errors) = build_yaml(&format!("{KUBIA}  externalTrafficPolicy: Sometimes\n"));
        assert!(messages(&errors)[0].contains("spec.externalTrafficPolicy: unknown value \"Sometimes\""), "{errors:?}");
    }

    #[test]
    fn a_local_load_balancer_gets_a_health_check_node_port() {
        let lb = |extra: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: lb}}\nspec:\n  type: LoadBalancer\n{extra}  ports: [{{port: 80}}]\n"
            )
        };
        let (state, _) = build_yaml(&lb("  externalTrafficPolicy: Local\n"));
        let port = service(&state, "lb").health_check_node_port.unwrap();
        assert!(NODE_PORT_RANGE.contains(&port) && Some(port) != service(&state, "lb").ports[0].node_port);
        let (state, _) = build_yaml(&lb("  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n"));
        assert_eq!(service(&state, "lb").health_check_node_port, Some(32000));
        let (state, _) = build_yaml(&lb(""));
        assert_eq!(service(&state, "lb").health_check_node_port, None);
        let (_, errors) = build_yaml(&lb("  healthCheckNodePort: 32000\n"));
        assert!(messages(&errors)[0].contains("spec.healthCheckNodePort"), "{errors:?}");
    }
}
