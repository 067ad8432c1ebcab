//! The agent's DNS responder as pods use it (the seeds' "discovering
//! services through DNS"): `dig` and the libc resolver in pod namespaces,
//! asking the node-local address 169.254.20.10 on the node's loopback.

use serde_json::{Value, json};
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    TempDir,
    agent::{AgentProcess, pod_manifest},
    apiserver::ApiServer,
    dns::{DNS_IP, Dig, dig, dnsmasq, pod_resolv_conf},
    kubia::{TIMEOUT, cluster},
    netns::{ChildGuard, checked},
    require_root,
    topology::{Node, POD_DEVICE_PATTERN, Pod},
};

const KUBIA: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: kubia
spec:
  ports:
  - name: http
    port: 80
    targetPort: 8080
  selector:
    app: kubia
";

/// The seeds' headless Service (`kubia-headless`), one port named `http`.
const KUBIA_HEADLESS: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: kubia-headless
spec:
  clusterIP: None
  ports:
  - name: http
    port: 80
    targetPort: 8080
  selector:
    app: kubia
";

/// A dual-stack Service with a named UDP port (no selector: only its
/// names matter here).
const DUAL_STACK: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: kubia-dual
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.0.20, fd00:10:96::20]
  ports:
  - name: dns
    port: 53
    protocol: UDP
";

/// The seeds' ExternalName Service.
const EXTERNAL: &str = "\
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

fn dns_addr() -> SocketAddr {
    (DNS_IP.parse::<std::net::IpAddr>().unwrap(), 53).into()
}

/// Gives the node 169.254.20.10 on its loopback; the agent's arguments
/// for its pod veths and its responder there, then `more`.
fn dns_args<'a>(node: &Node, dns: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    node.ns.exec(&["ip", "addr", "add", &format!("{DNS_IP}/32"), "dev", "lo"]).unwrap();
    [&["--pod-device", POD_DEVICE_PATTERN, "--dns-address", dns][..], more].concat()
}

/// The agent with its DNS responder on the node's 169.254.20.10:53.
fn start_agent(node: &Node, manifests: &[(&str, &str)], more: &[&str]) -> AgentProcess {
    let dns = dns_addr().to_string();
    AgentProcess::start_with(node, manifests, &dns_args(node, &dns, more)).unwrap()
}

/// A node with a client pod (10.244.0.100).
fn node_with_client() -> (Node, Pod) {
    let node = Node::new().unwrap();
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100)).unwrap();
    (node, client)
}

/// An API server double in `node` holding its Node, and a kubeconfig for it.
fn api_server(node: &Node) -> (ApiServer, TempDir) {
    let api = ApiServer::start_in(&node.ns).unwrap();
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.ns.name()}})).unwrap();
    let dir = TempDir::new("dns");
    api.write_kubeconfig(dir.0.join("kubeconfig")).unwrap();
    (api, dir)
}

/// The pods' manifests, `kubia-0` with hostname `web-0` in subdomain
/// `kubia-headless` (its name under that Service).
fn pods(ips: &[(&str, Ipv4Addr, bool)]) -> String {
    ips.iter()
        .map(|(name, ip, ready)| {
            let manifest = pod_manifest(name, *ip, *ready);
            if *name == "kubia-0" {
                manifest.replace("spec:\n", "spec:\n  hostname: web-0\n  subdomain: kubia-headless\n")
            } else {
                manifest
            }
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Polls `dig` until `done` accepts its answer; how long that took.
fn dig_until(
    ns: &lb_tests::netns::Netns,
    query: &[&str],
    timeout: Duration,
    done: impl Fn(&Dig) -> bool,
) -> (Dig, Duration) {
    let start = Instant::now();
    loop {
        let answer = dig(ns, dns_addr(), query).unwrap();
        if done(&answer) || start.elapsed() > timeout {
            return (answer, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dig_finds_every_record_the_dns_specification_names() {
    require_root();
    let c = cluster(3);
    let ips: Vec<(&str, Ipv4Addr, bool)> = c.backends.iter().map(|p| (p.name.as_str(), p.ip, true)).collect();
    let agent = start_agent(
        &c.node,
        &[
            ("kubia.yaml", KUBIA),
            ("headless.yaml", KUBIA_HEADLESS),
            ("external.yaml", EXTERNAL),
            ("dual.yaml", DUAL_STACK),
            ("pods.yaml", &pods(&ips)),
        ],
        &["--service-cidr", "10.96.0.0/12", "--service-cidr", "fd00:10:96::/112"],
    );
    let ns = &c.client.ns;
    let ask = |query: &[&str]| dig(ns, dns_addr(), query).unwrap();

    // Dual stack: A and AAAA, SRV of a named UDP port, PTR in ip6.arpa.
    let dual = "kubia-dual.default.svc.cluster.local";
    assert_eq!(ask(&[dual, "A"]).data(), ["10.96.0.20"]);
    assert_eq!(ask(&[dual, "AAAA"]).answer, [format!("{dual}. 5 IN AAAA fd00:10:96::20")]);
    assert_eq!(ask(&[&format!("_dns._udp.{dual}"), "SRV"]).data(), [format!("0 100 53 {dual}.")]);
    assert_eq!(ask(&["-x", "fd00:10:96::20"]).data(), [format!("{dual}.")]);
    let unknown = ask(&["-x", "fd00:10:96::99"]);
    assert_eq!(unknown.status, "NXDOMAIN");
    assert!(unknown.authority[0].starts_with("ip6.arpa. 5 IN SOA "), "{unknown:?}");

    // A ClusterIP Service: its address, authoritative, with the TTL.
    let a = ask(&["kubia.default.svc.cluster.local", "A"]);
    assert_eq!(a.status, "NOERROR");
    assert!(a.flags.contains(&"aa".to_owned()), "{a:?}");
    assert_eq!(a.answer.len(), 1, "{a:?}");
    let record: Vec<&str> = a.answer[0].split(' ').collect();
    assert_eq!(&record[..4], ["kubia.default.svc.cluster.local.", "5", "IN", "A"]);
    // `env` reads the programmed maps: DNS names the address the datapath serves.
    let env = agent.get_env("default").unwrap();
    assert!(env.contains(&format!("KUBIA_SERVICE_HOST={}\n", record[4])), "DNS and `env` agree:\n{env}");

    // The name exists without an IPv6 address: NODATA, with the SOA.
    let aaaa = ask(&["kubia.default.svc.cluster.local", "AAAA"]);
    assert_eq!((aaaa.status.as_str(), aaaa.answer.len()), ("NOERROR", 0), "{aaaa:?}");
    assert!(aaaa.authority[0].contains(" SOA ns.dns.cluster.local. hostmaster.cluster.local. "), "{aaaa:?}");
    // No such Service: NXDOMAIN, with the SOA.
    let missing = ask(&["nosuch.default.svc.cluster.local", "A"]);
    assert_eq!(missing.status, "NXDOMAIN");
    assert!(missing.authority[0].contains(" SOA "), "{missing:?}");

    // SRV for the named port, the target's address alongside.
    let srv = ask(&["_http._tcp.kubia.default.svc.cluster.local", "SRV"]);
    assert_eq!(
        srv.answer,
        ["_http._tcp.kubia.default.svc.cluster.local. 5 IN SRV 0 100 80 kubia.default.svc.cluster.local."]
    );
    assert!(srv.additional.iter().any(|r| r.ends_with(&format!("A {}", record[4]))), "{srv:?}");

    // Headless: one A per ready pod, each pod by its hostname or address.
    let headless = ask(&["kubia-headless.default.svc.cluster.local", "A"]);
    assert_eq!(headless.data(), ["10.244.0.2", "10.244.0.3", "10.244.0.4"]);
    assert_eq!(ask(&["web-0.kubia-headless.default.svc.cluster.local", "A"]).data(), ["10.244.0.2"]);
    assert_eq!(ask(&["10-244-0-3.kubia-headless.default.svc.cluster.local", "A"]).data(), ["10.244.0.3"]);
    let srv = ask(&["_http._tcp.kubia-headless.default.svc.cluster.local", "SRV"]);
    assert_eq!(
        srv.data(),
        [
            "0 33 8080 10-244-0-3.kubia-headless.default.svc.cluster.local.",
            "0 33 8080 10-244-0-4.kubia-headless.default.svc.cluster.local.",
            "0 33 8080 web-0.kubia-headless.default.svc.cluster.local.",
        ]
    );

    // ExternalName: a CNAME to the outside name.
    let external = ask(&["external-service.default.svc.cluster.local", "A"]);
    assert_eq!(external.answer, ["external-service.default.svc.cluster.local. 5 IN CNAME someapi.somecompany.com."]);

    // PTR: a Service IP and a headless pod name their DNS names.
    let ptr = ask(&["-x", record[4]]);
    assert_eq!(ptr.data(), ["kubia.default.svc.cluster.local."]);
    assert_eq!(ask(&["-x", "10.244.0.2"]).data(), ["web-0.kubia-headless.default.svc.cluster.local."]);
    // An unallocated address of the service CIDR has no name.
    assert_eq!(ask(&["-x", "10.111.222.233"]).status, "NXDOMAIN");

    // Over TCP alike.
    assert_eq!(ask(&["+tcp", "kubia.default.svc.cluster.local", "A"]).answer, a.answer);
    // Outside the cluster domain, without --dns-upstream: refused.
    assert_eq!(ask(&["example.com", "A"]).status, "REFUSED");
}

#[test]
fn curl_http_kubia_from_a_pod_resolves_through_its_search_path() {
    require_root();
    let c = cluster(2);
    let ips: Vec<(&str, Ipv4Addr, bool)> = c.backends.iter().map(|p| (p.name.as_str(), p.ip, true)).collect();
    // Standalone, the agent answers on 169.254.20.10:53 unless told otherwise.
    c.node.ns.exec(&["ip", "addr", "add", &format!("{DNS_IP}/32"), "dev", "lo"]).unwrap();
    let agent = AgentProcess::start(&c.node, &[("kubia.yaml", KUBIA), ("pods.yaml", &pods(&ips))]).unwrap();
    c.client.ns.set_resolv_conf(&pod_resolv_conf(DNS_IP)).unwrap();
    let backends: Vec<&str> = c.backends.iter().map(|p| p.name.as_str()).collect();
    // The seeds' short and longer forms, each through the pod's libc resolver.
    for url in ["http://kubia", "http://kubia.default", "http://kubia.default.svc.cluster.local"] {
        let out = checked(c.client.ns.command_with_etc("curl").args(["-sS", "-m", "3", url])).unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        let served = body.lines().next().and_then(|l| l.strip_prefix("You've hit ")).unwrap_or_default();
        assert!(backends.contains(&served), "{url}: {body}");
    }
    // getaddrinfo() and `lb-agent env` agree on the address.
    let out = checked(c.client.ns.command_with_etc("getent").args(["ahostsv4", "kubia"])).unwrap();
    let resolved = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned();
    let env = agent.get_env("default").unwrap();
    assert!(env.contains(&format!("KUBIA_SERVICE_HOST={resolved}\n")), "getaddrinfo gave {resolved:?}; env:\n{env}");
    // A name nothing answers fails as a missing host, not a hang.
    let out = c.client.ns.command_with_etc("curl").args(["-sS", "-m", "3", "http://nosuch"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Could not resolve host"), "{out:?}");
}

#[test]
fn headless_answers_follow_readiness_and_a_deleted_service_is_nxdomain_within_a_second() {
    require_root();
    let c = cluster(3);
    let ip = |i: usize| c.backends[i].ip;
    let names = ["kubia-0", "kubia-1", "kubia-2"];
    let all_ready = pods(&[(names[0], ip(0), true), (names[1], ip(1), true), (names[2], ip(2), true)]);
    let agent = start_agent(&c.node, &[("headless.yaml", KUBIA_HEADLESS), ("pods.yaml", &all_ready)], &[]);
    let ns = &c.client.ns;
    let name = ["kubia-headless.default.svc.cluster.local", "A"];
    assert_eq!(dig(ns, dns_addr(), &name).unwrap().data(), ["10.244.0.2", "10.244.0.3", "10.244.0.4"]);

    // kubia-1 turns unready: its address leaves the answer and its name goes.
    agent
        .write_manifest(
            "pods.yaml",
            &pods(&[(names[0], ip(0), true), (names[1], ip(1), false), (names[2], ip(2), true)]),
        )
        .unwrap();
    let (answer, _) = dig_until(ns, &name, TIMEOUT, |d| d.answer.len() == 2);
    assert_eq!(answer.data(), ["10.244.0.2", "10.244.0.4"]);
    assert_eq!(
        dig(ns, dns_addr(), &["10-244-0-3.kubia-headless.default.svc.cluster.local"]).unwrap().status,
        "NXDOMAIN"
    );
    let srv = dig(ns, dns_addr(), &["_http._tcp.kubia-headless.default.svc.cluster.local", "SRV"]).unwrap();
    assert_eq!(
        srv.data(),
        [
            "0 50 8080 10-244-0-4.kubia-headless.default.svc.cluster.local.",
            "0 50 8080 web-0.kubia-headless.default.svc.cluster.local."
        ]
    );

    // publishNotReadyAddresses: the unready pod is named again.
    let publishing = KUBIA_HEADLESS.replace("clusterIP: None\n", "clusterIP: None\n  publishNotReadyAddresses: true\n");
    agent.write_manifest("headless.yaml", &publishing).unwrap();
    let (answer, _) = dig_until(ns, &name, TIMEOUT, |d| d.answer.len() == 3);
    assert_eq!(answer.data(), ["10.244.0.2", "10.244.0.3", "10.244.0.4"]);

    // No pod ready and none published: the specification's NXDOMAIN.
    agent.write_manifest("headless.yaml", KUBIA_HEADLESS).unwrap();
    agent
        .write_manifest(
            "pods.yaml",
            &pods(&[(names[0], ip(0), false), (names[1], ip(1), false), (names[2], ip(2), false)]),
        )
        .unwrap();
    let (answer, _) = dig_until(ns, &name, TIMEOUT, |d| d.status == "NXDOMAIN");
    assert_eq!(answer.status, "NXDOMAIN");

    // Deleted: NXDOMAIN within a second of the manifest's removal.
    agent.write_manifest("pods.yaml", &all_ready).unwrap();
    let (answer, _) = dig_until(ns, &name, TIMEOUT, |d| d.answer.len() == 3);
    assert_eq!(answer.status, "NOERROR");
    agent.remove_manifest("headless.yaml").unwrap();
    let (answer, took) = dig_until(ns, &name, TIMEOUT, |d| d.status == "NXDOMAIN");
    assert_eq!(answer.status, "NXDOMAIN");
    eprintln!("NXDOMAIN {took:?} after the manifest's removal");
    assert!(took < Duration::from_secs(1), "NXDOMAIN only after {took:?}");
}

#[test]
fn a_headless_answer_too_big_for_udp_is_truncated_and_complete_over_tcp() {
    require_root();
    let (node, client) = node_with_client();
    // 60 endpoints of a Service without selector: 60 A records, ~1 KB.
    let endpoints: String = (0..60).map(|i| format!("- addresses: [10.244.2.{}]\n", i + 1)).collect();
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: many-1\n  labels: {{kubernetes.io/service-name: many}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{endpoints}"
    );
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: many}\nspec:\n  clusterIP: None\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";
    let _agent = start_agent(&node, &[("many.yaml", &format!("{service}---\n{slice}"))], &[]);
    let name = "many.default.svc.cluster.local";
    // A resolver without EDNS takes 512 bytes over UDP: truncated, flagged so.
    let udp = dig(&client.ns, dns_addr(), &["+ignore", "+noedns", name]).unwrap();
    assert!(udp.flags.contains(&"tc".to_owned()), "{udp:?}");
    assert!(udp.answer.len() < 60, "{udp:?}");
    // dig then asks again over TCP, as resolvers do, and gets them all.
    let full = dig(&client.ns, dns_addr(), &["+noedns", name]).unwrap();
    assert_eq!(full.answer.len(), 60, "{full:?}");
    assert!(!full.flags.contains(&"tc".to_owned()), "{full:?}");
}

/// dnsmasq on the node's 127.0.0.1:5300, answering from `hosts` only.
fn upstream(node: &Node, hosts: &str) -> (ChildGuard, TempDir) {
    let dir = TempDir::new("dns");
    let file = dir.0.join("hosts");
    std::fs::write(&file, hosts).unwrap();
    (dnsmasq(&node.ns, "127.0.0.1:5300".parse().unwrap(), &file).unwrap(), dir)
}

#[test]
fn names_outside_the_cluster_domain_are_answered_by_the_upstream_server() {
    require_root();
    let (node, client) = node_with_client();
    let (dnsmasq, _dir) = upstream(&node, "192.0.2.50 api.example.test\n");
    let external = EXTERNAL.replace("someapi.somecompany.com", "api.example.test");
    let agent = start_agent(&node, &[("external.yaml", &external)], &["--dns-upstream", "127.0.0.1:5300"]);
    let ns = &client.ns;
    let (answer, _) = dig_until(ns, &["api.example.test", "A"], TIMEOUT, |d| d.status == "NOERROR");
    assert_eq!(answer.answer, ["api.example.test. 0 IN A 192.0.2.50"], "{answer:?}");
    assert!(!answer.flags.contains(&"aa".to_owned()), "a forwarded answer is not ours: {answer:?}");
    // Whatever the upstream server says is relayed.
    let direct = dig(&node.ns, "127.0.0.1:5300".parse().unwrap(), &["nosuch.example.test"]).unwrap();
    let before = responses(&node);
    assert_eq!(dig(ns, dns_addr(), &["nosuch.example.test"]).unwrap().status, direct.status);
    assert_eq!(dig(ns, dns_addr(), &["+tcp", "api.example.test"]).unwrap().data(), ["192.0.2.50"]);
    // The cluster domain is never forwarded; an ExternalName's address is
    // asked upstream and given with its alias.
    let alias = dig(ns, dns_addr(), &["external-service.default.svc.cluster.local"]).unwrap();
    assert_eq!(
        alias.answer,
        [
            "external-service.default.svc.cluster.local. 5 IN CNAME api.example.test.",
            "api.example.test. 0 IN A 192.0.2.50"
        ]
    );
    assert!(alias.flags.contains(&"aa".to_owned()), "{alias:?}");
    let after = responses(&node);
    let added = |kind: &str| after.get(kind).unwrap_or(&0) - before.get(kind).unwrap_or(&0);
    assert_eq!((added("forwarded"), added("answer")), (2, 1), "{after:?}");
    // The pod's libc resolver, through the search path, gets the address.
    client.ns.set_resolv_conf(&pod_resolv_conf(DNS_IP)).unwrap();
    let out = checked(client.ns.command_with_etc("getent").args(["ahostsv4", "external-service"])).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("192.0.2.50 "), "{out:?}");
    let status = agent.status(&node, &[]).unwrap();
    assert!(
        status.contains("dns:       169.254.20.10:53 for cluster.local, other names to 127.0.0.1:5300"),
        "{status}"
    );
    // The upstream server gone: SERVFAIL, said once in the log.
    drop(dnsmasq);
    for _ in 0..2 {
        assert_eq!(dig(ns, dns_addr(), &["+time=4", "api.example.test"]).unwrap().status, "SERVFAIL");
    }
    assert_eq!(responses(&node).get("servfail"), Some(&2));
    assert_eq!(agent.log_text().matches("--dns-upstream: ").count(), 1, "{}", agent.log_text());
}

/// `lb_dns_responses_total` by kind, from the agent's /metrics.
fn responses(node: &Node) -> std::collections::BTreeMap<String, u64> {
    lb_tests::client::scrape_metrics(&node.ns, TIMEOUT)
        .unwrap()
        .into_iter()
        .filter_map(|(sample, value)| {
            let kind = sample.strip_prefix("lb_dns_responses_total{kind=\"")?.strip_suffix("\"}")?;
            Some((kind.to_owned(), value as u64))
        })
        .collect()
}

/// A headless Service's EndpointSlice as the controller writes it: labelled
/// headless (kube-proxy's selector leaves such slices out), each endpoint
/// with the pod's hostname.
fn headless_slice(endpoints: &[(&str, &str, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, hostname, ready)| json!({"addresses": [ip], "hostname": hostname, "conditions": {"ready": ready}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubia-headless-abcde",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubia-headless", "service.kubernetes.io/headless": ""}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

#[test]
fn a_headless_service_from_the_api_server_is_named_by_its_endpoint_slices() {
    require_root();
    let (node, client) = node_with_client();
    let (api, dir) = api_server(&node);
    api.apply(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kubia-headless", "namespace": "default"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "kubia"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .unwrap();
    api.apply(headless_slice(&[("10.244.0.2", "kubia-0", true), ("10.244.0.3", "kubia-1", true)])).unwrap();
    let dns = dns_addr().to_string();
    let _agent = AgentProcess::start_api(&node, &dir.0.join("kubeconfig"), &dns_args(&node, &dns, &[])).unwrap();
    let name = ["kubia-headless.default.svc.cluster.local", "A"];
    let (answer, _) = dig_until(&client.ns, &name, TIMEOUT, |d| d.answer.len() == 2);
    assert_eq!(answer.data(), ["10.244.0.2", "10.244.0.3"]);
    assert_eq!(
        dig(&client.ns, dns_addr(), &["kubia-1.kubia-headless.default.svc.cluster.local"]).unwrap().data(),
        ["10.244.0.3"]
    );
    // The controller marks kubia-1 unready.
    api.apply(headless_slice(&[("10.244.0.2", "kubia-0", true), ("10.244.0.3", "kubia-1", false)])).unwrap();
    let (answer, _) = dig_until(&client.ns, &name, TIMEOUT, |d| d.answer.len() == 1);
    assert_eq!(answer.data(), ["10.244.0.2"]);
    api.delete("Service", "default", "kubia-headless").unwrap();
    let (answer, took) = dig_until(&client.ns, &name, TIMEOUT, |d| d.status == "NXDOMAIN");
    assert_eq!(answer.status, "NXDOMAIN");
    assert!(took < Duration::from_secs(1), "NXDOMAIN only after {took:?}");
}

#[test]
fn until_the_api_server_is_listed_the_cluster_domain_fails_instead_of_being_denied() {
    require_root();
    let (node, client) = node_with_client();
    let (api, dir) = api_server(&node);
    api.stop();
    let dns = dns_addr().to_string();
    let args = dns_args(&node, &dns, &[]);
    let mut agent =
        AgentProcess::start_api_until(&node, &dir.0.join("kubeconfig"), &args, "DNS responder listening").unwrap();
    // Nothing listed yet: SERVFAIL, which a resolver does not cache as a
    // missing name (a restarted agent's first moments).
    let name = ["kubia.default.svc.cluster.local", "A"];
    assert_eq!(dig(&client.ns, dns_addr(), &name).unwrap().status, "SERVFAIL");
    // Listed: the Service is answered, a missing one denied.
    api.apply(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kubia", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .unwrap();
    api.restart().unwrap();
    agent.wait_for_log("first sync", Duration::from_secs(30)).unwrap();
    assert_eq!(dig(&client.ns, dns_addr(), &name).unwrap().data(), ["10.96.0.10"]);
    assert_eq!(dig(&client.ns, dns_addr(), &["nosuch.default.svc.cluster.local"]).unwrap().status, "NXDOMAIN");
}
