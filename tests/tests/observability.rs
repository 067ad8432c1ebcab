//! What the agent tells operators: Prometheus metrics on
//! `--metrics-bind-address` (kube-proxy's 10249), scraped while real traffic
//! flows (the datapath's counters move by what the packets did, the control
//! loop's passes are recorded), and logs a collector can parse.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_tests::{
    agent::AgentProcess,
    client::{http_get, scrape_metrics},
    kubia::{Cluster, KUBIA_SERVICE, TIMEOUT, VIP, cluster, endpoint_count, pods_manifest},
    netns::Netns,
    require_root,
    topology::POD_DEVICE_PATTERN,
};

/// One scrape of `/metrics` in `ns`: each sample (`name{labels}`) with its value.
fn scrape(ns: &Netns) -> BTreeMap<String, f64> {
    scrape_metrics(ns, TIMEOUT).unwrap()
}

/// A node with `n` kubia pods, and an agent (with `args` more) that programmed them.
fn kubia(n: u8, args: &[&str]) -> (Cluster, AgentProcess) {
    let c = cluster(n);
    let pods = pods_manifest(&c.backends.iter().collect::<Vec<_>>(), |_| true);
    let manifests = [("kubia.yaml", KUBIA_SERVICE), ("pods.yaml", pods.as_str())];
    let args = [&["--pod-device", POD_DEVICE_PATTERN][..], args].concat();
    let agent = AgentProcess::start_with(&c.node, &manifests, &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == usize::from(n)).unwrap();
    (c, agent)
}

/// `sample`'s value in `scrape`, 0 when it is not there.
fn value(scrape: &BTreeMap<String, f64>, sample: &str) -> f64 {
    scrape.get(sample).copied().unwrap_or(0.0)
}

#[test]
fn metrics_count_each_new_connection_and_its_conntrack_entries_while_traffic_flows() {
    require_root();
    let (c, agent) = kubia(2, &[]);
    let before = scrape(&c.node.ns);

    const CONNECTIONS: f64 = 25.0;
    for _ in 0..CONNECTIONS as usize {
        http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    }
    let after = scrape(&c.node.ns);
    let moved = |sample: &str| value(&after, sample) - value(&before, sample);
    let new_flows = r#"lb_datapath_packets_total{hook="TC-POD",reason="forward_new_flow"}"#;
    assert_eq!(moved(new_flows), CONNECTIONS, "one new flow per connection");
    assert_eq!(moved("lb_conntrack_created_total"), 2.0 * CONNECTIONS, "a forward and a reply entry per flow");
    let replies = r#"lb_datapath_packets_total{hook="TC-POD",reason="reply_reverse_nat"}"#;
    assert!(moved(replies) >= 3.0 * CONNECTIONS, "SYN-ACK, response, FIN at least: {}", moved(replies));
    // The same figures as `get counters`.
    assert_eq!(value(&after, new_flows), agent.counter("TC-POD", "forward_new_flow").unwrap() as f64);

    // The control loop's passes: at least the first, and what they programmed.
    assert!(value(&after, "kubeproxy_sync_proxy_rules_duration_seconds_count") >= 1.0);
    assert!(value(&after, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 1.7e9);
    assert_eq!(value(&after, "lb_services"), 1.0);
    assert_eq!(after["lb_map_write_failures_total"], 0.0);
    // Two pods, each a backend of both ports (HTTP and UDP echo).
    let backends = value(&after, r#"lb_bpf_map_pressure{map_name="backends"}"#);
    assert_eq!(backends, 4.0 / f64::from(lb_common::MAX_BACKENDS - 1));
    let build = format!(r#"lb_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(after.get(&build), Some(&1.0), "the agent and the tests are one workspace version");
    assert!(agent.log_text().contains("serving /metrics"), "{}", agent.log_text());
}

#[test]
fn json_logs_are_one_object_a_line_with_level_and_message() {
    require_root();
    let (c, agent) = kubia(1, &["--log-format", "json"]);
    let log = agent.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "{log}");
    let started = lines.iter().find(|l| l["fields"]["message"] == "agent started").expect("agent started is logged");
    assert_eq!(started["fields"]["node"], c.node.ns.name(), "{started}");
    assert!(lines.iter().any(|l| l["fields"]["message"] == "datapath updated" && l["fields"]["map_writes"].is_u64()));
}

/// `get … -o json|yaml` give the rows the tables show, to script against.
#[test]
fn get_prints_json_and_yaml_that_agree_with_the_tables() {
    require_root();
    let (c, agent) = kubia(2, &[]);
    for _ in 0..3 {
        http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    }
    let json = |what: &str| -> serde_json::Value {
        let text = agent.get_filtered(what, &["-o", "json"]).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("get {what} -o json: {e}: {text}"))
    };

    let services = json("services");
    assert_eq!(services["kind"], "ServiceList");
    let kubia = &services["items"][0];
    assert_eq!((kubia["namespace"].as_str(), kubia["name"].as_str()), (Some("default"), Some("kubia")));
    assert_eq!(kubia["clusterIPs"], serde_json::json!(["10.96.0.10"]));
    let endpoints: Vec<&str> = kubia["endpoints"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
    let table = agent.get("services").unwrap();
    assert!(table.contains(&endpoints.join(",")), "{table}\n{kubia}");
    assert_eq!(endpoints.len(), 4, "two pods, two ports: {kubia}");
    assert_eq!(kubia["backendSelection"], "maglev");

    let counters = json("counters");
    let new_flows = counters["reasons"].as_array().unwrap().iter().find(|r| r["reason"] == "forward_new_flow").unwrap();
    assert_eq!(new_flows["packets"]["TC-POD"].as_u64(), Some(agent.counter("TC-POD", "forward_new_flow").unwrap()));
    assert_eq!(new_flows["packets"]["TC-POD"], 3);

    let conntrack = json("conntrack");
    let flows = conntrack["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 3, "{conntrack}");
    assert!(flows.iter().all(|f| f["service"] == "default/kubia:http" && f["client"].as_str().unwrap().starts_with("10.244.0.100:")));
    assert_eq!(conntrack["entries"], 6);
    // No SNAT for a pod's own traffic: the table's `-`, null here.
    assert!(flows.iter().all(|f| f["sourceAs"].is_null() && f["state"].is_string()), "{conntrack}");

    let yaml = agent.get_filtered("endpoints", &["-o", "yaml"]).unwrap();
    let endpoints: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
    assert_eq!(endpoints["items"].as_array().map(Vec::len), Some(4), "{yaml}");
    assert!(endpoints["items"].as_array().unwrap().iter().all(|e| e["ready"] == true));
}

/// A pod veth is attached when the kernel announces it: a pod whose
/// interfaces are created and configured (a few ms) and that sends at once
/// has its very first SYN translated, where a listing every 200 ms would
/// leave it untranslated most of the time (and the connection waiting a
/// second for the SYN's retransmission).
#[test]
fn a_pod_veth_created_and_used_at_once_is_translated() {
    require_root();
    let (c, mut agent) = kubia(1, &[]);
    for i in 0..5u8 {
        let name = format!("fresh{i}");
        let created = std::time::Instant::now();
        let pod = c.node.add_pod(&name, Ipv4Addr::new(10, 244, 0, 110 + i)).unwrap();
        let configured = created.elapsed();
        let asked = std::time::Instant::now();
        http_get(&pod.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
        let answered = asked.elapsed();
        eprintln!("{name}: veth created and configured in {configured:?}, answered {answered:?} later");
        assert!(answered < std::time::Duration::from_millis(900), "the first SYN was not translated: {answered:?}");
        agent.wait_for_log(&format!("attached ifname=\"{}\"", pod.host_veth), TIMEOUT).unwrap();
    }
    assert!(!agent.log_text().contains("no link notifications"), "{}", agent.log_text());
    // From the kernel's notification of each veth to its programs attached.
    let metrics = scrape(&c.node.ns);
    let attached = value(&metrics, "lb_interface_attach_duration_seconds_count");
    let mean = value(&metrics, "lb_interface_attach_duration_seconds_sum") / attached;
    eprintln!("{attached} veths attached {:.2} ms after their link notification on average", mean * 1e3);
    assert!(attached >= 5.0 && mean < 0.5, "{metrics:?}");
}

/// Packets and bytes per Service port: ten UDP exchanges on one flow are
/// twenty packets of `kubia`'s `echo` port (each request and each answer,
/// counted where TC translates it) and none of its `http` port.
#[test]
fn metrics_count_the_packets_and_bytes_of_each_service_port() {
    require_root();
    let (c, _agent) = kubia(1, &[]);
    let sample = |metric: &str, port: &str| {
        let frontend = if port == "echo" { "10.96.0.10:53/UDP" } else { "10.96.0.10:80/TCP" };
        format!(
            r#"lb_service_{metric}_total{{namespace="default",service="kubia",port="{port}",frontend="{frontend}"}}"#
        )
    };
    let before = scrape(&c.node.ns);
    assert_eq!(value(&before, &sample("packets", "echo")), 0.0, "{before:?}");
    for _ in 0..10 {
        lb_tests::client::udp_request_from(&c.client.ns, 40500, SocketAddrV4::new(VIP, 53), b"ping", TIMEOUT).unwrap();
    }
    let after = scrape(&c.node.ns);
    assert_eq!(value(&after, &sample("packets", "echo")), 20.0, "{after:?}");
    // Each request is 46 bytes with its Ethernet header; an answer at least 42.
    let bytes = value(&after, &sample("bytes", "echo"));
    assert!(bytes >= 10.0 * 46.0 + 10.0 * 42.0, "{bytes} bytes");
    assert_eq!(value(&after, &sample("packets", "http")), value(&before, &sample("packets", "http")));

    http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    let http = value(&scrape(&c.node.ns), &sample("packets", "http"));
    assert!(http >= 6.0, "a connection's handshake, request, answer and close: {http} packets");
}

/// A pod veth created, configured and used within milliseconds (one shell
/// of three `ip` commands, then a connect at once) has its very first SYN
/// translated: answered well before the SYN's retransmission a second later.
#[test]
fn a_pod_veth_used_milliseconds_after_it_appears_is_translated() {
    require_root();
    let (c, agent) = kubia(1, &[]);
    let mut pods = Vec::new();
    for i in 0..3u8 {
        let created = std::time::Instant::now();
        let pod = c.node.add_pod_at_once(&format!("quick{i}"), Ipv4Addr::new(10, 244, 0, 120 + i)).unwrap();
        let (used, answered) = pod
            .ns
            .run_in(|| {
                let used = created.elapsed();
                let asked = std::time::Instant::now();
                let answer = lb_tests::client::http_exchange(SocketAddrV4::new(VIP, 80).into(), "/", TIMEOUT);
                (used, answer.map(|_| asked.elapsed()))
            })
            .unwrap();
        let answered = answered.unwrap();
        eprintln!("quick{i}: first request sent {used:?} after the pod's creation began, answered {answered:?} later");
        assert!(answered < std::time::Duration::from_millis(900), "the first SYN was not translated: {answered:?}");
        pods.push(pod);
    }
    // Filters, which the kernel makes in a few ms (a TCX link took tens).
    let status: serde_json::Value = serde_json::from_str(&agent.status(&c.node, &["-o", "json"]).unwrap()).unwrap();
    for pod in &pods {
        let veth =
            status["agent"]["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == pod.host_veth.as_str());
        let hooks = veth.unwrap_or_else(|| panic!("{} is not attached: {status:#}", pod.host_veth))["hooks"]
            .as_array()
            .unwrap();
        assert!(hooks.iter().all(|h| h["attachedAs"] == "tc filter"), "{hooks:?}");
    }
}

/// A conntrack too small for its flows evicts the least recent ones; the
/// sweep's metrics say how many live and how many were evicted. (A
/// connection may lose its own entries to that and be reset, as on 6.1
/// with an LRU this small: only the entries created count.)
#[test]
fn metrics_report_the_conntrack_entries_a_full_conntrack_evicted() {
    require_root();
    let (c, agent) = kubia(1, &["--ct-max", "64", "--ct-sweep-interval", "1s"]);
    for _ in 0..50 {
        let _ = http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT);
    }
    let before = scrape(&c.node.ns);
    let created = before["lb_conntrack_created_total"] - before["lb_conntrack_removed_total"];
    assert!(created >= 80.0, "{created} entries created for 50 connections");
    // A sweep (every second) after the last connection sees them all:
    // every one beyond the 64 the map holds was evicted.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let metrics = loop {
        let metrics = scrape(&c.node.ns);
        if value(&metrics, "lb_conntrack_evicted") >= created - 64.0 {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sweep reported {} evictions:\n{metrics:?}\n{}",
            created - 64.0,
            agent.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // (Late packets of connections whose entries were evicted, a reset's
    // retransmits on 6.1, may create more entries after the first scrape.)
    assert!(metrics["lb_conntrack_entries"] <= 64.0, "{metrics:?}");
}

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const EXTERNAL_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);

/// A text field of `explain -o json`'s answer, "" when absent.
fn field<'a>(explanation: &'a serde_json::Value, name: &str) -> &'a str {
    explanation[name].as_str().unwrap_or("")
}

/// A pcap file (little-endian, Ethernet) holding `frame`.
fn pcap(frame: &[u8]) -> Vec<u8> {
    let len = frame.len() as u32;
    let words = [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65_535, 1, 0, 0, len, len];
    words.iter().flat_map(|w| w.to_le_bytes()).chain(frame.iter().copied()).collect()
}

/// The verdict, its reason and the conntrack lookup's result.
fn decided(explanation: &serde_json::Value) -> (&str, &str, &str) {
    (field(explanation, "verdict"), field(explanation, "reason"), field(explanation, "conntrack"))
}

/// `explain` for a connection's first packet names a backend; the real
/// connection from the same port is served by it. Explained again once
/// established, and for the backend's reply, it says what the datapath
/// then does; and explaining wrote nothing.
#[test]
fn explain_names_the_backend_a_new_connection_then_gets_and_the_way_back_of_its_replies() {
    require_root();
    let (c, agent) = kubia(3, &[]);
    let (client, vip) = (SocketAddrV4::new(c.client.ip, 40123), SocketAddrV4::new(VIP, 80));
    let ask = |on: &str, from: &str, to: &str, flags: &str| {
        agent.explain(&c.node, &["--from", from, "--to", to, "--on", on, "--flags", flags]).unwrap()
    };
    let (from, to) = (client.to_string(), vip.to_string());
    let conntrack_before = agent.get("conntrack").unwrap();
    let new_flows_before = agent.counter("TC-POD", "forward_new_flow").unwrap();

    let new = ask(&c.client.host_veth, &from, &to, "syn");
    assert_eq!(decided(&new), ("rewrite", "forward_new_flow", "miss"), "{new:#}");
    assert_eq!((field(&new, "hook"), field(&new, "service")), ("TC-POD", "default/kubia:http"), "{new:#}");
    let pod = field(&new, "backendPod").to_owned();
    let backend = c.backends.iter().find(|p| p.name == pod).unwrap_or_else(|| panic!("no backend pod: {new:#}"));
    assert_eq!(field(&new, "rewritten"), format!("TCP {client} -> {}:8080 [SYN]", backend.ip), "{new:#}");
    assert_eq!(field(&new, "checksums"), "valid", "{new:#}");
    assert_eq!(field(&new, "counter"), r#"lb_datapath_packets_total{hook="TC-POD",reason="forward_new_flow"}"#);
    // The same SYN from a capture (as `tcpdump -w` writes it) is decided alike.
    let frame = lb_ebpf::packet_builder::PacketBuilder::new(6, *client.ip(), client.port(), VIP, 80).build();
    let capture = std::env::temp_dir().join(format!("lb-explain-{}.pcap", std::process::id()));
    std::fs::write(&capture, pcap(&frame)).unwrap();
    let capture_arg = capture.to_str().unwrap();
    let captured = agent.explain(&c.node, &["--pcap", capture_arg, "--on", &c.client.host_veth]).unwrap();
    std::fs::remove_file(&capture).unwrap();
    assert_eq!((field(&captured, "packet"), field(&captured, "backendPod")), (field(&new, "packet"), pod.as_str()));
    // Two conntrack entries left out, and nothing written or counted.
    assert!(new["writesLeftOut"].as_u64().unwrap() >= 2, "{new:#}");
    assert_eq!(agent.get("conntrack").unwrap(), conntrack_before);
    assert_eq!(agent.counter("TC-POD", "forward_new_flow").unwrap(), new_flows_before);

    let mut stream = lb_tests::client::tcp_connect_from(&c.client.ns, client, vip, TIMEOUT).unwrap();
    let established = ask(&c.client.host_veth, &from, &to, "ack");
    assert_eq!(decided(&established), ("rewrite", "forward_established", "hit"), "{established:#}");
    assert_eq!(field(&established, "backendPod"), pod, "{established:#}");
    let reply = ask(&backend.host_veth, &format!("{}:8080", backend.ip), &from, "ack");
    assert_eq!(decided(&reply), ("rewrite", "reply_reverse_nat", "hit"), "{reply:#}");
    assert_eq!(field(&reply, "rewritten"), format!("TCP {vip} -> {client} [ACK]"), "{reply:#}");

    use std::io::{Read as _, Write as _};
    stream.write_all(b"GET / HTTP/1.1\r\nHost: kubia\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert_eq!(lb_tests::client::served_by(body), pod, "{answer}");
    assert_eq!(agent.counter("TC-POD", "forward_new_flow").unwrap(), new_flows_before + 1);
}

/// `explain` for a Service without endpoints says reject, for a client
/// outside a load balancer's source ranges drop, for an address of the
/// agent's own `--service-cidr` that no Service has drop (a setting it asks
/// the agent for); the real packets then meet exactly that, counted under
/// the reasons it named.
#[test]
fn explain_agrees_with_a_service_without_endpoints_and_a_source_range_drop() {
    require_root();
    let c = cluster(1);
    let external = c.node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    let empty = "apiVersion: v1\nkind: Service\nmetadata:\n  name: empty\nspec:\n  clusterIP: 10.100.0.20\n  ports:\n  - name: http\n    port: 80\n  selector:\n    app: nothing\n";
    let guarded = "apiVersion: v1\nkind: Service\nmetadata:\n  name: guarded\nspec:\n  type: LoadBalancer\n  clusterIP: 10.100.0.10\n  loadBalancerSourceRanges: [192.0.2.0/24]\n  ports:\n  - port: 80\n    targetPort: 8080\n  selector:\n    app: kubia\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.10\n";
    let pods = pods_manifest(&c.backends.iter().collect::<Vec<_>>(), |_| true);
    let manifests = [("empty.yaml", empty), ("guarded.yaml", guarded), ("pods.yaml", pods.as_str())];
    let args = ["--device", "uplink", "--pod-device", POD_DEVICE_PATTERN, "--service-cidr", "10.100.0.0/16"];
    let agent = AgentProcess::start_with(&c.node, &manifests, &args).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("203.0.113.10") && s.contains("10.100.0.20")).unwrap();

    let nowhere = SocketAddrV4::new(Ipv4Addr::new(10, 100, 0, 99), 80);
    let args = ["--from", "10.244.0.100:40100", "--to", &nowhere.to_string(), "--on", &c.client.host_veth];
    let unallocated = agent.explain(&c.node, &args).unwrap();
    assert_eq!(decided(&unallocated), ("drop", "drop_unallocated_service_ip", "miss"), "{unallocated:#}");
    assert!(unallocated["notes"].as_array().unwrap().is_empty(), "the agent's settings were assumed: {unallocated:#}");
    let before = agent.counter("TC-POD", "drop_unallocated_service_ip").unwrap();
    let unanswered = lb_tests::client::tcp_connect(&c.client.ns, nowhere, std::time::Duration::from_millis(300));
    assert_eq!(unanswered.unwrap().map_err(|(kind, _)| kind), Err(std::io::ErrorKind::TimedOut));
    assert!(agent.counter("TC-POD", "drop_unallocated_service_ip").unwrap() > before);

    let empty_vip = SocketAddrV4::new(Ipv4Addr::new(10, 100, 0, 20), 80).to_string();
    let args = ["--from", "10.244.0.100:40200", "--to", &empty_vip, "--on", &c.client.host_veth];
    let rejected = agent.explain(&c.node, &args).unwrap();
    assert_eq!(decided(&rejected), ("reject", "reject_no_backend", "miss"), "{rejected:#}");
    assert_eq!(field(&rejected, "service"), "default/empty:http", "{rejected:#}");
    let before = agent.counter("TC-POD", "reject_no_backend").unwrap();
    let refused =
        lb_tests::client::tcp_connect(&c.client.ns, SocketAddrV4::new(Ipv4Addr::new(10, 100, 0, 20), 80), TIMEOUT);
    assert_eq!(refused.unwrap().map_err(|(kind, _)| kind), Err(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(agent.counter("TC-POD", "reject_no_backend").unwrap(), before + 1);

    let lb = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
    let from = SocketAddrV4::new(EXTERNAL_CLIENT, 40300).to_string();
    let dropped = agent.explain(&c.node, &["--from", &from, "--to", &lb.to_string(), "--on", "uplink"]).unwrap();
    assert_eq!(decided(&dropped), ("drop", "drop_source_range", "miss"), "{dropped:#}");
    assert_eq!((field(&dropped, "hook"), field(&dropped, "service")), ("XDP-NODE", "default/guarded"), "{dropped:#}");
    let before = agent.counter("XDP-NODE", "drop_source_range").unwrap();
    let unanswered = lb_tests::client::tcp_connect(&external, lb, std::time::Duration::from_millis(500)).unwrap();
    assert_eq!(unanswered.map_err(|(kind, _)| kind), Err(std::io::ErrorKind::TimedOut));
    assert!(agent.counter("XDP-NODE", "drop_source_range").unwrap() > before);
}

/// `lb-agent status`: the kernel, the source and its last sync, the maps'
/// fill and how each interface is attached; an agent that does not answer
/// is one line naming its address.
#[test]
fn status_shows_the_source_the_last_sync_and_how_each_interface_is_attached() {
    require_root();
    let (c, agent) = kubia(2, &[]);
    let status: serde_json::Value = serde_json::from_str(&agent.status(&c.node, &["-o", "json"]).unwrap()).unwrap();
    let uname = std::process::Command::new("uname").arg("-r").output().unwrap().stdout;
    assert_eq!(status["kernel"].as_str().unwrap(), String::from_utf8_lossy(&uname).trim());
    let a = &status["agent"];
    assert_eq!(a["source"]["kind"], "manifests", "{status:#}");
    assert_eq!(
        (a["source"]["synced"].as_bool(), a["source"]["services"].as_u64()),
        (Some(true), Some(1)),
        "{status:#}"
    );
    assert!(a["lastSync"]["mapWrites"].as_u64().unwrap() > 0, "{status:#}");
    assert_eq!(a["settings"]["serviceCidrs"], serde_json::json!(["10.96.0.0/12"]), "{status:#}");
    let frontends = a["maps"].as_array().unwrap().iter().find(|m| m["map"] == "frontends").unwrap();
    assert_eq!(frontends["used"].as_u64(), Some(2), "kubia's two ports: {status:#}");
    let veth = a["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == c.client.host_veth.as_str());
    let veth = veth.unwrap_or_else(|| panic!("{} is not listed: {status:#}", c.client.host_veth));
    assert_eq!(veth["role"], "pod");
    let hooks: Vec<&str> = veth["hooks"].as_array().unwrap().iter().map(|h| h["hook"].as_str().unwrap()).collect();
    assert_eq!(hooks, ["tc ingress", "tc egress"]);
    for hook in veth["hooks"].as_array().unwrap() {
        assert!(["tcx", "tc filter"].contains(&hook["attachedAs"].as_str().unwrap()), "{hook}");
        assert!(hook["programId"].as_u64().unwrap() > 0, "{hook}");
    }
    let text = agent.status(&c.node, &[]).unwrap();
    assert!(text.contains(&c.client.host_veth) && text.contains("last sync:"), "{text}");

    let mut cmd = c.node.ns.command(lb_tests::workspace_binary("LB_AGENT_BIN", "lb-agent").unwrap());
    let out = cmd.args(["status", "--agent", "127.0.0.1:1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.trim().lines().count() == 1 && err.contains("127.0.0.1:1"), "{err}");
}

/// kube-proxy's network programming latency: an EndpointSlice written with
/// a change trigger time is observed once, from that time to the pass
/// that programmed it; a change triggered before the agent started is not.
#[test]
fn network_programming_latency_is_observed_once_per_endpoint_slice_change() {
    require_root();
    let c = cluster(0);
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  clusterIP: 10.96.0.30\n  ports:\n  - port: 5432\n";
    let slice = |addr: &str, trigger: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-1\n  labels:\n    kubernetes.io/service-name: db\n  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \"{trigger}\"\naddressType: IPv4\nendpoints:\n- addresses:\n  - {addr}\n  conditions:\n    ready: true\nports:\n- port: 5432\n"
        )
    };
    let old = slice("192.0.2.10", "2020-01-01T00:00:00Z");
    let manifests = [("db.yaml", service), ("slice.yaml", old.as_str())];
    let agent = AgentProcess::start_with(&c.node, &manifests, &["--pod-device", POD_DEVICE_PATTERN]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("192.0.2.10:5432")).unwrap();
    const COUNT: &str = "kubeproxy_network_programming_duration_seconds_count";
    assert_eq!(value(&scrape(&c.node.ns), COUNT), 0.0, "a change from before the agent started was observed");

    let now = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    agent.write_manifest("slice.yaml", &slice("192.0.2.11", &now)).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("192.0.2.11:5432")).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let metrics = loop {
        let metrics = scrape(&c.node.ns);
        if value(&metrics, COUNT) > 0.0 || std::time::Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(value(&metrics, COUNT), 1.0, "{metrics:?}");
    let latency = value(&metrics, "kubeproxy_network_programming_duration_seconds_sum");
    assert!(latency > 0.0 && latency < 5.0, "{latency} s from writing the slice to the maps");
    assert_eq!(
        value(&metrics, r#"kubeproxy_network_programming_duration_seconds_bucket{le="5.0"}"#),
        1.0,
        "{metrics:?}"
    );

    // A pass for another change (the Service's) observes the slice no more.
    agent.write_manifest("db.yaml", &service.replace("5432\n", "5432\n    name: pg\n")).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("pg:5432")).unwrap();
    assert_eq!(value(&scrape(&c.node.ns), COUNT), 1.0);
}

/// Objects the model refuses are named in `lb_object_errors` while they
/// are wrong, and leave it once mended.
#[test]
fn metrics_name_each_object_in_error_while_it_is_wrong() {
    require_root();
    let (c, agent) = kubia(1, &[]);
    const BAD: &str = r#"lb_object_errors{object="Service default/bad"}"#;
    // (The series, or its absence, with the model's count of objects in error.)
    let until = |errors: Option<f64>| {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let metrics = scrape(&c.node.ns);
            let model_errors = errors.unwrap_or(0.0);
            if metrics.get(BAD).copied() == errors && value(&metrics, "lb_model_errors") == model_errors {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{BAD} is not {errors:?}:\n{metrics:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 70000\n";
    agent.write_manifest("bad.yaml", bad).unwrap();
    until(Some(1.0));
    agent.write_manifest("bad.yaml", &bad.replace("70000", "80")).unwrap();
    until(None);
}
