//! Exposing Services to external clients (the seeds' "exposing services to
//! external clients"): an external client on a link to the node.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::AgentProcess,
    client::{http_get, served_by, tcp_connect, udp_request, until_unanswered},
    kubia::{TIMEOUT, VIP, cluster, pods_manifest_on},
    require_root,
    topology::Pod,
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const EXTERNAL_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);

/// The seeds' kubia-nodeport Service, with a UDP port beside it.
fn nodeport_service(node_port: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia-nodeport\nspec:\n  type: NodePort\n  clusterIP: {VIP}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n{node_port}  - name: echo\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n  selector:\n    app: kubia\n"
    )
}

fn start(c: &lb_tests::kubia::Cluster, service: &str) -> AgentProcess {
    let pods: Vec<&Pod> = c.backends.iter().collect();
    AgentProcess::start_with(
        &c.node,
        &[("svc.yaml", service), ("pods.yaml", &pods_manifest_on(&pods, c.node.ns.name(), |_| true))],
        &["--device", "uplink", "--pod-device", "h-*"],
    )
    .unwrap()
}

#[test]
fn a_node_port_answers_external_clients_and_pods_on_the_node_address() {
    require_root();
    let c = cluster(2);
    let external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    let agent = start(&c, &nodeport_service("    nodePort: 30123\n"));
    agent.wait_for_services(TIMEOUT, |s| s.contains("http:80:30123/TCP") && s.contains("NodePort")).unwrap();

    let everyone: BTreeSet<String> = c.backends.iter().map(|p| p.name.clone()).collect();
    let from_outside: BTreeSet<String> = (0..30)
        .map(|_| {
            let body = http_get(&external, SocketAddrV4::new(NODE_IP, 30123), TIMEOUT).unwrap();
            // The backend sees the external client itself: this node serves it.
            assert!(lb_tests::client::seen_client(&body).starts_with(&EXTERNAL_CLIENT.to_string()), "{body}");
            served_by(&body).to_owned()
        })
        .collect();
    assert_eq!(from_outside, everyone);
    // XDP decided those requests; the pod veths' TC egress, which they
    // crossed next, passed them without deciding again.
    let decided = agent.counter("TC-EGRESS", "pass_decided_on_ingress").unwrap();
    assert!(decided >= 30, "{}", agent.get("counters").unwrap());
    let body = http_get(&c.client.ns, SocketAddrV4::new(NODE_IP, 30123), TIMEOUT).unwrap();
    assert!(everyone.contains(served_by(&body)), "pods reach the node port too");

    // The UDP port got a node port of its own, the same on every node.
    let services = agent.get("services").unwrap();
    let udp_node_port: u16 = services
        .split("echo:53:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no node port for the udp port in:\n{services}"));
    assert!((30000..=32767).contains(&udp_node_port));
    let (reply, from) = udp_request(&external, SocketAddrV4::new(NODE_IP, udp_node_port), b"hi", TIMEOUT).unwrap();
    assert_eq!(from, SocketAddrV4::new(NODE_IP, udp_node_port).into(), "{reply}");
}

#[test]
fn the_cluster_ip_is_not_reachable_from_outside() {
    require_root();
    let c = cluster(1);
    let external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    let agent = start(&c, &nodeport_service("    nodePort: 30123\n"));
    agent.wait_for_services(TIMEOUT, |s| s.contains("30123")).unwrap();
    let attempt = tcp_connect(&external, SocketAddrV4::new(VIP, 80), Duration::from_millis(500)).unwrap();
    assert!(attempt.is_err(), "an external client reached the cluster IP");
    assert!(agent.counter("XDP-NODE", "pass_internal_only").unwrap() >= 1);
    // Pods still do.
    assert_eq!(served_by(&http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap()), c.backends[0].name);
    drop(agent);

    // Unless the flag says so.
    let pods: Vec<&Pod> = c.backends.iter().collect();
    let agent = AgentProcess::start_with(
        &c.node,
        &[
            ("svc.yaml", &nodeport_service("    nodePort: 30123\n")),
            ("pods.yaml", &pods_manifest_on(&pods, c.node.ns.name(), |_| true)),
        ],
        &["--device", "uplink", "--pod-device", "h-*", "--cluster-ip-external"],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("30123")).unwrap();
    assert_eq!(served_by(&http_get(&external, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap()), c.backends[0].name);
}

/// The seeds' kubia-loadbalancer: the load balancer's ingress IP (and an
/// externalIP) answer on the Service port, from outside too.
#[test]
fn load_balancer_ingress_and_external_ips_answer_on_the_service_port() {
    require_root();
    let c = cluster(1);
    let external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia-loadbalancer\nspec:\n  type: LoadBalancer\n  clusterIP: {VIP}\n  externalIPs: [203.0.113.20]\n  ports:\n  - port: 80\n    targetPort: 8080\n  selector:\n    app: kubia\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.10\n"
    );
    let agent = start(&c, &service);
    agent
        .wait_for_services(TIMEOUT, |s| s.contains("203.0.113.10,203.0.113.20") && s.contains("LoadBalancer"))
        .unwrap();
    for ip in [Ipv4Addr::new(203, 0, 113, 10), Ipv4Addr::new(203, 0, 113, 20)] {
        let body = http_get(&external, SocketAddrV4::new(ip, 80), TIMEOUT).unwrap();
        assert_eq!(served_by(&body), c.backends[0].name, "via {ip}");
        assert!(lb_tests::client::ping(&external, ip, TIMEOUT).unwrap(), "{ip} answers ping");
    }
    // A LoadBalancer is a NodePort too.
    let services = agent.get("services").unwrap();
    let node_port: u16 =
        services.split("80:").nth(1).and_then(|r| r.split('/').next()).and_then(|p| p.parse().ok()).unwrap();
    assert_eq!(
        served_by(&http_get(&external, SocketAddrV4::new(NODE_IP, node_port), TIMEOUT).unwrap()),
        c.backends[0].name
    );
}

/// The seeds' "preventing unnecessary network hops": with
/// `externalTrafficPolicy: Local` an external client is only served by
/// pods on the node it reached, which see its own address; with no pod
/// there, its traffic is dropped, while pods still reach the cluster IP;
/// with no pod anywhere, it is refused.
/// `internalTrafficPolicy: Local` does the same for pod traffic.
#[test]
fn traffic_policy_local_keeps_traffic_on_the_node_it_arrived_at() {
    require_root();
    let c = cluster(2);
    let external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    let on_node = |pod: &Pod, node: &str| {
        lb_tests::agent::pod_manifest(&pod.name, pod.ip, true)
            .replace("spec:\n", &format!("spec:\n  nodeName: {node}\n"))
    };
    let this_node = c.node.ns.name().to_owned();
    let (here, elsewhere) = (&c.backends[0], &c.backends[1]);
    let pods = [on_node(here, &this_node), on_node(elsewhere, "another-node")].join("---\n");
    let service = |policies: &str| {
        nodeport_service("    nodePort: 30123\n")
            .replace("  type: NodePort\n", &format!("  type: NodePort\n{policies}"))
    };
    let agent = AgentProcess::start_with(
        &c.node,
        &[("svc.yaml", &service("  externalTrafficPolicy: Local\n")), ("pods.yaml", &pods)],
        &["--device", "uplink", "--pod-device", "h-*"],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("30123")).unwrap();
    // Which pod served, and which address it saw as the client.
    let from_outside = |requests| -> BTreeSet<(String, String)> {
        (0..requests)
            .map(|_| {
                let body = http_get(&external, SocketAddrV4::new(NODE_IP, 30123), TIMEOUT).unwrap();
                let seen = lb_tests::client::seen_client(&body);
                (served_by(&body).to_owned(), seen[..seen.rfind(':').unwrap()].to_owned())
            })
            .collect()
    };
    let client_seen = EXTERNAL_CLIENT.to_string();
    let from_pods = |requests| -> BTreeSet<String> {
        (0..requests)
            .map(|_| served_by(&http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap()).to_owned())
            .collect()
    };
    assert_eq!(from_outside(20), [(here.name.clone(), client_seen.clone())].into());
    assert_eq!(from_pods(30), [here.name.clone(), elsewhere.name.clone()].into(), "the cluster IP stays Cluster");

    // No local endpoint: external traffic is dropped, not refused.
    agent.write_manifest("pods.yaml", &on_node(elsewhere, "another-node")).unwrap();
    agent.wait_for_services(TIMEOUT, |s| !s.contains(&here.ip.to_string())).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let attempt = tcp_connect(&external, SocketAddrV4::new(NODE_IP, 30123), Duration::from_millis(500)).unwrap();
    assert_eq!(attempt.map_err(|(kind, _)| kind), Err(std::io::ErrorKind::TimedOut));
    assert_eq!(from_pods(5), [elsewhere.name.clone()].into());

    // No endpoint on any node: refused at once, as kube-proxy rejects.
    agent.remove_manifest("pods.yaml").unwrap();
    agent.wait_for_services(TIMEOUT, |s| !s.contains(&elsewhere.ip.to_string())).unwrap();
    let attempt = tcp_connect(&external, SocketAddrV4::new(NODE_IP, 30123), TIMEOUT).unwrap();
    assert_eq!(attempt.map_err(|(kind, _)| kind), Err(std::io::ErrorKind::ConnectionRefused));

    // internalTrafficPolicy: Local for pods, Cluster again from outside.
    agent.write_manifest("pods.yaml", &pods).unwrap();
    agent.write_manifest("svc.yaml", &service("  internalTrafficPolicy: Local\n")).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains(&here.ip.to_string())).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(from_pods(20), [here.name.clone()].into());
    // Cluster from outside: the pod "on another node" is reached through this
    // node, which stands in for the client (the seeds' "client IP is not
    // preserved"); the local pod still sees the client.
    assert_eq!(
        from_outside(30),
        [(here.name.clone(), client_seen), (elsewhere.name.clone(), NODE_IP.to_string())].into()
    );
}

/// `loadBalancerSourceRanges`, enforced in the datapath: a client outside
/// them is dropped and counted.
#[test]
fn load_balancer_source_ranges_admit_only_their_clients() {
    require_root();
    let c = cluster(1);
    let external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    let service = |ranges: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia-loadbalancer\nspec:\n  type: LoadBalancer\n  clusterIP: {VIP}\n  loadBalancerSourceRanges: [{ranges}]\n  ports:\n  - port: 80\n    targetPort: 8080\n  selector:\n    app: kubia\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.10\n"
        )
    };
    let lb = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
    let agent = start(&c, &service("198.51.100.0/25, 192.0.2.0/24"));
    agent.wait_for_services(TIMEOUT, |s| s.contains("203.0.113.10")).unwrap();
    assert_eq!(served_by(&http_get(&external, lb, TIMEOUT).unwrap()), c.backends[0].name);

    agent.write_manifest("svc.yaml", &service("192.0.2.0/24")).unwrap();
    until_unanswered(&external, lb, Duration::from_secs(5)).unwrap();
    assert!(agent.counter("XDP-NODE", "drop_source_range").unwrap() >= 1);
    // Pods are not load-balancer clients: the cluster IP is not guarded.
    assert_eq!(served_by(&http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap()), c.backends[0].name);
}

/// kube-proxy's `healthCheckNodePort`: 200 with the count of local
/// endpoints, 503 when there is none or only terminating ones remain.
#[test]
fn the_health_check_node_port_reports_local_endpoints() {
    require_root();
    let c = cluster(2);
    let external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  clusterIP: {VIP}\n  ports:\n  - port: 80\n    targetPort: 8080\n  selector:\n    app: kubia\n"
    );
    let pod = |p: &Pod, node: &str, terminating: bool| {
        let manifest = lb_tests::agent::pod_manifest(&p.name, p.ip, true)
            .replace("spec:\n", &format!("spec:\n  nodeName: {node}\n"));
        if terminating {
            manifest.replace("metadata:\n", "metadata:\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n")
        } else {
            manifest
        }
    };
    let this_node = c.node.ns.name().to_owned();
    let (a, b) = (&c.backends[0], &c.backends[1]);
    let agent = AgentProcess::start_with(
        &c.node,
        &[("svc.yaml", &service), ("pods.yaml", &[pod(a, &this_node, false), pod(b, &this_node, false)].join("---\n"))],
        &["--device", "uplink", "--pod-device", "h-*"],
    )
    .unwrap();
    let health = SocketAddrV4::new(NODE_IP, 32000);
    let ask = || lb_tests::client::http_request(&external, health, TIMEOUT).unwrap();
    assert_eq!(ask(), (200, r#"{"service":{"namespace":"default","name":"kubia"},"localEndpoints":2}"#.to_owned()));

    agent
        .write_manifest("pods.yaml", &[pod(a, &this_node, true), pod(b, "another-node", false)].join("---\n"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = ask();
    assert_eq!((status, body.contains("\"localEndpoints\":0")), (503, true), "{body}");
    // Only on the node's device addresses: not on loopback, say.
    let loopback = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 32000);
    assert!(lb_tests::client::http_request(&c.node.ns, loopback, TIMEOUT).is_err(), "listening on 127.0.0.1");
}

/// e2e "should fallback to local terminating endpoints when there are no
/// local ready endpoints with externalTrafficPolicy=Local".
#[test]
fn local_policy_falls_back_to_local_terminating_endpoints() {
    require_root();
    let c = cluster(2);
    let external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    let this_node = c.node.ns.name().to_owned();
    let (here, elsewhere) = (&c.backends[0], &c.backends[1]);
    let terminating_here = lb_tests::agent::pod_manifest(&here.name, here.ip, true)
        .replace("spec:\n", &format!("spec:\n  nodeName: {this_node}\n"))
        .replace("metadata:\n", "metadata:\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n");
    let ready_elsewhere = lb_tests::agent::pod_manifest(&elsewhere.name, elsewhere.ip, true)
        .replace("spec:\n", "spec:\n  nodeName: another-node\n");
    let service = nodeport_service("    nodePort: 30123\n")
        .replace("  type: NodePort\n", "  type: NodePort\n  externalTrafficPolicy: Local\n");
    let agent = AgentProcess::start_with(
        &c.node,
        &[("svc.yaml", &service), ("pods.yaml", &[terminating_here, ready_elsewhere].join("---\n"))],
        &["--device", "uplink", "--pod-device", "h-*"],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("30123")).unwrap();
    let served: BTreeSet<String> = (0..10)
        .map(|_| served_by(&http_get(&external, SocketAddrV4::new(NODE_IP, 30123), TIMEOUT).unwrap()).to_owned())
        .collect();
    assert_eq!(served, [here.name.clone()].into(), "the local terminating pod, not the remote ready one");
}
