//! Two nodes, each running its own lb-agent, pods on both (a pod CIDR per
//! node, routed over a fabric), and an external client on the fabric: the
//! seeds' "understanding the peculiarities of external connections". The
//! cluster is dual-stack: nodes, pods and the client have an address of
//! each family, and kubia's node port answers on both.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    agent::AgentProcess,
    cgroup::field,
    client::{
        bulk_receive, bulk_send, http_get, seen_client, served_by, udp_request, udp_request_from, until_unanswered,
    },
    kubia::{TIMEOUT, VIP, pods_manifest_on},
    netns::Netns,
    require_root,
    topology::{Fabric, Node, Pod},
};

const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const NODE_A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const NODE_B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x0a);

/// `fd00:244:<node>::<last>`, in node `node`'s IPv6 pod CIDR.
const fn pod6(node: u16, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, node, 0, 0, 0, 0, last)
}

/// The addresses of one family that a test talks to and expects to see.
struct Family {
    node_a: IpAddr,
    node_b: IpAddr,
    client: IpAddr,
}

const IPV4: Family = Family { node_a: IpAddr::V4(NODE_A), node_b: IpAddr::V4(NODE_B), client: IpAddr::V4(CLIENT) };
const IPV6: Family = Family { node_a: IpAddr::V6(NODE_A6), node_b: IpAddr::V6(NODE_B6), client: IpAddr::V6(CLIENT6) };

impl Family {
    /// `pod`'s address of this family.
    fn of(&self, pod: &Pod) -> IpAddr {
        let ip = pod.ips().into_iter().find(|ip| ip.is_ipv4() == self.node_a.is_ipv4());
        ip.unwrap_or_else(|| panic!("{} has no address of this family", pod.name))
    }
}

/// Everything a test needs alive; dropped in reverse order of use.
struct Cluster {
    /// A pod on node A that only ever acts as a client.
    client_pod: Pod,
    external: Netns,
    /// Node A's agent, then node B's.
    agents: Vec<AgentProcess>,
    /// kubia-a on node A, kubia-b on node B.
    pods: [Pod; 2],
    nodes: [Node; 2],
    _fabric: Fabric,
}

/// How nodes send what they forward to each other.
#[derive(Clone, Copy, PartialEq)]
enum Forwarding {
    /// XDP_PASS to the kernel's routing.
    Stack,
    /// XDP_TX/XDP_REDIRECT onto the fabric, whose ports take XDP frames.
    XdpFastPath,
}

fn cluster(policy: &str) -> Cluster {
    cluster_forwarding(policy, Forwarding::Stack)
}

fn cluster_forwarding(policy: &str, forwarding: Forwarding) -> Cluster {
    let fabric = Fabric::new().unwrap();
    let nodes = [Node::new().unwrap(), Node::new().unwrap()];
    fabric.join(&nodes[0], "fabric", NODE_A).unwrap();
    fabric.join(&nodes[1], "fabric", NODE_B).unwrap();
    fabric.add_ipv6(&nodes[0].ns, "fabric", NODE_A6).unwrap();
    fabric.add_ipv6(&nodes[1].ns, "fabric", NODE_B6).unwrap();
    nodes[0].route("10.244.2.0/24", NODE_B).unwrap();
    nodes[1].route("10.244.1.0/24", NODE_A).unwrap();
    nodes[0].route("fd00:244:2::/64", NODE_B6).unwrap();
    nodes[1].route("fd00:244:1::/64", NODE_A6).unwrap();
    let mut a = nodes[0].add_pod_with("kubia-a", Some(Ipv4Addr::new(10, 244, 1, 2)), Some(pod6(1, 2))).unwrap();
    let mut b = nodes[1].add_pod_with("kubia-b", Some(Ipv4Addr::new(10, 244, 2, 2)), Some(pod6(2, 2))).unwrap();
    a.serve(8080, 5353).unwrap();
    b.serve(8080, 5353).unwrap();
    b.serve_sink(9000).unwrap();
    b.serve_source(9001).unwrap();
    let client_pod = nodes[0].add_pod_with("client", Some(Ipv4Addr::new(10, 244, 1, 100)), Some(pod6(1, 100))).unwrap();
    let external = fabric.add_client(CLIENT, NODE_A).unwrap();
    fabric.add_ipv6(&external, "eth0", CLIENT6).unwrap();
    // Like a real node's NIC (or a tunnel), the uplinks complete checksums
    // in software; so does the external client, as a wire delivers them.
    // Pods keep their default offloads: their TCP and UDP leave them with
    // only the pseudo-header summed, TCP in GSO super-packets.
    for (ns, ifname) in nodes.iter().map(|n| (&n.ns, "fabric")).chain([(&external, "eth0")]) {
        ns.send_complete_checksums(ifname).unwrap();
    }
    let mut args = vec![
        "--device",
        "fabric",
        "--pod-device",
        "h-*",
        "--service-cidr",
        "10.96.0.0/12",
        "--service-cidr",
        "fd00:96::/112",
    ];
    if forwarding == Forwarding::XdpFastPath {
        fabric.accept_xdp_frames().unwrap();
        args.extend(["--xdp-redirect-device", "fabric"]);
    }

    // The same manifests on both nodes, pods placed by spec.nodeName.
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia-nodeport\nspec:\n  type: NodePort\n{policy}  clusterIPs: [{VIP}, {VIP6}]\n  ports:\n  - port: 80\n    targetPort: 8080\n    nodePort: 30123\n  selector:\n    app: kubia\n"
    );
    let pods = pods_placed(&[&a, &b], &nodes, |_| true);
    let remote_only = remote_only_service(&b, &nodes[1]);
    let agents = nodes
        .iter()
        .map(|node| {
            let manifests = [
                ("svc.yaml", service.as_str()),
                ("pods.yaml", pods.as_str()),
                ("remote.yaml", remote_only.as_str()),
                ("lb.yaml", LOAD_BALANCER),
            ];
            let agent = AgentProcess::start_with(node, &manifests, &args).unwrap();
            // kubia-nodeport lists both pods of both families.
            agent.wait_for_services(TIMEOUT, |s| s.contains("30123") && s.matches(":8080").count() >= 4).unwrap();
            agent
        })
        .collect();
    Cluster { client_pod, external, agents, pods: [a, b], nodes, _fabric: fabric }
}

/// The pods' manifests, kubia-a on node A and kubia-b on node B.
fn pods_placed(pods: &[&Pod; 2], nodes: &[Node; 2], ready: impl Fn(&Pod) -> bool) -> String {
    let on = |i: usize| pods_manifest_on(&[pods[i]], nodes[i].ns.name(), &ready);
    [on(0), on(1)].join("---\n")
}

/// `bulk` at BULK_VIP, a NodePort: kubia-b's sink (TCP 9000, node port
/// 30900), source (TCP 9001, node port 30901) and UDP echo (53 -> 5353), an
/// endpoint on node B only.
fn remote_only_service(pod: &Pod, node: &Node) -> String {
    let slice = |ip: IpAddr| {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: bulk-{family}\n  labels:\n    kubernetes.io/service-name: bulk\naddressType: {family}\nendpoints:\n- addresses: ['{ip}']\n  nodeName: {}\n  conditions: {{ready: true}}\nports:\n- {{name: sink, port: 9000}}\n- {{name: source, port: 9001}}\n- {{name: echo, port: 5353, protocol: UDP}}\n",
            node.ns.name()
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bulk\nspec:\n  type: NodePort\n  ipFamilyPolicy: PreferDualStack\n  clusterIPs: [{BULK_VIP}, {BULK_VIP6}]\n  ports:\n  - name: sink\n    port: 9000\n    nodePort: 30900\n  - name: source\n    port: 9001\n    nodePort: 30901\n  - name: echo\n    port: 53\n    protocol: UDP\n{}{}",
        slice(IPV4.of(pod)),
        slice(IPV6.of(pod))
    )
}

const BULK_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const BULK_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x20);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// kubia behind a load-balancer IP and an external IP, UDP 53 -> 5353 too.
const LOAD_BALANCER: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia-lb\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.30\n  externalIPs: [203.0.113.20]\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n  - name: dns\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n  selector:\n    app: kubia\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.10\n";

/// Which pod answered, and which client address it saw.
fn answers(from: &Netns, to: impl Into<SocketAddr>, requests: usize) -> BTreeSet<(String, IpAddr)> {
    let to = to.into();
    (0..requests)
        .map(|_| {
            let body = http_get(from, to, TIMEOUT).unwrap();
            let seen = seen_client(&body).parse::<SocketAddr>().unwrap_or_else(|_| panic!("{body}"));
            (served_by(&body).to_owned(), seen.ip())
        })
        .collect()
}

/// With `externalTrafficPolicy: Cluster` a request to node A may be served
/// on node B, and then the backend sees node A's address, not the client's.
#[test]
fn cluster_policy_makes_an_extra_hop_and_hides_the_client_address() {
    cluster_policy_hides_the_client_behind_the_node_it_reached(&IPV4);
}

/// The same through the node ports' IPv6 addresses: node A's IPv6 address
/// stands in for the client towards node B's pod.
#[test]
fn ipv6_cluster_policy_makes_an_extra_hop_and_hides_the_client_address() {
    cluster_policy_hides_the_client_behind_the_node_it_reached(&IPV6);
}

fn cluster_policy_hides_the_client_behind_the_node_it_reached(f: &Family) {
    require_root();
    let c = cluster("");
    let via_a = answers(&c.external, (f.node_a, 30123), 30);
    assert_eq!(via_a, [("kubia-a".into(), f.client), ("kubia-b".into(), f.node_a)].into(), "kubia-b sees node A");
    let via_b = answers(&c.external, (f.node_b, 30123), 30);
    assert_eq!(via_b, [("kubia-a".into(), f.node_b), ("kubia-b".into(), f.client)].into(), "kubia-a sees node B");
}

/// With `externalTrafficPolicy: Local` a request never leaves the node it
/// reached and the backend sees the client; at a node without a ready
/// endpoint it is dropped (as kube-proxy does), not sent to another node. A
/// pod is short-circuited to every endpoint, as kube-proxy does: the policy
/// is for external clients.
#[test]
fn local_policy_never_leaves_the_node_and_keeps_the_client_address() {
    local_policy_keeps_the_client_on_the_node_it_reached(&IPV4);
}

/// The same through the node ports' IPv6 addresses.
#[test]
fn ipv6_local_policy_never_leaves_the_node_and_keeps_the_client_address() {
    local_policy_keeps_the_client_on_the_node_it_reached(&IPV6);
}

fn local_policy_keeps_the_client_on_the_node_it_reached(f: &Family) {
    require_root();
    let c = cluster("  externalTrafficPolicy: Local\n");
    assert_eq!(answers(&c.external, (f.node_a, 30123), 20), [("kubia-a".into(), f.client)].into());
    assert_eq!(answers(&c.external, (f.node_b, 30123), 20), [("kubia-b".into(), f.client)].into());
    let me = f.of(&c.client_pod);
    assert_eq!(
        answers(&c.client_pod.ns, (f.node_a, 30123), 30),
        [("kubia-a".into(), me), ("kubia-b".into(), me)].into(),
        "a pod reaches every endpoint of its own node's node port"
    );

    // kubia-a stops being ready: node A has no local endpoint left.
    let dropped = c.agents[0].counter("XDP-NODE", "drop_no_backend").unwrap();
    let pods = pods_placed(&[&c.pods[0], &c.pods[1]], &c.nodes, |pod| pod.name != "kubia-a");
    for agent in &c.agents {
        agent.write_manifest("pods.yaml", &pods).unwrap();
    }
    until_unanswered(&c.external, (f.node_a, 30123), Duration::from_secs(5)).unwrap();
    let counters = c.agents[0].get("counters").unwrap();
    assert!(c.agents[0].counter("XDP-NODE", "drop_no_backend").unwrap() > dropped, "{counters}");
    assert_eq!(answers(&c.external, (f.node_b, 30123), 10), [("kubia-b".into(), f.client)].into());
}

/// A pod on node A reaches the cluster IP's backends on both nodes, keeping
/// its own address (no SNAT between pods), the replies translated on node
/// A's fabric device; both families, each leaving TC by the fast path
/// (into the local pod by peer, towards node B by neighbour).
#[test]
fn pods_reach_backends_on_the_other_node_through_the_cluster_ip() {
    require_root();
    let c = cluster("");
    for (f, vip) in [(&IPV4, IpAddr::V4(VIP)), (&IPV6, IpAddr::V6(VIP6))] {
        let sent = |by| c.agents[0].counter("PACKETS", by).unwrap();
        let (peer, neigh) = (sent("redirect_peer"), sent("redirect_neigh"));
        let got = answers(&c.client_pod.ns, (vip, 80), 30);
        let me = f.of(&c.client_pod);
        assert_eq!(got, [("kubia-a".into(), me), ("kubia-b".into(), me)].into());
        let counters = c.agents[0].get("counters").unwrap();
        assert!(sent("redirect_peer") > peer && sent("redirect_neigh") > neigh, "{vip}: {counters}");
    }
}

/// The uplinks complete checksums (as a NIC without offload or a tunnel
/// does) while the pod sends with offloads: a pod on node A reaches a
/// backend that only node B has through its cluster IP over UDP and TCP,
/// and a 50 MB transfer arrives intact (the sink checks every byte; the
/// receiving kernel checks every segment's checksum), in either family.
#[test]
fn pods_reach_a_remote_backend_through_the_cluster_ip_when_uplinks_complete_checksums() {
    require_root();
    let c = cluster("");
    let offloads = c.client_pod.ns.exec(&["ethtool", "-k", "eth0"]).unwrap();
    let offloads = String::from_utf8_lossy(&offloads.stdout);
    for feature in ["tx-checksumming: on", "tcp-segmentation-offload: on", "generic-segmentation-offload: on"] {
        assert!(offloads.contains(feature), "the pod should keep {feature}:\n{offloads}");
    }
    let node_a = &c.agents[0];
    for (f, bulk, vip) in [(&IPV4, IpAddr::V4(BULK_VIP), IpAddr::V4(VIP)), (&IPV6, BULK_VIP6.into(), VIP6.into())] {
        let (reply, from) = udp_request(&c.client_pod.ns, (bulk, 53), b"ping", TIMEOUT).unwrap();
        assert_eq!(served_by(&reply), "kubia-b");
        assert_eq!(from, SocketAddr::new(bulk, 53));
        let neigh = node_a.counter("PACKETS", "redirect_neigh").unwrap();
        let report = bulk_send(&c.client_pod.ns, (bulk, 9000), 50 << 20, TIMEOUT * 6).unwrap();
        assert!(report.starts_with("kubia-b received 52428800 bytes"), "{bulk}: {report}");
        // Sent from TC out of the uplink, not through the node's routing.
        let counters = node_a.get("counters").unwrap();
        assert!(node_a.counter("PACKETS", "redirect_neigh").unwrap() > neigh, "{bulk}: {counters}");
        let me = f.of(&c.client_pod);
        let got = answers(&c.client_pod.ns, (vip, 80), 30);
        assert_eq!(got, [("kubia-a".into(), me), ("kubia-b".into(), me)].into());
    }
}

/// A process on node A (the agent's socket hooks; the uplinks complete
/// checksums, the pods keep their offloads) reaches the backend on node B
/// through the cluster IP with a bulk upload the sink checks byte for byte,
/// and keeps reaching kubia's backends on both nodes, by either family's
/// cluster IP, while node A's agent is killed and restarted with its
/// device addresses and maps in place; so does the external client through
/// node A's IPv6 node port (XDP, SNAT to node B's pod): no request fails,
/// and the restarted agent's first pass writes nothing.
#[test]
fn the_node_s_own_processes_reach_the_other_node_and_keep_doing_so_through_a_restart() {
    require_root();
    let mut c = cluster("");
    let node_a = &c.nodes[0];
    let on_node_a = |args: &[&str]| c.agents[0].cgroup().expect("a cgroup of its own").client(&node_a.ns, args);
    let out = on_node_a(&["send", &format!("{BULK_VIP}:9000"), &(20 << 20).to_string()]).unwrap();
    assert!(field(&out, "report").is_some_and(|r| r.starts_with("kubia-b received 20971520 bytes")), "{out}");

    let cgroup = c.agents[0].cgroup().expect("a cgroup of its own").path().to_owned();
    let (done, made, from_outside) = (AtomicBool::new(false), AtomicUsize::new(0), AtomicUsize::new(0));
    let (failures, served) = (Mutex::new(Vec::new()), Mutex::new(BTreeSet::new()));
    // Until `n` more requests have been answered (or failed).
    let requests = |n: usize| {
        let (target, deadline) = (made.load(Ordering::Relaxed) + n, Instant::now() + TIMEOUT * 10);
        while made.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let writes = std::thread::scope(|s| {
        s.spawn(|| {
            for vip in [format!("{VIP}:80"), format!("[{VIP6}]:80")].iter().cycle() {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                match lb_tests::cgroup::client_in(&cgroup, &node_a.ns, &["http", vip]) {
                    Ok(out) => {
                        served.lock().unwrap().insert(served_by(field(&out, "body").unwrap_or("")).to_owned());
                    }
                    Err(err) => failures.lock().unwrap().push(format!("{vip}: {err}")),
                }
                made.fetch_add(1, Ordering::Relaxed);
            }
        });
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                match http_get(&c.external, (NODE_A6, 30123), TIMEOUT) {
                    Ok(body) => {
                        served.lock().unwrap().insert(served_by(&body).to_owned());
                    }
                    Err(err) => failures.lock().unwrap().push(format!("[{NODE_A6}]:30123: {err}")),
                }
                from_outside.fetch_add(1, Ordering::Relaxed);
            }
        });
        requests(20);
        c.agents[0].kill().unwrap();
        // Without an agent the pinned links keep serving.
        requests(20);
        c.agents[0].restart(node_a).unwrap();
        requests(20);
        done.store(true, Ordering::Relaxed);
        c.agents[0].first_sync_writes()
    });
    assert!(failures.lock().unwrap().is_empty(), "{:?}", failures.lock().unwrap());
    assert!(
        from_outside.load(Ordering::Relaxed) >= 20,
        "{} requests from outside",
        from_outside.load(Ordering::Relaxed)
    );
    assert_eq!(*served.lock().unwrap(), ["kubia-a".to_owned(), "kubia-b".to_owned()].into());
    assert_eq!(writes, 0, "{}", c.agents[0].log_text());
}

/// An external client reaches a load-balancer IP and an external IP through
/// either node: served on the other node, the backend sees the node's own
/// address (not the LB IP, which no reply could reach); the client always
/// sees the address it asked; and the same flow picks the same backend
/// through either node (Maglev on the same manifests).
#[test]
fn load_balancer_and_external_ips_reach_backends_on_the_other_node_from_the_node_address() {
    require_root();
    let c = cluster("");
    for frontend in [LB_IP, EXTERNAL_IP] {
        let mut chosen = Vec::new();
        for (node, node_ip) in [(0, NODE_A), (1, NODE_B)] {
            c.external
                .exec(&["ip", "route", "replace", &format!("{frontend}/32"), "via", &node_ip.to_string()])
                .unwrap();
            let mut served = Vec::new();
            for port in 41000..41020 {
                let to = SocketAddrV4::new(frontend, 53);
                let (reply, from) = udp_request_from(&c.external, port, to, b"hi", TIMEOUT).unwrap();
                assert_eq!(from, to.into(), "the client must see the address it asked");
                let seen = seen_client(&reply);
                let seen = &seen[..seen.rfind(':').unwrap()];
                let local = if node == 0 { "kubia-a" } else { "kubia-b" };
                let want = if served_by(&reply) == local { CLIENT } else { node_ip };
                assert_eq!(seen, want.to_string(), "{reply} via node {node_ip}");
                served.push(served_by(&reply).to_owned());
            }
            assert!(served.iter().any(|s| s == "kubia-a") && served.iter().any(|s| s == "kubia-b"), "{served:?}");
            let http = answers(&c.external, SocketAddrV4::new(frontend, 80), 10);
            assert!(http.iter().all(|(pod, _)| pod == "kubia-a" || pod == "kubia-b"), "{http:?}");
            chosen.push(served);
        }
        assert_eq!(chosen[0], chosen[1], "the same flows through node A and node B chose different backends");
    }
}

/// A flood of flows from one external client, SNATed by node A towards
/// node B's backend: no two flows ever share a source port there (each saw
/// a port of its own), and every answer comes back to the socket that asked.
#[test]
fn snat_gives_every_flow_a_port_of_its_own() {
    require_root();
    let c = cluster("");
    c.external.exec(&["ip", "route", "replace", &format!("{LB_IP}/32"), "via", &NODE_A.to_string()]).unwrap();
    let mut snat_ports = BTreeSet::new();
    let mut remote = 0;
    for port in 20000..21500 {
        let to = SocketAddrV4::new(LB_IP, 53);
        // A datagram may be lost when the machine is busy (other tests run
        // beside this one): the same flow asks again.
        let ask = || udp_request_from(&c.external, port, to, b"flood", TIMEOUT);
        let (reply, from) = ask().or_else(|_| ask()).unwrap();
        assert_eq!(from, to.into());
        if served_by(&reply) == "kubia-b" {
            remote += 1;
            let seen = seen_client(&reply).to_owned();
            assert!(seen.starts_with(&format!("{NODE_A}:")), "{reply}");
            assert!(snat_ports.insert(seen.clone()), "two flows share {seen}");
        }
    }
    assert!(remote > 500, "only {remote} of 1500 flows went to node B");
}

/// Path-MTU discovery through a node port whose backend is on the other
/// node, with 1 400-byte routes on node A to the client and to node B's
/// pods: node A's XDP answers a packet that, translated, is too big with a
/// fragmentation-needed about the packet its sender sent. The backend's
/// reply is reported to the backend (the kernel's own error would go to
/// node A's address, the reply's new source), the client's request to the
/// client. 20 KB each way arrive intact.
#[test]
fn path_mtu_discovery_works_through_a_node_port_to_the_other_node() {
    path_mtu_discovery_through_a_node_port_to_the_other_node(&IPV4, &["10.244.2.0/24", "via", &NODE_B.to_string()]);
}

/// The same over IPv6, answered with ICMPv6 packet too big.
#[test]
fn ipv6_path_mtu_discovery_works_through_a_node_port_to_the_other_node() {
    path_mtu_discovery_through_a_node_port_to_the_other_node(&IPV6, &["fd00:244:2::/64", "via", &NODE_B6.to_string()]);
}

fn path_mtu_discovery_through_a_node_port_to_the_other_node(f: &Family, route_to_b: &[&str]) {
    require_root();
    let c = cluster("");
    let node_a = &c.nodes[0].ns;
    let (family, host) = if f.client.is_ipv4() { ("-4", "/32") } else { ("-6", "/128") };
    let to_client = format!("{}{host}", f.client);
    let mtu = ["mtu", "lock", "1400"];
    node_a.exec(&[&["ip", family, "route", "replace", &to_client, "dev", "fabric"][..], &mtu].concat()).unwrap();
    node_a.exec(&[&["ip", family, "route", "replace"][..], route_to_b, &mtu].concat()).unwrap();

    bulk_receive(&c.external, (f.node_a, 30901), 20 << 10, TIMEOUT * 3).unwrap();
    let answered = c.agents[0].counter("XDP-NODE", "frag_needed").unwrap();
    assert!(answered >= 1, "the backend's reply was not answered: {}", c.agents[0].get("counters").unwrap());
    // Forgotten, or the backend would announce the smaller MSS in turn.
    c.pods[1].ns.exec(&["ip", family, "route", "flush", "cache"]).unwrap();
    let report = bulk_send(&c.external, (f.node_a, 30900), 20 << 10, TIMEOUT * 3).unwrap();
    assert!(report.contains("received 20480 bytes"), "{report}");
    assert!(
        c.agents[0].counter("XDP-NODE", "frag_needed").unwrap() > answered,
        "the client's request was not answered"
    );
}

/// With `--xdp-redirect-device`, what node A forwards over the fabric
/// leaves from XDP: a node port request for node B's backend and its
/// translated reply go back out of the device they came in on (XDP_TX).
/// Packets for node A's own pods still go through the kernel, whose pod
/// veths are not enabled, and pods' own traffic is TC's. Every request is
/// answered, by both nodes, with the same addresses as without the fast path.
#[test]
fn cluster_policy_forwards_over_the_fabric_from_xdp() {
    require_root();
    let c = cluster_forwarding("", Forwarding::XdpFastPath);
    let node_a = &c.agents[0];
    let via_a = answers(&c.external, SocketAddrV4::new(NODE_A, 30123), 30);
    assert_eq!(via_a, [("kubia-a".into(), CLIENT.into()), ("kubia-b".into(), NODE_A.into())].into());
    assert!(node_a.counter("PACKETS", "tx").unwrap() > 0, "{}", node_a.get("counters").unwrap());
    assert!(node_a.counter("PACKETS", "stack_device_not_enabled").unwrap() > 0, "{}", node_a.get("counters").unwrap());

    let me = IpAddr::V4(c.client_pod.ip);
    let got = answers(&c.client_pod.ns, SocketAddrV4::new(VIP, 80), 30);
    assert_eq!(got, [("kubia-a".into(), me), ("kubia-b".into(), me)].into());
    // Pods' traffic is translated on TC, not XDP.
    assert!(node_a.counter("TC-POD", "forward_new_flow").unwrap() > 0, "{}", node_a.get("counters").unwrap());
}

/// An established flow that node A's XDP sends to node B by its kept route
/// (XDP_TX, the next hop's Ethernet address kept in the conntrack entry)
/// follows a change of that route: node B's fabric address changes, node A
/// learns the new one (as a gratuitous ARP would tell it), and the same
/// flow (same client port, same SNAT port seen by the backend) is answered
/// again, still from XDP, once its entry is refreshed: a second after the
/// last refresh (here 1.06-1.09 s after the change). With no refresh it
/// never is.
#[test]
fn an_established_flow_follows_a_changed_next_hop_at_its_next_refresh() {
    require_root();
    let c = cluster_forwarding("", Forwarding::XdpFastPath);
    c.external.exec(&["ip", "route", "replace", &format!("{LB_IP}/32"), "via", &NODE_A.to_string()]).unwrap();
    // Node A knows node B's address before the flow starts, so that its
    // entry keeps a next hop (not "no neighbour yet", which the kernel's
    // routing resolves).
    let neighbour = |mac: &str| {
        c.nodes[0].ns.exec(&["ip", "neigh", "replace", &NODE_B.to_string(), "lladdr", mac, "dev", "fabric"]).unwrap()
    };
    neighbour(&c.nodes[1].ns.mac("fabric").unwrap());
    let to = SocketAddrV4::new(LB_IP, 53);
    let ask = |port: u16, timeout: Duration| udp_request_from(&c.external, port, to, b"hop", timeout);
    // A flow Maglev sends to node B.
    let (port, seen) = (42000..42100)
        .find_map(|port| {
            let (reply, _) = ask(port, TIMEOUT).unwrap();
            (served_by(&reply) == "kubia-b").then(|| (port, seen_client(&reply).to_owned()))
        })
        .expect("no flow of 100 went to node B");
    assert!(seen.starts_with(&format!("{NODE_A}:")), "{seen}");
    // Answered, the flow's entries settle (a state change refreshes them).
    for _ in 0..3 {
        let (reply, _) = ask(port, TIMEOUT).unwrap();
        assert_eq!(seen_client(&reply), seen);
    }

    let node_a = &c.agents[0];
    let new_mac = "02:00:00:00:0b:02";
    c.nodes[1].ns.exec(&["ip", "link", "set", "dev", "fabric", "address", new_mac]).unwrap();
    neighbour(new_mac);
    let tx = node_a.counter("PACKETS", "tx").unwrap();
    let changed = Instant::now();
    let reply = loop {
        if let Ok((reply, _)) = ask(port, Duration::from_millis(100)) {
            break reply;
        }
        assert!(changed.elapsed() < Duration::from_secs(3), "the flow is still sent to node B's old address");
    };
    let took = changed.elapsed();
    assert_eq!((served_by(&reply), seen_client(&reply)), ("kubia-b", seen.as_str()), "not the same flow");
    // The refresh is due within a second; the rest is slack for a busy machine.
    assert!(took < Duration::from_secs(2), "answered again only after {took:?}");
    assert!(node_a.counter("PACKETS", "tx").unwrap() > tx, "{}", node_a.get("counters").unwrap());
}
