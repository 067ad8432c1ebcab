//! Endpoints from Endpoints and EndpointSlice objects.

use super::*;

/// Addresses sharing one list of ports: an Endpoints subset or an EndpointSlice.
#[derive(Default)]
pub(super) struct Group {
    pub(super) backends: Vec<Backend>,
    pub(super) ports: Vec<(String, u16, Protocol)>,
}

pub(super) struct Backend {
    pub(super) addr: IpAddr,
    pub(super) ready: bool,
    pub(super) serving: bool,
    pub(super) terminating: bool,
    pub(super) node_name: Option<String>,
    pub(super) target: Option<String>,
    pub(super) hostname: Option<String>,
    pub(super) hints: Hints,
}

impl Backend {
    /// The backend as an endpoint at `port`.
    pub(super) fn endpoint(&self, port: u16, publish_not_ready: bool) -> Endpoint {
        Endpoint {
            addr: self.addr,
            port,
            ready: publish_not_ready || self.ready,
            serving: self.serving,
            terminating: self.terminating,
            node_name: self.node_name.clone(),
            target: self.target.clone(),
            hostname: self.hostname.clone(),
            hints: self.hints.clone(),
        }
    }
}

impl Group {
    pub(super) fn from_endpoints(endpoints: &Sourced<core::Endpoints>, errors: &mut Vec<ModelError>) -> Vec<Group> {
        let object = format!("Endpoints {}", ServiceName::of(&endpoints.object.metadata));
        let mut groups = Vec::new();
        for (s, subset) in endpoints.object.subsets.iter().flatten().enumerate() {
            let mut group = Group::default();
            let lists =
                [("addresses", &subset.addresses, true), ("notReadyAddresses", &subset.not_ready_addresses, false)];
            for (list, addresses, ready) in lists {
                for (a, address) in addresses.iter().flatten().enumerate() {
                    match ip(&address.ip) {
                        Ok(addr) => group.backends.push(Backend {
                            addr,
                            ready,
                            serving: ready,
                            terminating: false,
                            node_name: address.node_name.clone(),
                            target: address.target_ref.as_ref().and_then(|t| t.name.clone()),
                            hostname: address.hostname.clone(),
                            hints: Hints::default(),
                        }),
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

    pub(super) fn from_slice(slice: &Sourced<EndpointSlice>, errors: &mut Vec<ModelError>) -> Option<Group> {
        let object = format!("EndpointSlice {}", ServiceName::of(&slice.object.metadata));
        // FQDN slices name no address a frontend could use.
        let Ok(family) = Family::parse(&slice.object.address_type) else {
            debug!(%object, address_type = slice.object.address_type, "skipping a slice that is neither IPv4 nor IPv6");
            return None;
        };
        let mut group = Group::default();
        for (e, endpoint) in slice.object.endpoints.iter().flatten().enumerate() {
            // Consumers use only the first address (the others are reserved).
            let field = format!("endpoints[{e}].addresses[0]");
            let addr = match endpoint.addresses.first().map(|a| ip(a)) {
                Some(Ok(addr)) if Family::of(addr) == family => addr,
                Some(Ok(addr)) => {
                    errors.push(invalid(
                        &slice.file,
                        object.clone(),
                        field,
                        format!("{addr} is not {family} like its slice"),
                    ));
                    continue;
                }
                Some(Err(reason)) => {
                    errors.push(invalid(&slice.file, object.clone(), field, reason));
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
                hostname: endpoint.hostname.clone(),
                hints: Hints {
                    zones: endpoint
                        .hints
                        .iter()
                        .flat_map(|h| h.for_zones.iter().flatten())
                        .map(|z| z.name.clone())
                        .collect(),
                    nodes: endpoint
                        .hints
                        .iter()
                        .flat_map(|h| h.for_nodes.iter().flatten())
                        .map(|n| n.name.clone())
                        .collect(),
                },
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
pub(super) fn add_endpoint(endpoints: &mut BTreeMap<(IpAddr, u16), Endpoint>, endpoint: Endpoint) {
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

/// The EndpointSlice annotation the endpoints controllers set to the time of
/// the change (a pod's, a Service's) that made them write the slice last.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Each EndpointSlice's last change trigger time, by namespace and name;
/// slices without one (or with one that does not parse), and headless
/// Services' slices, are left out.
pub fn change_trigger_times(objects: &Objects) -> BTreeMap<(String, String), std::time::SystemTime> {
    objects
        .endpoint_slices
        .iter()
        .filter_map(|slice| {
            let meta = &slice.object.metadata;
            // A headless Service's slices (watched for DNS) program no map.
            if meta.labels.as_ref().is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
                return None;
            }
            let text = meta.annotations.as_ref()?.get(LAST_CHANGE_TRIGGER_TIME)?;
            let time = humantime::parse_rfc3339_weak(text).ok()?;
            Some(((meta.namespace.clone()?, meta.name.clone()?), time))
        })
        .collect()
}

#[cfg(test)]
mod trigger_tests {
    use super::*;

    fn slice(name: &str, trigger: Option<&str>) -> Sourced<EndpointSlice> {
        let annotations = trigger.map(|t| serde_json::json!({ LAST_CHANGE_TRIGGER_TIME: t }));
        let object = serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "addressType": "IPv4",
            "endpoints": [],
        });
        Sourced { file: Arc::from(Path::new("slices.yaml")), object: Arc::new(serde_json::from_value(object).unwrap()) }
    }

    #[test]
    fn trigger_times_are_read_to_the_nanosecond_and_the_unreadable_left_out() {
        let objects = Objects {
            endpoint_slices: vec![
                slice("a", Some("2026-11-30T16:00:00.123456789Z")),
                slice("b", None),
                slice("c", Some("yesterday")),
            ],
            ..Objects::default()
        };
        let times = change_trigger_times(&objects);
        let a = std::time::UNIX_EPOCH + std::time::Duration::new(1_796_054_400, 123_456_789);
        assert_eq!(times, [(("default".to_owned(), "a".to_owned()), a)].into());
    }
}
