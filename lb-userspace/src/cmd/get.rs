//! `lb-agent get …`: what the datapath is programmed with, read from the
//! pinned maps (so it works from any process), printed like kubectl does:
//! a table, a wider one (`-o wide`), or the same rows as JSON or YAML
//! (`-o json|yaml`) to script against, `{"kind": .., "items": [..]}` for
//! the listings of Services and endpoints, field names in camelCase.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use aya::Pod;
use lb_common::{
    CT_FORWARD, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_SYN, CtEntry, CtKey, EP_READY, EP_SERVING,
    EP_TERMINATING, FRONTEND_CLUSTER_IP, FRONTEND_EXTERNAL_IP, FRONTEND_NODE_PORT, FRONTEND_SCOPE_ALL, FastPath,
    Frontend, Hook, IPPROTO_TCP, IPPROTO_UDP, Reason, SVC_TYPE_EXTERNAL_NAME, SVC_TYPE_HEADLESS, ServiceMeta,
    svc_type_name, wire,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::maps::{DatapathMaps, FamilyMaps},
    ingress::table::ServedIngress,
    plan::{AnyFrontendKey, WireAddr, rekey},
};

/// How `get` prints (kubectl's `-o`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    /// The table with the columns it leaves out (services: session
    /// affinity and backend selection).
    Wide,
    Json,
    Yaml,
}

/// A listing as `-o json` and `-o yaml` print it.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct List<T> {
    pub kind: String,
    pub items: Vec<T>,
}

/// `value` as JSON or YAML; None for the tables.
pub(super) fn structured<T: Serialize>(value: &T, output: Output) -> anyhow::Result<Option<String>> {
    Ok(match output {
        Output::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Output::Yaml => Some(serde_yaml_ng::to_string(value)?),
        Output::Table | Output::Wide => None,
    })
}

/// One Service as programmed: a row of `get services`.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgrammedService {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub svc_type: String,
    /// In `spec.clusterIPs` order; `None` for headless, `<none>` for ExternalName.
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    /// External and load-balancer IPs.
    #[serde(rename = "externalIPs")]
    pub external_ips: Vec<String>,
    /// "80/TCP"-style entries, with the node port and the port name when there are.
    pub ports: Vec<String>,
    /// `addr:port` of every backend new flows may go to.
    pub endpoints: Vec<String>,
    /// `sessionAffinity: ClientIP`'s timeout, when set.
    pub session_affinity_timeout_seconds: Option<u32>,
    /// How new flows pick among the endpoints: `maglev` or `random`; none
    /// without endpoints.
    pub backend_selection: Option<String>,
}

pub(super) fn protocol_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "TCP",
        IPPROTO_UDP => "UDP",
        _ => "?",
    }
}

/// The frontends of both families.
pub(super) fn frontends(maps: &DatapathMaps) -> anyhow::Result<Vec<(AnyFrontendKey, Frontend)>> {
    fn of<A: WireAddr + Pod>(family: &FamilyMaps<A>) -> anyhow::Result<Vec<(AnyFrontendKey, Frontend)>> {
        family.frontends.iter().map(|entry| Ok(entry.map(|(key, fe)| (rekey(key, key.addr.ip()), fe))?)).collect()
    }
    Ok([of(&maps.v4)?, of(&maps.v6)?].concat())
}

/// The meta of `frontend_id`; `?` for the names of one that has none.
fn meta_of(maps: &DatapathMaps, frontend_id: u32) -> ServiceMeta {
    maps.service_meta.get(&frontend_id, 0).unwrap_or_else(|_| ServiceMeta::new("?", "?", "", 0))
}

/// A table cell for what may be absent.
fn dash(text: &Option<String>) -> String {
    text.clone().unwrap_or_else(|| "-".into())
}

/// Backend `id` of a frontend on `addr` as `addr:port` (`[addr]:port` for
/// IPv6), from that family's map.
fn backend(maps: &DatapathMaps, addr: IpAddr, id: u32) -> Option<String> {
    let backend = if addr.is_ipv6() { maps.v6.backend(id) } else { maps.v4.backend(id) }.ok()?;
    Some(SocketAddr::new(backend.addr, wire::port_number(backend.port)).to_string())
}

/// The programmed Services, by namespace and name.
pub fn programmed_services(maps: &DatapathMaps) -> anyhow::Result<Vec<ProgrammedService>> {
    /// A Service, and its cluster IPs with their places in `spec.clusterIPs`.
    type Building = (ProgrammedService, Vec<(u8, String)>);
    let mut services: BTreeMap<(String, String), Building> = BTreeMap::new();
    for (key, frontend) in frontends(maps)? {
        if key.scope != FRONTEND_SCOPE_ALL {
            // Pods' twins of Local-policy frontends: the same addresses.
            continue;
        }
        let meta = meta_of(maps, frontend.frontend_id);
        let (svc, cluster_ips) = services
            .entry((meta.namespace().to_owned(), meta.name().to_owned()))
            .or_insert_with(|| (ProgrammedService::named(&meta), Vec::new()));
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
        svc.svc_type = svc_type_name(meta.svc_type).to_owned();
        cluster_ips.push((meta.cluster_ip_index, key.addr.to_string()));
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
        if frontend.affinity_timeout_s != 0 {
            svc.session_affinity_timeout_seconds = Some(frontend.affinity_timeout_s);
        }
        if frontend.backend_count != 0 {
            let selection = if frontend.maglev_size != 0 { "maglev" } else { "random" };
            svc.backend_selection = Some(selection.to_owned());
        }
    }
    // Services without a frontend have only their meta entry.
    for entry in maps.service_meta.iter() {
        let (_, meta) = entry?;
        // As the API has them: `None` for headless, none for ExternalName.
        let cluster_ips = match meta.svc_type {
            SVC_TYPE_HEADLESS => vec![(0, "None".to_owned())],
            SVC_TYPE_EXTERNAL_NAME => Vec::new(),
            _ => continue,
        };
        let svc =
            ProgrammedService { svc_type: svc_type_name(meta.svc_type).to_owned(), ..ProgrammedService::named(&meta) };
        services.insert((svc.namespace.clone(), svc.name.clone()), (svc, cluster_ips));
    }
    Ok(services
        .into_values()
        .map(|(mut svc, mut cluster_ips)| {
            // The primary family's first, once for all the Service's ports.
            cluster_ips.sort();
            cluster_ips.dedup();
            svc.cluster_ips = cluster_ips.into_iter().map(|(_, ip)| ip).collect();
            svc.external_ips.sort();
            svc.external_ips.dedup();
            svc.ports.sort();
            svc.endpoints.sort();
            svc.endpoints.dedup();
            svc
        })
        .collect())
}

impl ProgrammedService {
    /// The Service `meta` belongs to, nothing programmed yet.
    fn named(meta: &ServiceMeta) -> Self {
        ProgrammedService { namespace: meta.namespace().to_owned(), name: meta.name().to_owned(), ..Default::default() }
    }
}

/// `get services`.
pub fn format_services(services: Vec<ProgrammedService>, output: Output) -> anyhow::Result<String> {
    let list = List { kind: "ServiceList".into(), items: services };
    if let Some(text) = structured(&list, output)? {
        return Ok(text);
    }
    let joined = |items: &[String]| if items.is_empty() { "<none>".to_owned() } else { items.join(",") };
    let header = ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS"];
    let row = |svc: &ProgrammedService| {
        [
            svc.namespace.clone(),
            svc.name.clone(),
            svc.svc_type.clone(),
            joined(&svc.cluster_ips),
            joined(&svc.external_ips),
            joined(&svc.ports),
            joined(&svc.endpoints),
        ]
    };
    if output == Output::Table {
        return Ok(table(header, &list.items.iter().map(row).collect::<Vec<_>>()));
    }
    let wide = |svc: &ProgrammedService| {
        let affinity = svc.session_affinity_timeout_seconds.map_or_else(|| "None".into(), |s| format!("ClientIP/{s}s"));
        let [a, b, c, d, e, f, g] = row(svc);
        [a, b, c, d, e, f, g, affinity, svc.backend_selection.clone().unwrap_or_else(|| "-".into())]
    };
    let [a, b, c, d, e, f, g] = header;
    Ok(table([a, b, c, d, e, f, g, "AFFINITY", "SELECTION"], &list.items.iter().map(wide).collect::<Vec<_>>()))
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

/// One endpoint of a Service port: a row of `get endpoints`.
#[derive(Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgrammedEndpoint {
    pub namespace: String,
    pub name: String,
    /// The Service port's name, when it has one.
    pub port: Option<String>,
    /// `addr:port`.
    pub endpoint: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The pod (`targetRef`), when known.
    pub target: Option<String>,
}

/// Every endpoint of every Service port with its conditions, like
/// `kubectl get endpointslices -o wide` would show them.
pub fn programmed_endpoints(maps: &DatapathMaps) -> anyhow::Result<Vec<ProgrammedEndpoint>> {
    let mut endpoints = Vec::new();
    for entry in maps.endpoints.iter() {
        let (key, ep) = entry?;
        let meta = meta_of(maps, key.frontend_id);
        let some = |text: &str| (!text.is_empty()).then(|| text.to_owned());
        endpoints.push(ProgrammedEndpoint {
            namespace: meta.namespace().to_owned(),
            name: meta.name().to_owned(),
            port: some(meta.port_name()),
            endpoint: endpoint_address(&ep).to_string(),
            ready: ep.conditions & EP_READY != 0,
            serving: ep.conditions & EP_SERVING != 0,
            terminating: ep.conditions & EP_TERMINATING != 0,
            target: some(ep.target()),
        });
    }
    endpoints.sort();
    Ok(endpoints)
}

/// Where an endpoint listing entry points: its address (IPv4 ones are
/// held as IPv4-mapped IPv6) and port.
pub(super) fn endpoint_address(ep: &lb_common::EndpointMeta) -> SocketAddr {
    SocketAddr::new(std::net::Ipv6Addr::from(ep.addr).to_canonical(), wire::port_number(ep.port))
}

/// `get endpoints`.
pub fn format_endpoints(endpoints: Vec<ProgrammedEndpoint>, output: Output) -> anyhow::Result<String> {
    let list = List { kind: "EndpointList".into(), items: endpoints };
    if let Some(text) = structured(&list, output)? {
        return Ok(text);
    }
    let rows: Vec<[String; 8]> = list
        .items
        .iter()
        .map(|ep| {
            [
                ep.namespace.clone(),
                ep.name.clone(),
                dash(&ep.port),
                ep.endpoint.clone(),
                ep.ready.to_string(),
                ep.serving.to_string(),
                ep.terminating.to_string(),
                dash(&ep.target),
            ]
        })
        .collect();
    Ok(table(["NAMESPACE", "NAME", "PORT", "ENDPOINT", "READY", "SERVING", "TERMINATING", "TARGET"], &rows))
}

/// The datapath's counters: `get counters`.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Packets per verdict reason, by hook (`XDP-NODE`, `TC-POD`, `TC-EGRESS`, `SOCKET`).
    pub reasons: Vec<ReasonCount>,
    /// Rewritten packets by the way they left.
    pub sent: Vec<SentCount>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub packets: BTreeMap<String, u64>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentCount {
    pub sent_by: String,
    pub packets: u64,
}

/// The counters, summed over CPUs.
pub fn counters(maps: &DatapathMaps) -> anyhow::Result<Counters> {
    use anyhow::Context as _;
    let reasons = maps.counters().context("reading counters")?;
    let sent_by = maps.fast_path_counters().context("reading fast path counters")?;
    Ok(Counters {
        reasons: reasons
            .into_iter()
            .map(|(reason, per_hook): (Reason, _)| ReasonCount {
                reason: reason.name().to_owned(),
                packets: Hook::ALL.iter().map(|h| h.name().to_owned()).zip(per_hook).collect(),
            })
            .collect(),
        sent: sent_by
            .into_iter()
            .map(|(way, packets): (FastPath, u64)| SentCount { sent_by: way.name().to_owned(), packets })
            .collect(),
    })
}

/// Packets per verdict reason and hook, then how the rewritten ones left.
pub fn format_counters(counters: &Counters, output: Output) -> anyhow::Result<String> {
    if let Some(text) = structured(counters, output)? {
        return Ok(text);
    }
    let hooks = Hook::ALL.map(Hook::name);
    let rows: Vec<[String; 5]> = counters
        .reasons
        .iter()
        .map(|r| {
            let n = |hook: &str| r.packets.get(hook).copied().unwrap_or(0).to_string();
            [r.reason.clone(), n(hooks[0]), n(hooks[1]), n(hooks[2]), n(hooks[3])]
        })
        .collect();
    let sent: Vec<[String; 2]> = counters.sent.iter().map(|w| [w.sent_by.clone(), w.packets.to_string()]).collect();
    let header = ["REASON", hooks[0], hooks[1], hooks[2], hooks[3]];
    Ok(format!("{}\n{}", table(header, &rows), table(["SENT-BY", "PACKETS"], &sent)))
}

/// `get ingresses`, as `kubectl get ingress` prints them (with the
/// namespace first); the JSON and YAML give every field.
pub fn format_ingresses(ingresses: Vec<ServedIngress>, output: Output) -> anyhow::Result<String> {
    let joined = |items: Vec<String>| items.join(",");
    let rows: Vec<[String; 6]> = ingresses
        .iter()
        .map(|i| {
            [
                i.namespace.clone(),
                i.name.clone(),
                i.class.clone().unwrap_or_else(|| "<none>".into()),
                joined(i.hosts.clone()),
                joined(i.address.iter().map(ToString::to_string).collect()),
                i.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            ]
        })
        .collect();
    if let Some(text) = structured(&List { kind: "IngressList".into(), items: ingresses }, output)? {
        return Ok(text);
    }
    Ok(table(["NAMESPACE", "NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS"], &rows))
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

/// One flow, from its forward entry: a row of `get conntrack`.
#[derive(Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgrammedFlow {
    pub protocol: String,
    /// `addr:port` of the client as its packets arrive.
    pub client: String,
    /// The frontend it asked for.
    pub frontend: String,
    /// The backend it was sent to.
    pub backend: String,
    /// The source the backend sees, when it is not the client (SNAT).
    pub source_as: Option<String>,
    /// `namespace/name`, with `:port-name` when the port has one.
    pub service: String,
    /// TCP's `SYN`, `ESTABLISHED` or `CLOSING`; none for UDP.
    pub state: Option<String>,
    pub age_seconds: u64,
    pub idle_seconds: u64,
}

/// The flows in conntrack of both families that match a filter, and the
/// totals: entries, created by the datapath, removed by agents (expired or
/// flushed), and the evictions the LRUs made room with, estimated as
/// created - removed - present.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conntrack {
    pub flows: Vec<ProgrammedFlow>,
    pub entries: u64,
    pub created: u64,
    pub removed: u64,
    pub evicted: u64,
}

/// What `get conntrack` shows.
pub fn conntrack(maps: &DatapathMaps, filter: &ConntrackFilter, now_ns: u64) -> anyhow::Result<Conntrack> {
    let mut flows = Vec::new();
    let entries =
        flows_of(maps, &maps.v4, filter, now_ns, &mut flows)? + flows_of(maps, &maps.v6, filter, now_ns, &mut flows)?;
    flows.sort();
    let (created, removed) = maps.conntrack_totals()?;
    let evicted = maps.conntrack_evicted(entries)?;
    Ok(Conntrack { flows, entries, created, removed, evicted })
}

/// `get conntrack`.
pub fn format_conntrack(conntrack: &Conntrack, output: Output) -> anyhow::Result<String> {
    if let Some(text) = structured(conntrack, output)? {
        return Ok(text);
    }
    let rows: Vec<[String; 9]> = conntrack
        .flows
        .iter()
        .map(|f| {
            [
                f.protocol.clone(),
                f.client.clone(),
                f.frontend.clone(),
                f.backend.clone(),
                dash(&f.source_as),
                f.service.clone(),
                dash(&f.state),
                format!("{}s", f.age_seconds),
                format!("{}s", f.idle_seconds),
            ]
        })
        .collect();
    let header = ["PROTO", "CLIENT", "FRONTEND", "BACKEND", "SOURCE-AS", "SERVICE", "STATE", "AGE", "IDLE"];
    let mut out = table(header, &rows);
    let Conntrack { entries, created, removed, evicted, .. } = conntrack;
    let _ = writeln!(
        out,
        "\n{} flows shown; {entries} entries; created {created}, removed {removed}, evicted ~{evicted}",
        rows.len()
    );
    Ok(out)
}

/// Adds the flows of `family` that match `filter`; how many entries it has.
fn flows_of<A: WireAddr + Pod>(
    maps: &DatapathMaps,
    family: &FamilyMaps<A>,
    filter: &ConntrackFilter,
    now_ns: u64,
    flows: &mut Vec<ProgrammedFlow>,
) -> anyhow::Result<u64> {
    let endpoint = |addr: A, port: u16| SocketAddr::new(addr.ip(), wire::port_number(port)).to_string();
    let seconds = |since: u64| now_ns.saturating_sub(since) / 1_000_000_000;
    let mut entries = 0u64;
    for item in family.conntrack.iter() {
        let (key, entry) = item?;
        entries += 1;
        if entry.direction != CT_FORWARD {
            continue;
        }
        let meta = meta_of(maps, entry.frontend_id);
        let flow = Flow { key, entry, meta };
        if !filter.matches(&flow) {
            continue;
        }
        let service = match flow.meta.port_name() {
            "" => format!("{}/{}", flow.meta.namespace(), flow.meta.name()),
            port => format!("{}/{}:{port}", flow.meta.namespace(), flow.meta.name()),
        };
        flows.push(ProgrammedFlow {
            protocol: protocol_name(key.proto).to_owned(),
            client: endpoint(key.saddr, key.sport),
            frontend: endpoint(key.daddr, key.dport),
            backend: endpoint(entry.nat_addr, entry.nat_port),
            source_as: entry.other().map(|(addr, port)| endpoint(addr, port)),
            service,
            state: state_name(key.proto, entry.state).map(str::to_owned),
            age_seconds: seconds(entry.created_ns),
            idle_seconds: seconds(entry.last_seen_ns),
        });
    }
    Ok(entries)
}

fn state_name(proto: u8, state: u8) -> Option<&'static str> {
    match (proto, state) {
        (IPPROTO_TCP, CT_STATE_SYN) => Some("SYN"),
        (IPPROTO_TCP, CT_STATE_ESTABLISHED) => Some("ESTABLISHED"),
        (IPPROTO_TCP, CT_STATE_CLOSING) => Some("CLOSING"),
        _ => None,
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

    fn services() -> Vec<ProgrammedService> {
        let service = |name: &str, svc_type: &str| ProgrammedService {
            namespace: "default".into(),
            name: name.into(),
            svc_type: svc_type.into(),
            ..Default::default()
        };
        vec![
            ProgrammedService {
                cluster_ips: vec!["10.96.0.11".into()],
                ports: vec!["http:80/TCP".into()],
                ..service("empty", "ClusterIP")
            },
            ProgrammedService {
                cluster_ips: vec!["10.96.0.10".into(), "fd00:10:96::a".into()],
                external_ips: vec!["203.0.113.10".into()],
                ports: vec!["80:30123/TCP".into()],
                endpoints: vec!["10.244.0.2:8080".into(), "10.244.0.3:8080".into()],
                session_affinity_timeout_seconds: Some(10800),
                backend_selection: Some("maglev".into()),
                ..service("kubia", "LoadBalancer")
            },
        ]
    }

    #[test]
    fn services_print_like_kubectl() {
        assert_eq!(
            format_services(services(), Output::Table).unwrap(),
            "NAMESPACE   NAME    TYPE           CLUSTER-IP                 EXTERNAL-IP    PORT(S)        ENDPOINTS\n\
             default     empty   ClusterIP      10.96.0.11                 <none>         http:80/TCP    <none>\n\
             default     kubia   LoadBalancer   10.96.0.10,fd00:10:96::a   203.0.113.10   80:30123/TCP   10.244.0.2:8080,10.244.0.3:8080\n"
        );
        let wide = format_services(services(), Output::Wide).unwrap();
        let kubia = wide.lines().find(|l| l.contains("kubia")).unwrap();
        assert!(kubia.ends_with("ClientIP/10800s   maglev"), "{wide}");
        assert!(wide.lines().find(|l| l.contains("empty")).unwrap().ends_with("None              -"), "{wide}");
    }

    /// What `-o json` and `-o yaml` print reads back as the same rows.
    #[test]
    fn json_and_yaml_round_trip() {
        let json = format_services(services(), Output::Json).unwrap();
        let back: List<ProgrammedService> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, List { kind: "ServiceList".into(), items: services() });
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["items"][1]["clusterIPs"][1], "fd00:10:96::a", "{json}");
        assert_eq!(value["items"][1]["sessionAffinityTimeoutSeconds"], 10800, "{json}");
        let yaml = format_services(services(), Output::Yaml).unwrap();
        let back: List<ProgrammedService> = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back.items, services());
        let counters = Counters {
            reasons: vec![ReasonCount { reason: "forward_new_flow".into(), packets: [("TC-POD".into(), 3)].into() }],
            sent: vec![SentCount { sent_by: "redirect_peer".into(), packets: 9 }],
        };
        let json = format_counters(&counters, Output::Json).unwrap();
        assert_eq!(serde_json::from_str::<Counters>(&json).unwrap(), counters);
        let conntrack = Conntrack {
            flows: vec![ProgrammedFlow { protocol: "UDP".into(), state: None, ..Default::default() }],
            entries: 2,
            ..Default::default()
        };
        let yaml = format_conntrack(&conntrack, Output::Yaml).unwrap();
        assert_eq!(serde_yaml_ng::from_str::<Conntrack>(&yaml).unwrap(), conntrack);
    }
}
