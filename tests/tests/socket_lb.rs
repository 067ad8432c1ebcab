//! Services from the node itself (`--socket-lb`): processes in the node's
//! network namespace reach cluster IPs and node ports through the cgroup
//! socket hooks, which no packet of theirs would otherwise meet. Each test
//! has a cgroup of its own for the agent's hooks and its client processes.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use lb_tests::{
    agent::AgentProcess,
    cgroup::{TestCgroup, field},
    client::{http_get, served_by},
    kubia::{Cluster, TIMEOUT, VIP, cluster, endpoint_count, pods_manifest, pods_manifest_on},
    netns::Netns,
    require_root,
    topology::{Node, Pod},
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const EXTERNAL_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const NODE_PORT: u16 = 30123;
const UDP_NODE_PORT: u16 = 30053;
/// The Service's external IP: no route leads there, the hooks do.
const EXTERNAL_IP: &str = "203.0.113.10";

/// kubia as a NodePort Service (TCP 80 and UDP 53) with an external IP,
/// and `extra` spec lines.
fn service(extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  type: NodePort\n  clusterIP: {VIP}\n  externalIPs: [{EXTERNAL_IP}]\n{extra}  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    nodePort: {NODE_PORT}\n  - name: echo\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n    nodePort: {UDP_NODE_PORT}\n  selector:\n    app: kubia\n"
    )
}

/// A node with `backends` kubia pods and an address on its uplink (as a
/// real node has: the node's sockets leave with it), and a cgroup.
struct Setup {
    c: Cluster,
    external: Netns,
    cgroup: TestCgroup,
}

fn setup(backends: u8) -> Setup {
    let c = cluster(backends);
    let external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    Setup { c, external, cgroup: TestCgroup::create().unwrap() }
}

impl Setup {
    /// The agent with `service`, every pod ready, hooks on the test's
    /// cgroup, and `args`.
    fn start(&self, service: &str, args: &[&str]) -> AgentProcess {
        let pods: Vec<&Pod> = self.c.backends.iter().collect();
        let manifests =
            [("svc.yaml", service), ("pods.yaml", &pods_manifest_on(&pods, self.c.node.ns.name(), |_| true))];
        let agent = AgentProcess::start_with(&self.c.node, &manifests, &self.args(args)).unwrap();
        let count = self.c.backends.len();
        agent
            .wait_for_services(TIMEOUT, |s| s.lines().nth(1).is_some_and(|r| r.matches(":8080").count() == count))
            .unwrap();
        agent
    }

    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let cgroup = self.cgroup.path().to_str().unwrap();
        [&["--device", "uplink", "--pod-device", "h-*", "--cgroup-root", cgroup][..], extra].concat()
    }

    /// `lb-testclient ARGS` run by a process of the node's namespace.
    fn on_node(&self, args: &[&str]) -> String {
        self.cgroup.client(&self.c.node.ns, args).unwrap()
    }

    fn names(&self) -> BTreeSet<String> {
        self.c.backends.iter().map(|p| p.name.clone()).collect()
    }
}

/// The pod that answered, from a client's `body:` lines.
fn server(output: &str) -> String {
    served_by(field(output, "body").unwrap_or("")).to_owned()
}

/// The address the server saw, from the client's second `body:` line.
fn seen_by_server(output: &str) -> &str {
    output.lines().filter_map(|l| l.strip_prefix("body: client: ")).next().unwrap_or("")
}

#[test]
fn a_process_on_the_node_reaches_a_cluster_ip_over_tcp_and_udp_and_sees_the_service_as_its_peer() {
    require_root();
    let s = setup(3);
    let agent = s.start(&service(""), &[]);

    let mut served = BTreeSet::new();
    for _ in 0..30 {
        let out = s.on_node(&["http", "10.96.0.10:80"]);
        assert_eq!(field(&out, "peer"), Some("10.96.0.10:80"), "getpeername shows the Service: {out}");
        // The pod sees the node's own address: the socket went to it directly.
        assert!(seen_by_server(&out).starts_with(&format!("{NODE_IP}:")), "{out}");
        served.insert(server(&out));
    }
    assert_eq!(served, s.names(), "connections spread over every backend");

    // UDP from an unconnected socket: recvfrom() names the Service; and
    // from a connected one: getpeername() does.
    let out = s.on_node(&["udp", "10.96.0.10:53"]);
    assert_eq!(field(&out, "from"), Some("10.96.0.10:53"), "{out}");
    assert!(s.names().contains(&server(&out)), "{out}");
    let out = s.on_node(&["udp-connected", "10.96.0.10:53"]);
    assert_eq!(field(&out, "peer"), Some("10.96.0.10:53"), "{out}");

    // IPv6 sockets naming the IPv4 address, as dual-stack programs do.
    let out = s.on_node(&["http", "[::ffff:10.96.0.10]:80"]);
    assert_eq!(field(&out, "peer"), Some("[::ffff:10.96.0.10]:80"), "{out}");
    let out = s.on_node(&["udp", "[::ffff:10.96.0.10]:53"]);
    assert_eq!(field(&out, "from"), Some("[::ffff:10.96.0.10]:53"), "{out}");

    // The external IP, and the node port on the node's address; not on
    // 127.0.0.1 by default.
    let out = s.on_node(&["http", &format!("{EXTERNAL_IP}:80")]);
    assert_eq!(field(&out, "peer"), Some(format!("{EXTERNAL_IP}:80").as_str()), "{out}");
    let out = s.on_node(&["http", &format!("{NODE_IP}:{NODE_PORT}")]);
    assert_eq!(field(&out, "peer"), Some(format!("{NODE_IP}:{NODE_PORT}").as_str()), "{out}");
    let out = s.on_node(&["connect", &format!("127.0.0.1:{NODE_PORT}")]);
    assert_eq!(field(&out, "connect"), Some("ECONNREFUSED"), "nothing listens on localhost: {out}");

    // Translated once per socket: no conntrack entry, no packet rewritten.
    assert!(agent.counter("SOCKET", "forward_new_flow").unwrap() >= 36);
    assert!(agent.counter("SOCKET", "reply_reverse_nat").unwrap() >= 35);
    let conntrack = agent.get("conntrack").unwrap();
    assert!(conntrack.contains("0 entries; created 0"), "{conntrack}");
    assert_eq!(agent.counter("TC-POD", "forward_new_flow").unwrap(), 0);
}

#[test]
fn a_service_without_endpoints_or_port_refuses_the_node_s_connections_at_once() {
    require_root();
    let s = setup(0);
    let _agent = s.start(&service(""), &[]);
    for (target, what) in [("10.96.0.10:80", "no endpoints"), ("10.96.0.10:81", "no such port")] {
        let start = std::time::Instant::now();
        let out = s.on_node(&["connect", target]);
        assert_eq!(field(&out, "connect"), Some("ECONNREFUSED"), "{what}: {out}");
        assert!(start.elapsed() < Duration::from_secs(1), "{what}: refused at once");
    }
}

#[test]
fn session_affinity_keeps_the_node_s_connections_on_one_backend() {
    require_root();
    let s = setup(3);
    let _agent = s.start(&service("  sessionAffinity: ClientIP\n"), &[]);
    let served: BTreeSet<String> = (0..15).map(|_| server(&s.on_node(&["http", "10.96.0.10:80"]))).collect();
    assert_eq!(served.len(), 1, "{served:?}");
}

#[test]
fn with_socket_lb_all_a_pod_s_connections_are_balanced_without_any_conntrack_entry() {
    require_root();
    let s = setup(3);
    let agent = s.start(&service(""), &["--socket-lb", "all"]);
    let client = &s.c.client;
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        let out = s.cgroup.client(&client.ns, &["http", "10.96.0.10:80"]).unwrap();
        assert_eq!(field(&out, "peer"), Some("10.96.0.10:80"), "{out}");
        assert!(seen_by_server(&out).starts_with(&format!("{}:", client.ip)), "the pod's own address: {out}");
        served.insert(server(&out));
    }
    assert_eq!(served, s.names());
    let conntrack = agent.get("conntrack").unwrap();
    assert!(conntrack.contains("0 entries; created 0"), "{conntrack}");
    assert_eq!(agent.counter("TC-POD", "forward_new_flow").unwrap(), 0, "{}", agent.get("counters").unwrap());
    // A socket outside the cgroup still takes the packet path.
    let body = http_get(&client.ns, std::net::SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    assert!(s.names().contains(served_by(&body)), "{body}");
    assert!(agent.counter("TC-POD", "forward_new_flow").unwrap() >= 1);
}

#[test]
fn the_socket_hooks_keep_working_while_the_agent_is_down_and_a_restart_takes_them_over() {
    require_root();
    let s = setup(2);
    let mut agent = s.start(&service(""), &[]);
    agent.kill().unwrap();
    let out = s.on_node(&["http", "10.96.0.10:80"]);
    assert_eq!(field(&out, "peer"), Some("10.96.0.10:80"), "served by the pinned links: {out}");

    // The next agent serves pods too (`all`): only its programs, swapped
    // into the same links, can; no link is added.
    let links_dir = agent.bpf_dir.join("socket-links");
    let links = || std::fs::read_dir(&links_dir).unwrap().count();
    let before = links();
    agent.restart_with(&s.c.node, &s.args(&["--socket-lb", "all"])).unwrap();
    assert!(agent.log_text().contains("took over the pinned socket link"), "{}", agent.log_text());
    assert_eq!(agent.first_sync_writes(), 0, "{}", agent.log_text());
    assert_eq!(links(), before);
    let out = s.on_node(&["http", "10.96.0.10:80"]);
    assert_eq!(field(&out, "peer"), Some("10.96.0.10:80"), "{out}");
    let out = s.cgroup.client(&s.c.client.ns, &["http", "10.96.0.10:80"]).unwrap();
    assert_eq!(field(&out, "peer"), Some("10.96.0.10:80"), "{out}");
    assert_eq!(agent.counter("TC-POD", "forward_new_flow").unwrap(), 0, "the pod's socket was translated");

    // `--socket-lb off` releases them: the node's sockets are left alone
    // (and the node has no route to the service CIDR).
    agent.stop().unwrap();
    agent.restart_with(&s.c.node, &s.args(&["--socket-lb", "off"])).unwrap();
    let out = s.on_node(&["connect", "10.96.0.10:80"]);
    assert_eq!(field(&out, "connect"), Some("NetworkUnreachable"), "{out}");
    assert_eq!(links(), 0);
}

#[test]
fn processes_on_the_node_cannot_bind_a_node_port_but_pods_can() {
    require_root();
    let s = setup(1);
    let _agent = s.start(&service(""), &[]);
    for (proto, port) in [("tcp", NODE_PORT), ("udp", UDP_NODE_PORT), ("tcp6", NODE_PORT)] {
        let out = s.on_node(&["bind", proto, &port.to_string()]);
        assert_eq!(field(&out, "bind"), Some("EADDRINUSE"), "{proto} {port}: {out}");
    }
    // Another protocol on the same number, another port, a pod's namespace.
    assert_eq!(field(&s.on_node(&["bind", "udp", &NODE_PORT.to_string()]), "bind"), Some("ok"));
    assert_eq!(field(&s.on_node(&["bind", "tcp", "30124"]), "bind"), Some("ok"));
    let in_pod = s.cgroup.client(&s.c.client.ns, &["bind", "tcp", &NODE_PORT.to_string()]).unwrap();
    assert_eq!(field(&in_pod, "bind"), Some("ok"), "{in_pod}");
}

#[test]
fn nodeport_localhost_lets_the_node_s_sockets_use_127_0_0_1() {
    require_root();
    let s = setup(2);
    let _agent = s.start(&service(""), &["--nodeport-localhost"]);
    let target = format!("127.0.0.1:{NODE_PORT}");
    let out = s.on_node(&["http", &target]);
    assert_eq!(field(&out, "peer"), Some(target.as_str()), "{out}");
    assert!(s.names().contains(&server(&out)), "{out}");
}

/// Without `--cgroup-root` the hooks attach to the unified hierarchy's
/// root (mounted if need be), so every process of the node namespace is
/// served: here the test's own thread, in whatever cgroup it runs.
#[test]
fn by_default_every_process_of_the_node_is_served() {
    require_root();
    let c = cluster(2);
    let _external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    let pods: Vec<&Pod> = c.backends.iter().collect();
    let manifests = [("svc.yaml", service("")), ("pods.yaml", pods_manifest_on(&pods, c.node.ns.name(), |_| true))];
    let manifests: Vec<(&str, &str)> = manifests.iter().map(|(f, t)| (*f, t.as_str())).collect();
    let args = ["--device", "uplink", "--pod-device", "h-*"];
    let agent = AgentProcess::start_on_root_cgroup(&c.node, &manifests, &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains(":8080")).unwrap();
    let body = http_get(&c.node.ns, std::net::SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    assert!(lb_tests::client::seen_client(&body).starts_with(&format!("{NODE_IP}:")), "{body}");
    assert!(agent.counter("SOCKET", "forward_new_flow").unwrap() >= 1);
}

/// kube-proxy short-circuits the node's own traffic to a Local policy's
/// node port to every endpoint, as it does pods': here the endpoints all
/// run on another node (as their `nodeName` says), so a client outside
/// finds none, the node's socket all of them.
#[test]
fn the_node_s_sockets_reach_a_local_policy_node_port_without_local_endpoints() {
    require_root();
    let s = setup(2);
    let pods: Vec<&Pod> = s.c.backends.iter().collect();
    let manifests = [
        ("svc.yaml", service("  externalTrafficPolicy: Local\n")),
        ("pods.yaml", pods_manifest_on(&pods, "another-node", |_| true)),
    ];
    let manifests: Vec<(&str, &str)> = manifests.iter().map(|(f, t)| (*f, t.as_str())).collect();
    let agent = AgentProcess::start_with(&s.c.node, &manifests, &s.args(&[])).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.matches(":8080").count() == 2).unwrap();
    let served: BTreeSet<String> =
        (0..12).map(|_| server(&s.on_node(&["http", &format!("{NODE_IP}:{NODE_PORT}")]))).collect();
    assert_eq!(served, s.names());
    let external = lb_tests::client::tcp_connect(
        &s.external,
        std::net::SocketAddrV4::new(NODE_IP, NODE_PORT),
        Duration::from_millis(300),
    )
    .unwrap();
    assert!(external.is_err(), "an external client finds no local endpoint");
}

/// `loadBalancerSourceRanges`: the node's sockets leave with the node's
/// address, so they pass when it is inside the ranges and fail with EPERM
/// when it is not.
#[test]
fn source_ranges_admit_the_node_s_sockets_only_with_a_node_address_inside() {
    require_root();
    let s = setup(1);
    let service = |ranges: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  type: LoadBalancer\n  clusterIP: {VIP}\n  loadBalancerSourceRanges: [{ranges}]\n  ports:\n  - port: 80\n    targetPort: 8080\n  selector:\n    app: kubia\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.20\n"
        )
    };
    let agent = s.start(&service("198.51.100.0/24"), &[]);
    let out = s.on_node(&["http", "203.0.113.20:80"]);
    assert_eq!(field(&out, "peer"), Some("203.0.113.20:80"), "{out}");

    agent.write_manifest("svc.yaml", &service("192.0.2.0/24")).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let refused = loop {
        let out = s.on_node(&["connect", "203.0.113.20:80"]);
        if field(&out, "connect") == Some("EPERM") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(field(&refused, "connect"), Some("EPERM"), "{refused}");
    assert!(agent.counter("SOCKET", "drop_source_range").unwrap() >= 1);
}

/// An IPv6 cluster IP from the node: its processes' sockets are sent to a
/// backend at connect() (each UDP datagram at sendmsg()), reach every pod
/// with the node's own IPv6 address as their source, and see the Service
/// as their peer; no packet is translated.
#[test]
fn a_process_on_the_node_reaches_an_ipv6_cluster_ip_and_sees_the_service_as_its_peer() {
    require_root();
    let vip6 = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x0a);
    let node6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let node = Node::new().unwrap();
    let backends: Vec<Pod> = (0..2u16)
        .map(|i| {
            let ip = Ipv6Addr::new(0xfd00, 0x44, 0, 0, 0, 0, 0, 2 + i);
            let mut pod = node.add_pod_with(&format!("kubia-{i}"), None, Some(ip)).unwrap();
            pod.serve(8080, 5353).unwrap();
            pod
        })
        .collect();
    // The node's own IPv6 address, which its sockets leave with.
    let external = node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    node.add_external_ipv6(&external, "uplink", node6, Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100)).unwrap();
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  ipFamilies: [IPv6]\n  clusterIP: {vip6}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n  - name: echo\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n  selector:\n    app: kubia\n"
    );
    let pods = pods_manifest(&backends.iter().collect::<Vec<_>>(), |_| true);
    let cgroup = TestCgroup::create().unwrap();
    let cgroup_path = cgroup.path().to_str().unwrap();
    let args =
        ["--device", "uplink", "--pod-device", "h-*", "--cgroup-root", cgroup_path, "--service-cidr", "fd00:96::/112"];
    let manifests = [("svc.yaml", service.as_str()), ("pods.yaml", &pods)];
    let agent = AgentProcess::start_with(&node, &manifests, &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 2).unwrap();

    let on_node = |args: &[&str]| cgroup.client(&node.ns, args).unwrap();
    let (http, dns) = (format!("[{vip6}]:80"), format!("[{vip6}]:53"));
    let mut served = BTreeSet::new();
    for _ in 0..20 {
        let out = on_node(&["http", &http]);
        assert_eq!(field(&out, "peer"), Some(http.as_str()), "getpeername shows the Service: {out}");
        assert!(seen_by_server(&out).starts_with(&format!("[{node6}]:")), "{out}");
        served.insert(server(&out));
    }
    assert_eq!(served, backends.iter().map(|p| p.name.clone()).collect(), "connections spread over every backend");
    let out = on_node(&["udp", &dns]);
    assert_eq!(field(&out, "from"), Some(dns.as_str()), "recvfrom names the Service: {out}");
    let out = on_node(&["udp-connected", &dns]);
    assert_eq!(field(&out, "peer"), Some(dns.as_str()), "{out}");

    assert!(agent.counter("SOCKET", "forward_new_flow").unwrap() >= 22, "{}", agent.get("counters").unwrap());
    assert!(agent.counter("SOCKET", "reply_reverse_nat").unwrap() >= 21, "{}", agent.get("counters").unwrap());
    assert_eq!(agent.counter("TC-POD", "forward_new_flow").unwrap(), 0);
}
