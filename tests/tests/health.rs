//! The agent's own health endpoints, kube-proxy's `/healthz` and `/livez`
//! on `--health-bind-address`: 200 once the maps match the source, 503
//! before the API server is listed and while the Node is being deleted.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::AgentProcess, apiserver::ApiServer, client::http_request_path, kubia::TIMEOUT, netns::Netns, require_root,
    topology::Node,
};
use serde_json::{Value, json};

const HEALTH: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10256);

/// `GET PATH` on the agent's health port in `ns`: the status and the body as JSON.
fn ask(ns: &Netns, path: &str) -> (u16, Value) {
    let (status, body) = http_request_path(ns, HEALTH, path, TIMEOUT).unwrap();
    let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
    (status, body)
}

/// Asks `path` until it answers `status`; the last body.
fn wait_for(ns: &Netns, path: &str, status: u16, agent: &AgentProcess) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = ask(ns, path);
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} answers {got} {body}, not {status}:\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A timestamp such as `2026-01-02T03:04:05.678Z`.
fn is_rfc3339(value: &Value) -> bool {
    value.as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T')
}

#[test]
fn livez_and_healthz_answer_200_once_the_maps_match_the_manifests() {
    require_root();
    let node = Node::new().unwrap();
    let agent = AgentProcess::start(&node, &[]).unwrap();
    let (status, body) = ask(&node.ns, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(is_rfc3339(&body["lastUpdated"]) && is_rfc3339(&body["currentTime"]), "{body}");
    assert_eq!(body["nodeEligible"], json!(true));
    let (status, body) = ask(&node.ns, "/livez");
    assert_eq!(status, 200, "{body}");
    assert!(body.get("nodeEligible").is_none() && is_rfc3339(&body["lastUpdated"]), "{body}");
    let (status, _) = http_request_path(&node.ns, HEALTH, "/", TIMEOUT).unwrap();
    assert_eq!(status, 404);
    assert!(agent.log_text().contains("serving /healthz and /livez"), "{}", agent.log_text());
}

/// A node of its own with an API server double in it that holds the Node.
struct ApiNode {
    node: Node,
    api: ApiServer,
    kubeconfig: PathBuf,
}

impl ApiNode {
    fn new() -> Self {
        let node = Node::new().unwrap();
        let api = ApiServer::start_in(&node.ns).unwrap();
        api.apply(node_object(node.ns.name(), json!({}))).unwrap();
        let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", node.ns.name()));
        api.write_kubeconfig(&kubeconfig).unwrap();
        ApiNode { node, api, kubeconfig }
    }
}

impl Drop for ApiNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn node_object(name: &str, extra_metadata: Value) -> Value {
    let mut node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    node["metadata"].as_object_mut().unwrap().extend(extra_metadata.as_object().unwrap().clone());
    node
}

#[test]
fn healthz_answers_503_until_the_api_server_is_listed() {
    require_root();
    let k = ApiNode::new();
    k.api.stop();
    let mut agent =
        AgentProcess::start_api_until(&k.node, &k.kubeconfig, &["--pod-device", "h-*"], "agent started").unwrap();
    let (status, body) = ask(&k.node.ns, "/healthz");
    assert_eq!((status, &body["lastUpdated"], &body["nodeEligible"]), (503, &Value::Null, &json!(true)), "{body}");
    // Alive all the same: a restart would not list any sooner.
    assert_eq!(ask(&k.node.ns, "/livez").0, 200);
    assert!(!agent.log_text().contains("first sync"), "{}", agent.log_text());

    k.api.restart().unwrap();
    agent.wait_for_log("first sync", Duration::from_secs(20)).unwrap();
    let body = wait_for(&k.node.ns, "/healthz", 200, &agent);
    assert!(is_rfc3339(&body["lastUpdated"]), "{body}");
}

/// kube-proxy's node eligibility: a Node the cluster autoscaler is about to
/// remove (its taint) or that is being deleted fails /healthz, so load
/// balancers drain it first; /livez does not care.
#[test]
fn healthz_answers_503_while_the_node_is_to_be_deleted() {
    require_root();
    let k = ApiNode::new();
    let agent = AgentProcess::start_api(&k.node, &k.kubeconfig, &["--pod-device", "h-*"]).unwrap();
    let name = k.node.ns.name();
    let ns = &k.node.ns;
    assert_eq!(ask(ns, "/healthz").0, 200);

    let taint = json!({"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"});
    let mut tainted = node_object(name, json!({}));
    tainted["spec"] = json!({"taints": [{"key": "other", "effect": "NoSchedule"}, taint]});
    k.api.apply(tainted).unwrap();
    let body = wait_for(ns, "/healthz", 503, &agent);
    assert_eq!(body["nodeEligible"], json!(false), "{body}");
    assert_eq!(ask(ns, "/livez").0, 200);

    k.api.apply(node_object(name, json!({}))).unwrap();
    let body = wait_for(ns, "/healthz", 200, &agent);
    assert_eq!(body["nodeEligible"], json!(true), "{body}");

    let deleting = json!({"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["example.com/hold"]});
    k.api.apply(node_object(name, deleting)).unwrap();
    let body = wait_for(ns, "/healthz", 503, &agent);
    assert_eq!(body["nodeEligible"], json!(false), "{body}");
}

/// Health is not worth the datapath: a taken address costs one error line.
#[test]
fn a_taken_health_address_is_logged_and_the_agent_runs_on() {
    require_root();
    let node = Node::new().unwrap();
    let squatter = node.ns.run_in(|| std::net::TcpListener::bind("0.0.0.0:10256")).unwrap().unwrap();
    let agent = AgentProcess::start(&node, &[]).unwrap();
    let log = agent.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("cannot serve /healthz and /livez on 0.0.0.0:10256"), "{log}");
    drop(squatter);
}

#[test]
fn an_empty_health_bind_address_serves_nothing_and_another_serves_there() {
    require_root();
    let node = Node::new().unwrap();
    let agent = AgentProcess::start_with(&node, &[], &["--pod-device", "h-*", "--health-bind-address", ""]).unwrap();
    assert!(http_request_path(&node.ns, HEALTH, "/livez", TIMEOUT).is_err(), "{}", agent.log_text());
    assert!(!agent.log_text().contains("/healthz"), "{}", agent.log_text());
    drop(agent);

    let elsewhere = "127.0.0.2:10257";
    let _agent =
        AgentProcess::start_with(&node, &[], &["--pod-device", "h-*", "--health-bind-address", elsewhere]).unwrap();
    let (status, _) =
        http_request_path(&node.ns, elsewhere.parse::<std::net::SocketAddr>().unwrap(), "/livez", TIMEOUT).unwrap();
    assert_eq!(status, 200);
}
