//! The Kubernetes API as the agent's source: Services and EndpointSlices
//! created, changed and deleted through an API server (the in-process
//! double of `lb_tests::apiserver`, and kmock's emulator) reach the
//! datapath, and the API server's troubles never disturb it.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    TempDir,
    agent::AgentProcess,
    apiserver::ApiServer,
    client::http_get,
    kmock::Kmock,
    kubia::{Cluster, TIMEOUT, VIP, cluster, endpoint_count, http_spread, names},
    require_root,
    topology::Pod,
};
use serde_json::{Value, json};

/// The seeds' kubia Service, as the API server holds it (its cluster IP
/// allocated, its selector kept: the EndpointSlice controller's input).
fn kubia_service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kubia", "namespace": "default"},
        "spec": {
            "clusterIP": VIP.to_string(),
            "clusterIPs": [VIP.to_string()],
            "selector": {"app": "kubia"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "echo", "port": 53, "targetPort": 5353, "protocol": "UDP"}
            ]
        }
    })
}

/// kubia's EndpointSlice as the EndpointSlice controller writes it: one
/// endpoint per pod, on `node`.
fn kubia_slice(pods: &[&Pod], node: &str) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|pod| {
            json!({
                "addresses": [pod.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": "default", "name": pod.name}
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubia-abcde",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubia", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "echo", "port": 5353, "protocol": "UDP"}
        ]
    })
}

fn node_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "zone-a"}}})
}

/// A node with three kubia pods, an API server double inside its namespace
/// holding the node, kubia's Service and its slice, and an agent watching it.
struct ApiCluster {
    agent: AgentProcess,
    api: ApiServer,
    c: Cluster,
    _dir: TempDir,
}

fn api_cluster() -> ApiCluster {
    api_cluster_with_node(true)
}

/// Like [`api_cluster`]; the API server holds this node's Node if `with_node`.
fn api_cluster_with_node(with_node: bool) -> ApiCluster {
    let c = cluster(3);
    let api = ApiServer::start_in(&c.node.ns).unwrap();
    let node = c.node.ns.name().to_owned();
    if with_node {
        api.apply(node_object(&node)).unwrap();
    }
    api.apply(kubia_service()).unwrap();
    let all: Vec<&Pod> = c.backends.iter().collect();
    api.apply(kubia_slice(&all, &node)).unwrap();
    let dir = TempDir::new("kube");
    let kubeconfig = dir.0.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let agent = AgentProcess::start_api(&c.node, &kubeconfig, &["--pod-device", "h-*"]).unwrap();
    ApiCluster { agent, api, c, _dir: dir }
}

#[test]
fn the_kubia_service_and_its_endpoint_slice_created_through_the_api_serve_every_pod() {
    require_root();
    let k = api_cluster();
    k.agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    let all: Vec<&Pod> = k.c.backends.iter().collect();
    assert_eq!(http_spread(&k.c.client, 30), names(&all));
    let pods_read: Vec<_> = k.api.requests().into_iter().filter(|(_, path)| path.contains("/pods")).collect();
    assert!(pods_read.is_empty(), "the agent read pods: {pods_read:?}");
}

#[test]
fn scaling_3_2_3_by_endpoint_slice_updates_takes_effect() {
    require_root();
    let k = api_cluster();
    let node = k.c.node.ns.name().to_owned();
    k.agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    let two: Vec<&Pod> = k.c.backends.iter().take(2).collect();
    k.api.apply(kubia_slice(&two, &node)).unwrap();
    k.agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 2).unwrap();
    assert_eq!(http_spread(&k.c.client, 30), names(&two));
    let all: Vec<&Pod> = k.c.backends.iter().collect();
    k.api.apply(kubia_slice(&all, &node)).unwrap();
    k.agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    assert_eq!(http_spread(&k.c.client, 30), names(&all));
}

#[test]
fn a_service_deleted_through_the_api_stops_answering() {
    require_root();
    let k = api_cluster();
    k.agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    k.api.delete("Service", "default", "kubia").unwrap();
    k.agent.wait_for_services(TIMEOUT, |s| !s.contains("kubia")).unwrap();
    let after = http_get(&k.c.client.ns, std::net::SocketAddrV4::new(VIP, 80), Duration::from_millis(500));
    assert!(after.is_err(), "a deleted Service answered: {after:?}");
}

/// Requests from the client pod in a loop until `stop`, counting failures.
fn under_traffic<T>(client: &Pod, during: impl FnOnce() -> T) -> (T, usize, usize) {
    let (stop, sent, failed) = (AtomicBool::new(false), AtomicUsize::new(0), AtomicUsize::new(0));
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if http_get(&client.ns, std::net::SocketAddrV4::new(VIP, 80), TIMEOUT).is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
        let result = during();
        stop.store(true, Ordering::Relaxed);
        result
    });
    (result, sent.into_inner(), failed.into_inner())
}

/// The API server goes away and comes back, and its watches are expired
/// (410 Gone) so the agent must list everything again: the datapath keeps
/// forwarding meanwhile, and the relist writes nothing.
#[test]
fn the_api_server_killed_and_restarted_under_traffic_fails_no_request() {
    require_root();
    let k = api_cluster();
    k.agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    let updates_before = k.agent.log_text().matches("datapath updated").count();
    // A Service of another proxy, which the agent's selector never shows
    // it, only moves the resourceVersion on: after compact() the agent's is
    // too old, and the server answers its watch with 410 Gone.
    let mut foreign = kubia_service();
    foreign["metadata"] = json!({"name": "foreign", "namespace": "default", "labels": {"service.kubernetes.io/service-proxy-name": "other"}});
    let ((), sent, failed) = under_traffic(&k.c.client, || {
        k.api.stop();
        std::thread::sleep(Duration::from_secs(2));
        k.api.apply(foreign).unwrap();
        k.api.compact();
        k.api.restart().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while k.api.watch_count() < 3 {
            assert!(Instant::now() < deadline, "the agent did not watch again:\n{}", k.agent.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(sent > 10, "only {sent} requests");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed:\n{}", k.agent.log_text());
    assert_eq!(k.agent.log_text().matches("datapath updated").count(), updates_before, "the relist wrote the maps");
    assert!(
        k.agent.log_text().contains("watching the API server again"),
        "the recovery went unreported:\n{}",
        k.agent.log_text()
    );

    // A Service deleted while nobody watched is gone after the relist.
    k.api.stop();
    k.api.delete("Service", "default", "kubia").unwrap();
    k.api.compact();
    k.api.restart().unwrap();
    k.agent.wait_for_services(TIMEOUT * 10, |s| !s.contains("kubia")).unwrap();
}

/// An agent started while the API server is down keeps the datapath as the
/// last agent left it, and programs nothing until the first full list.
#[test]
fn an_agent_started_while_the_api_server_is_down_leaves_the_datapath_forwarding() {
    require_root();
    let mut k = api_cluster();
    k.agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    k.agent.kill().unwrap();
    k.api.stop();
    let all: Vec<&Pod> = k.c.backends.iter().collect();
    let (restarted, sent, failed) = under_traffic(&k.c.client, || {
        let started = k.agent.restart_until(&k.c.node, "agent started");
        std::thread::sleep(Duration::from_secs(1));
        started
    });
    restarted.unwrap();
    assert_eq!(failed, 0, "{failed} of {sent} requests failed:\n{}", k.agent.log_text());
    assert!(!k.agent.log_text().contains("first sync"), "planned without the API server:\n{}", k.agent.log_text());
    k.api.restart().unwrap();
    k.agent.wait_for_log("first sync", Duration::from_secs(20)).unwrap();
    assert!(k.agent.log_text().contains("map_writes=0"), "{}", k.agent.log_text());
    assert_eq!(http_spread(&k.c.client, 30), names(&all));
}

/// The same kubia, created by plain HTTP in an emulator written by others
/// (kmock), reaches the datapath: the agent speaks the protocol, not our
/// double's reading of it.
#[test]
fn kubia_created_in_kmocks_emulator_serves_every_pod() {
    require_root();
    let c = cluster(3);
    let kmock = Kmock::start_in(&c.node.ns).unwrap();
    let node = c.node.ns.name().to_owned();
    kmock.create(&node_object(&node)).unwrap();
    kmock.create(&kubia_service()).unwrap();
    let all: Vec<&Pod> = c.backends.iter().collect();
    kmock.create(&kubia_slice(&all, &node)).unwrap();
    let dir = TempDir::new("kube");
    let kubeconfig = dir.0.join("kubeconfig");
    kmock.write_kubeconfig(&kubeconfig).unwrap();
    let agent = AgentProcess::start_api(&c.node, &kubeconfig, &["--pod-device", "h-*"]).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    assert_eq!(http_spread(&c.client, 30), names(&all));
    let two: Vec<&Pod> = c.backends.iter().take(2).collect();
    kmock.replace(&kubia_slice(&two, &node)).unwrap();
    agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 2).unwrap();
    assert_eq!(http_spread(&c.client, 30), names(&two));
}

/// kubia's slice with `trafficDistribution: PreferSameNode` hints, as the
/// EndpointSlice controller writes them: each endpoint hinted for its own
/// node. `here` are on this node, the others (as far as the API says) on
/// node-b.
fn hinted_slice(here: &[&Pod], elsewhere: &[&Pod], node: &str) -> Value {
    let mut slice = kubia_slice(&[], node);
    let endpoint = |pod: &Pod, on: &str| {
        json!({
            "addresses": [pod.ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": on,
            "hints": {"forNodes": [{"name": on}]}
        })
    };
    let endpoints: Vec<Value> =
        here.iter().map(|p| endpoint(p, node)).chain(elsewhere.iter().map(|p| endpoint(p, "node-b"))).collect();
    slice["endpoints"] = Value::Array(endpoints);
    slice
}

/// Polls until requests from the client reach exactly `want`.
fn wait_for_spread(k: &ApiCluster, want: &[&Pod]) {
    let deadline = Instant::now() + TIMEOUT * 5;
    loop {
        let seen = http_spread(&k.c.client, 20);
        if seen == names(want) {
            return;
        }
        assert!(Instant::now() < deadline, "requests reached {seen:?}, not {:?}", names(want));
    }
}

#[test]
fn prefer_same_node_keeps_traffic_on_the_node_while_it_has_an_endpoint() {
    require_root();
    let k = api_cluster();
    let node = k.c.node.ns.name().to_owned();
    let mut service = kubia_service();
    service["spec"]["trafficDistribution"] = json!("PreferSameNode");
    k.api.apply(service).unwrap();
    let (local, others) = (&k.c.backends[0], [&k.c.backends[1], &k.c.backends[2]]);
    k.api.apply(hinted_slice(&[local], &others, &node)).unwrap();
    wait_for_spread(&k, &[local]);
    // No endpoint hinted for this node any more: all of them, as kube-proxy does.
    k.api.apply(hinted_slice(&[], &others, &node)).unwrap();
    wait_for_spread(&k, &others);
}

/// The datapath drops unallocated addresses of `--service-cidr` only: a
/// cluster whose ServiceCIDRs differ is told about.
#[test]
fn a_cluster_service_cidr_other_than_the_agents_is_reported() {
    require_root();
    let mut k = api_cluster();
    let cidr = |cidrs: &[&str]| json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"}, "spec": {"cidrs": cidrs}});
    k.api.apply(cidr(&["10.96.0.0/12"])).unwrap();
    k.api.apply(cidr(&["172.20.0.0/16"])).unwrap();
    k.agent.wait_for_log("is not one of the cluster's ServiceCIDRs", TIMEOUT * 5).unwrap();
    assert_eq!(k.agent.log_text().matches("is not one of the cluster's ServiceCIDRs").count(), 1);
}

/// A wrong --node-name (no such Node) still serves, and is reported once.
#[test]
fn a_node_name_the_api_server_does_not_know_is_reported() {
    require_root();
    let k = api_cluster_with_node(false);
    k.agent.wait_for_services(TIMEOUT, |s| endpoint_count(s) == 3).unwrap();
    let all: Vec<&Pod> = k.c.backends.iter().collect();
    assert_eq!(http_spread(&k.c.client, 30), names(&all));
    assert_eq!(k.agent.log_text().matches("has no Node of this name").count(), 1, "{}", k.agent.log_text());
}
