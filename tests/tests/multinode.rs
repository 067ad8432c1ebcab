//! Two nodes, each running its own lb-agent, pods on both (a pod CIDR per
//! node, routed over a fabric), and an external client on the fabric: the
//! seeds' "understanding the peculiarities of external connections".

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_tests::{
    agent::{AgentProcess, pod_manifest},
    client::{http_get, seen_client, served_by},
    kubia::{TIMEOUT, VIP},
    netns::Netns,
    require_root,
    topology::{Fabric, Node, Pod},
};

const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);

/// Everything a test needs alive; dropped in reverse order of use.
struct Cluster {
    /// A pod on node A that only ever acts as a client.
    client_pod: Pod,
    external: Netns,
    /// Node A's agent, then node B's.
    agents: Vec<AgentProcess>,
    /// kubia-a on node A, kubia-b on node B.
    _pods: [Pod; 2],
    _nodes: [Node; 2],
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
    nodes[0].route("10.244.2.0/24", NODE_B).unwrap();
    nodes[1].route("10.244.1.0/24", NODE_A).unwrap();
    let mut a = nodes[0].add_pod("kubia-a", Ipv4Addr::new(10, 244, 1, 2)).unwrap();
    let mut b = nodes[1].add_pod("kubia-b", Ipv4Addr::new(10, 244, 2, 2)).unwrap();
    a.serve(8080, 5353).unwrap();
    b.serve(8080, 5353).unwrap();
    let client_pod = nodes[0].add_pod("client", Ipv4Addr::new(10, 244, 1, 100)).unwrap();
    let external = fabric.add_client(CLIENT, NODE_A).unwrap();
    let mut args = vec!["--device", "fabric", "--pod-device", "h-*"];
    if forwarding == Forwarding::XdpFastPath {
        fabric.accept_xdp_frames().unwrap();
        for ns in nodes.iter().map(|n| (&n.ns, "fabric")).chain([(&external, "eth0")]) {
            ns.0.send_complete_checksums(ns.1).unwrap();
        }
        for pod in [&a, &b, &client_pod] {
            pod.ns.send_complete_checksums("eth0").unwrap();
        }
        args.extend(["--xdp-redirect-device", "fabric"]);
    }

    // The same manifests on both nodes, pods placed by spec.nodeName.
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia-nodeport\nspec:\n  type: NodePort\n{policy}  clusterIP: {VIP}\n  ports:\n  - port: 80\n    targetPort: 8080\n    nodePort: 30123\n  selector:\n    app: kubia\n"
    );
    let placed = |pod: &Pod, node: &Node| {
        pod_manifest(&pod.name, pod.ip, true).replace("spec:\n", &format!("spec:\n  nodeName: {}\n", node.ns.name()))
    };
    let pods = [placed(&a, &nodes[0]), placed(&b, &nodes[1])].join("---\n");
    let agents = nodes
        .iter()
        .map(|node| {
            let manifests = [("svc.yaml", service.as_str()), ("pods.yaml", pods.as_str())];
            let agent = AgentProcess::start_with(node, &manifests, &args).unwrap();
            agent.wait_for_services(TIMEOUT, |s| s.contains("30123") && s.matches(":8080").count() >= 1).unwrap();
            agent
        })
        .collect();
    Cluster { client_pod, external, agents, _pods: [a, b], _nodes: nodes, _fabric: fabric }
}

/// Which pod answered, and which client address it saw.
fn answers(from: &Netns, to: SocketAddrV4, requests: usize) -> BTreeSet<(String, String)> {
    (0..requests)
        .map(|_| {
            let body = http_get(from, to, TIMEOUT).unwrap();
            let seen = seen_client(&body);
            (served_by(&body).to_owned(), seen[..seen.rfind(':').unwrap()].to_owned())
        })
        .collect()
}

/// With `externalTrafficPolicy: Cluster` a request to node A may be served
/// on node B, and then the backend sees node A's address, not the client's.
#[test]
fn cluster_policy_makes_an_extra_hop_and_hides_the_client_address() {
    require_root();
    let c = cluster("");
    let via_a = answers(&c.external, SocketAddrV4::new(NODE_A, 30123), 30);
    let want: BTreeSet<(String, String)> =
        [("kubia-a".into(), CLIENT.to_string()), ("kubia-b".into(), NODE_A.to_string())].into();
    assert_eq!(via_a, want, "served on node B, kubia-b sees node A");
    let via_b = answers(&c.external, SocketAddrV4::new(NODE_B, 30123), 30);
    let want: BTreeSet<(String, String)> =
        [("kubia-a".into(), NODE_B.to_string()), ("kubia-b".into(), CLIENT.to_string())].into();
    assert_eq!(via_b, want);
}

/// With `externalTrafficPolicy: Local` a request never leaves the node it
/// reached and the backend sees the client.
#[test]
fn local_policy_never_leaves_the_node_and_keeps_the_client_address() {
    require_root();
    let c = cluster("  externalTrafficPolicy: Local\n");
    assert_eq!(
        answers(&c.external, SocketAddrV4::new(NODE_A, 30123), 20),
        [("kubia-a".into(), CLIENT.to_string())].into()
    );
    assert_eq!(
        answers(&c.external, SocketAddrV4::new(NODE_B, 30123), 20),
        [("kubia-b".into(), CLIENT.to_string())].into()
    );
}

/// A pod on node A reaches the cluster IP's backends on both nodes, keeping
/// its own address (no SNAT between pods), the replies translated on node
/// A's fabric device.
#[test]
fn pods_reach_backends_on_the_other_node_through_the_cluster_ip() {
    require_root();
    let c = cluster("");
    let got = answers(&c.client_pod.ns, SocketAddrV4::new(VIP, 80), 30);
    let me = c.client_pod.ip.to_string();
    assert_eq!(got, [("kubia-a".into(), me.clone()), ("kubia-b".into(), me)].into());
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
    let want: BTreeSet<(String, String)> =
        [("kubia-a".into(), CLIENT.to_string()), ("kubia-b".into(), NODE_A.to_string())].into();
    assert_eq!(via_a, want);
    assert!(node_a.counter("XDP", "tx").unwrap() > 0, "{}", node_a.get("counters").unwrap());
    assert!(node_a.counter("XDP", "stack_device_not_enabled").unwrap() > 0, "{}", node_a.get("counters").unwrap());

    let me = c.client_pod.ip.to_string();
    let got = answers(&c.client_pod.ns, SocketAddrV4::new(VIP, 80), 30);
    assert_eq!(got, [("kubia-a".into(), me.clone()), ("kubia-b".into(), me)].into());
    // Pods' traffic is translated on TC, not XDP.
    assert!(node_a.counter("TC-POD", "forward_new_flow").unwrap() > 0, "{}", node_a.get("counters").unwrap());
}
