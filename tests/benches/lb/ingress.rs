//! Ingress: the agent's proxy (`--ingress-bind`, `--ingress-tls-bind`)
//! against nginx (Debian's) configured for the same route, both in front of
//! the same two backend pods, loaded by wrk from a client pod over
//! keep-alive connections, HTTP and HTTPS. Requests per second and latency
//! (p50, p99, as wrk reports them).

use std::{net::Ipv4Addr, path::Path, time::Duration};

use lb_tests::{
    TempDir,
    agent::{AgentProcess, pod_manifest},
    netns::{ChildGuard, Netns},
    topology::{Node, POD_DEVICE_PATTERN, Pod},
};
use serde_json::json;

use crate::{Section, chart::BarChart, median_spread};

const DURATION: Duration = Duration::from_secs(3);
const CONNECTIONS: usize = 32;
const RUNS: usize = 3;
const AGENT_IP: &str = "192.0.2.1";
const NGINX_IP: &str = "192.0.2.2";
const HOST: &str = "kubia.example.com";
const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3)];

/// What one wrk run measured.
struct Run {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// Non-2xx answers, connection errors and timeouts.
    failed: u64,
}

/// nginx as one process (`master_process off`: no workers to outlive it),
/// in the foreground, logging into `dir`.
fn nginx(ns: &Netns, dir: &Path, name: &str, http: &str) -> anyhow::Result<ChildGuard> {
    let conf = dir.join(format!("{name}.conf"));
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/{name}-body;\n  proxy_temp_path {d}/{name}-proxy;\n\
             {http}\n}}\n"
        ),
    )?;
    let guard =
        ns.spawn(ns.command("nginx").arg("-c").arg(&conf).arg("-e").arg(dir.join(format!("{name}-error.log"))))?;
    Ok(guard)
}

/// A backend pod: nginx answering every request itself, keep-alive.
fn backend(dir: &Path, pod: &Pod) -> anyhow::Result<ChildGuard> {
    let http = format!(
        "  server {{\n    listen {}:8080;\n    keepalive_requests 1000000;\n    location / {{ return 200 \"You've hit {}\\n\"; }}\n  }}",
        pod.ip, pod.name
    );
    nginx(&pod.ns, dir, &pod.name, &http)
}

/// The peer: nginx proxying the route as ingress-nginx configures it
/// (HTTP/1.1 keep-alive upstream, X-Forwarded-*), HTTP and HTTPS.
fn nginx_proxy(ns: &Netns, dir: &Path, crt: &Path, key: &Path) -> anyhow::Result<ChildGuard> {
    let servers: String = BACKENDS.iter().map(|ip| format!("server {ip}:8080; ")).collect();
    let (crt, key) = (crt.display(), key.display());
    let http = format!(
        "  upstream kubia {{ {servers}keepalive 64; }}\n\
         server {{\n    listen {NGINX_IP}:80;\n    listen {NGINX_IP}:443 ssl http2;\n    server_name {HOST};\n\
         ssl_certificate {crt};\n    ssl_certificate_key {key};\n    keepalive_requests 1000000;\n\
         location / {{\n      proxy_pass http://kubia;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
         proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $remote_addr;\n\
         proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-Host $host;\n    }}\n  }}"
    );
    nginx(ns, dir, "proxy", &http)
}

/// wrk from `ns` against `url` with `Host: kubia.example.com`.
fn wrk(ns: &Netns, url: &str) -> anyhow::Result<Run> {
    // With the namespace's /etc/hosts: wrk sends the URL's host as SNI.
    let out = ns
        .command_with_etc("wrk")
        .args(["-t", "1", "-c", &CONNECTIONS.to_string(), "-d", &format!("{}s", DURATION.as_secs()), "--latency"])
        .args(["-H", &format!("Host: {HOST}"), url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "wrk {url}: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
    let per_second: f64 =
        field("Requests/sec:").ok_or_else(|| anyhow::anyhow!("wrk printed no rate: {text}"))?.parse()?;
    let latency = |p: &str| -> anyhow::Result<Duration> {
        let value = field(p).ok_or_else(|| anyhow::anyhow!("wrk printed no {p} latency: {text}"))?;
        parse_wrk_duration(&value)
    };
    // "Non-2xx or 3xx responses: N" and "Socket errors: connect A, read B, write C, timeout D".
    let non_2xx: u64 = field("Non-2xx or 3xx responses:").map_or(Ok(0), |n| n.parse())?;
    let socket_errors: u64 = field("Socket errors:")
        .map(|e| e.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Ok(Run { per_second, p50: latency("50%")?, p99: latency("99%")?, failed: non_2xx + socket_errors })
}

/// wrk's `123.45us`, `1.23ms`, `1.50s`.
fn parse_wrk_duration(text: &str) -> anyhow::Result<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        other => anyhow::bail!("wrk latency unit {other:?}"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// The agent and nginx on one node, the backends and the client in pods.
struct Rig {
    _agent: AgentProcess,
    _servers: Vec<ChildGuard>,
    _backends: Vec<Pod>,
    _dir: TempDir,
    client: Pod,
    _node: Node,
}

fn rig() -> anyhow::Result<Rig> {
    let node = Node::new()?;
    let dir = TempDir::new("ingress-bench");
    let backends: Vec<Pod> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, ip)| node.add_pod(&format!("kubia-{i}"), *ip))
        .collect::<anyhow::Result<_>>()?;
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100))?;
    client.ns.set_hosts(&format!("127.0.0.1 localhost\n{AGENT_IP} {HOST}\n"))?;
    for ip in [AGENT_IP, NGINX_IP] {
        node.ns.exec(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
    }
    let (crt, key) = lb_tests::tls::self_signed(&dir.0, HOST)?;
    let mut servers = backends.iter().map(|pod| backend(&dir.0, pod)).collect::<anyhow::Result<Vec<_>>>()?;
    servers.push(nginx_proxy(&node.ns, &dir.0, &crt, &key)?);
    let pem = |file: &Path| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(file)?;
        Ok(text.lines().map(|l| format!("    {l}\n")).collect())
    };
    let manifests = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: kubia}}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {{app: kubia}}\n  \
         ports: [{{port: 80, targetPort: 8080}}]\n---\n{}---\n{}---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: kubia-tls}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n\
         apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: kubia, annotations: {{kubernetes.io/ingress.class: lb}}}}\nspec:\n  \
         tls: [{{hosts: [{HOST}], secretName: kubia-tls}}]\n  rules:\n  - host: {HOST}\n    http:\n      paths:\n      \
         - {{path: /, pathType: Prefix, backend: {{service: {{name: kubia, port: {{number: 80}}}}}}}}\n",
        pod_manifest("kubia-0", BACKENDS[0], true),
        pod_manifest("kubia-1", BACKENDS[1], true),
        pem(&crt)?,
        pem(&key)?,
    );
    let (http, https) = (format!("{AGENT_IP}:80"), format!("{AGENT_IP}:443"));
    let agent = AgentProcess::start_with(
        &node,
        &[("kubia.yaml", &manifests)],
        &["--pod-device", POD_DEVICE_PATTERN, "--ingress-bind", &http, "--ingress-tls-bind", &https],
    )?;
    Ok(Rig { _agent: agent, _servers: servers, _backends: backends, _dir: dir, client, _node: node })
}

pub fn run() -> anyhow::Result<Section> {
    let rig = rig()?;
    // The agent picks the certificate by SNI; nginx has only the one.
    let targets: Vec<(String, String)> = ["http", "https"]
        .iter()
        .flat_map(|scheme| {
            [("lb-agent", HOST), ("nginx", NGINX_IP)]
                .map(|(name, ip)| (format!("{name} {scheme}"), format!("{scheme}://{ip}/")))
        })
        .collect();
    // Warm-up, and a check that every proxy answers every request.
    for (name, url) in &targets {
        let run = wrk(&rig.client.ns, url)?;
        anyhow::ensure!(
            run.failed == 0 && run.per_second > 0.0,
            "{name} failed {} requests of its warm-up",
            run.failed
        );
    }
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 1..=RUNS {
        for ((name, url), runs) in targets.iter().zip(&mut runs) {
            let run = wrk(&rig.client.ns, url)?;
            eprintln!("    round {round}/{RUNS}: {name} {:.0} requests/s, p99 {:?}", run.per_second, run.p99);
            runs.push(run);
        }
    }
    let mut markdown = String::from("| proxy | requests/s | p50 | p99 | failed |\n|---|---|---|---|---|\n");
    let mut rows = Vec::new();
    let mut series: Vec<(String, Vec<f64>)> = vec![("lb-agent".into(), Vec::new()), ("nginx".into(), Vec::new())];
    for (i, ((name, _), runs)) in targets.iter().zip(runs).enumerate() {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (per_second, spread) = median_spread(&runs.iter().map(|r| r.per_second).collect::<Vec<_>>());
        let (p50, _) = median_spread(&runs.iter().map(|r| us(r.p50)).collect::<Vec<_>>());
        let (p99, _) = median_spread(&runs.iter().map(|r| us(r.p99)).collect::<Vec<_>>());
        let failed: u64 = runs.iter().map(|r| r.failed).sum();
        markdown
            .push_str(&format!("| {name} | {per_second:.0} (±{spread:.0}) | {p50:.0} µs | {p99:.0} µs | {failed} |\n"));
        rows.push(json!({"proxy": name, "requests_per_second": per_second, "spread": spread,
                         "p50_us": p50, "p99_us": p99, "failed": failed}));
        series[i % 2].1.push(per_second);
    }
    markdown.push_str(&format!(
        "\nGET / for `{HOST}` from wrk (1 thread, {CONNECTIONS} keep-alive connections, {} s) in a pod; the \
         agent's proxy (one thread) and nginx {} (one process, `master_process off`, HTTP/1.1 keep-alive \
         upstream with `keepalive 64`, the X-Forwarded-* headers ingress-nginx sets) both route the one \
         Ingress rule to the same two backend pods, nginx answering `return 200` with keep-alive. HTTPS: \
         TLS 1.3, an ECDSA P-256 certificate, wrk speaking HTTP/1.1. Both listen on the node's loopback and \
         are reached over the pod's veth. Medians of {RUNS} runs, taken in turn (± half the range; latencies \
         are the medians over runs, as wrk reports them). Load, proxies and backends share the machine's \
         cores.\n",
        DURATION.as_secs(),
        nginx_version(),
    ));
    let title = "Ingress: the agent's proxy and nginx";
    let chart = BarChart {
        title: title.into(),
        y_label: "requests per second".into(),
        groups: vec!["HTTP".into(), "HTTPS".into()],
        series,
        log_y: false,
    };
    Ok(Section { title, markdown, json: json!(rows), charts: vec![("requests", chart)] })
}

/// `1.22.1`, as `nginx -v` prints it.
fn nginx_version() -> String {
    let out = std::process::Command::new("nginx").arg("-v").output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
    text.trim().rsplit('/').next().unwrap_or("").to_owned()
}
