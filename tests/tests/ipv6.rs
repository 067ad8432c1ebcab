//! IPv6 and dual-stack Services end to end: pods with IPv6 addresses (only,
//! or beside IPv4 ones), lb-agent on their veths, real TCP and UDP.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    agent::AgentProcess,
    client::{
        bulk_receive, bulk_send, http_get, ping, seen_client, served_by, tcp_connect, udp_exchange, udp_request,
        until_unanswered,
    },
    kubia::{TIMEOUT, endpoint_count, names, pods_manifest, pods_manifest_on},
    netns::Netns,
    require_root,
    topology::{Node, POD_DEVICE_PATTERN, Pod},
};

const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x0a);
const SERVICE_CIDR6: &str = "fd00:96::/112";
/// A load-balancer ingress IP.
const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);

/// `fd00:44::<last>`: pod addresses.
fn pod6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x44, 0, 0, 0, 0, 0, last)
}

/// The node's IPv6 address on its uplink, and the external client's there.
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const EXTERNAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

/// An external client on the node's "uplink", with an address of each
/// family (198.51.100.100, EXTERNAL6) beside the node's (198.51.100.1, NODE6).
fn external_client(node: &Node) -> Netns {
    let external =
        node.add_external_client("uplink", Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(198, 51, 100, 100)).unwrap();
    node.add_external_ipv6(&external, "uplink", NODE6, EXTERNAL6).unwrap();
    external
}

/// The kubia Service with its `spec` lines about families and cluster IPs.
fn kubia_service(families: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n{families}  ports:\n  - name: http\n    port: 80\n    targetPort: http\n  - name: echo\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n  selector:\n    app: kubia\n"
    )
}

/// `n` backends serving HTTP on 8080 and UDP on 5353 and a client, each
/// with an IPv6 address and, when `dual_stack`, an IPv4 one.
fn pods(node: &Node, n: u16, dual_stack: bool) -> (Vec<Pod>, Pod) {
    let v4 = |last: u16| dual_stack.then(|| Ipv4Addr::new(10, 244, 0, last as u8));
    let backends = (0..n)
        .map(|i| {
            let mut pod = node.add_pod_with(&format!("kubia-{i}"), v4(2 + i), Some(pod6(2 + i))).unwrap();
            pod.serve(8080, 5353).unwrap();
            pod
        })
        .collect();
    let client = node.add_pod_with("client", v4(100), Some(pod6(100))).unwrap();
    (backends, client)
}

/// The pods as the kubia helpers take them.
fn refs(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter().collect()
}

/// Which pods served `requests` HTTP requests to `vip`:80 from `client`;
/// each must have seen the client's own `address` (no SNAT for pods).
fn http_spread(client: &Pod, vip: IpAddr, requests: usize, address: IpAddr) -> BTreeSet<String> {
    (0..requests)
        .map(|_| {
            let body = http_get(&client.ns, SocketAddr::new(vip, 80), TIMEOUT).unwrap();
            assert_eq!(seen_ip(&body), address, "{body}");
            served_by(&body).to_owned()
        })
        .collect()
}

/// The client address a test server's answer names.
fn seen_ip(answer: &str) -> IpAddr {
    seen_client(answer).parse::<SocketAddr>().map(|a| a.ip()).unwrap_or_else(|_| panic!("{answer}"))
}

#[test]
fn an_ipv6_only_cluster_ip_spreads_tcp_and_udp_over_its_pods_and_they_see_the_client() {
    require_root();
    let node = Node::new().unwrap();
    let (backends, client) = pods(&node, 3, false);
    let service = kubia_service(&format!("  ipFamilies: [IPv6]\n  clusterIP: {VIP6}\n"));
    let manifests = [("kubia.yaml", service.as_str()), ("pods.yaml", &pods_manifest(&refs(&backends), |_| true))];
    let args = ["--pod-device", POD_DEVICE_PATTERN, "--service-cidr", SERVICE_CIDR6];
    let agent = AgentProcess::start_with(&node, &manifests, &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    let services = agent.get("services").unwrap();
    assert!(services.contains(&VIP6.to_string()), "{services}");
    let env = agent.get_env("default").unwrap();
    assert!(env.contains(&format!("KUBIA_SERVICE_HOST={VIP6}")), "{env}");
    assert!(env.contains(&format!("KUBIA_PORT=tcp://[{VIP6}]:80")), "{env}");

    let client6 = IpAddr::from(client.ipv6.unwrap());
    assert_eq!(http_spread(&client, VIP6.into(), 40, client6), names(&refs(&backends)));
    let mut served = BTreeSet::new();
    for i in 0..40 {
        let payload = format!("ping {i}");
        let (reply, from) =
            udp_request(&client.ns, SocketAddr::new(VIP6.into(), 53), payload.as_bytes(), TIMEOUT).unwrap();
        assert_eq!(from, SocketAddr::new(VIP6.into(), 53), "the answer comes from the vip: {reply}");
        assert!(reply.ends_with(&payload), "{reply}");
        assert_eq!(seen_ip(&reply), client6, "{reply}");
        served.insert(served_by(&reply).to_owned());
    }
    assert_eq!(served, names(&refs(&backends)));
    // Every TCP connection is a new flow; a UDP socket may get the port of
    // an earlier one, whose flow is still known.
    assert!(agent.counter("TC-POD", "forward_new_flow").unwrap() >= 40, "{}", agent.get("counters").unwrap());
    assert!(agent.counter("TC-POD", "reply_reverse_nat").unwrap() >= 80, "{}", agent.get("counters").unwrap());
    // Straight into the pods' namespaces from TC, as IPv4.
    assert!(agent.counter("PACKETS", "redirect_peer").unwrap() > 0, "{}", agent.get("counters").unwrap());
    let conntrack = agent.get("conntrack").unwrap();
    assert!(conntrack.contains(&format!("[{VIP6}]:80")), "{conntrack}");
    // The VIP answers pings; an address of the service CIDR no Service has
    // does not.
    assert!(ping(&client.ns, VIP6, TIMEOUT).unwrap(), "no echo reply from {VIP6}");
    assert!(!ping(&client.ns, Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x0b), Duration::from_millis(300)).unwrap());
    assert!(agent.counter("TC-POD", "echo_reply").unwrap() >= 1, "{}", agent.get("counters").unwrap());
}

#[test]
fn a_prefer_dual_stack_service_answers_on_its_ipv4_and_its_ipv6_cluster_ip() {
    require_root();
    let node = Node::new().unwrap();
    let (backends, client) = pods(&node, 2, true);
    // The IPv6 cluster IP is not written: the agent allocates it.
    let service = kubia_service("  ipFamilyPolicy: PreferDualStack\n  clusterIP: 10.96.0.10\n");
    let manifests = [("kubia.yaml", service.as_str()), ("pods.yaml", &pods_manifest(&refs(&backends), |_| true))];
    let args = ["--pod-device", POD_DEVICE_PATTERN, "--service-cidr", "10.96.0.0/12", "--service-cidr", SERVICE_CIDR6];
    let agent = AgentProcess::start_with(&node, &manifests, &args).unwrap();
    // Each port lists both families' endpoints.
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 4).unwrap();
    let services = agent.get("services").unwrap();
    let vip6: Ipv6Addr = services
        .split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|word| word.parse().ok().filter(|ip: &Ipv6Addr| ip.segments()[..2] == [0xfd00, 0x96]))
        .unwrap_or_else(|| panic!("no ipv6 cluster ip in {services}"));

    let (client4, client6) = (IpAddr::from(client.ip), IpAddr::from(client.ipv6.unwrap()));
    assert_eq!(http_spread(&client, Ipv4Addr::new(10, 96, 0, 10).into(), 20, client4), names(&refs(&backends)));
    assert_eq!(http_spread(&client, vip6.into(), 20, client6), names(&refs(&backends)));
    // As kubelet, the environment names the primary family's cluster IP.
    let env = agent.get_env("default").unwrap();
    assert!(env.contains("KUBIA_SERVICE_HOST=10.96.0.10"), "{env}");
    assert!(!env.contains(&vip6.to_string()), "{env}");
}

#[test]
fn an_ipv6_service_without_endpoints_refuses_tcp_and_udp_at_once() {
    require_root();
    let node = Node::new().unwrap();
    let (_, client) = pods(&node, 0, false);
    let service = kubia_service(&format!("  ipFamilies: [IPv6]\n  clusterIP: {VIP6}\n"));
    let args = ["--pod-device", POD_DEVICE_PATTERN, "--service-cidr", SERVICE_CIDR6];
    let agent = AgentProcess::start_with(&node, &[("kubia.yaml", service.as_str())], &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains(&VIP6.to_string())).unwrap();

    // A reset and an ICMPv6 port unreachable: refused at once, not timed out.
    let vip = |port| SocketAddr::new(VIP6.into(), port);
    let Err((kind, after)) = tcp_connect(&client.ns, vip(80), Duration::from_secs(5)).unwrap() else {
        panic!("connected to a service without endpoints")
    };
    assert_eq!(kind, ErrorKind::ConnectionRefused);
    assert!(after < Duration::from_secs(1), "refused after {after:?}");
    let udp = udp_exchange(&client.ns, vip(53), Duration::from_secs(5)).unwrap();
    assert_eq!(udp.map_err(|e| e.kind()).unwrap_err(), ErrorKind::ConnectionRefused);
    // A port the Service lacks is refused too (kube-proxy rejects it).
    let other_port = tcp_connect(&client.ns, vip(81), Duration::from_secs(5)).unwrap();
    assert_eq!(other_port.map_err(|(kind, _)| kind), Err(ErrorKind::ConnectionRefused));
    assert_eq!(agent.counter("TC-POD", "reject_no_backend").unwrap(), 2, "{}", agent.get("counters").unwrap());
    assert_eq!(agent.counter("TC-POD", "reject_no_service_port").unwrap(), 1);
}

#[test]
fn an_ipv6_node_port_answers_an_external_client_through_xdp() {
    require_root();
    let node = Node::new().unwrap();
    let (backends, _client) = pods(&node, 2, true);
    let external = external_client(&node);
    let service = kubia_service("  type: NodePort\n  ipFamilyPolicy: PreferDualStack\n  clusterIP: 10.96.0.10\n")
        .replace("    targetPort: http\n", "    targetPort: http\n    nodePort: 30123\n");
    // On this node: a backend elsewhere would see this node as the client.
    let pods = pods_manifest_on(&refs(&backends), node.ns.name(), |_| true);
    let manifests = [("kubia.yaml", service.as_str()), ("pods.yaml", &pods)];
    let args = [
        "--device",
        "uplink",
        "--pod-device",
        POD_DEVICE_PATTERN,
        "--service-cidr",
        "10.96.0.0/12",
        "--service-cidr",
        SERVICE_CIDR6,
    ];
    let agent = AgentProcess::start_with(&node, &manifests, &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 4 && s.contains("30123")).unwrap();

    // Through XDP on the uplink: every backend, each seeing the client's
    // own IPv6 address (policy Cluster, all backends on this node).
    let served: BTreeSet<String> = (0..20)
        .map(|_| {
            let body = http_get(&external, SocketAddr::new(NODE6.into(), 30123), TIMEOUT).unwrap();
            assert_eq!(seen_ip(&body), IpAddr::from(EXTERNAL6), "{body}");
            served_by(&body).to_owned()
        })
        .collect();
    assert_eq!(served, names(&refs(&backends)));
    assert!(agent.counter("XDP-NODE", "forward_new_flow").unwrap() >= 20, "{}", agent.get("counters").unwrap());
    // The IPv4 node port still answers beside it.
    let body = http_get(&external, SocketAddr::new(Ipv4Addr::new(198, 51, 100, 1).into(), 30123), TIMEOUT).unwrap();
    assert_eq!(seen_ip(&body), IpAddr::from(Ipv4Addr::new(198, 51, 100, 100)), "{body}");
}

/// Backends elsewhere (no node name: on another node): under policy Cluster
/// the external client's flows leave with this node's IPv6 address as their
/// source, so that the answers come back through it; under Local nothing
/// here serves them and they are dropped, as kube-proxy does.
#[test]
fn an_ipv6_node_port_stands_in_for_the_client_of_a_remote_backend_and_drops_under_local() {
    require_root();
    let node = Node::new().unwrap();
    let (backends, _client) = pods(&node, 2, false);
    let external = external_client(&node);
    let service = |policy: &str| {
        kubia_service(&format!(
            "  type: NodePort\n  externalTrafficPolicy: {policy}\n  ipFamilies: [IPv6]\n  clusterIP: {VIP6}\n"
        ))
        .replace("    targetPort: http\n", "    targetPort: http\n    nodePort: 30124\n")
    };
    let args = ["--device", "uplink", "--pod-device", POD_DEVICE_PATTERN, "--service-cidr", SERVICE_CIDR6];
    let pods = pods_manifest(&refs(&backends), |_| true);
    let agent =
        AgentProcess::start_with(&node, &[("kubia.yaml", &service("Cluster")), ("pods.yaml", &pods)], &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 2 && s.contains("30124")).unwrap();
    let node_port = SocketAddr::new(NODE6.into(), 30124);
    let served: BTreeSet<String> = (0..20)
        .map(|_| {
            let body = http_get(&external, node_port, TIMEOUT).unwrap();
            assert_eq!(seen_ip(&body), IpAddr::from(NODE6), "the backend sees this node: {body}");
            served_by(&body).to_owned()
        })
        .collect();
    assert_eq!(served, names(&refs(&backends)));

    // The policy is not in `get services`: the connections tell when the
    // agent has programmed it.
    agent.write_manifest("kubia.yaml", &service("Local")).unwrap();
    until_unanswered(&external, node_port, Duration::from_secs(5)).unwrap();
    assert!(agent.counter("XDP-NODE", "drop_no_backend").unwrap() > 0, "{}", agent.get("counters").unwrap());
}

/// As on a real node: the uplink completes checksums in software (tx
/// offload off, like a NIC without offload or a tunnel) while the pods keep
/// their default offloads (a pod's upload leaves as GSO super-packets with
/// only the pseudo-header summed). 20 MiB through the IPv6 cluster IP from
/// a pod, and through the IPv6 node port from outside, each checked byte
/// for byte by the receiver; then the agent is killed and restarted with
/// its device addresses and maps in place: its first pass writes nothing,
/// and both still work.
#[test]
fn ipv6_bulk_uploads_arrive_intact_through_tc_and_xdp_and_after_a_restart() {
    require_root();
    const LEN: usize = 20 << 20;
    let node = Node::new().unwrap();
    let mut backend = node.add_pod_with("sink", None, Some(pod6(2))).unwrap();
    backend.serve_sink(8080).unwrap();
    let client = node.add_pod_with("client", None, Some(pod6(100))).unwrap();
    let external = external_client(&node);
    node.ns.send_complete_checksums("uplink").unwrap();
    external.send_complete_checksums("eth0").unwrap();
    let service = kubia_service(&format!("  type: NodePort\n  ipFamilies: [IPv6]\n  clusterIP: {VIP6}\n"))
        .replace("    targetPort: http\n", "    targetPort: 8080\n    nodePort: 30125\n");
    let pods = pods_manifest_on(&[&backend], node.ns.name(), |_| true);
    let args = ["--device", "uplink", "--pod-device", POD_DEVICE_PATTERN, "--service-cidr", SERVICE_CIDR6];
    let mut agent =
        AgentProcess::start_with(&node, &[("kubia.yaml", service.as_str()), ("pods.yaml", &pods)], &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 1 && s.contains("30125")).unwrap();

    let uploads = |when: &str| {
        let timeout = Duration::from_secs(30);
        for (from, to) in
            [(&client.ns, SocketAddr::new(VIP6.into(), 80)), (&external, SocketAddr::new(NODE6.into(), 30125))]
        {
            let report = bulk_send(from, to, LEN, timeout).unwrap_or_else(|e| panic!("{when}: upload to {to}: {e:#}"));
            assert!(report.contains(&LEN.to_string()), "{when}: {to}: {report}");
        }
    };
    uploads("before the restart");
    agent.kill().unwrap();
    agent.restart(&node).unwrap();
    assert_eq!(agent.first_sync_writes(), 0, "{}", agent.log_text());
    uploads("after the restart");
    assert_eq!(agent.counter("TC-POD", "drop_rewrite_failed").unwrap(), 0);
}

/// Path-MTU discovery through an IPv6 cluster IP, with 1 400-byte routes
/// to the backend and to the client: without it the 20 KB transfers hang.
/// The kernel's packet too big for the client's request, about the
/// rewritten packet, is translated back on its way to the client; the
/// backend's reply, whose source the rewrite changes, is answered by the
/// datapath (the kernel's would go to the cluster IP). A backend's port
/// unreachable for a closed port refuses the client's UDP socket at once.
#[test]
fn path_mtu_discovery_works_both_ways_through_an_ipv6_cluster_ip() {
    require_root();
    let node = Node::new().unwrap();
    let mut backend = node.add_pod_with("kubia-0", None, Some(pod6(2))).unwrap();
    backend.serve_sink(9000).unwrap();
    backend.serve_source(9001).unwrap();
    let client = node.add_pod_with("client", None, Some(pod6(100))).unwrap();
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: pmtu\nspec:\n  ipFamilies: [IPv6]\n  clusterIP: {VIP6}\n  ports:\n  - name: sink\n    port: 9000\n  - name: source\n    port: 9001\n  - name: closed\n    port: 54\n    protocol: UDP\n    targetPort: 5400\n  selector:\n    app: kubia\n"
    );
    let manifests = [("pmtu.yaml", service.as_str()), ("pods.yaml", &pods_manifest(&[&backend], |_| true))];
    let args = ["--pod-device", POD_DEVICE_PATTERN, "--service-cidr", SERVICE_CIDR6];
    let agent = AgentProcess::start_with(&node, &manifests, &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains(&format!("[{}]:9001", pod6(2)))).unwrap();
    for pod in [&backend, &client] {
        // Locked: forwarding (and the FIB) use a route's MTU only then.
        let route = format!("{}/128", pod.ipv6.unwrap());
        node.ns.exec(&["ip", "-6", "route", "replace", &route, "dev", &pod.host_veth, "mtu", "lock", "1400"]).unwrap();
    }
    let counters = || agent.get("counters").unwrap();

    // The reply first: a client that learnt the path's MTU would announce
    // a smaller MSS, and the backend's segments would fit.
    bulk_receive(&client.ns, SocketAddr::new(VIP6.into(), 9001), 20 << 10, TIMEOUT * 3).unwrap();
    assert!(agent.counter("TC-POD", "frag_needed").unwrap() >= 1, "the backend was not answered: {}", counters());
    // Forgotten, or the backend would announce the smaller MSS in turn.
    backend.ns.exec(&["ip", "-6", "route", "flush", "cache"]).unwrap();
    let report = bulk_send(&client.ns, SocketAddr::new(VIP6.into(), 9000), 20 << 10, TIMEOUT * 3).unwrap();
    assert!(report.contains("received 20480 bytes"), "{report}");
    assert!(agent.counter("TC-EGRESS", "icmp_error_reverse_nat").unwrap() >= 1, "{}", counters());

    let udp = udp_exchange(&client.ns, SocketAddr::new(VIP6.into(), 54), TIMEOUT).unwrap();
    assert_eq!(udp.expect_err("an answer from a closed port").kind(), ErrorKind::ConnectionRefused);
    assert!(agent.counter("TC-POD", "icmp_error_reverse_nat").unwrap() >= 1, "{}", counters());
}

/// `loadBalancerSourceRanges` with an IPv6 prefix, enforced in XDP: of two
/// external clients, the one inside it is served (and seen as itself), the
/// other one's packets are dropped and counted.
#[test]
fn ipv6_load_balancer_source_ranges_admit_only_their_clients() {
    source_ranges_admit_only_their_clients(false);
}

/// A dual-stack load balancer with a range of each family: each ingress IP
/// admits only its own family's range.
#[test]
fn dual_stack_load_balancer_source_ranges_admit_only_their_clients_on_ipv4_and_ipv6() {
    source_ranges_admit_only_their_clients(true);
}

fn source_ranges_admit_only_their_clients(dual_stack: bool) {
    require_root();
    let node = Node::new().unwrap();
    let (backends, _client) = pods(&node, 1, dual_stack);
    // Each client on a link of its own: the first in 198.51.100.0/24 and
    // 2001:db8::/64 (the ranges), the second in 198.51.101.0/24 and
    // 2001:db8:1::/64.
    let clients = [(0u8, "uplink"), (1, "uplink2")].map(|(i, device)| {
        let (node4, client4) = (Ipv4Addr::new(198, 51, 100 + i, 1), Ipv4Addr::new(198, 51, 100 + i, 100));
        let net = u16::from(i);
        let (node6, client6) =
            (Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, 1), Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, 0x100));
        let ns = node.add_external_client(device, node4, client4).unwrap();
        node.add_external_ipv6(&ns, device, node6, client6).unwrap();
        (ns, [IpAddr::from(client4), client6.into()])
    });
    let (lb4, lb6) = (IpAddr::from(Ipv4Addr::new(203, 0, 113, 10)), IpAddr::from(LB6));
    let (families, ranges, ingress) = if dual_stack {
        (
            format!("  ipFamilyPolicy: PreferDualStack\n  clusterIPs: [10.96.0.10, {VIP6}]\n"),
            "[198.51.100.0/24, '2001:db8::/64']",
            vec![lb4, lb6],
        )
    } else {
        (format!("  ipFamilies: [IPv6]\n  clusterIP: {VIP6}\n"), "['2001:db8::/64']", vec![lb6])
    };
    let ingress_ips: String = ingress.iter().map(|ip| format!("    - ip: {ip}\n")).collect();
    let service = kubia_service(&format!("  type: LoadBalancer\n  loadBalancerSourceRanges: {ranges}\n{families}"))
        + &format!("status:\n  loadBalancer:\n    ingress:\n{ingress_ips}");
    // On this node, so that the backend sees the client itself.
    let pods = pods_manifest_on(&refs(&backends), node.ns.name(), |_| true);
    let mut args = vec!["--device", "uplink", "--device", "uplink2", "--pod-device", POD_DEVICE_PATTERN];
    args.extend(["--service-cidr", "10.96.0.0/12", "--service-cidr", SERVICE_CIDR6]);
    let agent =
        AgentProcess::start_with(&node, &[("kubia.yaml", service.as_str()), ("pods.yaml", &pods)], &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| ingress.iter().all(|ip| s.contains(&ip.to_string()))).unwrap();

    let [(inside, inside_ips), (outside, _)] = &clients;
    for lb in ingress {
        let body = http_get(inside, SocketAddr::new(lb, 80), TIMEOUT).unwrap();
        assert_eq!(served_by(&body), backends[0].name, "{body}");
        let inside_ip = inside_ips.iter().find(|ip| ip.is_ipv4() == lb.is_ipv4()).unwrap();
        assert_eq!(seen_ip(&body), *inside_ip, "{body}");

        let dropped = agent.counter("XDP-NODE", "drop_source_range").unwrap();
        let attempt = tcp_connect(outside, SocketAddr::new(lb, 80), Duration::from_millis(500)).unwrap();
        assert_eq!(
            attempt.map_err(|(kind, _)| kind),
            Err(ErrorKind::TimedOut),
            "{lb} answered a client outside the ranges"
        );
        let counters = agent.get("counters").unwrap();
        assert!(agent.counter("XDP-NODE", "drop_source_range").unwrap() > dropped, "{lb}: {counters}");
    }
}
