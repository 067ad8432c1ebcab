//! ClusterIP end to end: a node namespace, pod namespaces running
//! lb-testserver, lb-agent attached to the pod veths, real TCP and UDP.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::AgentProcess,
    client::{bulk_receive, bulk_send, http_get, ping, seen_client, served_by, tcp_connect, udp_exchange, udp_request},
    kubia::{Cluster, KUBIA_SERVICE, TIMEOUT, VIP, cluster, endpoint_count, http_spread, names, pods_manifest},
    require_root,
    topology::Pod,
};

#[test]
fn tcp_and_udp_to_the_cluster_ip_reach_every_ready_backend_and_replies_come_from_the_vip() {
    require_root();
    let c = cluster(4);
    let ready: Vec<&Pod> = c.backends[..3].iter().collect();
    let all: Vec<&Pod> = c.backends.iter().collect();
    let unready = &c.backends[3];
    let pods = pods_manifest(&all, |p| p.name != unready.name);
    let agent = AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods)]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();

    // TCP: every ready pod answers, the unready one never does, and each saw
    // the client pod's own address (no SNAT for pod -> service traffic).
    let mut served = BTreeSet::new();
    for _ in 0..40 {
        let body = http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
        served.insert(served_by(&body).to_owned());
        assert!(seen_client(&body).starts_with(&format!("{}:", c.client.ip)), "{body}");
    }
    assert_eq!(served, names(&ready));

    // UDP: the reply comes from VIP:53, never from the pod's own address.
    let mut served = BTreeSet::new();
    for i in 0..40 {
        let payload = format!("ping {i}");
        let (reply, from) = udp_request(&c.client.ns, SocketAddrV4::new(VIP, 53), payload.as_bytes(), TIMEOUT).unwrap();
        assert_eq!(from, SocketAddrV4::new(VIP, 53).into(), "{reply}");
        assert!(reply.ends_with(&payload), "{reply}");
        served.insert(served_by(&reply).to_owned());
    }
    assert_eq!(served, names(&ready));
    assert!(agent.counter("TC-POD", "reply_reverse_nat").unwrap() >= 80);
    // Straight into the pods' namespaces from TC, once the neighbours are known.
    assert!(agent.counter("PACKETS", "redirect_peer").unwrap() > 0, "{}", agent.get("counters").unwrap());
}

/// `--pod-forwarding stack` hands translated pod traffic to the kernel's
/// routing instead (for netfilter rules in FORWARD): the same answers.
#[test]
fn with_pod_forwarding_stack_the_kernel_routes_translated_pod_traffic() {
    require_root();
    let c = cluster(2);
    let all: Vec<&Pod> = c.backends.iter().collect();
    let agent = AgentProcess::start_with(
        &c.node,
        &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods_manifest(&all, |_| true))],
        &["--pod-device", "h-*", "--pod-forwarding", "stack"],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 2).unwrap();
    assert_eq!(http_spread(&c.client, 20), names(&all));
    for sent_by in ["redirect_peer", "redirect_neigh"] {
        assert_eq!(agent.counter("PACKETS", sent_by).unwrap(), 0, "{}", agent.get("counters").unwrap());
    }
}

#[test]
fn replies_that_bypass_xdp_are_translated_on_tc_egress() {
    require_root();
    let c = cluster(2);
    let two: Vec<&Pod> = c.backends.iter().collect();
    // Only the client's veth is attached: the backends' replies reach it
    // untranslated and only TC egress can give them the VIP back.
    let agent = AgentProcess::start_with(
        &c.node,
        &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods_manifest(&two, |_| true))],
        &["--pod-device", &c.client.host_veth],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 2).unwrap();
    assert_eq!(http_spread(&c.client, 20), names(&two));
    let (reply, from) = udp_request(&c.client.ns, SocketAddrV4::new(VIP, 53), b"via tc", TIMEOUT).unwrap();
    assert_eq!(from, SocketAddrV4::new(VIP, 53).into(), "{reply}");
    assert_eq!(agent.counter("TC-POD", "reply_reverse_nat").unwrap(), 0);
    let tc_reverse = agent.counter("TC-EGRESS", "reply_reverse_nat").unwrap();
    assert!(tc_reverse >= 21, "{}", agent.get("counters").unwrap());
}

#[test]
fn traffic_that_is_not_for_a_service_is_untouched() {
    require_root();
    let c = cluster(1);
    let pods = pods_manifest(&[&c.backends[0]], |_| true);
    let agent = AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods)]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 1).unwrap();
    let passed_before = agent.counter("TC-POD", "pass_no_service").unwrap();
    let pod = &c.backends[0];

    let body = http_get(&c.client.ns, SocketAddrV4::new(pod.ip, 8080), TIMEOUT).unwrap();
    assert_eq!(served_by(&body), pod.name);
    assert!(seen_client(&body).starts_with(&format!("{}:", c.client.ip)));
    let (reply, from) = udp_request(&c.client.ns, SocketAddrV4::new(pod.ip, 5353), b"direct", TIMEOUT).unwrap();
    assert_eq!(from, SocketAddrV4::new(pod.ip, 5353).into(), "{reply}");

    assert!(agent.counter("TC-POD", "pass_no_service").unwrap() > passed_before);
    assert_eq!(agent.counter("TC-POD", "forward_new_flow").unwrap(), 0, "direct traffic was translated");
    assert!(!agent.log_text().contains("pass_no_service"), "per-packet logs without --datapath-debug");
}

#[test]
fn datapath_debug_logs_every_verdict_when_asked() {
    require_root();
    let c = cluster(1);
    let pods = pods_manifest(&[&c.backends[0]], |_| true);
    let mut agent = AgentProcess::start_with(
        &c.node,
        &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods)],
        &["--pod-device", "h-*", "--datapath-debug"],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 1).unwrap();
    http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    agent.wait_for_log(&format!("{}:", c.client.ip), TIMEOUT).unwrap();
    agent.wait_for_log("-> 10.96.0.10:80 proto 6: forward_new_flow", TIMEOUT).unwrap();
}

#[test]
fn scaling_the_pods_3_2_3_by_editing_manifests_takes_effect_within_a_second() {
    require_root();
    let c = cluster(3);
    let three: Vec<&Pod> = c.backends.iter().collect();
    let two: Vec<&Pod> = c.backends[..2].iter().collect();
    let mut agent =
        AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods_manifest(&three, |_| true))])
            .unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    assert_eq!(http_spread(&c.client, 30), names(&three));

    for (pods, expected) in [(&two, 2), (&three, 3)] {
        agent.write_manifest("pods.yaml", &pods_manifest(pods, |_| true)).unwrap();
        let took = agent.wait_for_services(Duration::from_secs(1), |s| endpoint_count(s) == expected).unwrap();
        eprintln!("{expected} endpoints programmed {took:?} after the manifest changed");
        assert_eq!(http_spread(&c.client, 30), names(pods));
    }

    // A pod created after the agent started is attached to within a second:
    // its requests to the VIP are translated.
    let late_client = c.node.add_pod("late", Ipv4Addr::new(10, 244, 0, 101)).unwrap();
    agent.wait_for_log(&format!("attached ifname=\"{}\"", late_client.host_veth), Duration::from_secs(1)).unwrap();
    assert!(
        names(&three).contains(served_by(&http_get(&late_client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap()))
    );
}

#[test]
fn a_malformed_manifest_leaves_the_running_services_intact() {
    require_root();
    let c = cluster(2);
    let two: Vec<&Pod> = c.backends.iter().collect();
    let mut agent =
        AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods_manifest(&two, |_| true))])
            .unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 2).unwrap();
    let before = agent.get("services").unwrap();

    // A file that is not YAML, and a broken edit of the live Service.
    agent.write_manifest("garbage.yaml", "kind: [unclosed\n\u{1}\u{2}").unwrap();
    agent.write_manifest("kubia.yaml", &KUBIA_SERVICE.replace("port: 80", "port: eighty")).unwrap();
    agent.wait_for_log("kubia.yaml", Duration::from_secs(2)).unwrap();
    agent.wait_for_log("garbage.yaml", Duration::from_secs(2)).unwrap();
    let log = agent.log_text();
    assert!(log.contains("Service default/kubia"), "the error names the object:\n{log}");

    assert_eq!(agent.get("services").unwrap(), before);
    assert_eq!(http_spread(&c.client, 20), names(&two));

    // Fixing the file is picked up again.
    agent.write_manifest("kubia.yaml", &KUBIA_SERVICE.replace("port: 80", "port: 8000")).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("http:8000/TCP")).unwrap();
    let body = http_get(&c.client.ns, SocketAddrV4::new(VIP, 8000), TIMEOUT).unwrap();
    assert!(names(&two).contains(served_by(&body)));
}

#[test]
fn a_service_without_ready_endpoints_refuses_connections_at_once() {
    require_root();
    let c = cluster(1);
    let pods = pods_manifest(&[&c.backends[0]], |_| false);
    let agent = AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods)]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("<none>")).unwrap();

    let refused = tcp_connect(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    let (kind, after) = refused.expect_err("connected to a service without endpoints");
    assert_eq!(kind, std::io::ErrorKind::ConnectionRefused);
    assert!(after < Duration::from_millis(500), "refused only after {after:?}");

    let udp = udp_exchange(&c.client.ns, SocketAddrV4::new(VIP, 53), TIMEOUT).unwrap();
    assert_eq!(udp.expect_err("an answer from nowhere").kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(agent.counter("TC-POD", "reject_no_backend").unwrap() >= 2);

    // Once the pod is ready, the same client gets through.
    agent.write_manifest("pods.yaml", &pods_manifest(&[&c.backends[0]], |_| true)).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 1).unwrap();
    assert_eq!(served_by(&http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap()), "kubia-0");
}

/// kube-proxy's rules for what names no Service port: a cluster IP on a
/// port or protocol its Service lacks refuses at once; an address of the
/// service CIDR no Service has drops; other addresses are not ours.
#[test]
fn a_cluster_ip_refuses_ports_its_service_lacks_and_unallocated_service_addresses_drop() {
    require_root();
    let c = cluster(1);
    let pods = pods_manifest(&[&c.backends[0]], |_| true);
    let agent = AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods)]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 1).unwrap();
    let refused = tcp_connect(&c.client.ns, SocketAddrV4::new(VIP, 81), TIMEOUT).unwrap();
    let (kind, after) = refused.expect_err("connected to a port the service does not have");
    assert_eq!(kind, std::io::ErrorKind::ConnectionRefused);
    assert!(after < Duration::from_millis(500), "refused only after {after:?}");
    let udp = udp_exchange(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    assert_eq!(udp.expect_err("udp to a tcp-only service port").kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(agent.counter("TC-POD", "reject_no_service_port").unwrap(), 2);

    let unallocated = SocketAddrV4::new(Ipv4Addr::new(10, 96, 200, 1), 80);
    let dropped = tcp_connect(&c.client.ns, unallocated, Duration::from_millis(500)).unwrap();
    assert_eq!(dropped.map_err(|(kind, _)| kind), Err(std::io::ErrorKind::TimedOut));
    assert!(agent.counter("TC-POD", "drop_unallocated_service_ip").unwrap() >= 1);
    // The service's own port still answers.
    assert_eq!(served_by(&http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap()), "kubia-0");
}

/// Path-MTU discovery through a cluster IP, with 1 400-byte routes to the
/// backend and to the client: without it the 20 KB transfers hang. With
/// the TC fast path the datapath answers a pod's packet that, rewritten, is
/// too big for its route with a fragmentation-needed about the packet the
/// pod sent, both ways (the client's request, the backend's reply); a
/// backend's port unreachable for a closed port refuses the client's UDP
/// socket at once.
#[test]
fn path_mtu_discovery_works_both_ways_through_the_cluster_ip() {
    require_root();
    let (c, agent, vip) = pmtu_cluster(&[]);
    let answered = download_then_upload(&c, &agent, vip);
    assert!(agent.counter("TC-POD", "frag_needed").unwrap() > answered, "the client's request was not answered");

    let udp = udp_exchange(&c.client.ns, SocketAddrV4::new(vip, 54), TIMEOUT).unwrap();
    assert_eq!(udp.expect_err("an answer from a closed port").kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(agent.counter("TC-POD", "icmp_error_reverse_nat").unwrap() >= 1, "{}", agent.get("counters").unwrap());
}

/// Without the fast path (`--pod-forwarding stack`) the kernel's forwarding
/// sends the fragmentation-needed for the client's request, about the
/// rewritten packet: translated back on its way to the client, it still
/// lets the client's TCP shrink its segments. The backend's reply, whose
/// source the rewrite changes, is still answered by the datapath: the
/// kernel's error would go to the cluster IP.
#[test]
fn path_mtu_discovery_through_the_cluster_ip_with_the_kernels_forwarding() {
    require_root();
    let (c, agent, vip) = pmtu_cluster(&["--pod-forwarding", "stack"]);
    let answered = download_then_upload(&c, &agent, vip);
    assert!(agent.counter("TC-EGRESS", "icmp_error_reverse_nat").unwrap() >= 1, "{}", agent.get("counters").unwrap());
    assert_eq!(agent.counter("TC-POD", "frag_needed").unwrap(), answered, "the request is the kernel's to answer");
}

/// 20 KB from the backend's source, then 20 KB to its sink, both intact;
/// the backend's reply must have been answered with a fragmentation-needed
/// (how many were, returned).
fn download_then_upload(c: &Cluster, agent: &AgentProcess, vip: Ipv4Addr) -> u64 {
    // The reply first: a client that learnt the path's MTU would announce
    // a smaller MSS, and the backend's segments would fit.
    bulk_receive(&c.client.ns, SocketAddrV4::new(vip, 9001), 20 << 10, TIMEOUT * 3).unwrap();
    let answered = agent.counter("TC-POD", "frag_needed").unwrap();
    assert!(answered >= 1, "the backend's reply was not answered: {}", agent.get("counters").unwrap());
    // Forgotten, or the backend would announce the smaller MSS in turn.
    c.backends[0].ns.exec(&["ip", "route", "flush", "cache"]).unwrap();
    let report = bulk_send(&c.client.ns, SocketAddrV4::new(vip, 9000), 20 << 10, TIMEOUT * 3).unwrap();
    assert!(report.contains("received 20480 bytes"), "{report}");
    answered
}

/// One backend serving a sink (9000), a source (9001) and a closed UDP
/// port (54) behind a cluster IP, 1 400-byte routes to it and to the
/// client, and an agent started with `args` beside `--pod-device`.
fn pmtu_cluster(args: &[&str]) -> (Cluster, AgentProcess, Ipv4Addr) {
    let mut c = cluster(1);
    c.backends[0].serve_sink(9000).unwrap();
    c.backends[0].serve_source(9001).unwrap();
    let vip = Ipv4Addr::new(10, 96, 0, 50);
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: pmtu\nspec:\n  clusterIP: {vip}\n  ports:\n  - name: sink\n    port: 9000\n  - name: source\n    port: 9001\n  - name: closed\n    port: 54\n    protocol: UDP\n    targetPort: 5400\n  selector:\n    app: kubia\n"
    );
    let pods = pods_manifest(&[&c.backends[0]], |_| true);
    let args: Vec<&str> = ["--pod-device", "h-*"].into_iter().chain(args.iter().copied()).collect();
    let agent = AgentProcess::start_with(&c.node, &[("pmtu.yaml", &service), ("pods.yaml", &pods)], &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("10.244.0.2:9001")).unwrap();
    let (backend, client) = (&c.backends[0], &c.client);
    for (ip, veth) in [(backend.ip, &backend.host_veth), (client.ip, &client.host_veth)] {
        // Locked: forwarding (and the FIB) use a route's MTU only then.
        let route = format!("{ip}/32");
        c.node.ns.exec(&["ip", "route", "replace", &route, "dev", veth, "mtu", "lock", "1400"]).unwrap();
    }
    (c, agent, vip)
}

#[test]
fn a_service_address_answers_ping_and_other_addresses_stay_silent() {
    require_root();
    let c = cluster(1);
    let pods = pods_manifest(&[&c.backends[0]], |_| true);
    let agent = AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods)]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 1).unwrap();
    assert!(ping(&c.client.ns, VIP, TIMEOUT).unwrap(), "no echo reply from the service address");
    assert!(!ping(&c.client.ns, Ipv4Addr::new(10, 96, 0, 99), Duration::from_millis(500)).unwrap());
    assert_eq!(agent.counter("TC-POD", "echo_reply").unwrap(), 1);
}

#[test]
fn a_udp_flow_to_a_removed_backend_moves_to_a_live_one() {
    require_root();
    let c = cluster(2);
    let both: Vec<&Pod> = c.backends.iter().collect();
    let agent =
        AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods_manifest(&both, |_| true))])
            .unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 2).unwrap();
    // One socket, one 5-tuple: the flow the datapath keeps on its backend.
    let socket = c.client.ns.run_in(|| std::net::UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let exchange = || {
        socket.send_to(b"same flow", SocketAddrV4::new(VIP, 53)).unwrap();
        let mut buf = [0u8; 512];
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        served_by(&String::from_utf8_lossy(&buf[..len])).to_owned()
    };
    let first = exchange();
    assert_eq!(exchange(), first, "a udp flow stays on its backend");

    let remaining: Vec<&Pod> = c.backends.iter().filter(|p| p.name != first).collect();
    agent.write_manifest("pods.yaml", &pods_manifest(&remaining, |_| true)).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 1).unwrap();
    assert_eq!(exchange(), remaining[0].name, "the flow still goes to the removed backend");
}

/// Deleting a Service: a new TCP connection reaches nothing, and neither
/// does a UDP socket that talked to it before from the same port (its flow
/// is flushed, as kube-proxy flushes UDP conntrack); nothing of it is left
/// in the maps.
#[test]
fn a_deleted_service_forwards_no_new_connection() {
    require_root();
    let c = cluster(2);
    let pods = pods_manifest(&c.backends.iter().collect::<Vec<_>>(), |_| true);
    let agent = AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods)]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 2).unwrap();
    let socket = c.client.ns.run_in(|| std::net::UdpSocket::bind("0.0.0.0:40053")).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let exchange = || {
        socket.send_to(b"hello", SocketAddrV4::new(VIP, 53)).unwrap();
        socket.recv_from(&mut [0u8; 512]).is_ok()
    };
    assert!(exchange(), "no UDP answer while the Service exists");
    http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();

    agent.remove_manifest("kubia.yaml").unwrap();
    agent.wait_for_services(TIMEOUT, |s| !s.contains("kubia")).unwrap();
    assert!(!exchange(), "the UDP flow still reaches a backend");
    assert!(http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), Duration::from_millis(500)).is_err());
    let flows = agent.get_filtered("conntrack", &["--protocol", "udp"]).unwrap();
    assert!(flows.contains("0 flows shown"), "{flows}");
    assert!(!agent.get("endpoints").unwrap().contains("kubia"));
}

/// 1 000 endpoint changes (pods added, removed, flipping ready) written to
/// the manifests while a client sends requests to the Service: three pods
/// stay ready throughout, three come and go. No request fails: a frontend
/// never has zero backends or a dangling slot on the way (see
/// "Reliability" in docs/operations.md), and connections to a pod that leaves finish where they are.
#[test]
fn a_thousand_endpoint_changes_under_load_fail_no_request() {
    require_root();
    let c = cluster(6);
    let (steady, churned) = c.backends.split_at(3);
    let pods = |mask: u32| {
        let present: Vec<&Pod> = steady
            .iter()
            .chain(churned.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, p)| p))
            .collect();
        let ready = |p: &Pod| steady.iter().any(|s| s.name == p.name) || mask >> (3 + p.ip.octets()[3] % 3) & 1 == 1;
        pods_manifest(&present, ready)
    };
    let agent = AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", &pods(0))]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (requests, failures) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let (mut requests, mut failures) = (0u32, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(err) = http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT) {
                    failures.push(format!("{err:#}"));
                }
                requests += 1;
            }
            (requests, failures)
        });
        // A fixed walk through the 64 combinations of presence and readiness.
        let mut mask = 0u32;
        for change in 0..1000u32 {
            mask = (mask * 37 + change + 11) % 64;
            agent.write_manifest("pods.yaml", &pods(mask)).unwrap();
            // Longer than the watcher's 10 ms debounce: each change is applied.
            std::thread::sleep(Duration::from_millis(15));
        }
        agent.write_manifest("pods.yaml", &pods(0)).unwrap();
        agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    eprintln!("{requests} requests during 1 000 endpoint changes, {} failed", failures.len());
    assert!(requests > 100, "only {requests} requests");
    assert!(failures.is_empty(), "{} of {requests} failed: {failures:?}", failures.len());
    let updates = agent.log_text().matches("datapath updated").count();
    eprintln!("{updates} map updates");
    assert!(updates > 300, "only {updates} of the changes reached the maps");
}
