//! A Service object checked as the API server would, into a [`Spec`].

use super::*;

/// A Service that passed validation, before its address is settled.
pub(super) struct Spec<'a> {
    pub(super) file: &'a Arc<Path>,
    pub(super) service: &'a Arc<core::Service>,
    pub(super) name: ServiceName,
    pub(super) service_type: ServiceType,
    pub(super) address: Address,
    pub(super) external_name: Option<String>,
    pub(super) external_ips: Vec<IpAddr>,
    pub(super) source_ranges: Vec<IpCidr>,
    pub(super) external_traffic_policy: TrafficPolicy,
    pub(super) internal_traffic_policy: TrafficPolicy,
    pub(super) health_check_node_port: Option<u16>,
    pub(super) session_affinity: SessionAffinity,
    pub(super) backend_selection: BackendSelection,
    pub(super) ports: Vec<PortSpec>,
    /// Present and non-empty: endpoints come from pods.
    pub(super) selector: Option<&'a BTreeMap<String, String>>,
    pub(super) publish_not_ready: bool,
}

pub(super) struct PortSpec {
    pub(super) name: String,
    pub(super) port: u16,
    pub(super) protocol: Protocol,
    pub(super) target: Target,
    /// `spec.ports[].nodePort` as written; allocated later when absent.
    pub(super) node_port: Option<u16>,
}

pub(super) enum Target {
    Port(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

pub(super) fn invalid(file: &Path, object: String, field: impl Into<String>, reason: impl Into<String>) -> ModelError {
    ModelError::Invalid { file: file.to_owned(), object, field: field.into(), reason: reason.into() }
}

pub(super) fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// An address of a backend or a Service, of either family.
pub(super) fn ip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| format!("{text:?} is not an IP address"))
}

/// The Service's spec, and an error for each port it has but the datapath
/// cannot serve (SCTP), which leaves the others served.
/// In a cluster (`controllers`) the API server checked the object against
/// its own settings (node port range, address families): only what the
/// datapath cannot take is refused.
pub(super) fn validate<'a>(
    service: &'a Sourced<core::Service>,
    opts: &ModelOptions,
) -> Result<(Spec<'a>, Vec<ModelError>), ModelError> {
    let cluster = opts.controllers == Controllers::Cluster;
    // The node port range of the API server is its own setting.
    let node_port_range = if cluster { 1..=u16::MAX } else { NODE_PORT_RANGE };
    let out_of_range = |n: i32| format!("{n} is not in {}-{}", node_port_range.start(), node_port_range.end());
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
    let address = match service_type {
        ServiceType::ExternalName => Address::None,
        ServiceType::ClusterIp if headless_label => Address::None,
        _ => cluster_ips(spec, service_type, opts, &bad)?,
    };

    let raw_ports = spec.ports.as_deref().unwrap_or_default();
    if raw_ports.is_empty() && matches!(address, Address::Families(_)) {
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
                    .filter(|p| node_port_range.contains(p))
                    .ok_or_else(|| bad(&field("nodePort"), out_of_range(n)))?,
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
        // `Proxy`: the load balancer delivers to the node with its own
        // address as destination; capturing the IP would bypass it.
        .filter(|ingress| ingress.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|ingress| ingress.ip.as_deref())
        .map(|ip| ("status.loadBalancer.ingress[].ip", ip));
    let external_ips =
        spec.external_ips.as_deref().unwrap_or_default().iter().map(|ip| ("spec.externalIPs", ip.as_str()));
    let mut all_external_ips = Vec::new();
    for (field, text) in external_ips.chain(load_balancer_ips) {
        match ip(text) {
            Ok(ip) if !all_external_ips.contains(&ip) => all_external_ips.push(ip),
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
        .map(|text| {
            let parsed = if cluster { IpCidr::masked(text.trim()) } else { text.trim().parse::<IpCidr>() };
            parsed.map_err(|e| bad("spec.loadBalancerSourceRanges", e.to_string()))
        })
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
                .filter(|p| node_port_range.contains(p))
                .ok_or_else(|| bad("spec.healthCheckNodePort", out_of_range(n)))?,
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
