//! One Kubernetes node as namespaces (DESIGN.md §4): a node namespace that
//! routes, and pod namespaces joined to it by veth pairs, Calico-style:
//! each pod has its IP as a /32 on `eth0` and a default route via the
//! link-local gateway 169.254.1.1, which is the host-side veth's MAC. An
//! IPv6 pod has its address as a /128 and a default route via fe80::1, the
//! same MAC.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Stdio,
};

use anyhow::bail;

use crate::netns::{ChildGuard, Netns};

const GATEWAY: &str = "169.254.1.1";
const GATEWAY6: &str = "fe80::1";
/// Forwarding for both families, no reverse-path filter, and no duplicate
/// address detection (an address would otherwise stay unusable for a
/// second or more).
const NODE_SYSCTLS: [&str; 6] = [
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
];
/// Wildcard matching every pod veth of a node, for `--pod-device`.
pub const POD_DEVICE_PATTERN: &str = "h-*";

pub struct Node {
    pub ns: Netns,
}

pub struct Pod {
    pub name: String,
    /// 0.0.0.0 for an IPv6-only pod.
    pub ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub ns: Netns,
    /// The host side of the pod's veth, in the node namespace.
    pub host_veth: String,
    servers: Vec<ChildGuard>,
}

impl Node {
    pub fn new() -> anyhow::Result<Self> {
        let ns = Netns::create("n")?;
        for sysctl in NODE_SYSCTLS {
            ns.exec(&["sysctl", "-qw", sysctl])?;
        }
        Ok(Self { ns })
    }

    /// A pod named `name` (at most 13 characters: its veth is `h-<name>`).
    pub fn add_pod(&self, name: &str, ip: Ipv4Addr) -> anyhow::Result<Pod> {
        self.add_pod_with(name, Some(ip), None)
    }

    /// A pod with an IPv4 address, an IPv6 one, or both (dual-stack).
    pub fn add_pod_with(&self, name: &str, ip: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> anyhow::Result<Pod> {
        if name.len() > 13 {
            bail!("pod name {name} is longer than 13 characters");
        }
        let ns = Netns::create("p")?;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"])?;
        let host_veth = format!("h-{name}");
        let (node, pod) = (self.ns.name(), ns.name());
        // Created directly inside both namespaces: names never clash on the host.
        crate::netns::veth_pair(node, &host_veth, pod, "eth0")?;
        ns.exec(&["ip", "link", "set", "eth0", "up"])?;
        self.ns.exec(&["ip", "link", "set", &host_veth, "up"])?;
        let mac = self.ns.mac(&host_veth)?;
        if let Some(ip) = ip {
            let addr = format!("{ip}/32");
            ns.exec(&["ip", "addr", "add", &addr, "dev", "eth0"])?;
            ns.exec(&["ip", "route", "add", GATEWAY, "dev", "eth0", "scope", "link"])?;
            ns.exec(&["ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
            self.ns.exec(&["ip", "route", "add", &addr, "dev", &host_veth])?;
            ns.exec(&["ip", "neigh", "replace", GATEWAY, "lladdr", &mac, "dev", "eth0", "nud", "permanent"])?;
        }
        if let Some(ipv6) = ipv6 {
            let addr = format!("{ipv6}/128");
            ns.exec(&["ip", "-6", "addr", "add", &addr, "dev", "eth0", "nodad"])?;
            ns.exec(&["ip", "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0"])?;
            self.ns.exec(&["ip", "-6", "route", "add", &addr, "dev", &host_veth])?;
            ns.exec(&["ip", "-6", "neigh", "replace", GATEWAY6, "lladdr", &mac, "dev", "eth0", "nud", "permanent"])?;
        }
        let ip = ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ok(Pod { name: name.to_owned(), ip, ipv6, ns, host_veth, servers: Vec::new() })
    }

    /// A pod as `add_pod` makes one (IPv4), created and configured by three
    /// `ip` commands (two of them batches), the host veth's MAC chosen
    /// beforehand: ready a few milliseconds after its veth appears, as a CNI
    /// plugin leaves a pod.
    pub fn add_pod_at_once(&self, name: &str, ip: Ipv4Addr) -> anyhow::Result<Pod> {
        let ns = Netns::create("p")?;
        let host_veth = format!("h-{name}");
        let [_, _, c, d] = ip.octets();
        let mac = format!("02:1b:00:00:{c:02x}:{d:02x}");
        let (node, pod) = (self.ns.name(), ns.name());
        crate::netns::ip(&[
            "link", "add", &host_veth, "address", &mac, "netns", node, "type", "veth", "peer", "name", "eth0", "netns",
            pod,
        ])?;
        let pod_side = format!(
            "link set eth0 up\naddr add {ip}/32 dev eth0\nroute add {GATEWAY} dev eth0 scope link\n\
             route add default via {GATEWAY} dev eth0\nneigh replace {GATEWAY} lladdr {mac} dev eth0 nud permanent\n"
        );
        ip_batch(pod, &pod_side)?;
        ip_batch(node, &format!("link set {host_veth} up\nroute add {ip}/32 dev {host_veth}\n"))?;
        Ok(Pod { name: name.to_owned(), ip, ipv6: None, ns, host_veth, servers: Vec::new() })
    }

    /// An external client on a link to the node: the node's device
    /// `ifname` gets `node_ip`/24, the client `client_ip`/24 on the same
    /// link and a default route through the node.
    pub fn add_external_client(&self, ifname: &str, node_ip: Ipv4Addr, client_ip: Ipv4Addr) -> anyhow::Result<Netns> {
        let ns = Netns::create("x")?;
        crate::netns::veth_pair(self.ns.name(), ifname, ns.name(), "eth0")?;
        self.ns.exec(&["ip", "addr", "add", &format!("{node_ip}/24"), "dev", ifname])?;
        self.ns.exec(&["ip", "link", "set", ifname, "up"])?;
        ns.exec(&["ip", "addr", "add", &format!("{client_ip}/24"), "dev", "eth0"])?;
        ns.exec(&["ip", "link", "set", "eth0", "up"])?;
        ns.exec(&["ip", "route", "add", "default", "via", &node_ip.to_string()])?;
        Ok(ns)
    }

    /// Gives the link of an external client (`add_external_client`) IPv6
    /// too: the node's device `ifname` gets `node_ip`/64, the client
    /// `client_ip`/64 and a default route through the node.
    pub fn add_external_ipv6(
        &self,
        client: &Netns,
        ifname: &str,
        node_ip: Ipv6Addr,
        client_ip: Ipv6Addr,
    ) -> anyhow::Result<()> {
        self.ns.exec(&["ip", "-6", "addr", "add", &format!("{node_ip}/64"), "dev", ifname, "nodad"])?;
        client.exec(&["ip", "-6", "addr", "add", &format!("{client_ip}/64"), "dev", "eth0", "nodad"])?;
        client.exec(&["ip", "-6", "route", "add", "default", "via", &node_ip.to_string()])?;
        Ok(())
    }

    /// A route in the node namespace, e.g. another node's pod CIDR (of
    /// either family) via it.
    pub fn route(&self, cidr: &str, via: impl Into<IpAddr>) -> anyhow::Result<()> {
        self.ns.exec(&["ip", "route", "add", cidr, "via", &via.into().to_string()])?;
        Ok(())
    }
}

impl Pod {
    /// Its addresses, IPv4 first: what `status.podIPs` lists.
    pub fn ips(&self) -> Vec<IpAddr> {
        let v4 = (!self.ip.is_unspecified()).then_some(IpAddr::V4(self.ip));
        v4.into_iter().chain(self.ipv6.map(IpAddr::V6)).collect()
    }

    /// Starts `lb-testserver` answering HTTP on `http_port` and UDP on
    /// `udp_port`, and waits until it is listening.
    pub fn serve(&mut self, http_port: u16, udp_port: u16) -> anyhow::Result<()> {
        self.serve_on(&[http_port], &[udp_port])
    }

    /// Like [`Pod::serve`], on several ports.
    pub fn serve_on(&mut self, http_ports: &[u16], udp_ports: &[u16]) -> anyhow::Result<()> {
        let http = http_ports.iter().map(|p| ("--http", *p));
        let udp = udp_ports.iter().map(|p| ("--udp", *p));
        self.spawn_server(http.chain(udp))
    }

    /// Starts a line-echo TCP server (long-lived connections) on `port`.
    pub fn serve_tcp_echo(&mut self, port: u16) -> anyhow::Result<()> {
        self.spawn_server([("--tcp-echo", port)])
    }

    /// Starts a sink on `port` that reads each connection to its end and
    /// reports what it received (see `client::bulk_send`).
    pub fn serve_sink(&mut self, port: u16) -> anyhow::Result<()> {
        self.spawn_server([("--sink", port)])
    }

    /// Sends what `client::bulk_receive` asks for on `port` (`--source`).
    pub fn serve_source(&mut self, port: u16) -> anyhow::Result<()> {
        self.spawn_server([("--source", port)])
    }

    /// Like [`Pod::serve_sink`] on each of `ports`, reporting the byte
    /// count only (no digest, which would cost more than the transfer).
    pub fn serve_discard(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        self.spawn_server(ports.iter().map(|p| ("--discard", *p)))
    }

    /// Runs `lb-testserver` with (flag, port) listeners on all addresses of
    /// both families and waits until it is listening.
    fn spawn_server(&mut self, listeners: impl IntoIterator<Item = (&'static str, u16)>) -> anyhow::Result<()> {
        let bin = crate::workspace_binary("LB_TESTSERVER_BIN", "lb-testserver")?;
        let mut cmd = self.ns.command(bin);
        cmd.args(["--name", &self.name]).stdout(Stdio::piped());
        for (flag, port) in listeners {
            // Both families (the kernel's default for `[::]`).
            cmd.args([flag, &format!("[::]:{port}")]);
        }
        let mut guard = self.ns.spawn(&mut cmd)?;
        let stdout = guard.0.stdout.take().expect("piped");
        // The server prints `ready` once bound, or exits (EOF) with an error.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("lb-testserver in pod {} did not start (said {line:?})", self.name);
        }
        self.servers.push(guard);
        Ok(())
    }
}

/// A layer-2 network between nodes and external clients: a bridge in a
/// namespace of its own.
pub struct Fabric {
    pub ns: Netns,
    ports: std::cell::Cell<u32>,
    xdp_links: std::cell::RefCell<Vec<std::os::fd::OwnedFd>>,
}

impl Fabric {
    pub fn new() -> anyhow::Result<Self> {
        let ns = Netns::create("f")?;
        ns.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        ns.exec(&["ip", "link", "set", "br0", "up"])?;
        Ok(Self { ns, ports: std::cell::Cell::new(0), xdp_links: Default::default() })
    }

    /// A veth from the bridge to `ns`, named `ifname` there, holding `ip`/24.
    fn plug(&self, ns: &Netns, ifname: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
        let port = format!("p{}", self.ports.replace(self.ports.get() + 1));
        crate::netns::veth_pair(self.ns.name(), &port, ns.name(), ifname)?;
        self.ns.exec(&["ip", "link", "set", &port, "master", "br0", "up"])?;
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", ifname])?;
        ns.exec(&["ip", "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Lets every port of the bridge take frames that nodes send from XDP
    /// (see [`crate::xdp_const`]).
    pub fn accept_xdp_frames(&self) -> anyhow::Result<()> {
        for port in 0..self.ports.get() {
            let link = crate::xdp_const::attach(&self.ns, &format!("p{port}"), crate::xdp_const::Action::Pass)?;
            self.xdp_links.borrow_mut().push(link);
        }
        Ok(())
    }

    /// Joins `node` to the fabric through its device `ifname` with `ip`.
    pub fn join(&self, node: &Node, ifname: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
        self.plug(&node.ns, ifname, ip)
    }

    /// Gives `ns`'s fabric device `ifname` `ip`/64 too (dual-stack): the
    /// fabric's IPv6 prefix is on-link for every member, and no route
    /// leads beyond it (an external client reaches the nodes' addresses
    /// only, as a real network routes them).
    pub fn add_ipv6(&self, ns: &Netns, ifname: &str, ip: Ipv6Addr) -> anyhow::Result<()> {
        ns.exec(&["ip", "-6", "addr", "add", &format!("{ip}/64"), "dev", ifname, "nodad"])?;
        Ok(())
    }

    /// An external client on the fabric, routing everything else (IPv4) via `gateway`.
    pub fn add_client(&self, ip: Ipv4Addr, gateway: Ipv4Addr) -> anyhow::Result<Netns> {
        let ns = Netns::create("c")?;
        self.plug(&ns, "eth0", ip)?;
        ns.exec(&["ip", "route", "add", "default", "via", &gateway.to_string()])?;
        Ok(ns)
    }
}

/// `ip -n NS -batch -` with `commands`, one a line: one process for all.
fn ip_batch(ns: &str, commands: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -n {ns} -batch failed: {}\n{commands}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
