//! Service behaviours from the seeds (Kubernetes in Action ch. 5) and the
//! Kubernetes e2e Service tests, on one node with real traffic.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::AgentProcess,
    client::{http_get, served_by, tcp_connect, udp_request},
    kubia::{TIMEOUT, VIP},
    require_root,
    topology::Node,
};

/// A kubia pod whose container names its ports `http` and `https` with
/// its own numbers.
fn pod_with_named_ports(name: &str, ip: Ipv4Addr, http: u16, https: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: kubia\nspec:\n  containers:\n  - name: kubia\n    image: luksa/kubia\n    ports:\n    - name: http\n      containerPort: {http}\n    - name: https\n      containerPort: {https}\nstatus:\n  podIP: {ip}\n  conditions:\n  - type: Ready\n    status: \"True\"\n"
    )
}

fn service(ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  clusterIP: {VIP}\n  selector:\n    app: kubia\n  ports:\n{ports}"
    )
}

const HTTP_AND_HTTPS: &str =
    "  - name: http\n    port: 80\n    targetPort: http\n  - name: https\n    port: 443\n    targetPort: https\n";
const DNS_OVER_TCP_AND_UDP: &str = "  - name: dns-tcp\n    port: 53\n    protocol: TCP\n    targetPort: http\n  - name: dns-udp\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n";

fn answers(client: &lb_tests::topology::Pod, port: u16, requests: usize) -> BTreeSet<String> {
    (0..requests)
        .map(|_| served_by(&http_get(&client.ns, SocketAddrV4::new(VIP, port), TIMEOUT).unwrap()).to_owned())
        .collect()
}

/// e2e "should serve multiport endpoints from pods", with the seeds' named
/// ports: two pods map `http`/`https` to different numbers.
#[test]
fn multiport_service_with_named_target_ports_resolved_per_pod() {
    require_root();
    let node = Node::new().unwrap();
    let mut a = node.add_pod("kubia-a", Ipv4Addr::new(10, 244, 0, 2)).unwrap();
    let mut b = node.add_pod("kubia-b", Ipv4Addr::new(10, 244, 0, 3)).unwrap();
    a.serve_on(&[8080, 8443], &[5353]).unwrap();
    b.serve_on(&[9080, 9443], &[5353]).unwrap();
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100)).unwrap();
    let pods = [pod_with_named_ports("kubia-a", a.ip, 8080, 8443), pod_with_named_ports("kubia-b", b.ip, 9080, 9443)]
        .join("---\n");
    let agent = AgentProcess::start(&node, &[("svc.yaml", &service(HTTP_AND_HTTPS)), ("pods.yaml", &pods)]).unwrap();
    agent
        .wait_for_services(TIMEOUT, |s| {
            ["10.244.0.2:8443", "10.244.0.3:9443", "10.244.0.3:9080"].iter().all(|e| s.contains(e))
        })
        .unwrap();
    let both: BTreeSet<String> = ["kubia-a", "kubia-b"].map(String::from).into();
    assert_eq!(answers(&client, 80, 30), both);
    assert_eq!(answers(&client, 443, 30), both);

    // TCP and UDP on one port number, in one Service.
    agent.write_manifest("svc.yaml", &service(DNS_OVER_TCP_AND_UDP)).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("dns-udp:53/UDP")).unwrap();
    assert_eq!(answers(&client, 53, 30), both);
    let (reply, from) = udp_request(&client.ns, SocketAddrV4::new(VIP, 53), b"query", TIMEOUT).unwrap();
    assert_eq!(from, SocketAddrV4::new(VIP, 53).into(), "{reply}");

    // Ports added to and removed from the live Service; the others keep serving.
    agent
        .write_manifest(
            "svc.yaml",
            &service(&format!("{HTTP_AND_HTTPS}{}", "  - name: alt\n    port: 8000\n    targetPort: http\n")),
        )
        .unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("alt:8000/TCP") && !s.contains("dns")).unwrap();
    assert_eq!(answers(&client, 8000, 20), both);
    agent.write_manifest("svc.yaml", &service("  - name: http\n    port: 80\n    targetPort: http\n")).unwrap();
    agent.wait_for_services(TIMEOUT, |s| !s.contains("443")).unwrap();
    assert_eq!(answers(&client, 80, 20), both);
    assert!(tcp_connect(&client.ns, SocketAddrV4::new(VIP, 443), Duration::from_millis(300)).unwrap().is_err());
}

/// The seeds' "connecting to services living outside the cluster": a
/// Service without a selector, its endpoints from a manual Endpoints object
/// (an external database: a namespace outside the pod network), then from
/// an EndpointSlice; adding a selector hands them to the pods, removing it
/// hands them back.
#[test]
fn service_without_selector_uses_manual_endpoints_and_endpoint_slices() {
    require_root();
    let node = Node::new().unwrap();
    let mut external = node.add_pod("ext-db", Ipv4Addr::new(192, 0, 2, 10)).unwrap();
    external.serve(5432, 5353).unwrap();
    let mut pod = node.add_pod("kubia-a", Ipv4Addr::new(10, 244, 0, 2)).unwrap();
    pod.serve(5432, 5353).unwrap();
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100)).unwrap();
    let service = |selector: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: external-service\nspec:\n  clusterIP: {VIP}\n  ports:\n  - port: 80\n    targetPort: 5432\n{selector}"
        )
    };
    let endpoints = "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: external-service\nsubsets:\n- addresses:\n  - ip: 192.0.2.10\n  ports:\n  - port: 5432\n";
    let pod_manifest = lb_tests::agent::pod_manifest("kubia-a", pod.ip, true);
    let agent = AgentProcess::start(
        &node,
        &[("svc.yaml", &service("")), ("endpoints.yaml", endpoints), ("pod.yaml", &pod_manifest)],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("192.0.2.10:5432")).unwrap();
    assert_eq!(answers(&client, 80, 10), ["ext-db".to_owned()].into());

    let with_selector = service("  selector:\n    app: kubia\n");
    agent.write_manifest("svc.yaml", &with_selector).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("10.244.0.2:5432") && !s.contains("192.0.2.10")).unwrap();
    assert_eq!(answers(&client, 80, 10), ["kubia-a".to_owned()].into());

    agent.write_manifest("svc.yaml", &service("")).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("192.0.2.10:5432") && !s.contains("10.244.0.2")).unwrap();

    // The same endpoint from an EndpointSlice instead.
    agent.remove_manifest("endpoints.yaml").unwrap();
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: external-service-1\n  labels:\n    kubernetes.io/service-name: external-service\naddressType: IPv4\nendpoints:\n- addresses:\n  - 192.0.2.10\n  conditions:\n    ready: true\nports:\n- port: 5432\n";
    agent.write_manifest("slice.yaml", slice).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("192.0.2.10:5432")).unwrap();
    assert_eq!(answers(&client, 80, 10), ["ext-db".to_owned()].into());
}

/// The seeds' headless Service and ExternalName alias: DNS answers for
/// them, so the datapath programs nothing, but both are listed.
#[test]
fn headless_and_external_name_services_are_listed_but_not_programmed() {
    require_root();
    let node = Node::new().unwrap();
    let manifests = "\
apiVersion: v1
kind: Service
metadata:
  name: kubia-headless
spec:
  clusterIP: None
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: kubia
---
apiVersion: v1
kind: Service
metadata:
  name: external-service
spec:
  type: ExternalName
  externalName: someapi.somecompany.com
  ports:
  - port: 80
";
    let pod = lb_tests::agent::pod_manifest("kubia-a", Ipv4Addr::new(10, 244, 0, 2), true);
    let agent = AgentProcess::start(&node, &[("svc.yaml", manifests), ("pod.yaml", &pod)]).unwrap();
    let services = agent.get("services").unwrap();
    let rows: Vec<Vec<&str>> = services.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [
            ["default", "external-service", "ExternalName", "<none>", "<none>", "<none>", "<none>"],
            ["default", "kubia-headless", "ClusterIP", "None", "<none>", "<none>", "<none>"],
        ],
        "{services}"
    );
}

/// The seeds' `sessionAffinity: ClientIP` and e2e "should have session
/// affinity timeout work": sticky while used, random again once the
/// timeout passed, and switching None <-> ClientIP converges.
#[test]
fn session_affinity_client_ip_sticks_and_expires_after_its_timeout() {
    require_root();
    let c = lb_tests::kubia::cluster(3);
    let affinity = |on: bool| {
        let extra = if on {
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 1\n"
        } else {
            ""
        };
        format!("{}{extra}", service("  - name: http\n    port: 80\n    targetPort: 8080\n"))
    };
    let pods: Vec<&lb_tests::topology::Pod> = c.backends.iter().collect();
    let agent = AgentProcess::start(
        &c.node,
        &[("svc.yaml", &affinity(true)), ("pods.yaml", &lb_tests::kubia::pods_manifest(&pods, |_| true))],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| lb_tests::kubia::endpoint_count(s) == 3).unwrap();
    assert_eq!(answers(&c.client, 80, 20).len(), 1, "new connections within the timeout stay on one pod");

    // Idle past the timeout before each request: each is a fresh choice.
    let after_expiry: BTreeSet<String> = (0..8)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(1100));
            served_by(&http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap()).to_owned()
        })
        .collect();
    assert!(after_expiry.len() > 1, "stickiness never expired: {after_expiry:?}");

    agent.write_manifest("svc.yaml", &affinity(false)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(answers(&c.client, 80, 30).len(), 3, "without affinity every pod answers");
    agent.write_manifest("svc.yaml", &affinity(true)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(answers(&c.client, 80, 20).len(), 1, "affinity again after switching back");
}

/// e2e "should allow pods to hairpin back to themselves through services":
/// the only backend reaches itself through its own Service.
#[test]
fn a_pod_reaches_itself_through_its_own_service() {
    require_root();
    let c = lb_tests::kubia::cluster(1);
    let me = &c.backends[0];
    let agent = AgentProcess::start(
        &c.node,
        &[
            ("svc.yaml", lb_tests::kubia::KUBIA_SERVICE),
            ("pods.yaml", &lb_tests::kubia::pods_manifest(&[me], |_| true)),
        ],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| lb_tests::kubia::endpoint_count(s) == 1).unwrap();
    for _ in 0..5 {
        let body = http_get(&me.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
        assert_eq!(served_by(&body), me.name);
    }
    let (reply, from) = udp_request(&me.ns, SocketAddrV4::new(VIP, 53), b"me?", TIMEOUT).unwrap();
    assert_eq!(from, SocketAddrV4::new(VIP, 53).into(), "{reply}");
    assert_eq!(served_by(&reply), me.name);
    // Other clients are not hairpinned: the backend still sees their address.
    let body = http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    assert!(lb_tests::client::seen_client(&body).starts_with(&c.client.ip.to_string()), "{body}");
}

/// The seeds' troubleshooting advice: `get endpoints` shows which pods are
/// part of the Service, ready or not.
#[test]
fn get_endpoints_shows_every_endpoint_with_its_conditions() {
    require_root();
    let c = lb_tests::kubia::cluster(2);
    let pods: Vec<&lb_tests::topology::Pod> = c.backends.iter().collect();
    let manifests = lb_tests::kubia::pods_manifest(&pods, |p| p.name == "kubia-0");
    let agent =
        AgentProcess::start(&c.node, &[("svc.yaml", lb_tests::kubia::KUBIA_SERVICE), ("pods.yaml", &manifests)])
            .unwrap();
    let endpoints = agent.get("endpoints").unwrap();
    let rows: Vec<Vec<&str>> = endpoints.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAMESPACE", "NAME", "PORT", "ENDPOINT", "READY", "SERVING", "TERMINATING", "TARGET"]);
    assert!(
        rows.contains(&vec!["default", "kubia", "http", "10.244.0.2:8080", "true", "true", "false", "kubia-0"]),
        "{endpoints}"
    );
    assert!(
        rows.contains(&vec!["default", "kubia", "http", "10.244.0.3:8080", "false", "false", "false", "kubia-1"]),
        "{endpoints}"
    );
    assert!(
        rows.contains(&vec!["default", "kubia", "echo", "10.244.0.3:5353", "false", "false", "false", "kubia-1"]),
        "{endpoints}"
    );
}

/// e2e "should be able to preserve UDP traffic when server pod cycles" and
/// the readiness seeds: a connection established to a backend that becomes
/// terminating, then is removed, keeps working until it closes, while new
/// connections go to the others.
#[test]
fn an_established_connection_survives_its_backend_terminating_and_being_removed() {
    use std::io::{BufRead, BufReader, Write};
    require_root();
    let mut c = lb_tests::kubia::cluster(2);
    for pod in &mut c.backends {
        pod.serve_tcp_echo(7007).unwrap();
    }
    let svc = service(
        "  - name: http\n    port: 80\n    targetPort: 8080\n  - name: chat\n    port: 7\n    targetPort: 7007\n",
    );
    let pod = |name: &str, ip, terminating: bool| {
        let manifest = lb_tests::agent::pod_manifest(name, ip, true);
        if terminating {
            manifest.replace("metadata:\n", "metadata:\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n")
        } else {
            manifest
        }
    };
    let (a, b) = (&c.backends[0], &c.backends[1]);
    let agent = AgentProcess::start(
        &c.node,
        &[("svc.yaml", &svc), ("pods.yaml", &[pod(&a.name, a.ip, false), pod(&b.name, b.ip, false)].join("---\n"))],
    )
    .unwrap();
    agent.wait_for_services(TIMEOUT, |s| lb_tests::kubia::endpoint_count(s) == 2).unwrap();

    let stream = c
        .client
        .ns
        .run_in(|| std::net::TcpStream::connect_timeout(&SocketAddrV4::new(VIP, 7).into(), TIMEOUT))
        .unwrap()
        .unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut lines = BufReader::new(stream.try_clone().unwrap()).lines();
    let mut say = |text: &str| {
        writeln!(&stream, "{text}").unwrap();
        lines.next().unwrap().unwrap()
    };
    let first = say("hello");
    let (owner, _) = first.split_once(": ").unwrap();
    let owner = owner.to_owned();
    let (ours, other) = if owner == a.name { (a, b) } else { (b, a) };

    // Terminating: no new connections, the old one goes on.
    let manifests = [pod(&ours.name, ours.ip, true), pod(&other.name, other.ip, false)].join("---\n");
    agent.write_manifest("pods.yaml", &manifests).unwrap();
    agent.wait_for_services(TIMEOUT, |s| lb_tests::kubia::endpoint_count(s) == 1).unwrap();
    assert_eq!(answers(&c.client, 80, 20), [other.name.clone()].into());
    assert_eq!(say("still there?"), format!("{owner}: still there?"));

    // Removed altogether: the old connection still goes on.
    agent.write_manifest("pods.yaml", &pod(&other.name, other.ip, false)).unwrap();
    agent.wait_for_services(TIMEOUT, |s| !s.contains(&ours.ip.to_string())).unwrap();
    assert_eq!(say("and now?"), format!("{owner}: and now?"));
}

/// The seeds' "discovering services through environment variables".
#[test]
fn env_prints_what_kubelet_would_inject_for_the_services_now() {
    require_root();
    let node = Node::new().unwrap();
    let pod = lb_tests::agent::pod_manifest("kubia-a", Ipv4Addr::new(10, 244, 0, 2), true);
    let agent = AgentProcess::start(&node, &[("svc.yaml", &service(HTTP_AND_HTTPS)), ("pod.yaml", &pod)]).unwrap();
    let env = agent.get_env("default").unwrap();
    for line in [
        "KUBIA_SERVICE_HOST=10.96.0.10",
        "KUBIA_SERVICE_PORT=80",
        "KUBIA_SERVICE_PORT_HTTP=80",
        "KUBIA_SERVICE_PORT_HTTPS=443",
        "KUBIA_PORT=tcp://10.96.0.10:80",
        "KUBIA_PORT_443_TCP_ADDR=10.96.0.10",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing from:\n{env}");
    }
    assert_eq!(agent.get_env("other").unwrap(), "", "services of another namespace are not injected");
}

/// e2e "should fallback to terminating endpoints when there are no ready
/// endpoints" and the headless seeds' `publishNotReadyAddresses`.
#[test]
fn terminating_endpoints_serve_when_none_is_ready_and_publish_not_ready_serves_unready_pods() {
    require_root();
    let c = lb_tests::kubia::cluster(2);
    let (a, b) = (&c.backends[0], &c.backends[1]);
    let terminating = lb_tests::agent::pod_manifest(&a.name, a.ip, true)
        .replace("metadata:\n", "metadata:\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n");
    let unready = lb_tests::agent::pod_manifest(&b.name, b.ip, false);
    let svc = service("  - name: http\n    port: 80\n    targetPort: 8080\n");
    let agent =
        AgentProcess::start(&c.node, &[("svc.yaml", &svc), ("pods.yaml", &[terminating, unready].join("---\n"))])
            .unwrap();
    agent.wait_for_services(TIMEOUT, |s| lb_tests::kubia::endpoint_count(s) == 1).unwrap();
    assert_eq!(answers(&c.client, 80, 10), [a.name.clone()].into(), "the terminating, still serving pod");

    agent.write_manifest("svc.yaml", &svc.replace("spec:\n", "spec:\n  publishNotReadyAddresses: true\n")).unwrap();
    agent.wait_for_services(TIMEOUT, |s| lb_tests::kubia::endpoint_count(s) == 2).unwrap();
    assert_eq!(answers(&c.client, 80, 30), [a.name.clone(), b.name.clone()].into());
}

/// Labels kube-proxy honours, toggled on a live Service.
#[test]
fn the_headless_and_service_proxy_name_labels_are_honoured_when_toggled() {
    require_root();
    let c = lb_tests::kubia::cluster(1);
    let svc = service("  - name: http\n    port: 80\n    targetPort: 8080\n");
    let labelled = |label: &str| svc.replace("  name: kubia\n", &format!("  name: kubia\n  labels:\n    {label}\n"));
    let pods = lb_tests::kubia::pods_manifest(&[&c.backends[0]], |_| true);
    let agent = AgentProcess::start(&c.node, &[("svc.yaml", &svc), ("pods.yaml", &pods)]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| lb_tests::kubia::endpoint_count(s) == 1).unwrap();

    agent.write_manifest("svc.yaml", &labelled("service.kubernetes.io/headless: \"\"")).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains(" None ")).unwrap();
    assert!(tcp_connect(&c.client.ns, SocketAddrV4::new(VIP, 80), Duration::from_millis(300)).unwrap().is_err());

    agent.write_manifest("svc.yaml", &labelled("service.kubernetes.io/service-proxy-name: other-proxy")).unwrap();
    agent.wait_for_services(TIMEOUT, |s| !s.contains("kubia")).unwrap();

    agent.write_manifest("svc.yaml", &svc).unwrap();
    agent.wait_for_services(TIMEOUT, |s| lb_tests::kubia::endpoint_count(s) == 1).unwrap();
    assert_eq!(answers(&c.client, 80, 5), [c.backends[0].name.clone()].into());
}

/// Bad input: a second Service claiming a live Service's cluster IP is
/// refused with an error naming both; the first keeps working.
#[test]
fn a_service_claiming_a_taken_cluster_ip_is_refused_and_the_first_keeps_working() {
    require_root();
    let c = lb_tests::kubia::cluster(1);
    let svc = service("  - name: http\n    port: 80\n    targetPort: 8080\n");
    let pods = lb_tests::kubia::pods_manifest(&[&c.backends[0]], |_| true);
    let mut agent = AgentProcess::start(&c.node, &[("svc.yaml", &svc), ("pods.yaml", &pods)]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| lb_tests::kubia::endpoint_count(s) == 1).unwrap();

    agent.write_manifest("thief.yaml", &svc.replace("name: kubia\n", "name: thief\n")).unwrap();
    agent
        .wait_for_log(
            "Service default/thief: spec.clusterIP: 10.96.0.10 is already used by Service default/kubia",
            TIMEOUT,
        )
        .unwrap();
    let services = agent.get("services").unwrap();
    assert!(!services.contains("thief"), "{services}");
    assert_eq!(answers(&c.client, 80, 5), [c.backends[0].name.clone()].into());
}
