//! The model's types: plain Rust Services, ports and endpoints.

use super::*;

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
    pub(super) fn of(meta: &ObjectMeta) -> Self {
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
    pub(super) fn parse(text: Option<&str>) -> Result<Protocol, String> {
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

/// An IP family, as `spec.ipFamilies` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub(super) fn parse(text: &str) -> Result<Family, String> {
        match text {
            "IPv4" => Ok(Family::V4),
            "IPv6" => Ok(Family::V6),
            other => Err(format!("unknown family {other:?} (IPv4 or IPv6)")),
        }
    }

    pub(super) fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// Address length in bits.
    fn width(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
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
pub(super) const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86_400;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceName,
    pub service_type: ServiceType,
    /// `spec.clusterIPs`: one per family, the primary family's first;
    /// empty for headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    pub external_name: Option<String>,
    /// Addresses outside the cluster network the Service also answers on
    /// (its ports, from outside too): `spec.externalIPs` and, for
    /// LoadBalancer, `status.loadBalancer.ingress[].ip`.
    pub external_ips: Vec<IpAddr>,
    /// `loadBalancerSourceRanges`, of both families: the only clients of
    /// the family its load-balancer and external IPs of that family take
    /// (none of the family: everyone).
    pub source_ranges: Vec<IpCidr>,
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
    /// A headless Service without ports: its endpoints (port 0), which
    /// only DNS names; empty for every other Service.
    pub portless_endpoints: Vec<Endpoint>,
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
        self.service_type != ServiceType::ExternalName && !self.cluster_ips.is_empty()
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

    /// The endpoints traffic under policy Cluster takes on `node` (in
    /// `zone`): the ready ones its topology hints leave this node, as
    /// kube-proxy narrows them; with none ready, the serving terminating
    /// ones, hints aside. Sorted and deduplicated like
    /// [`ServicePort::active_endpoints`].
    pub fn cluster_endpoints(&self, node: &str, zone: Option<&str>) -> Vec<&Endpoint> {
        let ready: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.ready).collect();
        let topology = Topology::of(&ready, node, zone);
        let mut chosen: Vec<&Endpoint> = ready.into_iter().filter(|e| topology.admits(e, node, zone)).collect();
        if chosen.is_empty() {
            return self.active_endpoints().collect();
        }
        chosen.sort_by_key(|e| (e.addr, e.port));
        chosen.dedup_by_key(|e| (e.addr, e.port));
        chosen
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
    pub addr: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    /// The pod's name, when the endpoint is a pod.
    pub target: Option<String>,
    /// Its DNS name under a headless Service: the pod's `spec.hostname`
    /// when its `spec.subdomain` is the Service, or the slice's `hostname`.
    pub hostname: Option<String>,
    pub hints: Hints,
}

/// An EndpointSlice endpoint's topology hints (set by the EndpointSlice
/// controller for `trafficDistribution` or topology-aware routing): the
/// zones and nodes whose traffic it should take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
}

/// Which endpoints kube-proxy's topology rule lets a node use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    Any,
    SameNode,
    SameZone,
}

impl Topology {
    /// Hints count only when every ready endpoint has them (of that kind)
    /// and one is for this node (zone): a half-hinted slice is being
    /// rewritten, and a node nobody hints for would get no traffic.
    fn of(ready: &[&Endpoint], node: &str, zone: Option<&str>) -> Topology {
        let for_all = |hinted: &dyn Fn(&Endpoint) -> &[String], here: Option<&str>| {
            here.is_some_and(|here| {
                ready.iter().all(|e| !hinted(e).is_empty()) && ready.iter().any(|e| hinted(e).iter().any(|h| h == here))
            })
        };
        if for_all(&|e| &e.hints.nodes, Some(node)) {
            Topology::SameNode
        } else if for_all(&|e| &e.hints.zones, zone) {
            Topology::SameZone
        } else {
            Topology::Any
        }
    }

    fn admits(self, endpoint: &Endpoint, node: &str, zone: Option<&str>) -> bool {
        match self {
            Topology::Any => true,
            Topology::SameNode => endpoint.hints.nodes.iter().any(|n| n == node),
            Topology::SameZone => endpoint.hints.zones.iter().any(|z| Some(z.as_str()) == zone),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    /// Shared: a rebuild that changes one service copies only that one.
    pub services: BTreeMap<ServiceName, Arc<Service>>,
    /// What each service was realised from: the next build reuses a service
    /// none of whose objects changed instead of working it out again.
    pub(super) memo: Memo,
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

/// An IP network such as `10.96.0.0/12` or `fd00:10:96::/112`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpCidr {
    pub(super) network: IpAddr,
    pub(super) prefix_len: u8,
}

/// An address as a number, IPv4 in the low 32 bits: one arithmetic for
/// both families.
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(ip) => u128::from(u32::from(ip)),
        IpAddr::V6(ip) => u128::from(ip),
    }
}

fn from_bits(family: Family, bits: u128) -> IpAddr {
    match family {
        // Below 2^32 by construction: IPv4 networks only hold such numbers.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

/// The netmask of `prefix_len` bits in a `family` address, as a number.
fn mask_bits(family: Family, prefix_len: u8) -> u128 {
    let all = u128::MAX >> (128 - family.width());
    all.checked_shl(family.width() - u32::from(prefix_len)).unwrap_or(0) & all
}

impl IpCidr {
    pub fn network(self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    pub fn family(self) -> Family {
        Family::of(self.network)
    }

    /// The netmask, as an address of the family.
    pub fn mask(self) -> IpAddr {
        from_bits(self.family(), mask_bits(self.family(), self.prefix_len))
    }

    /// Whether `ip` is in the network (any address, network and broadcast
    /// too); never one of the other family.
    pub fn contains(self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family() && bits(ip) & mask_bits(self.family(), self.prefix_len) == bits(self.network)
    }

    /// The first assignable address and how many there are, as the API
    /// server assigns them: not the network address, nor IPv4's broadcast
    /// (IPv6 has none). An IPv6 /0 holds one too many to count: the last
    /// address is left out.
    pub(super) fn hosts(self) -> (u128, u128) {
        let size = 1u128.checked_shl(self.family().width() - u32::from(self.prefix_len)).unwrap_or(u128::MAX);
        let reserved = if self.family() == Family::V4 { 2 } else { 1 };
        (bits(self.network).wrapping_add(1), size.saturating_sub(reserved))
    }

    pub(super) fn contains_host(self, ip: IpAddr) -> bool {
        let (first, count) = self.hosts();
        Family::of(ip) == self.family() && bits(ip).checked_sub(first).is_some_and(|offset| offset < count)
    }

    /// The first free address from the name's hash on (linear probing), so
    /// every node computes the same address for the same services.
    pub(super) fn free_host(self, name: &ServiceName, taken: &BTreeMap<IpAddr, ServiceName>) -> Option<IpAddr> {
        let (first, count) = self.hosts();
        if count == 0 {
            return None;
        }
        let start = u128::from(fnv1a(name.to_string().as_bytes())) % count;
        (0..count).map(|i| from_bits(self.family(), first + (start + i) % count)).find(|ip| !taken.contains_key(ip))
    }

    /// Like `parse`, with host bits cleared instead of refused, as the API
    /// server accepts `loadBalancerSourceRanges` such as 192.168.1.5/24; a
    /// bare address is its own network.
    pub fn masked(value: &str) -> Result<Self, ModelError> {
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let (network, prefix_len) = Self::parts(value, addr, prefix)?;
        let family = Family::of(network);
        Ok(IpCidr { network: from_bits(family, bits(network) & mask_bits(family, prefix_len)), prefix_len })
    }

    /// The address and prefix length of `value`, checked; no prefix: the
    /// whole address.
    fn parts(value: &str, addr: &str, prefix: Option<&str>) -> Result<(IpAddr, u8), ModelError> {
        let bad = |reason: String| ModelError::BadCidr { value: value.to_owned(), reason };
        let network: IpAddr = addr.parse().map_err(|_| bad("the address is not an IP address".into()))?;
        let width = Family::of(network).width();
        let prefix_len = match prefix {
            None => width as u8,
            Some(prefix) => prefix
                .parse()
                .ok()
                .filter(|p| u32::from(*p) <= width)
                .ok_or_else(|| bad(format!("the prefix length is not 0-{width}")))?,
        };
        Ok((network, prefix_len))
    }
}

impl FromStr for IpCidr {
    type Err = ModelError;

    fn from_str(value: &str) -> Result<Self, ModelError> {
        let bad = |reason: &str| ModelError::BadCidr { value: value.to_owned(), reason: reason.to_owned() };
        let (addr, prefix) = value.split_once('/').ok_or_else(|| bad("expected ADDRESS/PREFIX-LENGTH"))?;
        let (network, prefix_len) = Self::parts(value, addr, Some(prefix))?;
        if bits(network) & !mask_bits(Family::of(network), prefix_len) != 0 {
            return Err(bad("host bits are set"));
        }
        Ok(IpCidr { network, prefix_len })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}
