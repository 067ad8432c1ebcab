//! Cluster IPs and node ports not written in a manifest: from the objects
//! alone (a hash of the name, claims settled eldest Service first), so every
//! node computes the same answer whatever it saw before.

use super::*;

/// 64-bit FNV-1a: tiny, stable across builds and platforms (unlike std's hasher).
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// LoadBalancer Services with `allocateLoadBalancerNodePorts: false`: their
/// ports have node ports only where written.
pub(super) fn without_node_ports(objects: &Objects) -> BTreeSet<ServiceName> {
    let declines = |s: &&Sourced<core::Service>| {
        s.object.spec.as_ref().and_then(|spec| spec.allocate_load_balancer_node_ports) == Some(false)
    };
    objects.services.iter().filter(declines).map(|s| ServiceName::of(&s.object.metadata)).collect()
}

/// The order in which claims two Services make on one thing (a cluster IP,
/// a node port) are settled: the older first by `metadata.creationTimestamp`
/// (one without counts as the newest), then by name. As the API server
/// would, it never lets a newcomer take what an older Service holds, and it
/// comes from the objects alone, so every node settles claims alike
/// whatever it saw before.
pub(super) struct Seniority(HashMap<ServiceName, usize>);

impl Seniority {
    pub(super) fn of(objects: &Objects) -> Self {
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

    pub(super) fn rank(&self, name: &ServiceName) -> usize {
        self.0.get(name).copied().unwrap_or(usize::MAX)
    }

    /// `names`, the eldest first.
    pub(super) fn eldest_first<'a>(&self, names: impl Iterator<Item = &'a ServiceName>) -> Vec<ServiceName> {
        let mut names: Vec<ServiceName> = names.cloned().collect();
        names.sort_by_key(|name| (self.rank(name), name.clone()));
        names
    }
}

/// Gives every LoadBalancer with `externalTrafficPolicy: Local` without a
/// written `healthCheckNodePort` one from a hash of its name (eldest
/// Service first), never a TCP node port in use.
pub(super) fn assign_health_check_ports(state: &mut DesiredState, seniority: &Seniority) {
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
pub(super) fn assign_node_ports(
    state: &mut DesiredState,
    seniority: &Seniority,
    written_only: &BTreeSet<ServiceName>,
    errors: &mut Vec<ModelError>,
) {
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
                None if written_only.contains(&name) => {}
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

/// Settles every cluster IP. Explicit addresses first: the eldest Service
/// naming an address holds it; younger ones, and addresses outside their
/// family's service CIDR, are refused with all their addresses (one that
/// had a model keeps it while its old addresses are free, like an update
/// the API server refuses). Then allocated ones, eldest first, each from a
/// hash of its name into its family's CIDR. Services left without their
/// addresses are removed from `entries`.
pub(super) fn assign_addresses(
    entries: &mut BTreeMap<ServiceName, Entry<'_>>,
    previous: &DesiredState,
    seniority: &Seniority,
    opts: &ModelOptions,
    errors: &mut Vec<ModelError>,
) -> BTreeMap<ServiceName, Vec<IpAddr>> {
    // In a cluster the API server allocated and checked every address.
    let emulated = opts.controllers == Controllers::Emulated;
    let previous_ips =
        |name: &ServiceName| previous.services.get(name).map(|s| s.cluster_ips.clone()).unwrap_or_default();
    let mut taken: BTreeMap<IpAddr, ServiceName> = BTreeMap::new();
    let mut assigned: BTreeMap<ServiceName, Vec<IpAddr>> = BTreeMap::new();

    // (address, seniority, name): sorting puts each address's holder first.
    let mut claims: Vec<(IpAddr, usize, ServiceName)> = Vec::new();
    let mut refused: BTreeMap<ServiceName, ModelError> = BTreeMap::new();
    for (name, entry) in entries.iter() {
        let file = entry.file().to_owned();
        let written: Vec<IpAddr> = match (entry, entry.address()) {
            (Entry::Kept(_, kept), _) => kept.cluster_ips.clone(),
            (_, Some(Address::Families(slots))) => slots.iter().filter_map(|(_, ip)| *ip).collect(),
            _ => Vec::new(),
        };
        let outside = written.iter().find_map(|ip| {
            let cidr = opts.service_cidr(Family::of(*ip))?;
            (emulated && !matches!(entry, Entry::Kept(..)) && !cidr.contains_host(*ip)).then_some((*ip, cidr))
        });
        match outside {
            Some((ip, cidr)) => drop(
                refused.insert(name.clone(), ModelError::OutsideServiceCidr { file, service: name.clone(), ip, cidr }),
            ),
            None => claims.extend(written.into_iter().map(|ip| (ip, seniority.rank(name), name.clone()))),
        }
    }
    claims.sort();
    for (ip, _, name) in claims {
        match taken.get(&ip) {
            Some(holder) => {
                let file = entries[&name].file().to_owned();
                let error =
                    ModelError::ClusterIpTaken { file, service: name.clone(), ip, holder: Box::new(holder.clone()) };
                refused.entry(name).or_insert(error);
            }
            None => {
                taken.insert(ip, name.clone());
                assigned.entry(name).or_default().push(ip);
            }
        }
    }
    // A refused Service holds none of its addresses.
    taken.retain(|_, holder| !refused.contains_key(holder));
    for (name, error) in refused {
        assigned.remove(&name);
        let file = entries[&name].file();
        errors.push(error);
        let kept_ips = previous_ips(&name);
        match previous.services.get(&name) {
            Some(kept) if !kept_ips.is_empty() && kept_ips.iter().all(|ip| !taken.contains_key(ip)) => {
                taken.extend(kept_ips.iter().map(|ip| (*ip, name.clone())));
                assigned.insert(name.clone(), kept_ips);
                entries.insert(name, Entry::Kept(file, kept.clone()));
            }
            _ => {
                entries.remove(&name);
            }
        }
    }

    let allocate: Vec<ServiceName> = entries
        .iter()
        .filter(|(_, entry)| {
            matches!(entry.address(), Some(Address::Families(slots)) if slots.iter().any(|(_, ip)| ip.is_none()))
        })
        .map(|(name, _)| name.clone())
        .collect();
    if !emulated {
        for name in &allocate {
            if let Some(entry) = entries.remove(name) {
                assigned.remove(name);
                errors.push(ModelError::NotAllocated { file: entry.file().to_owned(), service: name.clone() });
            }
        }
    }
    for name in seniority.eldest_first(allocate.iter().filter(|_| emulated)) {
        let Some(Address::Families(slots)) = entries[&name].address() else { continue };
        let mut ips = Vec::with_capacity(slots.len());
        let mut exhausted = None;
        for (family, written) in slots {
            // Validation refused the families without a service CIDR.
            let Some(cidr) = opts.service_cidr(*family) else { continue };
            let ip = match written {
                Some(ip) => *ip,
                None => match cidr.free_host(&name, &taken) {
                    Some(ip) => ip,
                    None => {
                        exhausted = Some(cidr);
                        break;
                    }
                },
            };
            let before = previous_ips(&name).into_iter().find(|b| Family::of(*b) == *family && *b != ip);
            if let Some(before) = before.filter(|_| written.is_none()) {
                // Only on a hash collision with a Service that has no
                // creationTimestamp and sorts first by name.
                warn!(service = %name, %before, now = %ip, holder = %taken.get(&before).map_or(String::new(), ToString::to_string),
                    "cluster IP moved to another address; write spec.clusterIPs or metadata.creationTimestamp to pin it");
            }
            taken.insert(ip, name.clone());
            ips.push(ip);
        }
        if let Some(cidr) = exhausted {
            taken.retain(|_, holder| *holder != name);
            assigned.remove(&name);
            if let Some(entry) = entries.remove(&name) {
                errors.push(ModelError::CidrExhausted { file: entry.file().to_owned(), service: name, cidr });
            }
            continue;
        }
        assigned.insert(name, ips);
    }
    // Claims were settled in address order: back to the spec's, primary first.
    for (name, ips) in &mut assigned {
        let families: Vec<Family> = match entries.get(name) {
            Some(Entry::Kept(_, kept)) => kept.cluster_ips.iter().map(|ip| Family::of(*ip)).collect(),
            Some(entry) => match entry.address() {
                Some(Address::Families(slots)) => slots.iter().map(|(family, _)| *family).collect(),
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        ips.sort_by_key(|ip| families.iter().position(|f| *f == Family::of(*ip)));
    }
    assigned
}
