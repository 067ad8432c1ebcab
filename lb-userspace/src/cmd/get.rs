//! `lb-agent get …`: what the datapath is programmed with, read from the
//! pinned maps (so it works from any process), printed like kubectl does.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use aya::Pod;
use lb_common::{
    CT_FORWARD, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_SYN, CtEntry, CtKey, EP_READY, EP_SERVING,
    EP_TERMINATING, FRONTEND_CLUSTER_IP, FRONTEND_EXTERNAL_IP, FRONTEND_NODE_PORT, FRONTEND_SCOPE_ALL, Frontend,
    IPPROTO_TCP, IPPROTO_UDP, SVC_TYPE_EXTERNAL_NAME, SVC_TYPE_HEADLESS, ServiceMeta, svc_type_name, wire,
};

use crate::{
    datapath::maps::{DatapathMaps, FamilyMaps},
    plan::{AnyFrontendKey, WireAddr, rekey},
};

/// One Service as programmed: the rows of `get services`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProgrammedService {
    pub svc_type: &'static str,
    /// The addresses with their place in `spec.clusterIPs`; `None` for
    /// headless, `<none>` for ExternalName.
    pub cluster_ips: Vec<(u8, String)>,
    /// External and load-balancer IPs.
    pub external_ips: Vec<String>,
    /// "80/TCP"-style entries with the port name when there is one.
    pub ports: Vec<String>,
    pub endpoints: Vec<String>,
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "TCP",
        IPPROTO_UDP => "UDP",
        _ => "?",
    }
}

/// The frontends of both families.
fn frontends(maps: &DatapathMaps) -> anyhow::Result<Vec<(AnyFrontendKey, Frontend)>> {
    fn of<A: WireAddr + Pod>(family: &FamilyMaps<A>) -> anyhow::Result<Vec<(AnyFrontendKey, Frontend)>> {
        family.frontends.iter().map(|entry| Ok(entry.map(|(key, fe)| (rekey(key, key.addr.ip()), fe))?)).collect()
    }
    Ok([of(&maps.v4)?, of(&maps.v6)?].concat())
}

/// Backend `id` of a frontend on `addr` as `addr:port` (`[addr]:port` for
/// IPv6), from that family's map.
fn backend(maps: &DatapathMaps, addr: IpAddr, id: u32) -> Option<String> {
    let backend = if addr.is_ipv6() { maps.v6.backend(id) } else { maps.v4.backend(id) }.ok()?;
    Some(SocketAddr::new(backend.addr, wire::port_number(backend.port)).to_string())
}

/// Services keyed by (namespace, name), from the maps.
pub fn programmed_services(maps: &DatapathMaps) -> anyhow::Result<BTreeMap<(String, String), ProgrammedService>> {
    let mut services: BTreeMap<(String, String), ProgrammedService> = BTreeMap::new();
    for (key, frontend) in frontends(maps)? {
        if key.scope != FRONTEND_SCOPE_ALL {
            // Pods' twins of Local-policy frontends: the same addresses.
            continue;
        }
        let meta =
            maps.service_meta.get(&frontend.frontend_id, 0).unwrap_or_else(|_| ServiceMeta::new("?", "?", "", 0));
        let svc = services.entry((meta.namespace().to_owned(), meta.name().to_owned())).or_default();
        // Node ports show up as the `80:30123/TCP` of the cluster IP's
        // ports, external IPs in their own column.
        match meta.frontend_kind {
            FRONTEND_NODE_PORT => continue,
            FRONTEND_EXTERNAL_IP => {
                svc.external_ips.push(key.addr.to_string());
                continue;
            }
            _ => {}
        }
        svc.svc_type = svc_type_name(meta.svc_type);
        svc.cluster_ips.push((meta.cluster_ip_index, key.addr.to_string()));
        let port = match meta.node_port {
            0 => format!("{}/{}", wire::port_number(key.port), protocol_name(key.proto)),
            node_port => format!("{}:{node_port}/{}", wire::port_number(key.port), protocol_name(key.proto)),
        };
        svc.ports.push(match meta.port_name() {
            "" => port,
            name => format!("{name}:{port}"),
        });
        for index in 0..u32::from(frontend.backend_count) {
            let endpoint = maps
                .backend_slots
                .get(frontend.slots_offset.saturating_add(index))
                .ok()
                .and_then(|id| backend(maps, key.addr, id))
                .unwrap_or_else(|| "<missing>".into());
            svc.endpoints.push(endpoint);
        }
    }
    // Services without a frontend have only their meta entry.
    for entry in maps.service_meta.iter() {
        let (_, meta) = entry?;
        let key = (meta.namespace().to_owned(), meta.name().to_owned());
        let cluster_ip = match meta.svc_type {
            SVC_TYPE_HEADLESS => "None",
            SVC_TYPE_EXTERNAL_NAME => "<none>",
            _ => continue,
        };
        services.insert(
            key,
            ProgrammedService {
                svc_type: svc_type_name(meta.svc_type),
                cluster_ips: vec![(0, cluster_ip.into())],
                ..Default::default()
            },
        );
    }
    for svc in services.values_mut() {
        // The primary family's first, once for all the Service's ports.
        svc.cluster_ips.sort();
        svc.cluster_ips.dedup();
        svc.external_ips.sort();
        svc.external_ips.dedup();
        svc.ports.sort();
        svc.endpoints.sort();
        svc.endpoints.dedup();
    }
    Ok(services)
}

pub fn format_services(services: &BTreeMap<(String, String), ProgrammedService>) -> String {
    let list = |items: &[String]| if items.is_empty() { "<none>".to_owned() } else { items.join(",") };
    let rows: Vec<[String; 7]> = services
        .iter()
        .map(|((ns, name), svc)| {
            let (external, ports, endpoints) = (list(&svc.external_ips), list(&svc.ports), list(&svc.endpoints));
            let cluster_ips: Vec<&str> = svc.cluster_ips.iter().map(|(_, ip)| ip.as_str()).collect();
            [ns.clone(), name.clone(), svc.svc_type.into(), cluster_ips.join(","), external, ports, endpoints]
        })
        .collect();
    table(["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS"], &rows)
}

/// The programmed Services as `lb-agent env` needs them: the primary
/// family's cluster IP (`clusterIPs[0]`, as kubelet uses) and ports in
/// `spec.ports` order.
pub fn env_services(maps: &DatapathMaps) -> anyhow::Result<Vec<crate::cmd::env::EnvService>> {
    // (port index, name, port, protocol): sorted back into spec order below.
    type IndexedPort = (u8, String, u16, String);
    let mut ports: BTreeMap<(String, String), (String, Vec<IndexedPort>)> = BTreeMap::new();
    for (key, frontend) in frontends(maps)? {
        let Ok(meta) = maps.service_meta.get(&frontend.frontend_id, 0) else { continue };
        if meta.frontend_kind != FRONTEND_CLUSTER_IP || meta.cluster_ip_index != 0 {
            continue;
        }
        let ip = key.addr.to_string();
        let (_, list) = ports.entry((meta.namespace().to_owned(), meta.name().to_owned())).or_insert((ip, Vec::new()));
        let port = (
            meta.port_index,
            meta.port_name().to_owned(),
            wire::port_number(key.port),
            protocol_name(key.proto).into(),
        );
        list.push(port);
    }
    Ok(ports
        .into_iter()
        .map(|((namespace, name), (cluster_ip, mut list))| {
            list.sort();
            let ports = list.into_iter().map(|(_, name, port, proto)| (name, port, proto)).collect();
            crate::cmd::env::EnvService { namespace, name, cluster_ip, ports }
        })
        .collect())
}

/// `get endpoints`: every endpoint of every Service port with its
/// conditions, like `kubectl get endpointslices -o wide` would show them.
pub fn format_endpoints(maps: &DatapathMaps) -> anyhow::Result<String> {
    let mut rows: Vec<[String; 8]> = Vec::new();
    for entry in maps.endpoints.iter() {
        let (key, ep) = entry?;
        let meta = maps.service_meta.get(&key.frontend_id, 0).unwrap_or_else(|_| ServiceMeta::new("?", "?", "", 0));
        let flag = |bit: u8| (ep.conditions & bit != 0).to_string();
        let port_name = if meta.port_name().is_empty() { "-" } else { meta.port_name() };
        rows.push([
            meta.namespace().to_owned(),
            meta.name().to_owned(),
            port_name.to_owned(),
            SocketAddr::new(std::net::Ipv6Addr::from(ep.addr).to_canonical(), wire::port_number(ep.port)).to_string(),
            flag(EP_READY),
            flag(EP_SERVING),
            flag(EP_TERMINATING),
            if ep.target().is_empty() { "-".to_owned() } else { ep.target().to_owned() },
        ]);
    }
    rows.sort();
    Ok(table(["NAMESPACE", "NAME", "PORT", "ENDPOINT", "READY", "SERVING", "TERMINATING", "TARGET"], &rows))
}

/// Packets per verdict reason and hook, then how the rewritten ones left.
pub fn format_counters(
    counters: &[(lb_common::Reason, [u64; lb_common::Hook::COUNT as usize])],
    fast_path: &[(lb_common::FastPath, u64)],
) -> String {
    let rows: Vec<[String; 5]> = counters
        .iter()
        .map(|(r, [node, pod, egress, socket])| {
            [r.name().to_owned(), node.to_string(), pod.to_string(), egress.to_string(), socket.to_string()]
        })
        .collect();
    let fast_rows: Vec<[String; 2]> = fast_path.iter().map(|(f, n)| [f.name().to_owned(), n.to_string()]).collect();
    let hooks = lb_common::Hook::ALL.map(lb_common::Hook::name);
    let header = ["REASON", hooks[0], hooks[1], hooks[2], hooks[3]];
    format!("{}\n{}", table(header, &rows), table(["SENT-BY", "PACKETS"], &fast_rows))
}

/// Which flows `get conntrack` lists; every given filter must match.
#[derive(Clone, Debug, Default)]
pub struct ConntrackFilter {
    /// (namespace, name) of the Service.
    pub service: Option<(String, String)>,
    pub client: Option<IpAddr>,
    pub backend: Option<IpAddr>,
    pub proto: Option<u8>,
}

/// One flow: its forward entry, keyed by the client's packet.
struct Flow<A: lb_common::Addr> {
    key: CtKey<A>,
    entry: CtEntry<A>,
    meta: ServiceMeta,
}

impl ConntrackFilter {
    fn matches<A: WireAddr>(&self, flow: &Flow<A>) -> bool {
        self.service.as_ref().is_none_or(|(ns, name)| flow.meta.namespace() == ns && flow.meta.name() == name)
            && self.client.is_none_or(|c| flow.key.saddr.ip() == c)
            && self.backend.is_none_or(|b| flow.entry.nat_addr.ip() == b)
            && self.proto.is_none_or(|p| flow.key.proto == p)
    }
}

/// The flows in conntrack of both families (one row per flow, from its
/// forward entry), then the totals: entries, created by the datapath,
/// removed by agents (expired or flushed), and the evictions the LRUs made
/// room with, estimated as created - removed - present.
pub fn format_conntrack(maps: &DatapathMaps, filter: &ConntrackFilter, now_ns: u64) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    let entries =
        flow_rows(maps, &maps.v4, filter, now_ns, &mut rows)? + flow_rows(maps, &maps.v6, filter, now_ns, &mut rows)?;
    rows.sort();
    let (created, removed) = maps.conntrack_totals()?;
    let evicted = created.saturating_sub(removed).saturating_sub(entries);
    let header = ["PROTO", "CLIENT", "FRONTEND", "BACKEND", "SOURCE-AS", "SERVICE", "STATE", "AGE", "IDLE"];
    let mut out = table(header, &rows);
    let _ = writeln!(
        out,
        "\n{} flows shown; {entries} entries; created {created}, removed {removed}, evicted ~{evicted}",
        rows.len()
    );
    Ok(out)
}

/// Adds the rows of `family`'s flows that match `filter`; how many
/// entries it has.
fn flow_rows<A: WireAddr + Pod>(
    maps: &DatapathMaps,
    family: &FamilyMaps<A>,
    filter: &ConntrackFilter,
    now_ns: u64,
    rows: &mut Vec<[String; 9]>,
) -> anyhow::Result<u64> {
    let endpoint = |addr: A, port: u16| SocketAddr::new(addr.ip(), wire::port_number(port)).to_string();
    let seconds = |since: u64| format!("{}s", now_ns.saturating_sub(since) / 1_000_000_000);
    let mut entries = 0u64;
    for item in family.conntrack.iter() {
        let (key, entry) = item?;
        entries += 1;
        if entry.direction != CT_FORWARD {
            continue;
        }
        let meta = maps.service_meta.get(&entry.frontend_id, 0).unwrap_or_else(|_| ServiceMeta::new("?", "?", "", 0));
        let flow = Flow { key, entry, meta };
        if !filter.matches(&flow) {
            continue;
        }
        let service = match flow.meta.port_name() {
            "" => format!("{}/{}", flow.meta.namespace(), flow.meta.name()),
            port => format!("{}/{}:{port}", flow.meta.namespace(), flow.meta.name()),
        };
        let source = entry.other().map_or_else(|| "-".to_owned(), |(addr, port)| endpoint(addr, port));
        rows.push([
            protocol_name(key.proto).to_owned(),
            endpoint(key.saddr, key.sport),
            endpoint(key.daddr, key.dport),
            endpoint(entry.nat_addr, entry.nat_port),
            source,
            service,
            state_name(key.proto, entry.state).to_owned(),
            seconds(entry.created_ns),
            seconds(entry.last_seen_ns),
        ]);
    }
    Ok(entries)
}

fn state_name(proto: u8, state: u8) -> &'static str {
    match (proto, state) {
        (IPPROTO_TCP, CT_STATE_SYN) => "SYN",
        (IPPROTO_TCP, CT_STATE_ESTABLISHED) => "ESTABLISHED",
        (IPPROTO_TCP, CT_STATE_CLOSING) => "CLOSING",
        _ => "-",
    }
}

/// Left-aligned columns separated by three spaces, like kubectl.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}   ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_print_like_kubectl() {
        let mut services = BTreeMap::new();
        services.insert(
            ("default".to_owned(), "kubia".to_owned()),
            ProgrammedService {
                svc_type: "LoadBalancer",
                cluster_ips: vec![(0, "10.96.0.10".into()), (1, "fd00:10:96::a".into())],
                external_ips: vec!["203.0.113.10".into()],
                ports: vec!["80:30123/TCP".into()],
                endpoints: vec!["10.244.0.2:8080".into(), "10.244.0.3:8080".into()],
            },
        );
        services.insert(
            ("default".to_owned(), "empty".to_owned()),
            ProgrammedService {
                svc_type: "ClusterIP",
                cluster_ips: vec![(0, "10.96.0.11".into())],
                ports: vec!["http:80/TCP".into()],
                ..Default::default()
            },
        );
        let out = format_services(&services);
        assert_eq!(
            out,
            "NAMESPACE   NAME    TYPE           CLUSTER-IP                 EXTERNAL-IP    PORT(S)        ENDPOINTS\n\
             default     empty   ClusterIP      10.96.0.11                 <none>         http:80/TCP    <none>\n\
             default     kubia   LoadBalancer   10.96.0.10,fd00:10:96::a   203.0.113.10   80:30123/TCP   10.244.0.2:8080,10.244.0.3:8080\n"
        );
    }
}
