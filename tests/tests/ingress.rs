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
    let (_, status, body) = curl_resolved(ns, &format!("{host}:80:{NODE_IP}"), url, &[]);
    (status, body)
}

/// `curl` from `ns` to `url` with `--resolve resolve` and `extra`: HTTP
/// version, status and body (or curl's error).
fn curl_resolved(ns: &Netns, resolve: &str, url: &str, extra: &[&str]) -> (String, String, String) {
    let out = ns
        .command("curl")
        .args(["-sS", "-m", "3", "-o", "-", "-w", "\n%{http_version} %{http_code}", "--resolve", resolve, url])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or((&text, ""));
    let (version, status) = last.split_once(' ').unwrap_or_default();
    let body = if out.status.success() { body.to_owned() } else { String::from_utf8_lossy(&out.stderr).into_owned() };
    (version.to_owned(), status.to_owned(), body)
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
        .args(["-s", "-m", "3", "-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Forwarded-Ssl: on"])
        .args(["--resolve", &resolve, "http://kubia.example.com/"])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    for header in [
        "x-forwarded-for: 10.244.0.100",
        "x-real-ip: 10.244.0.100",
        "x-forwarded-proto: http",
        "x-forwarded-host: kubia.example.com",
        "x-forwarded-port: 80",
    ] {
        assert!(body.lines().any(|l| l == header), "{header} missing in:\n{body}");
    }
    assert!(!body.contains("6.6.6.6") && !body.contains("x-forwarded-ssl"), "a client's claim passed:\n{body}");
    assert_eq!(served_by(&curl(ns, "paths.example.com", "http://paths.example.com/foo/x").1), "kubia-2");
    assert!(served_by(&curl(ns, "paths.example.com", "http://paths.example.com/kubia").1).starts_with("kubia-"));
    assert_eq!(served_by(&curl(ns, "foo.example.com", "http://foo.example.com/").1), "kubia-2");
    let (status, body) = curl(ns, "paths.example.com", "http://paths.example.com/other");
    assert_eq!((status.as_str(), body.trim()), ("404", "no Ingress rule for paths.example.com/other"));
    // HTTP/1.1 without a Host is refused, not routed by a default, and a
    // client taking the proxy for a forward proxy gets no tunnel.
    let resolve = format!("kubia.example.com:80:{NODE_IP}");
    let (_, status, _) = curl_resolved(ns, &resolve, "http://kubia.example.com/", &["-H", "Host:"]);
    assert_eq!(status, "400");
    let out = ns
        .command("curl")
        .args([
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "-p",
            "-x",
            &format!("http://{NODE_IP}:80"),
        ])
        .arg("http://kubia.example.com/")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "405", "CONNECT must not open a tunnel");

    // The proxy fronted by a Service of its own (selectorless, its
    // endpoint the node's address), as the seeds expose their ingress
    // controller: the datapath carries the request to the proxy.
    let fronted = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb-ingress}}\nspec:\n  clusterIP: 10.96.0.20\n  \
         ports: [{{name: http, port: 80}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: lb-ingress}}\n\
         subsets: [{{addresses: [{{ip: {NODE_IP}}}], ports: [{{name: http, port: 80}}]}}]\n"
    );
    agent.write_manifest("lb-ingress.yaml", &fronted).unwrap();
    let resolve = "kubia.example.com:80:10.96.0.20";
    let deadline = std::time::Instant::now() + TIMEOUT;
    let body = loop {
        let out = ns
            .command("curl")
            .args(["-s", "-m", "1", "--resolve", resolve, "http://kubia.example.com/"])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if served_by(&body).starts_with("kubia-") || std::time::Instant::now() > deadline {
            break body;
        }
    };
    assert!(served_by(&body).starts_with("kubia-"), "through the proxy's own Service: {body:?}");
    assert!(body.lines().any(|l| l == "x-forwarded-for: 10.244.0.100"), "the proxy saw the pod: {body}");

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

    // Every answer is counted by the Service port it was routed to and its
    // status code; those no rule routed have empty labels.
    let metrics = lb_tests::client::scrape_metrics(&c.node.ns, TIMEOUT).unwrap();
    let requests = |labels: &str| metrics.get(&format!("lb_ingress_requests_total{{{labels}}}")).copied();
    let unrouted = |code: u16| requests(&format!("namespace=\"\",service=\"\",port=\"\",code=\"{code}\""));
    assert_eq!((unrouted(404), unrouted(400), unrouted(405)), (Some(1.0), Some(1.0), Some(1.0)), "{metrics:#?}");
    let kubia = r#"namespace="default",service="kubia",port="80""#;
    let served = requests(&format!("{kubia},code=\"200\"")).unwrap_or_default();
    assert!(served >= 6.0, "{metrics:#?}");
    assert!(requests(r#"namespace="default",service="foo",port="80",code="503""#) >= Some(1.0), "{metrics:#?}");
    let timed = metrics.get(&format!("lb_ingress_request_duration_seconds_count{{{kubia}}}"));
    assert_eq!(timed, Some(&served), "kubia's only answers were 200s, each timed");
}

/// A self-signed certificate for `host` and its key, as PEM.
fn certificate(dir: &std::path::Path, host: &str) -> (String, String) {
    let (crt, key) = lb_tests::tls::self_signed(dir, host).unwrap();
    (std::fs::read_to_string(crt).unwrap(), std::fs::read_to_string(key).unwrap())
}

/// A `kubernetes.io/tls` Secret as `kubectl create secret tls` writes it
/// (`data`, base64).
fn tls_secret(name: &str, (crt, key): &(String, String)) -> String {
    use base64::Engine as _;
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(crt),
        b64(key)
    )
}

/// `curl` over HTTPS with `cacert` trusted: HTTP version, status and body
/// (or curl's error).
fn curl_tls(ns: &Netns, host: &str, cacert: &std::path::Path, extra: &[&str]) -> (String, String, String) {
    let cacert = cacert.to_str().unwrap();
    let url = format!("https://{host}/");
    curl_resolved(ns, &format!("{host}:443:{NODE_IP}"), &url, &[&["--cacert", cacert], extra].concat())
}

#[test]
fn https_picks_each_host_s_certificate_by_sni_and_speaks_http2() {
    require_root();
    let mut c = cluster(2);
    c.node.ns.exec(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]).unwrap();
    // kubia-1 also reads requests on 9000 and never answers them: 504.
    c.backends[1].serve_sink(9000).unwrap();
    let dir = TempDir::new("ing-tls");
    let (kubia_cert, foo_cert) = (certificate(&dir.0, "kubia.example.com"), certificate(&dir.0, "foo.example.com"));
    let secrets = [tls_secret("kubia-tls", &kubia_cert), tls_secret("foo-tls", &foo_cert)].join("---\n");
    // kubia and foo each with their own certificate; a third Ingress names a
    // Secret that does not exist, which must not disturb the others.
    let ingresses = format!(
        "{INGRESSES}  tls:\n  - {{hosts: [kubia.example.com], secretName: kubia-tls}}\n  - {{hosts: [foo.example.com], secretName: foo-tls}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: broken}}\nspec:\n  tls: [{{hosts: [bar.example.com], secretName: nosuch}}]\n  \
         rules: [{{host: bar.example.com, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: foo, port: {{number: 80}}}}}}}}]}}}}]\n"
    );
    let pods = [
        pod_manifest("kubia-0", Ipv4Addr::new(10, 244, 0, 2), true),
        pod_manifest("kubia-1", Ipv4Addr::new(10, 244, 0, 3), true).replace("app: kubia", "app: foo"),
    ]
    .join("---\n");
    // foo's second port goes where no pod listens (502), its third where
    // nothing answers (504).
    let services = SERVICES.replace(
        "selector: {app: foo}\n  ports: [{name: http, port: 80, targetPort: 8080}]",
        "selector: {app: foo}\n  ports: [{name: http, port: 80, targetPort: 8080}, {name: closed, port: 81, targetPort: 9}, \
         {name: silent, port: 82, targetPort: 9000}]",
    );
    assert_ne!(services, SERVICES);
    let ingresses = ingresses.replace(
        "      - {path: /foo, pathType: Prefix,",
        "      - {path: /closed, pathType: Prefix, backend: {service: {name: foo, port: {name: closed}}}}\n\
         \x20     - {path: /silent, pathType: Prefix, backend: {service: {name: foo, port: {name: silent}}}}\n\
         \x20     - {path: /foo, pathType: Prefix,",
    );
    let (http, https) = (format!("{NODE_IP}:80"), format!("{NODE_IP}:443"));
    let mut agent = AgentProcess::start_with(
        &c.node,
        &[
            ("services.yaml", &services),
            ("pods.yaml", &pods),
            ("ingresses.yaml", &ingresses),
            ("secrets.yaml", &secrets),
        ],
        &[
            "--pod-device",
            POD_DEVICE_PATTERN,
            "--ingress-bind",
            &http,
            "--ingress-tls-bind",
            &https,
            "--ingress-backend-timeout",
            "1s",
        ],
    )
    .unwrap();
    let ns = &c.client.ns;
    // Each host gets its own certificate: curl trusts only that one.
    let kubia_ca = dir.0.join("kubia.example.com.crt");
    let (version, status, body) = curl_tls(ns, "kubia.example.com", &kubia_ca, &[]);
    assert_eq!((version.as_str(), status.as_str(), served_by(&body).as_str()), ("2", "200", "kubia-0"), "{body}");
    assert!(body.lines().any(|l| l == "x-forwarded-proto: https"), "{body}");
    assert!(body.lines().any(|l| l == "x-forwarded-host: kubia.example.com"), "{body}");
    let foo_ca = dir.0.join("foo.example.com.crt");
    let (version, status, body) = curl_tls(ns, "foo.example.com", &foo_ca, &["--http1.1"]);
    assert_eq!((version.as_str(), status.as_str(), served_by(&body).as_str()), ("1.1", "200", "kubia-1"), "{body}");
    // An HTTP/2 client's cookie fields reach the HTTP/1.1 pod as one header.
    let (version, _, body) = curl_tls(ns, "kubia.example.com", &kubia_ca, &["-H", "Cookie: a=1", "-H", "Cookie: b=2"]);
    assert_eq!(version, "2");
    assert_eq!(body.lines().filter(|l| l.starts_with("cookie:")).collect::<Vec<_>>(), ["cookie: a=1; b=2"], "{body}");
    let (_, _, error) = curl_tls(ns, "foo.example.com", &kubia_ca, &[]);
    assert!(error.contains("certificate"), "foo.example.com must not be served kubia's certificate: {error}");
    // No certificate for bar.example.com (its Secret is missing): the
    // handshake fails, and the log names the Ingress and the Secret.
    let (_, status, _) = curl_tls(ns, "bar.example.com", &kubia_ca, &["-k"]);
    assert_eq!(status, "000", "bar.example.com has no certificate");
    agent
        .wait_for_log("Ingress default/broken: spec.tls[0].secretName: Secret default/nosuch does not exist", TIMEOUT)
        .unwrap();

    let status = agent.status(&c.node, &[]).unwrap();
    let line = "ingress:   class lb, http 192.0.2.1:80, https 192.0.2.1:443, 2 Ingresses served";
    assert!(status.contains(line), "{status}");
    let listed = agent.get_ingresses(&c.node, &[]).unwrap();
    let broken: Vec<&str> =
        listed.lines().find(|l| l.contains(" broken ")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
    assert_eq!(broken, ["default", "broken", "<none>", "bar.example.com", "192.0.2.1", "80,", "443"], "{listed}");

    // HTTP/2 without TLS, by prior knowledge (h2c).
    let resolve = format!("kubia.example.com:80:{NODE_IP}");
    let out = ns
        .command("curl")
        .args(["-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "--http2-prior-knowledge"])
        .args(["--resolve", &resolve, "http://kubia.example.com/"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");

    // A WebSocket-style upgrade is joined through to the pod, both ways.
    let client = lb_tests::workspace_binary("LB_TESTCLIENT_BIN", "lb-testclient").unwrap();
    let upgrade = |protocol: &str| {
        let out =
            c.client.ns.command(&client).args(["upgrade", &http, "kubia.example.com", protocol]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        upgrade("websocket"),
        "status: 101\nconnection: upgrade\nupgrade: websocket\necho: kubia-0: hello\necho: kubia-0: again\n"
    );
    // h2c's upgrade would take the connection past the proxy's routing:
    // the pod never sees it asked, and answers the request.
    assert_eq!(upgrade("h2c"), "status: 200\n");

    // The backend refuses: 502; what failed is in the log, not the answer.
    let (status, body) = curl(ns, "paths.example.com", "http://paths.example.com/closed");
    assert_eq!((status.as_str(), body.trim()), ("502", "the backend failed"));
    agent.wait_for_log("ingress backend failed", TIMEOUT).unwrap();
    let log = agent.log_text();
    assert!(log.lines().any(|l| l.contains("ingress backend failed") && l.ends_with("endpoint=10.244.0.3:9")), "{log}");
    // The backend takes longer than --ingress-backend-timeout: 504.
    let (status, body) = curl(ns, "paths.example.com", "http://paths.example.com/silent");
    assert_eq!((status.as_str(), body.trim()), ("504", "the backend did not answer within 1s"));
}

/// The README's set-up: the proxy fronted by a LoadBalancer Service of its
/// own whose endpoint is the node's address. An external client reaches
/// kubia's pods through the load-balancer IP and the node port, over HTTP
/// and HTTPS, and the proxy sees the client itself.
#[test]
fn an_external_client_reaches_the_proxy_through_its_own_load_balancer_service() {
    require_root();
    let c = cluster(2);
    let (uplink_ip, external_ip, lb_ip) = ("198.51.100.1", "198.51.100.100", "203.0.113.10");
    let external =
        c.node.add_external_client("uplink", uplink_ip.parse().unwrap(), external_ip.parse().unwrap()).unwrap();
    c.node.ns.send_complete_checksums("uplink").unwrap();
    let dir = TempDir::new("ing-lb");
    let secret = tls_secret("kubia-tls", &certificate(&dir.0, "kubia.example.com"));
    let ca = dir.0.join("kubia.example.com.crt");
    let ingresses = format!("{INGRESSES}  tls: [{{hosts: [kubia.example.com], secretName: kubia-tls}}]\n");
    // First without node names: this node's endpoint is local by its address.
    let fronted = |policy: &str, addresses: &str| {
        format!(
            "{SERVICES}---\napiVersion: v1\nkind: Service\nmetadata: {{name: lb-ingress}}\nspec:\n  type: LoadBalancer\n  \
             clusterIP: 10.96.0.20\n  externalTrafficPolicy: {policy}\n  \
             ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080}}\n  \
             - {{name: https, port: 443, targetPort: 8443, nodePort: 30443}}\n\
             status: {{loadBalancer: {{ingress: [{{ip: {lb_ip}}}]}}}}\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: lb-ingress}}\n\
             subsets: [{{addresses: [{addresses}], ports: [{{name: http, port: 8080}}, {{name: https, port: 8443}}]}}]\n"
        )
    };
    let pods = [
        pod_manifest("kubia-0", Ipv4Addr::new(10, 244, 0, 2), true),
        pod_manifest("kubia-1", Ipv4Addr::new(10, 244, 0, 3), true),
    ]
    .join("---\n");
    let agent = AgentProcess::start_with(
        &c.node,
        &[
            ("services.yaml", &fronted("Cluster", &format!("{{ip: {uplink_ip}}}"))),
            ("pods.yaml", &pods),
            ("ingresses.yaml", &ingresses),
            ("secrets.yaml", &secret),
        ],
        &[
            "--device",
            "uplink",
            "--pod-device",
            POD_DEVICE_PATTERN,
            "--ingress-bind",
            "0.0.0.0:8080",
            "--ingress-tls-bind",
            "0.0.0.0:8443",
        ],
    )
    .unwrap();
    let ca = ca.to_str().unwrap();
    let reach_kubia = || {
        for (address, http, https) in [(lb_ip, 80, 443), (uplink_ip, 30080, 30443)] {
            for (scheme, port) in [("http", http), ("https", https)] {
                let resolve = format!("kubia.example.com:{port}:{address}");
                let url = format!("{scheme}://kubia.example.com:{port}/");
                let (_, status, body) = curl_resolved(&external, &resolve, &url, &["--cacert", ca]);
                let counters = agent.get("counters").unwrap_or_default();
                assert_eq!(status, "200", "{url} via {address}: {body}\n{counters}");
                assert!(served_by(&body).starts_with("kubia-"), "{body}");
                let seen = format!("x-forwarded-for: {external_ip}");
                assert!(body.lines().any(|l| l == seen), "{url} via {address}: {body}");
                assert!(body.lines().any(|l| l == format!("x-forwarded-proto: {scheme}")), "{body}");
            }
        }
    };
    reach_kubia();
    // Then as the README has it: each node's address with its name, under
    // a Local policy. The other node's proxy (unreachable here) is never
    // chosen, as a Cluster policy would half the time.
    let node = c.node.ns.name();
    let addresses = format!("{{ip: {uplink_ip}, nodeName: {node}}}, {{ip: 10.0.0.99, nodeName: node-b}}");
    agent.write_manifest("services.yaml", &fronted("Local", &addresses)).unwrap();
    agent.wait_for_services(TIMEOUT, |s| s.contains("10.0.0.99:8080")).unwrap();
    for _ in 0..3 {
        reach_kubia();
    }
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
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "kubia", "namespace": "default"},
        "spec": {"ingressClassName": "lb", "rules": [{"host": "kubia.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "kubia", "port": {"number": 80}}}}
        ]}}]}
    });
    api.apply(ingress.clone()).unwrap();
    let dir = TempDir::new("ing");
    let kubeconfig = dir.0.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    // The proxy's own LoadBalancer Service, as the seeds expose an
    // ingress controller: its address is the Ingresses' address.
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb-ingress", "namespace": "kube-system"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                 "ports": [{"name": "http", "port": 80, "targetPort": 80, "nodePort": 30080, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
    }))
    .unwrap();
    let bind = format!("{NODE_IP}:80");
    let flags = ["--pod-device", POD_DEVICE_PATTERN, "--ingress-bind", &bind];
    let agent = AgentProcess::start_api(
        &c.node,
        &kubeconfig,
        &[&flags[..], &["--ingress-publish-service", "kube-system/lb-ingress"]].concat(),
    )
    .unwrap();
    let (status, body) = curl(&c.client.ns, "kubia.example.com", "http://kubia.example.com/");
    assert_eq!((status.as_str(), served_by(&body).as_str()), ("200", "kubia-0"), "{body}");
    // The published Service's address is written to the Ingress's status,
    // once, and `get ingresses` lists it as kubectl would.
    let address =
        || api.get("Ingress", "default", "kubia").and_then(|i| i.pointer("/status/loadBalancer/ingress").cloned());
    let until_written = || {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while address() != Some(json!([{"ip": "203.0.113.10"}])) {
            assert!(std::time::Instant::now() < deadline, "status not written: {:?}", address());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    until_written();
    let listed = agent.get_ingresses(&c.node, &[]).unwrap();
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAMESPACE", "NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS"], "{listed}");
    assert_eq!(rows[1], ["default", "kubia", "lb", "kubia.example.com", "203.0.113.10", "80"], "{listed}");

    // The Ingress deleted: 404.
    api.delete("Ingress", "default", "kubia").unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while curl(&c.client.ns, "kubia.example.com", "http://kubia.example.com/").0 != "404" {
        assert!(std::time::Instant::now() < deadline, "the deleted Ingress still routes");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Passes ran after the write (the status change itself, the deletion):
    // none wrote it again.
    let patches = || api.requests().iter().filter(|(method, _)| method == "PATCH").count();
    assert_eq!(patches(), 1, "the status is written once, not at every pass");
    assert_eq!(agent.get_ingresses(&c.node, &[]).unwrap().lines().count(), 1, "only the header is left");
    // Created again, without a status: it is written again, once.
    api.apply(ingress).unwrap();
    until_written();
    assert_eq!(patches(), 2);
}

#[test]
fn ingresses_edited_under_keep_alive_load_fail_no_request_and_keep_the_connection() {
    require_root();
    let c = cluster(3);
    c.node.ns.exec(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]).unwrap();
    let pods = [
        pod_manifest("kubia-0", Ipv4Addr::new(10, 244, 0, 2), true),
        pod_manifest("kubia-2", Ipv4Addr::new(10, 244, 0, 4), true).replace("app: kubia", "app: foo"),
    ]
    .join("---\n");
    let bind = format!("{NODE_IP}:80");
    let agent = AgentProcess::start_with(
        &c.node,
        &[("services.yaml", SERVICES), ("pods.yaml", &pods), ("ingresses.yaml", INGRESSES)],
        &["--pod-device", POD_DEVICE_PATTERN, "--ingress-bind", &bind],
    )
    .unwrap();
    assert_eq!(curl(&c.client.ns, "kubia.example.com", "http://kubia.example.com/").0, "200");
    // One curl, one keep-alive connection, 3000 requests in a row (into a
    // file: a pipe would fill while the edits run).
    let resolve = format!("kubia.example.com:80:{NODE_IP}");
    let dir = TempDir::new("ing-load");
    let output = dir.0.join("curl.out");
    let mut load = c
        .client
        .ns
        .command("curl")
        .args(["-s", "-m", "60", "-w", "status %{http_code} %{num_connects}\n", "--resolve", &resolve])
        .arg("http://kubia.example.com/[1-3000]")
        .stdout(std::fs::File::create(&output).unwrap())
        .spawn()
        .unwrap();
    // Meanwhile kubia.example.com is switched between kubia and foo, and
    // other rules come and go.
    let switched = INGRESSES
        .replacen("service: {name: kubia, port: {number: 80}}", "service: {name: foo, port: {number: 80}}", 1)
        .replace("host: paths.example.com", "host: other.example.com");
    let mut edits = 0;
    while load.try_wait().unwrap().is_none() {
        agent.write_manifest("ingresses.yaml", if edits % 2 == 0 { &switched } else { INGRESSES }).unwrap();
        edits += 1;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(load.wait().unwrap().success());
    let text = std::fs::read_to_string(&output).unwrap();
    let statuses: Vec<&str> = text.lines().filter(|l| l.starts_with("status ")).collect();
    assert_eq!(statuses.len(), 3000, "every request answered");
    assert!(statuses.iter().all(|s| s.starts_with("status 200 ")), "a request failed during the edits");
    let connects: u32 = statuses.iter().map(|s| s.rsplit(' ').next().unwrap().parse::<u32>().unwrap()).sum();
    assert_eq!(connects, 1, "the client's connection was never dropped");
    let served: std::collections::BTreeSet<&str> = text.lines().filter_map(|l| l.strip_prefix("You've hit ")).collect();
    assert_eq!(served, ["kubia-0", "kubia-2"].into(), "edits took effect on the open connection ({edits} edits)");
}
