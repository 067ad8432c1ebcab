//! Endpoints from Pods a Service's selector picks (the standalone source's
//! endpoints controller).

use super::*;

pub(super) struct PodInfo<'a> {
    pub(super) name: &'a str,
    pub(super) labels: Option<&'a BTreeMap<String, String>>,
    /// `status.podIPs`: at most one per family.
    pub(super) addrs: Vec<IpAddr>,
    /// The pod's `Ready` condition.
    pub(super) ready: bool,
    pub(super) terminating: bool,
    pub(super) node_name: Option<&'a str>,
    pub(super) containers: &'a [core::Container],
    /// `spec.hostname` and `spec.subdomain`.
    hostname: Option<&'a str>,
    subdomain: Option<&'a str>,
}

impl<'a> PodInfo<'a> {
    /// `None` for a pod that cannot be an endpoint (finished, no address yet).
    pub(super) fn new(pod: &'a Sourced<core::Pod>) -> Result<Option<Self>, ModelError> {
        let meta = &pod.object.metadata;
        let name = meta.name.as_deref().unwrap_or_default();
        let status = pod.object.status.as_ref();
        if let Some(phase @ ("Succeeded" | "Failed")) = status.and_then(|s| s.phase.as_deref()) {
            debug!(pod = name, phase, "pod has finished: not an endpoint");
            return Ok(None);
        }
        // `podIP` is `podIPs[0]`; either may be written alone.
        let ips = status
            .and_then(|s| s.pod_ip.as_deref())
            .into_iter()
            .chain(status.and_then(|s| s.pod_ips.as_deref()).unwrap_or_default().iter().map(|ip| ip.ip.as_str()));
        let mut addrs: Vec<IpAddr> = Vec::with_capacity(2);
        for text in ips {
            let parsed = ip(text).map_err(|reason| {
                invalid(&pod.file, format!("Pod {}", ServiceName::of(meta)), "status.podIPs", reason)
            })?;
            if !addrs.iter().any(|a| Family::of(*a) == Family::of(parsed)) {
                addrs.push(parsed);
            }
        }
        if addrs.is_empty() {
            debug!(pod = name, "pod has no address: not an endpoint");
            return Ok(None);
        }
        let ready = status
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let spec = pod.object.spec.as_ref();
        Ok(Some(PodInfo {
            name,
            labels: meta.labels.as_ref(),
            addrs,
            ready,
            terminating: meta.deletion_timestamp.is_some(),
            node_name: spec.and_then(|s| s.node_name.as_deref()),
            containers: spec.map(|s| s.containers.as_slice()).unwrap_or_default(),
            hostname: spec.and_then(|s| s.hostname.as_deref()),
            subdomain: spec.and_then(|s| s.subdomain.as_deref()),
        }))
    }

    pub(super) fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.and_then(|l| l.get(k)) == Some(v))
    }

    /// The pod as an endpoint of `service` at `addr`:`port`, as the
    /// endpoints controller makes it (its hostname only when its subdomain
    /// is that Service).
    pub(super) fn endpoint(&self, addr: IpAddr, port: u16, service: &str, publish_not_ready: bool) -> Endpoint {
        Endpoint {
            addr,
            port,
            ready: publish_not_ready || (self.ready && !self.terminating),
            serving: self.ready,
            terminating: self.terminating,
            node_name: self.node_name.map(str::to_owned),
            target: Some(self.name.to_owned()),
            hostname: self.hostname.filter(|_| self.subdomain == Some(service)).map(str::to_owned),
            hints: Hints::default(),
        }
    }

    /// The number a container port name stands for in this pod.
    pub(super) fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.containers
            .iter()
            .flat_map(|c| c.ports.as_deref().unwrap_or_default())
            .find(|p| p.name.as_deref() == Some(name) && Protocol::parse(p.protocol.as_deref()) == Ok(protocol))
            .and_then(|p| port_number(p.container_port))
    }
}

/// Each namespace's pods, in directory order.
pub(super) fn pods_by_namespace(objects: &Objects) -> HashMap<String, Vec<Arc<core::Pod>>> {
    let mut pods: HashMap<String, Vec<Arc<core::Pod>>> = HashMap::new();
    for pod in &objects.pods {
        pods.entry(namespace(&pod.object.metadata).to_owned()).or_default().push(Arc::clone(&pod.object));
    }
    pods
}
