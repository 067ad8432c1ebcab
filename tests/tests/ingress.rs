//! The agent's Ingress proxy (`--ingress-bind`) as the seeds use it: curl
//! from a pod with `--resolve` to the node's address, routed by host and
//! path to the Services' pods.

use std::net::Ipv4Addr;

use serde_json::json;

use lb_tests::{
    TempDir,
    agent::{AgentProcess, pod_manifest},
    apiserver::ApiServer,
    kubia::{TIMEOUT, cluster},
    netns::Netns,
    require_root,
    topology::POD_DEVICE_PATTERN,
};

/// The node's address the proxy listens on (on its loopback).
const NODE_IP: &str = "192.0.2.1";

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: kubia}
spec:
  clusterIP: 10.96.0.10
  selector: {app: kubia}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: foo}
spec:
  clusterIP: 10.96.0.11
  selector: {app: foo}
  ports: [{name: http, port: 80, targetPort: 8080}]
";

/// The seeds' Ingresses: kubia.example.com to kubia; /kubia and /foo on
/// one host to two Services; foo.example.com to foo.
const INGRESSES: &str = "\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: lb
  annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}
spec: {controller: lb.dev/ingress}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: kubia}
spec:
  rules:
  - host: kubia.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: kubia, port: {number: 80}}}}
  - host: paths.example.com
    http:
      paths:
      - {path: /kubia, pathType: Prefix, backend: {service: {name: kubia, port: {name: http}}}}
      - {path: /foo, pathType: Prefix, backend: {service: {name: foo, port: {number: 80}}}}
  - host: foo.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: foo, port: {number: 80}}}}
";

/// `curl` from `ns` to `url`, `host` resolved to the node: status and body.
fn curl(ns: &Netns, host: &str, url: &str) -> (String, String) {
    let resolve = format!("{host}:80:{NODE_IP}");
    let out = ns
        .command("curl")
        .args(["-s", "-m", "3", "-o", "-", "-w", "\n%{http_code}", "--resolve", &resolve, url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), body.to_owned())
}

fn served_by(body: &str) -> String {
    body.lines().next().and_then(|l| l.strip_prefix("You've hit ")).unwrap_or_default().to_owned()
}

#[test]
fn the_seeds_ingresses_route_by_host_and_path_to_ready_pods() {
    require_root();
    let c = cluster(3);
    c.node.ns.exec(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]).unwrap();
    // kubia-0 and kubia-1 are kubia's, kubia-2 is foo's.
    let pods = |kubia_1_ready: bool| {
        [
            pod_manifest("kubia-0", Ipv4Addr::new(10, 244, 0, 2), true),
            pod_manifest("kubia-1", Ipv4Addr::new(10, 244, 0, 3), kubia_1_ready),
            pod_manifest("kubia-2", Ipv4Addr::new(10, 244, 0, 4), true).replace("app: kubia", "app: foo"),
        ]
        .join("---\n")
    };
    let bind = format!("{NODE_IP}:80");
    let agent = AgentProcess::start_with(
        &c.node,
        &[("services.yaml", SERVICES), ("pods.yaml", &pods(true)), ("ingresses.yaml", INGRESSES)],
        &["--pod-device", POD_DEVICE_PATTERN, "--ingress-bind", &bind],
    )
    .unwrap();
    let ns = &c.client.ns;
    let mut kubia = std::collections::BTreeSet::new();
    // Interleaved with another backend's requests: each backend keeps its
    // own turn (one shared turn would give kubia the same pod every time).
    for _ in 0..6 {
        let (status, body) = curl(ns, "kubia.example.com", "http://kubia.example.com/");
        assert_eq!(status, "200", "{body}");
        kubia.insert(served_by(&body));
        assert_eq!(served_by(&curl(ns, "foo.example.com", "http://foo.example.com/").1), "kubia-2");
    }
    assert_eq!(kubia, ["kubia-0".to_owned(), "kubia-1".to_owned()].into(), "round robin over kubia's pods");
    // The backend sees the proxy's X-Forwarded-* headers naming the client,
    // whatever X-Forwarded-For the client sent.
    let resolve = format!("kubia.example.com:80:{NODE_IP}");
    let out = ns
        .command("curl")
        .args(["-s", "-m", "3", "-H", "X-Forwarded-For: 6.6.6.6", "--resolve", &resolve, "http://kubia.example.com/"])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    for header in ["x-forwarded-for: 10.244.0.100", "x-forwarded-proto: http", "x-forwarded-host: kubia.example.com"] {
        assert!(body.lines().any(|l| l == header), "{header} missing in:\n{body}");
    }
    assert_eq!(served_by(&curl(ns, "paths.example.com", "http://paths.example.com/foo/x").1), "kubia-2");
    assert!(served_by(&curl(ns, "paths.example.com", "http://paths.example.com/kubia").1).starts_with("kubia-"));
    assert_eq!(served_by(&curl(ns, "foo.example.com", "http://foo.example.com/").1), "kubia-2");
    let (status, body) = curl(ns, "paths.example.com", "http://paths.example.com/other");
    assert_eq!((status.as_str(), body.trim()), ("404", "no Ingress rule for paths.example.com/other"));

    // The Ingress edited live: kubia.example.com now goes to foo.
    agent
        .write_manifest(
            "ingresses.yaml",
            &INGRESSES.replacen(
                "service: {name: kubia, port: {number: 80}}",
                "service: {name: foo, port: {number: 80}}",
                1,
            ),
        )
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while served_by(&curl(ns, "kubia.example.com", "http://kubia.example.com/").1) != "kubia-2" {
        assert!(std::time::Instant::now() < deadline, "the edited Ingress did not take effect");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    agent.write_manifest("ingresses.yaml", INGRESSES).unwrap();
    while served_by(&curl(ns, "kubia.example.com", "http://kubia.example.com/").1) == "kubia-2" {
        assert!(std::time::Instant::now() < deadline + TIMEOUT, "the restored Ingress did not take effect");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    // kubia-1 turns unready: the proxy leaves it.
    agent.write_manifest("pods.yaml", &pods(false)).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while agent.get("services").unwrap().matches("10.244.0.3:8080").count() > 0 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for _ in 0..6 {
        assert_eq!(served_by(&curl(ns, "kubia.example.com", "http://kubia.example.com/").1), "kubia-0");
    }
    // foo without ready pods: 503 with the reason.
    agent
        .write_manifest(
            "pods.yaml",
            &pods(false).replace("kubia-2\n  labels:\n    app: foo", "kubia-2\n  labels:\n    app: gone"),
        )
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut last = curl(ns, "foo.example.com", "http://foo.example.com/");
    while last.0 != "503" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        last = curl(ns, "foo.example.com", "http://foo.example.com/");
    }
    assert_eq!((last.0.as_str(), last.1.trim()), ("503", "Service default/foo port 80 has no ready endpoint"));
}

#[test]
fn an_ingress_from_the_api_server_routes_to_its_service_s_endpoint_slice() {
    require_root();
    let c = cluster(1);
    c.node.ns.exec(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]).unwrap();
    let api = ApiServer::start_in(&c.node.ns).unwrap();
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": c.node.ns.name()}})).unwrap();
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubia", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .unwrap();
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubia-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubia"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.2"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    api.apply(json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "lb"}, "spec": {"controller": "lb.dev/ingress"}})).unwrap();
    api.apply(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "kubia", "namespace": "default"},
        "spec": {"ingressClassName": "lb", "rules": [{"host": "kubia.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "kubia", "port": {"number": 80}}}}
        ]}}]}
    }))
    .unwrap();
    let dir = TempDir::new("ing");
    let kubeconfig = dir.0.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let bind = format!("{NODE_IP}:80");
    let _agent =
        AgentProcess::start_api(&c.node, &kubeconfig, &["--pod-device", POD_DEVICE_PATTERN, "--ingress-bind", &bind])
            .unwrap();
    let (status, body) = curl(&c.client.ns, "kubia.example.com", "http://kubia.example.com/");
    assert_eq!((status.as_str(), served_by(&body).as_str()), ("200", "kubia-0"), "{body}");
    // The Ingress deleted: 404.
    api.delete("Ingress", "default", "kubia").unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while curl(&c.client.ns, "kubia.example.com", "http://kubia.example.com/").0 != "404" {
        assert!(std::time::Instant::now() < deadline, "the deleted Ingress still routes");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
