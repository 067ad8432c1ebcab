//! The Services every benchmark programs, and the rule sets kube-proxy
//! would write for them: Services without selector at 10.100.0.0 + i, each
//! with ENDPOINTS endpoints from an Endpoints object; in IPv6, at the twins
//! of those addresses (see [`BenchFamily`]).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
};

use lb_tests::{
    agent::AgentProcess,
    cgroup::TestCgroup,
    topology::{Node, Pod},
};
pub use lb_userspace::model::Family;
use serde_json::json;

use crate::control_plane::timed_load;

pub const ENDPOINTS: u32 = 10;
/// Services per manifest file.
const PER_FILE: u32 = 500;
/// The last Service's endpoints are a real pod listening on 10 ports
/// (8080-8089); the others' are addresses nobody answers on.
pub const BACKEND_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);

pub fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i)
}

/// The service CIDR the IPv4 addresses above are in: the agent's default.
const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);

/// The benchmarks number their addresses in IPv4; in IPv6 they use each
/// one's twin, fd00::<the IPv4 address> (10.100.0.1 is fd00::a64:1), so
/// that every prefix keeps its place (10.96.0.0/12 is fd00::a60:0/108) and
/// the two families' runs differ in the family only.
pub trait BenchFamily: Copy {
    /// The address standing for `v4` in this family.
    fn twin(self, v4: Ipv4Addr) -> IpAddr;
    /// `--service-cidr` for the agent.
    fn service_cidr(self) -> String;
    /// A single-stack pod of this family with (the twin of) `v4`.
    fn add_pod(self, node: &Node, name: &str, v4: Ipv4Addr) -> anyhow::Result<Pod>;
    /// The legacy iptables command of this family (`iptables-legacy`).
    fn iptables(self) -> &'static str;
    /// `ip`'s family flag.
    fn flag(self) -> &'static str;
    /// The prefix length standing for IPv4's `len` in this family.
    fn prefix_len(self, len: u8) -> u8;
}

impl BenchFamily for Family {
    fn twin(self, v4: Ipv4Addr) -> IpAddr {
        match self {
            Family::V4 => v4.into(),
            Family::V6 => {
                Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)) | u128::from(v4.to_bits())).into()
            }
        }
    }

    fn service_cidr(self) -> String {
        let (network, len) = SERVICE_CIDR;
        format!("{}/{}", self.twin(network), self.prefix_len(len))
    }

    fn add_pod(self, node: &Node, name: &str, v4: Ipv4Addr) -> anyhow::Result<Pod> {
        match self.twin(v4) {
            IpAddr::V4(ip) => node.add_pod_with(name, Some(ip), None),
            IpAddr::V6(ip) => node.add_pod_with(name, None, Some(ip)),
        }
    }

    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables-legacy",
            Family::V6 => "ip6tables-legacy",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    fn prefix_len(self, len: u8) -> u8 {
        match self {
            Family::V4 => len,
            Family::V6 => len + 96,
        }
    }
}

/// `services` Services of `family` on port 80 of `protocol`; the last one
/// is served by BACKEND_POD.
pub struct Synthetic {
    pub services: u32,
    pub protocol: Protocol,
    pub family: Family,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// As manifests and as iptables/nftables write it.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Protocol::Tcp => ("TCP", "tcp"),
            Protocol::Udp => ("UDP", "udp"),
        }
    }
}

impl Synthetic {
    /// Service `i`'s cluster IP.
    fn vip(&self, i: u32) -> IpAddr {
        self.family.twin(vip(i))
    }

    /// Endpoint `j` of Service `i`: address and port.
    fn endpoint(&self, i: u32, j: u32) -> SocketAddr {
        let (ip, port) = if i == self.services - 1 {
            (BACKEND_POD, 8080 + j as u16)
        } else {
            (Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * ENDPOINTS + j), 8080)
        };
        SocketAddr::new(self.family.twin(ip), port)
    }

    /// A Service without selector and its Endpoints object, as JSON items.
    fn service_items(&self, i: u32, endpoints: u32) -> [serde_json::Value; 2] {
        let name = format!("svc-{i}");
        let subsets: Vec<_> = (0..endpoints)
            .map(|j| {
                let endpoint = self.endpoint(i, j);
                json!({"addresses": [{"ip": endpoint.ip().to_string()}], "ports": [{"port": endpoint.port(), "protocol": self.protocol.names().0}]})
            })
            .collect();
        [
            self.service(i),
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": "bench"}, "subsets": subsets}),
        ]
    }

    /// Service `i`, its cluster IP written (nothing allocates in API mode either).
    fn service(&self, i: u32) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
               "spec": {"clusterIP": self.vip(i).to_string(), "ports": [{"port": 80, "protocol": self.protocol.names().0}]}})
    }

    /// Service `i`'s EndpointSlices with its first `endpoints` endpoints.
    /// A slice has one port list, so the endpoints go into one slice per
    /// port, as the EndpointSlice mirroring controller makes them of
    /// Endpoints subsets: one slice of 10 addresses for most Services, ten
    /// of one for the last (one pod on 10 ports). A port whose endpoint
    /// went keeps its slice, empty, so that the change is one update.
    pub fn endpoint_slices(&self, i: u32, endpoints: u32) -> Vec<serde_json::Value> {
        let mut by_port: std::collections::BTreeMap<u16, Vec<serde_json::Value>> = Default::default();
        for j in 0..ENDPOINTS {
            let endpoint = self.endpoint(i, j);
            let slice = by_port.entry(endpoint.port()).or_default();
            if j < endpoints {
                slice.push(json!({"addresses": [endpoint.ip().to_string()], "conditions": {"ready": true}}));
            }
        }
        by_port
            .into_iter()
            .enumerate()
            .map(|(k, (port, addresses))| {
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": format!("svc-{i}-{k}"), "namespace": "bench",
                                    "labels": {"kubernetes.io/service-name": format!("svc-{i}"),
                                               "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
                       "addressType": self.family.to_string(), "endpoints": addresses,
                       "ports": [{"port": port, "protocol": self.protocol.names().0}]})
            })
            .collect()
    }

    /// Every Service and its EndpointSlices, as an API server holds them.
    pub fn api_objects(&self) -> Vec<serde_json::Value> {
        (0..self.services)
            .flat_map(|i| std::iter::once(self.service(i)).chain(self.endpoint_slices(i, ENDPOINTS)))
            .collect()
    }

    /// The manifest files (name, JSON List); the last Service has `last_endpoints`.
    pub fn manifest_files(&self, last_endpoints: u32) -> Vec<(String, String)> {
        (0..self.services.div_ceil(PER_FILE))
            .map(|f| {
                let items: Vec<_> = (f * PER_FILE..((f + 1) * PER_FILE).min(self.services))
                    .flat_map(|i| {
                        self.service_items(i, if i == self.services - 1 { last_endpoints } else { ENDPOINTS })
                    })
                    .collect();
                (format!("svc-{f:03}.json"), json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string())
            })
            .collect()
    }

    /// kube-proxy's iptables rules for the Services (the last with `last_endpoints`),
    /// for `iptables-restore`: KUBE-SERVICES -> KUBE-SVC-* (statistic random,
    /// probability 1/(n-k) for the k-th endpoint) -> KUBE-SEP-* (mark, DNAT).
    pub fn iptables_rules(&self, last_endpoints: u32, only_last: bool) -> String {
        let p = self.protocol.names().1;
        let mut chains = String::new();
        let mut rules = String::new();
        let services = if only_last { self.services - 1..self.services } else { 0..self.services };
        if !only_last {
            chains.push_str(":PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
            chains.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
            rules.push_str(
                "-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n",
            );
            rules.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
            rules.push_str("-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n");
        }
        for i in services {
            let n = if i == self.services - 1 { last_endpoints } else { ENDPOINTS };
            let _ = writeln!(chains, ":KUBE-SVC-{i} - [0:0]");
            if !only_last {
                let _ = writeln!(
                    rules,
                    "-A KUBE-SERVICES -d {} -p {p} -m {p} --dport 80 -j KUBE-SVC-{i}",
                    host(self.vip(i))
                );
            }
            for j in 0..n {
                let endpoint = self.endpoint(i, j);
                let _ = writeln!(chains, ":KUBE-SEP-{i}-{j} - [0:0]");
                let remaining = n - j;
                if remaining > 1 {
                    let p = 1.0 / f64::from(remaining);
                    let _ = writeln!(
                        rules,
                        "-A KUBE-SVC-{i} -m statistic --mode random --probability {p:.10} -j KUBE-SEP-{i}-{j}"
                    );
                } else {
                    let _ = writeln!(rules, "-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{j}");
                }
                let _ = writeln!(rules, "-A KUBE-SEP-{i}-{j} -s {} -j KUBE-MARK-MASQ", host(endpoint.ip()));
                let _ = writeln!(rules, "-A KUBE-SEP-{i}-{j} -p {p} -m {p} -j DNAT --to-destination {endpoint}");
            }
            if only_last {
                // kube-proxy's partial sync also deletes the chain that went.
                for j in n..ENDPOINTS {
                    let _ = writeln!(chains, ":KUBE-SEP-{i}-{j} - [0:0]");
                    let _ = writeln!(rules, "-X KUBE-SEP-{i}-{j}");
                }
            }
        }
        format!("*nat\n{chains}{rules}COMMIT\n")
    }

    /// The nftables table family (and address match) and address type of the Services' family.
    fn nft_names(&self) -> (&'static str, &'static str) {
        match self.family {
            Family::V4 => ("ip", "ipv4_addr"),
            Family::V6 => ("ip6", "ipv6_addr"),
        }
    }

    /// kube-proxy's nftables rules: a verdict map on daddr . proto . dport,
    /// `numgen random mod n` per Service, a chain per endpoint.
    pub fn nft_rules(&self) -> String {
        let p = self.protocol.names().1;
        let (ip, addr_type) = self.nft_names();
        let mut out = format!("table {ip} kube-proxy {{\n");
        out.push_str("  chain mark-for-masquerade {\n    meta mark set meta mark | 0x4000\n  }\n");
        let mut elements = Vec::new();
        let mut chains = String::new();
        for i in 0..self.services {
            elements.push(format!("{} . {p} . 80 : goto service-{i}", self.vip(i)));
            let mut vmap = Vec::new();
            for j in 0..ENDPOINTS {
                let endpoint = self.endpoint(i, j);
                vmap.push(format!("{j} : goto endpoint-{i}-{j}"));
                let _ = writeln!(
                    chains,
                    "  chain endpoint-{i}-{j} {{\n    {ip} saddr {} jump mark-for-masquerade\n    meta l4proto {p} dnat to {endpoint}\n  }}",
                    endpoint.ip()
                );
            }
            let _ = writeln!(
                chains,
                "  chain service-{i} {{\n    numgen random mod {ENDPOINTS} vmap {{ {} }}\n  }}",
                vmap.join(", ")
            );
        }
        out.push_str(&chains);
        let _ = writeln!(
            out,
            "  map service-ips {{\n    type {addr_type} . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}",
            elements.join(", ")
        );
        let _ = writeln!(out, "  chain services {{\n    {ip} daddr . meta l4proto . th dport vmap @service-ips\n  }}");
        out.push_str("  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n");
        out.push_str(
            "  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n}\n",
        );
        out
    }

    /// What kube-proxy's nftables mode sends for the last Service losing one endpoint.
    pub fn nft_change(&self) -> String {
        let i = self.services - 1;
        let (ip, _) = self.nft_names();
        let vmap: Vec<String> = (0..ENDPOINTS - 1).map(|j| format!("{j} : goto endpoint-{i}-{j}")).collect();
        format!(
            "flush chain {ip} kube-proxy service-{i}\nadd rule {ip} kube-proxy service-{i} numgen random mod {} vmap {{ {} }}\ndelete chain {ip} kube-proxy endpoint-{i}-{}\n",
            ENDPOINTS - 1,
            vmap.join(", "),
            ENDPOINTS - 1
        )
    }
}

/// `ip` as iptables-save writes a host: with its full prefix length.
fn host(ip: IpAddr) -> String {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{len}")
}

/// What the node runs to implement the Services.
#[derive(Clone, Copy)]
pub enum Datapath {
    /// lb: pod traffic translated on TC and sent on by bpf_redirect_peer/neigh.
    Lb,
    /// lb handing translated pod traffic to the kernel's routing
    /// (`--pod-forwarding stack`).
    LbStack,
    /// lb's socket hooks serving the pods' sockets (`--socket-lb all`):
    /// translated once at connect(), no packet rewritten.
    LbSocket,
    Iptables,
    Nftables,
}

impl Datapath {
    pub fn name(self) -> &'static str {
        match self {
            Datapath::Lb => "lb TC (redirect)",
            Datapath::LbStack => "lb TC (stack)",
            Datapath::LbSocket => "lb socket (cgroup)",
            Datapath::Iptables => "iptables (legacy)",
            Datapath::Nftables => "nftables",
        }
    }

    /// Programs `synthetic` on `node`: an agent (kept running while the
    /// returned process lives; its socket hooks on `cgroup`, or none) or
    /// kube-proxy's rules.
    pub fn program(
        self,
        node: &Node,
        synthetic: &Synthetic,
        cgroup: Option<&TestCgroup>,
    ) -> anyhow::Result<Option<AgentProcess>> {
        match self {
            Datapath::Lb | Datapath::LbStack | Datapath::LbSocket => {
                let files = synthetic.manifest_files(ENDPOINTS);
                let manifests: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
                // Room for each Service's table of 10 backends (10 007 entries).
                let entries = (synthetic.services * 10_240).next_power_of_two().to_string();
                let cidr = synthetic.family.service_cidr();
                let mut args = vec!["--pod-device", "h-*", "--maglev-entries", &entries, "--service-cidr", &cidr];
                match cgroup {
                    Some(cgroup) => args.extend(["--cgroup-root", cgroup.path().to_str().expect("a UTF-8 path")]),
                    None => args.extend(["--socket-lb", "off"]),
                }
                match self {
                    Datapath::LbStack => args.extend(["--pod-forwarding", "stack"]),
                    Datapath::LbSocket => args.extend(["--socket-lb", "all"]),
                    _ => {}
                }
                Ok(Some(AgentProcess::start_with(node, &manifests, &args)?))
            }
            Datapath::Iptables => {
                let restore = format!("{}-restore", synthetic.family.iptables());
                timed_load(&node.ns, &restore, &[], &synthetic.iptables_rules(ENDPOINTS, false))?;
                Ok(None)
            }
            Datapath::Nftables => {
                timed_load(&node.ns, "nft", &["-f", "-"], &synthetic.nft_rules())?;
                Ok(None)
            }
        }
    }
}

/// A node running one datapath for the TCP Services, with a backend pod
/// serving the last Service's endpoints (its ports 8080-8089) and a client
/// pod whose client processes run in a cgroup of the rig's own: what the
/// TCP benchmarks measure through.
pub struct TcpRig {
    pub client: Pod,
    /// The last Service's address and port.
    pub to: SocketAddrV4,
    // Held for as long as the rig is measured.
    _backend: Pod,
    _agent: Option<AgentProcess>,
    _node: Node,
    cgroup: TestCgroup,
}

impl TcpRig {
    /// `serve` starts the backend's servers on the endpoint ports.
    pub fn new(
        datapath: Datapath,
        services: u32,
        serve: impl FnOnce(&mut Pod, &[u16]) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let synthetic = Synthetic { services, protocol: Protocol::Tcp, family: Family::V4 };
        let node = Node::new()?;
        let mut backend = node.add_pod("backend", BACKEND_POD)?;
        serve(&mut backend, &(8080..8080 + ENDPOINTS as u16).collect::<Vec<_>>())?;
        let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100))?;
        let cgroup = TestCgroup::create()?;
        let agent = datapath.program(&node, &synthetic, Some(&cgroup))?;
        let to = SocketAddrV4::new(vip(services - 1), 80);
        Ok(TcpRig { client, to, _backend: backend, _agent: agent, _node: node, cgroup })
    }

    /// `lb-testclient COMMAND TO ARGS` in the client pod, `n` processes at
    /// once in the rig's cgroup; each one's output.
    pub fn clients(&self, n: usize, command: &str, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let to = self.to.to_string();
        let argv: Vec<&str> = [command, to.as_str()].into_iter().chain(args.iter().copied()).collect();
        std::thread::scope(|scope| {
            let clients: Vec<_> = (0..n).map(|_| scope.spawn(|| self.cgroup.client(&self.client.ns, &argv))).collect();
            clients.into_iter().map(|c| c.join().expect("client thread")).collect()
        })
    }
}
