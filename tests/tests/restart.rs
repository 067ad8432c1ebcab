//! An agent restarted on a node with addresses and thousands of Services
//! takes over what the last one programmed: its first pass writes only
//! what changed, so requests in flight never meet an emptied datapath.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{AgentProcess, pod_manifest},
    client::{http_get, served_by},
    kubia::{TIMEOUT, VIP, pods_manifest},
    netns::Netns,
    require_root,
    topology::{Node, POD_DEVICE_PATTERN},
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const EXTERNAL_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const NODE_PORT: u16 = 30123;
/// Services besides the NodePort one, each with a pod of its own.
const OTHER_SERVICES: u32 = 2000;

/// The kubia NodePort Service, then `OTHER_SERVICES` ClusterIP Services
/// (10.97.0.0/16) each selecting one pod (10.245.0.0/16) that exists only
/// in the manifests: their backends are never reached, only programmed.
fn manifests() -> (String, String) {
    let mut services = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia-nodeport\nspec:\n  type: NodePort\n  clusterIP: {VIP}\n  ports:\n  - port: 80\n    targetPort: 8080\n    nodePort: {NODE_PORT}\n  selector:\n    app: kubia\n"
    );
    let mut pods = Vec::new();
    for i in 0..OTHER_SERVICES {
        let (hi, lo) = ((i / 250) as u8, (i % 250) as u8 + 1);
        services.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\nspec:\n  clusterIP: 10.97.{hi}.{lo}\n  ports:\n  - port: 80\n    targetPort: 8080\n  selector:\n    app: svc-{i}\n"
        ));
        let pod = pod_manifest(&format!("pod-{i}"), Ipv4Addr::new(10, 245, hi, lo), true);
        pods.push(pod.replace("app: kubia", &format!("app: svc-{i}")));
    }
    (services, pods.join("---\n"))
}

/// Requests sent one after the other in a loop, and the ones that failed.
#[derive(Default)]
struct Requests {
    made: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Requests {
    /// Sends `GET /` to `addr` from `ns` until `done`.
    fn run(&self, ns: &Netns, addr: SocketAddrV4, done: &AtomicBool) {
        while !done.load(Ordering::Relaxed) {
            if let Err(err) = http_get(ns, addr, TIMEOUT) {
                self.failures.lock().unwrap().push(format!("{addr}: {err:#}"));
            }
            self.made.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until `more` requests beyond the ones made so far have been made.
    fn wait_for(&self, more: usize) {
        let target = self.made.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.made.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "requests stalled at {}", self.made.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The agent is SIGKILLed and started again three times on a node whose
/// device has an address, with 2 001 Services, while one loop sends HTTP
/// requests to the node port from an external client and another to the
/// cluster IP from a pod: no request fails, and each new agent's first
/// pass finds the maps as it wants them and writes nothing.
#[test]
fn restarting_with_2000_services_and_node_addresses_fails_no_request_and_writes_nothing() {
    require_root();
    let node = Node::new().unwrap();
    let mut backends = Vec::new();
    for i in 0..2u8 {
        let mut pod = node.add_pod(&format!("kubia-{i}"), Ipv4Addr::new(10, 244, 0, 2 + i)).unwrap();
        pod.serve(8080, 5353).unwrap();
        backends.push(pod);
    }
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100)).unwrap();
    let external = node.add_external_client("uplink", NODE_IP, EXTERNAL_CLIENT).unwrap();
    // The uplink completes checksums as a NIC without offload does; the
    // pods keep their offloads, so their replies leave them with only the
    // pseudo-header summed and are reverse-translated on TC.
    node.ns.send_complete_checksums("uplink").unwrap();
    let (services, other_pods) = manifests();
    let kubia_pods = pods_manifest(&backends.iter().collect::<Vec<_>>(), |_| true);
    let mut agent = AgentProcess::start_with(
        &node,
        &[("services.yaml", &services), ("kubia.yaml", &kubia_pods), ("pods.yaml", &other_pods)],
        &["--device", "uplink", "--pod-device", POD_DEVICE_PATTERN],
    )
    .unwrap();
    assert!(agent.first_sync_writes() > 4 * OTHER_SERVICES as usize, "a fresh agent programs everything");
    let node_port = SocketAddrV4::new(NODE_IP, NODE_PORT);
    let cluster_ip = SocketAddrV4::new(VIP, 80);
    assert!(served_by(&http_get(&external, node_port, TIMEOUT).unwrap()).starts_with("kubia-"));
    assert!(served_by(&http_get(&client.ns, cluster_ip, TIMEOUT).unwrap()).starts_with("kubia-"));

    let (from_outside, from_pod) = (Requests::default(), Requests::default());
    let done = AtomicBool::new(false);
    let mut writes = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| from_outside.run(&external, node_port, &done));
        s.spawn(|| from_pod.run(&client.ns, cluster_ip, &done));
        for _ in 0..3 {
            from_outside.wait_for(30);
            from_pod.wait_for(30);
            agent.kill().unwrap();
            // Without an agent the pinned programs keep answering.
            from_outside.wait_for(10);
            from_pod.wait_for(10);
            agent.restart(&node).unwrap();
            writes.push(agent.first_sync_writes());
        }
        from_outside.wait_for(30);
        from_pod.wait_for(30);
        done.store(true, Ordering::Relaxed);
    });
    let (outside, pod) = (from_outside.made.into_inner(), from_pod.made.into_inner());
    let (outside_failed, pod_failed) =
        (from_outside.failures.into_inner().unwrap(), from_pod.failures.into_inner().unwrap());
    eprintln!(
        "node port: {outside} requests, {} failed; cluster IP: {pod} requests, {} failed; first-pass map writes per restart: {writes:?}",
        outside_failed.len(),
        pod_failed.len()
    );
    assert!(outside >= 210 && pod >= 210, "too few requests: {outside} to the node port, {pod} to the cluster IP");
    // The counters say whether XDP dropped a failed request's packets (and
    // why) or they came late.
    assert!(
        outside_failed.is_empty(),
        "{} of {outside} node port requests failed: {outside_failed:?}\n{}",
        outside_failed.len(),
        agent.get("counters").unwrap_or_default()
    );
    assert!(pod_failed.is_empty(), "{} of {pod} cluster IP requests failed: {pod_failed:?}", pod_failed.len());
    assert_eq!(writes, [0, 0, 0], "a restarted agent rewrote maps that already held its state");
}
