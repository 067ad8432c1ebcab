//! The cluster domain as the Kubernetes DNS specification (kubernetes/dns
//! `docs/specification.md`, schema 1.1.0) names it, answered straight from
//! the model: a [`Zone`] holds the model's Services, so a DNS answer and
//! the datapath are computed from the same objects. Records are made per
//! question; only the reverse names are indexed when the zone is built.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT},
};

use crate::model::{Endpoint, IpCidr, Protocol, Service, ServiceName, ServiceType};

/// The schema version the specification asks to publish at `dns-version.<zone>`.
const SCHEMA_VERSION: &str = "1.1.0";

/// What a question gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name has records of the type asked (or is an alias, answered
    /// with its CNAME); `additionals` holds the addresses of SRV targets.
    Records { answers: Vec<Record>, additionals: Vec<Record> },
    /// The name exists, without records of that type (NOERROR, no answer).
    NoData,
    /// No such name in a zone of ours.
    NxDomain,
    /// Neither the cluster domain nor a reverse name of ours: forwarded
    /// upstream, or refused.
    Elsewhere,
    /// Ours, but the agent has no complete model yet (it has just started):
    /// SERVFAIL, which resolvers retry, where NXDOMAIN would be cached.
    NotSynced,
}

/// Settings that do not come from the model.
#[derive(Clone, Debug)]
pub struct ZoneOptions {
    /// The cluster domain, `cluster.local.` by default.
    pub domain: Name,
    /// Of every record, and of the negative answers (the SOA's minimum).
    pub ttl: u32,
    /// Reverse names of addresses in these and unknown are NXDOMAIN.
    pub service_cidrs: Vec<IpCidr>,
    /// The responder's own address, for `ns.dns.<zone>`.
    pub nameserver: IpAddr,
}

pub struct Zone {
    opts: Arc<ZoneOptions>,
    /// Built from a complete model; the empty zone before the first is not.
    synced: bool,
    services: BTreeMap<ServiceName, Arc<Service>>,
    /// PTR targets by address: Service IPs and headless Services' endpoints.
    reverse: HashMap<IpAddr, Vec<Name>>,
    /// The apex's SOA, and the reverse zones that carry it too (renamed):
    /// made once per model, not per question.
    soa: Record,
    reverse_zones: [Name; 2],
}

impl Zone {
    /// The zone of `services` (the model's map of shared Services).
    pub fn new(services: &BTreeMap<ServiceName, Arc<Service>>, opts: Arc<ZoneOptions>, serial: u32) -> Self {
        let mut reverse: HashMap<IpAddr, Vec<Name>> = HashMap::new();
        for service in services.values() {
            let Some(base) = service_name(&opts.domain, &service.name) else { continue };
            for ip in &service.cluster_ips {
                reverse.entry(*ip).or_default().push(base.clone());
            }
            if is_headless(service) {
                for endpoint in ready_hosts(service) {
                    if let Ok(host) = base.prepend_label(host_label(endpoint)) {
                        reverse.entry(endpoint.addr).or_default().push(host);
                    }
                }
            }
        }
        let domain = &opts.domain;
        let ns = nameserver_name(domain);
        let mailbox = Name::from_ascii("hostmaster").and_then(|h| h.append_name(domain)).unwrap_or_else(|_| ns.clone());
        // Refresh, retry and expire matter only to secondaries, which this
        // zone has none of; the values are CoreDNS's.
        let soa = SOA::new(ns, mailbox, serial, 7200, 1800, 86400, opts.ttl);
        let soa = Record::from_rdata(domain.clone(), opts.ttl, RData::SOA(soa));
        let reverse_zones = ["in-addr.arpa.", "ip6.arpa."].map(|z| Name::from_ascii(z).expect("a valid name"));
        Zone { opts, synced: true, services: services.clone(), reverse, soa, reverse_zones }
    }

    /// The zone before the first complete model: it answers nothing of its own.
    pub fn not_synced(opts: Arc<ZoneOptions>) -> Self {
        Zone { synced: false, ..Zone::new(&BTreeMap::new(), opts, 0) }
    }

    pub fn domain(&self) -> &Name {
        &self.opts.domain
    }

    /// The SOA record negative answers carry in their authority section.
    pub fn soa(&self) -> Record {
        self.soa.clone()
    }

    /// The answer to `name` (records are owned by it as asked, case kept),
    /// an alias within the domain followed to its records.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Answer {
        let mut answer = self.answer(name, qtype);
        if !self.synced && answer != Answer::Elsewhere {
            return Answer::NotSynced;
        }
        // An ExternalName naming another name of the domain: its records
        // too, as a resolver asking for an address expects (a bounded chain).
        let target_of = |answer: &Answer| match answer {
            Answer::Records { answers, .. } => cname_target(answers, qtype).cloned(),
            _ => None,
        };
        let mut target = target_of(&answer);
        for _ in 0..8 {
            let Some(next) = target.filter(|t| self.opts.domain.zone_of(t)) else { break };
            let more = self.answer(&next, qtype);
            target = target_of(&more);
            if let (Answer::Records { answers, additionals }, Answer::Records { answers: a, additionals: d }) =
                (&mut answer, more)
            {
                answers.extend(a);
                additionals.extend(d);
            }
        }
        answer
    }

    /// The SOA a negative answer for `name` carries: the reverse zone's for
    /// reverse names, else the cluster domain's.
    pub fn soa_for(&self, name: &Name) -> Record {
        let mut soa = self.soa();
        if let Some(zone) = self.reverse_zones.iter().find(|zone| zone.zone_of(name)) {
            soa.name = zone.clone();
        }
        soa
    }

    fn answer(&self, name: &Name, qtype: RecordType) -> Answer {
        let domain = &self.opts.domain;
        if domain.zone_of(name) {
            // Counted by iterating: num_labels() leaves a leading `*` out.
            let relative = name.iter().count() - domain.iter().count();
            // Right to left below the domain: `svc`, namespace, Service, ...
            let labels: Vec<String> =
                name.iter().take(relative).rev().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            return self.in_domain(name, &labels, qtype);
        }
        self.reverse_lookup(name, qtype)
    }

    fn in_domain(&self, owner: &Name, labels: &[&str], qtype: RecordType) -> Answer {
        let owner = owner.clone();
        let domain = &self.opts.domain;
        match labels {
            [] => {
                let ns = Record::from_rdata(owner, self.opts.ttl, RData::NS(NS(nameserver_name(domain))));
                let glue = self.nameserver_records();
                let records = match qtype {
                    RecordType::SOA => vec![self.soa()],
                    RecordType::NS => vec![ns],
                    RecordType::ANY => vec![self.soa(), ns],
                    _ => vec![],
                };
                let additionals = if qtype == RecordType::NS { glue } else { vec![] };
                records_or_nodata(records, additionals)
            }
            ["svc"] | ["dns"] => Answer::NoData,
            ["dns", "ns"] => records_or_nodata(of_type(self.nameserver_records(), qtype), vec![]),
            ["dns-version"] => {
                let txt = Record::from_rdata(owner, self.opts.ttl, RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])));
                records_or_nodata(of_type(vec![txt], qtype), vec![])
            }
            ["svc", namespace] => {
                let first = ServiceName::new(*namespace, "");
                match self.services.range(first..).next() {
                    Some((n, _)) if n.namespace == *namespace => Answer::NoData,
                    _ => Answer::NxDomain,
                }
            }
            ["svc", namespace, service, rest @ ..] => {
                match self.services.get(&ServiceName::new(*namespace, *service)) {
                    Some(service) => self.service(service, owner, rest, qtype),
                    None => Answer::NxDomain,
                }
            }
            _ => Answer::NxDomain,
        }
    }

    /// `rest`: the labels below `<service>.<namespace>.svc`, right to left.
    fn service(&self, service: &Service, owner: Name, rest: &[&str], qtype: RecordType) -> Answer {
        let ttl = self.opts.ttl;
        // `<service>.<namespace>.svc.<domain>` as asked: the owner without `rest`.
        let base = owner.trim_to(owner.iter().count() - rest.len());
        if service.service_type == ServiceType::ExternalName {
            let target = service.external_name.as_deref().and_then(|n| Name::from_ascii(n).ok());
            return match (rest, target) {
                ([], Some(mut target)) => {
                    target.set_fqdn(true);
                    Answer::Records {
                        answers: vec![Record::from_rdata(owner, ttl, RData::CNAME(CNAME(target)))],
                        additionals: vec![],
                    }
                }
                _ => Answer::NxDomain,
            };
        }
        let headless = is_headless(service);
        // The specification: a headless Service without ready endpoints
        // does not exist, nor do the names below it.
        if headless && ready_hosts(service).next().is_none() {
            return Answer::NxDomain;
        }
        match rest {
            [] => {
                let addresses: Vec<IpAddr> = if headless {
                    let mut addrs: Vec<IpAddr> = ready_hosts(service).map(|e| e.addr).collect();
                    addrs.dedup();
                    addrs
                } else {
                    service.cluster_ips.clone()
                };
                records_or_nodata(of_type(address_records(&owner, &addresses, ttl), qtype), vec![])
            }
            [protocol] if protocol.starts_with('_') => match named_ports(service, protocol).next() {
                Some(_) => Answer::NoData,
                None => Answer::NxDomain,
            },
            [host] if headless => {
                let addrs: Vec<IpAddr> =
                    ready_hosts(service).filter(|e| host_label(e) == *host).map(|e| e.addr).collect();
                if addrs.is_empty() {
                    return Answer::NxDomain;
                }
                records_or_nodata(of_type(address_records(&owner, &addrs, ttl), qtype), vec![])
            }
            [protocol, port] => {
                let Some(port) = named_ports(service, protocol).find(|p| format!("_{}", p.name) == *port) else {
                    return Answer::NxDomain;
                };
                if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    return Answer::NoData;
                }
                let (mut answers, mut additionals) = (Vec::new(), Vec::new());
                if headless {
                    let mut targets: Vec<&Endpoint> = port.endpoints.iter().filter(|e| e.ready).collect();
                    targets.dedup_by_key(|e| (e.addr, e.port));
                    // Equal weights summing to about 100, as CoreDNS gives them.
                    let weight = (100 / targets.len().max(1)).max(1) as u16;
                    for endpoint in targets {
                        let Ok(host) = base.prepend_label(host_label(endpoint)) else { continue };
                        let srv = SRV::new(0, weight, endpoint.port, host.clone());
                        answers.push(Record::from_rdata(owner.clone(), ttl, RData::SRV(srv)));
                        additionals.extend(address_records(&host, &[endpoint.addr], ttl));
                    }
                } else {
                    let srv = SRV::new(0, 100, port.port, base.clone());
                    answers.push(Record::from_rdata(owner, ttl, RData::SRV(srv)));
                    additionals = address_records(&base, &service.cluster_ips, ttl);
                }
                records_or_nodata(answers, additionals)
            }
            _ => Answer::NxDomain,
        }
    }

    fn reverse_lookup(&self, owner: &Name, qtype: RecordType) -> Answer {
        let Ok(net) = owner.parse_arpa_name() else { return Answer::Elsewhere };
        if net.prefix_len() != net.max_prefix_len() {
            return Answer::Elsewhere;
        }
        let addr = net.addr();
        match self.reverse.get(&addr) {
            Some(targets) => {
                let records = targets
                    .iter()
                    .map(|t| Record::from_rdata(owner.clone(), self.opts.ttl, RData::PTR(PTR(t.clone()))))
                    .collect();
                records_or_nodata(of_type(records, qtype), vec![])
            }
            None if self.opts.service_cidrs.iter().any(|c| c.contains(addr)) => Answer::NxDomain,
            None => Answer::Elsewhere,
        }
    }

    fn nameserver_records(&self) -> Vec<Record> {
        let name = nameserver_name(&self.opts.domain);
        address_records(&name, &[self.opts.nameserver], self.opts.ttl)
    }
}

/// `<service>.<namespace>.svc.<domain>`; None for a name too long for DNS
/// (only possible for manifests the API server would refuse).
pub fn service_name(domain: &Name, service: &ServiceName) -> Option<Name> {
    Name::from_ascii(format!("{}.{}.svc", service.name, service.namespace)).ok()?.append_name(domain).ok()
}

/// Where an answer that ends in an alias points, when anything but the
/// alias itself was asked.
pub fn cname_target(answers: &[Record], qtype: RecordType) -> Option<&Name> {
    match answers.last().map(|r| &r.data) {
        Some(RData::CNAME(CNAME(target))) if qtype != RecordType::CNAME => Some(target),
        _ => None,
    }
}

fn nameserver_name(domain: &Name) -> Name {
    Name::from_ascii("ns.dns").and_then(|n| n.append_name(domain)).unwrap_or_else(|_| domain.clone())
}

/// A headless Service: DNS names its endpoints, not a virtual IP.
fn is_headless(service: &Service) -> bool {
    service.service_type != ServiceType::ExternalName && service.cluster_ips.is_empty()
}

/// The ready endpoints of every port (or of none, for a headless Service
/// without ports), one per address, sorted by address.
fn ready_hosts(service: &Service) -> impl Iterator<Item = &Endpoint> {
    let endpoints = service.ports.iter().flat_map(|p| &p.endpoints).chain(&service.portless_endpoints);
    let mut ready: Vec<&Endpoint> = endpoints.filter(|e| e.ready).collect();
    ready.sort_by_key(|e| e.addr);
    ready.dedup_by_key(|e| e.addr);
    ready.into_iter()
}

/// An endpoint's label under its headless Service: its hostname, else its
/// address with dashes (`10-244-1-2`), as CoreDNS names them.
fn host_label(endpoint: &Endpoint) -> String {
    match &endpoint.hostname {
        Some(hostname) => hostname.to_ascii_lowercase(),
        None => endpoint.addr.to_string().replace(['.', ':'], "-"),
    }
}

/// The named ports of `protocol` (`_tcp`, `_udp`): SRV records exist only
/// for named ports.
fn named_ports<'s>(service: &'s Service, protocol: &str) -> impl Iterator<Item = &'s crate::model::ServicePort> {
    let wanted = match protocol {
        "_tcp" => Some(Protocol::Tcp),
        "_udp" => Some(Protocol::Udp),
        _ => None,
    };
    service.ports.iter().filter(move |p| Some(p.protocol) == wanted && !p.name.is_empty())
}

fn address_records(owner: &Name, addrs: &[IpAddr], ttl: u32) -> Vec<Record> {
    addrs
        .iter()
        .map(|addr| {
            let rdata = match addr {
                IpAddr::V4(ip) => RData::A(A(*ip)),
                IpAddr::V6(ip) => RData::AAAA(AAAA(*ip)),
            };
            Record::from_rdata(owner.clone(), ttl, rdata)
        })
        .collect()
}

/// The records of the type asked (all for ANY).
fn of_type(records: Vec<Record>, qtype: RecordType) -> Vec<Record> {
    records.into_iter().filter(|r| qtype == RecordType::ANY || r.record_type() == qtype).collect()
}

fn records_or_nodata(answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
    if answers.is_empty() { Answer::NoData } else { Answer::Records { answers, additionals } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, DesiredState, ModelOptions};
    use crate::source::objects_from_yaml;

    const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: kubia}
spec:
  clusterIP: 10.96.0.10
  selector: {app: kubia}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: kubia-headless}
spec:
  clusterIP: None
  selector: {app: kubia}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: external-service, namespace: other}
spec:
  type: ExternalName
  externalName: someapi.somecompany.com
";

    fn pod(name: &str, ip: &str, ready: bool, spec: &str) -> String {
        let status = if ready { "True" } else { "False" };
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: kubia}}}}\n{spec}status:\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"{status}\"}}]\n"
        )
    }

    fn zone(yaml: &str) -> Zone {
        let (desired, errors) =
            model::build(&objects_from_yaml(yaml), DesiredState::default(), &ModelOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        let opts = ZoneOptions {
            domain: Name::from_ascii("cluster.local.").unwrap(),
            ttl: 5,
            service_cidrs: ModelOptions::default().service_cidrs,
            nameserver: "169.254.20.10".parse().unwrap(),
        };
        Zone::new(&desired.services, Arc::new(opts), 1)
    }

    fn kubia() -> Zone {
        let web0 = "spec:\n  hostname: web-0\n  subdomain: kubia-headless\n  containers: []\n";
        let pods =
            [pod("a", "10.244.1.2", true, web0), pod("b", "10.244.1.3", true, ""), pod("c", "10.244.1.4", false, "")];
        zone(&format!("{SERVICES}{}", pods.concat()))
    }

    /// The answer's records as `name TTL TYPE data` lines, answers then
    /// (after `+`) additionals; or the kind of empty answer.
    fn ask(zone: &Zone, name: &str, qtype: RecordType) -> Vec<String> {
        let name = Name::from_ascii(name).unwrap();
        let line = |r: &Record| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data);
        match zone.lookup(&name, qtype) {
            Answer::Records { answers, additionals } => {
                let mut lines: Vec<String> = answers.iter().map(line).collect();
                lines.extend(additionals.iter().map(|r| format!("+ {}", line(r))));
                lines
            }
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn a_cluster_ip_service_has_its_address_srv_per_named_port_and_a_ptr() {
        let zone = kubia();
        let a = RecordType::A;
        assert_eq!(
            ask(&zone, "kubia.default.svc.cluster.local.", a),
            ["kubia.default.svc.cluster.local. 5 A 10.96.0.10"]
        );
        assert_eq!(ask(&zone, "KUBIA.Default.SVC.cluster.local.", a).len(), 1, "names are case-insensitive");
        assert_eq!(ask(&zone, "kubia.default.svc.cluster.local.", RecordType::AAAA), ["NoData"]);
        assert_eq!(
            ask(&zone, "_http._tcp.kubia.default.svc.cluster.local.", RecordType::SRV),
            [
                "_http._tcp.kubia.default.svc.cluster.local. 5 SRV 0 100 80 kubia.default.svc.cluster.local.",
                "+ kubia.default.svc.cluster.local. 5 A 10.96.0.10"
            ]
        );
        assert_eq!(
            ask(&zone, "_dns._udp.kubia.default.svc.cluster.local.", RecordType::SRV)[0],
            "_dns._udp.kubia.default.svc.cluster.local. 5 SRV 0 100 53 kubia.default.svc.cluster.local."
        );
        assert_eq!(ask(&zone, "_dns._tcp.kubia.default.svc.cluster.local.", RecordType::SRV), ["NxDomain"]);
        assert_eq!(ask(&zone, "_http._tcp.kubia.default.svc.cluster.local.", a), ["NoData"]);
        assert_eq!(ask(&zone, "_tcp.kubia.default.svc.cluster.local.", a), ["NoData"], "an empty non-terminal");
        assert_eq!(
            ask(&zone, "10.0.96.10.in-addr.arpa.", RecordType::PTR),
            ["10.0.96.10.in-addr.arpa. 5 PTR kubia.default.svc.cluster.local."]
        );
    }

    #[test]
    fn names_that_do_not_exist_are_nxdomain_and_their_parents_nodata() {
        let zone = kubia();
        let a = RecordType::A;
        for missing in [
            "nosuch.default.svc.cluster.local.",
            "kubia.nosuch.svc.cluster.local.",
            "nosuch.svc.cluster.local.",
            "10-244-1-2.kubia.default.svc.cluster.local.",
            "kubia.default.pod.cluster.local.",
            "a.b.kubia.default.svc.cluster.local.",
            "11.0.96.10.in-addr.arpa.",
        ] {
            assert_eq!(ask(&zone, missing, a), ["NxDomain"], "{missing}");
        }
        for parent in ["default.svc.cluster.local.", "svc.cluster.local.", "cluster.local."] {
            assert_eq!(ask(&zone, parent, a), ["NoData"], "{parent}");
        }
        for elsewhere in ["example.com.", "cluster.local.example.com.", "8.8.8.8.in-addr.arpa.", "96.10.in-addr.arpa."]
        {
            assert_eq!(ask(&zone, elsewhere, a), ["Elsewhere"], "{elsewhere}");
        }
    }

    #[test]
    fn a_headless_service_names_its_ready_endpoints_by_hostname_or_address() {
        let zone = kubia();
        let base = "kubia-headless.default.svc.cluster.local.";
        assert_eq!(
            ask(&zone, base, RecordType::A),
            [format!("{base} 5 A 10.244.1.2"), format!("{base} 5 A 10.244.1.3")]
        );
        assert_eq!(ask(&zone, &format!("web-0.{base}"), RecordType::A), [format!("web-0.{base} 5 A 10.244.1.2")]);
        assert_eq!(
            ask(&zone, &format!("10-244-1-3.{base}"), RecordType::A),
            [format!("10-244-1-3.{base} 5 A 10.244.1.3")]
        );
        assert_eq!(ask(&zone, &format!("10-244-1-4.{base}"), RecordType::A), ["NxDomain"], "not ready");
        assert_eq!(
            ask(&zone, &format!("_http._tcp.{base}"), RecordType::SRV),
            [
                format!("_http._tcp.{base} 5 SRV 0 50 8080 web-0.{base}"),
                format!("_http._tcp.{base} 5 SRV 0 50 8080 10-244-1-3.{base}"),
                format!("+ web-0.{base} 5 A 10.244.1.2"),
                format!("+ 10-244-1-3.{base} 5 A 10.244.1.3"),
            ]
        );
        assert_eq!(
            ask(&zone, "2.1.244.10.in-addr.arpa.", RecordType::PTR),
            [format!("2.1.244.10.in-addr.arpa. 5 PTR web-0.{base}")]
        );
    }

    #[test]
    fn a_headless_service_without_ports_names_its_pods_and_its_slices_endpoints() {
        let portless = "---\napiVersion: v1\nkind: Service\nmetadata: {name: bare}\nspec:\n  clusterIP: None\n  selector: {app: kubia}\n";
        let bare = zone(&format!("{SERVICES}{portless}{}", pod("b", "10.244.1.3", true, "")));
        assert_eq!(
            ask(&bare, "bare.default.svc.cluster.local.", RecordType::A),
            ["bare.default.svc.cluster.local. 5 A 10.244.1.3"]
        );
        assert_eq!(ask(&bare, "10-244-1-3.bare.default.svc.cluster.local.", RecordType::A).len(), 1);
        let slice = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: manual-1\n  labels: {kubernetes.io/service-name: manual}\naddressType: IPv4\nendpoints: [{addresses: [10.244.9.9], hostname: db-0}]\n";
        let manual = "---\napiVersion: v1\nkind: Service\nmetadata: {name: manual}\nspec:\n  clusterIP: None\n";
        let manual = zone(&format!("{SERVICES}{manual}{slice}"));
        assert_eq!(
            ask(&manual, "db-0.manual.default.svc.cluster.local.", RecordType::A),
            ["db-0.manual.default.svc.cluster.local. 5 A 10.244.9.9"]
        );
    }

    #[test]
    fn publish_not_ready_addresses_names_unready_endpoints_too() {
        let yaml = SERVICES.replace("clusterIP: None\n", "clusterIP: None\n  publishNotReadyAddresses: true\n");
        let zone = zone(&format!("{yaml}{}", pod("c", "10.244.1.4", false, "")));
        assert_eq!(
            ask(&zone, "kubia-headless.default.svc.cluster.local.", RecordType::A),
            ["kubia-headless.default.svc.cluster.local. 5 A 10.244.1.4"]
        );
    }

    #[test]
    fn an_external_name_is_a_cname_whatever_the_type_asked() {
        let zone = kubia();
        let name = "external-service.other.svc.cluster.local.";
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            assert_eq!(ask(&zone, name, qtype), [format!("{name} 5 CNAME someapi.somecompany.com.")]);
        }
        assert_eq!(ask(&zone, &format!("_http._tcp.{name}"), RecordType::SRV), ["NxDomain"]);
    }

    #[test]
    fn an_external_name_within_the_domain_brings_its_target_s_records() {
        let yaml = SERVICES.replace("someapi.somecompany.com", "kubia.default.svc.cluster.local");
        let zone = zone(&yaml);
        let name = "external-service.other.svc.cluster.local.";
        assert_eq!(
            ask(&zone, name, RecordType::A),
            [
                format!("{name} 5 CNAME kubia.default.svc.cluster.local."),
                "kubia.default.svc.cluster.local. 5 A 10.96.0.10".to_owned()
            ]
        );
        assert_eq!(ask(&zone, name, RecordType::CNAME).len(), 1, "the alias alone when the alias is asked");
    }

    #[test]
    fn answers_keep_the_case_asked_and_negative_ones_name_their_zone_s_soa() {
        let zone = kubia();
        assert_eq!(
            ask(&zone, "Kubia.DEFAULT.svc.cluster.local.", RecordType::A),
            ["Kubia.DEFAULT.svc.cluster.local. 5 A 10.96.0.10"]
        );
        let soa = |name: &str| zone.soa_for(&Name::from_ascii(name).unwrap()).name.to_string();
        assert_eq!(soa("11.0.96.10.in-addr.arpa."), "in-addr.arpa.");
        assert_eq!(soa("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."), "ip6.arpa.");
        assert_eq!(soa("nosuch.default.svc.cluster.local."), "cluster.local.");
    }

    #[test]
    fn a_headless_service_without_ready_endpoints_does_not_exist() {
        let zone = zone(&format!("{SERVICES}{}", pod("c", "10.244.1.4", false, "")));
        let base = "kubia-headless.default.svc.cluster.local.";
        assert_eq!(ask(&zone, base, RecordType::A), ["NxDomain"]);
        assert_eq!(ask(&zone, &format!("_http._tcp.{base}"), RecordType::SRV), ["NxDomain"]);
        assert_eq!(ask(&zone, "default.svc.cluster.local.", RecordType::A), ["NoData"], "its namespace still does");
    }

    #[test]
    fn before_the_first_model_its_own_names_are_not_denied_but_failed() {
        let opts = Arc::new(ZoneOptions {
            domain: Name::from_ascii("cluster.local.").unwrap(),
            ttl: 5,
            service_cidrs: ModelOptions::default().service_cidrs,
            nameserver: "169.254.20.10".parse().unwrap(),
        });
        let zone = Zone::not_synced(opts);
        assert_eq!(ask(&zone, "kubia.default.svc.cluster.local.", RecordType::A), ["NotSynced"]);
        assert_eq!(ask(&zone, "10.0.96.10.in-addr.arpa.", RecordType::PTR), ["NotSynced"]);
        assert_eq!(ask(&zone, "example.com.", RecordType::A), ["Elsewhere"]);
    }

    #[test]
    fn the_apex_has_soa_ns_and_the_schema_version() {
        let zone = kubia();
        assert_eq!(
            ask(&zone, "cluster.local.", RecordType::SOA),
            ["cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"]
        );
        assert_eq!(
            ask(&zone, "cluster.local.", RecordType::NS),
            ["cluster.local. 5 NS ns.dns.cluster.local.", "+ ns.dns.cluster.local. 5 A 169.254.20.10"]
        );
        assert_eq!(
            ask(&zone, "dns-version.cluster.local.", RecordType::TXT),
            ["dns-version.cluster.local. 5 TXT 1.1.0"]
        );
    }
}
