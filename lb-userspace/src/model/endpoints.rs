//! Which endpoints a validated Service gets: the objects it may take them
//! from, indexed ([`Index`]), and [`realise`], which turns a [`Spec`] into a
//! [`Service`].

use super::*;

/// The label that ties an EndpointSlice to its Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The objects a service's endpoints may come from.
pub(super) struct Inputs<'a> {
    pub(super) endpoints: Option<&'a Sourced<core::Endpoints>>,
    pub(super) slices: &'a [&'a Sourced<EndpointSlice>],
}

/// The objects endpoints are made from, indexed by what services look them up by.
pub(super) struct Index<'a> {
    /// Pods that can be endpoints, by namespace.
    pub(super) pods: BTreeMap<&'a str, Vec<PodInfo<'a>>>,
    pub(super) endpoints: BTreeMap<(&'a str, &'a str), &'a Sourced<core::Endpoints>>,
    /// By namespace and the `kubernetes.io/service-name` label.
    pub(super) slices: BTreeMap<(&'a str, &'a str), Vec<&'a Sourced<EndpointSlice>>>,
    pub(super) controllers: Controllers,
}

pub(super) fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

impl<'a> Index<'a> {
    pub(super) fn new(objects: &'a Objects, controllers: Controllers, errors: &mut Vec<ModelError>) -> Self {
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
        Index { pods, endpoints, slices, controllers }
    }

    /// The Endpoints object and EndpointSlices named after `service`.
    pub(super) fn inputs<'s>(&'s self, service: &'s ServiceName) -> Inputs<'s> {
        let key = (service.namespace.as_str(), service.name.as_str());
        Inputs {
            endpoints: self.endpoints.get(&key).copied(),
            slices: self.slices.get(&key).map_or(&[], Vec::as_slice),
        }
    }

    /// The Endpoints subsets and EndpointSlices of a service whose
    /// endpoints do not come from pods.
    pub(super) fn manual_groups(&self, service: &ServiceName, errors: &mut Vec<ModelError>) -> Vec<Group> {
        let inputs = self.inputs(service);
        let mut groups = inputs.endpoints.map(|e| Group::from_endpoints(e, errors)).unwrap_or_default();
        for slice in inputs.slices {
            groups.extend(Group::from_slice(slice, errors));
        }
        groups
    }
}

/// A validated spec with its address, plus its endpoints.
pub(super) fn realise(
    spec: Spec<'_>,
    cluster_ips: Vec<IpAddr>,
    index: &Index<'_>,
    errors: &mut Vec<ModelError>,
) -> Service {
    let external = spec.service_type == ServiceType::ExternalName;
    // The selector picks pods only where nobody else turned it into slices.
    let selector = spec.selector.filter(|_| index.controllers == Controllers::Emulated);
    let groups = match selector {
        None if !external => index.manual_groups(&spec.name, errors),
        _ => Vec::new(),
    };
    if selector.is_some()
        && let Some(endpoints) = index.inputs(&spec.name).endpoints
    {
        errors.push(invalid(
            &endpoints.file,
            format!("Endpoints {}", spec.name),
            "subsets",
            format!("ignored: Service {} has a selector, its endpoints come from pods", spec.name),
        ));
    }
    let pods: Vec<&PodInfo> = match selector {
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
    // A headless Service may have no ports; DNS still names its endpoints.
    let portless = spec.ports.is_empty() && cluster_ips.is_empty() && !external;
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
                // One endpoint per family, as the slices of each family list it.
                for addr in &pod.addrs {
                    add_endpoint(&mut endpoints, pod.endpoint(*addr, number, &spec.name.name, spec.publish_not_ready));
                }
            }
            for group in &groups {
                let matching = group.ports.iter().filter(|(name, _, protocol)| {
                    *protocol == port.protocol && (*name == port.name || (single_port && name.is_empty()))
                });
                for (_, number, _) in matching {
                    for b in &group.backends {
                        add_endpoint(&mut endpoints, b.endpoint(*number, spec.publish_not_ready));
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
    let mut portless_endpoints = BTreeMap::new();
    if portless {
        for pod in &pods {
            for addr in &pod.addrs {
                add_endpoint(&mut portless_endpoints, pod.endpoint(*addr, 0, &spec.name.name, spec.publish_not_ready));
            }
        }
        for b in groups.iter().flat_map(|g| &g.backends) {
            add_endpoint(&mut portless_endpoints, b.endpoint(0, spec.publish_not_ready));
        }
    }
    Service {
        name: spec.name,
        service_type: spec.service_type,
        cluster_ips,
        external_name: spec.external_name,
        external_ips: spec.external_ips,
        source_ranges: spec.source_ranges,
        external_traffic_policy: spec.external_traffic_policy,
        internal_traffic_policy: spec.internal_traffic_policy,
        health_check_node_port: spec.health_check_node_port,
        session_affinity: spec.session_affinity,
        backend_selection: spec.backend_selection,
        ports,
        portless_endpoints: portless_endpoints.into_values().collect(),
    }
}
