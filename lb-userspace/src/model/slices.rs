//! Endpoints from Endpoints and EndpointSlice objects.

use super::*;

/// Addresses sharing one list of ports: an Endpoints subset or an EndpointSlice.
#[derive(Default)]
pub(super) struct Group {
    pub(super) backends: Vec<Backend>,
    pub(super) ports: Vec<(String, u16, Protocol)>,
}

pub(super) struct Backend {
    pub(super) addr: Ipv4Addr,
    pub(super) ready: bool,
    pub(super) serving: bool,
    pub(super) terminating: bool,
    pub(super) node_name: Option<String>,
    pub(super) target: Option<String>,
    pub(super) hints: Hints,
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
                    match ipv4(&address.ip) {
                        Ok(Some(addr)) => group.backends.push(Backend {
                            addr,
                            ready,
                            serving: ready,
                            terminating: false,
                            node_name: address.node_name.clone(),
                            target: address.target_ref.as_ref().and_then(|t| t.name.clone()),
                            hints: Hints::default(),
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

    pub(super) fn from_slice(slice: &Sourced<EndpointSlice>, errors: &mut Vec<ModelError>) -> Option<Group> {
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
pub(super) fn add_endpoint(endpoints: &mut BTreeMap<(Ipv4Addr, u16), Endpoint>, endpoint: Endpoint) {
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
