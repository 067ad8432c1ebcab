//! DNS: the agent's responder against dnsmasq (Debian's), both answering
//! A questions for the same 1 000 Service names on the node, asked from a
//! pod over its veth. Queries per second and latency (p50, p99) from
//! closed-loop clients, each keeping IN_FLIGHT questions outstanding.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};
use lb_tests::{
    TempDir,
    agent::AgentProcess,
    dns::dnsmasq,
    netns::{ChildGuard, Netns},
    topology::{Node, POD_DEVICE_PATTERN},
};
use serde_json::json;

use crate::{Section, chart::BarChart, median_spread};

const SERVICES: usize = 1000;
const DURATION: Duration = Duration::from_secs(3);
const CLIENT_THREADS: usize = 2;
const IN_FLIGHT: usize = 16;
const RUNS: usize = 3;
/// How long an unanswered question waits before it counts as lost.
const LOST_AFTER: Duration = Duration::from_millis(500);
const AGENT_IP: &str = "169.254.20.10";
const DNSMASQ_IP: &str = "169.254.20.11";

fn service_ip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

fn service_name(i: usize) -> String {
    format!("svc-{i}.default.svc.cluster.local")
}

/// What one run measured.
struct Run {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// Lost, or answered with anything but the one address asked for.
    failed: usize,
}

/// Every question, encoded once; the id is rewritten per send.
fn questions() -> Vec<Vec<u8>> {
    (0..SERVICES)
        .map(|i| {
            let mut message = Message::new(0, MessageType::Query, OpCode::Query);
            message.metadata.recursion_desired = true;
            message.add_query(Query::query(Name::from_ascii(service_name(i)).unwrap(), RecordType::A));
            message.to_vec().unwrap()
        })
        .collect()
}

/// One client thread in `ns`: IN_FLIGHT questions outstanding for DURATION.
fn client(
    ns: &Netns,
    server: SocketAddr,
    questions: &[Vec<u8>],
    seed: usize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let _inside = ns.enter()?;
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut next = seed * 7919;
    let mut id: u16 = 0;
    let mut sent: HashMap<u16, Instant> = HashMap::new();
    let mut ask = |sent: &mut HashMap<u16, Instant>| -> anyhow::Result<()> {
        let mut question = questions[next % questions.len()].clone();
        next += 1;
        id = id.wrapping_add(1);
        question[..2].copy_from_slice(&id.to_be_bytes());
        sent.insert(id, Instant::now());
        socket.send(&question)?;
        Ok(())
    };
    let (mut latencies, mut failed) = (Vec::new(), 0);
    let mut buffer = [0u8; 1500];
    let deadline = Instant::now() + DURATION;
    while Instant::now() < deadline {
        while sent.len() < IN_FLIGHT {
            ask(&mut sent)?;
        }
        match socket.recv(&mut buffer) {
            Ok(len) if len >= 12 => {
                let answered = u16::from_be_bytes([buffer[0], buffer[1]]);
                if let Some(at) = sent.remove(&answered) {
                    latencies.push(at.elapsed());
                    let (rcode, answers) = (buffer[3] & 0x0f, u16::from_be_bytes([buffer[6], buffer[7]]));
                    if rcode != 0 || answers != 1 {
                        failed += 1;
                    }
                }
            }
            Ok(_) => failed += 1,
            Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(err) => return Err(err.into()),
        }
        let before = sent.len();
        sent.retain(|_, at| at.elapsed() < LOST_AFTER);
        failed += before - sent.len();
    }
    Ok((latencies, failed))
}

fn load(ns: &Netns, server: SocketAddr, questions: &[Vec<u8>]) -> anyhow::Result<Run> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<(Vec<Duration>, usize)>> = std::thread::scope(|scope| {
        let threads: Vec<_> =
            (0..CLIENT_THREADS).map(|t| scope.spawn(move || client(ns, server, questions, t))).collect();
        threads.into_iter().map(|t| t.join().expect("a client thread panicked")).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for result in results {
        let (l, f) = result?;
        latencies.extend(l);
        failed += f;
    }
    latencies.sort();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    let (p50, p99) = (at(0.5).copied().unwrap_or_default(), at(0.99).copied().unwrap_or_default());
    Ok(Run { per_second: latencies.len() as f64 / seconds, p50, p99, failed })
}

/// The two servers on one node, the client pod beside them.
struct Rig {
    _agent: AgentProcess,
    _dnsmasq: ChildGuard,
    _hosts: TempDir,
    client: lb_tests::topology::Pod,
    _node: Node,
}

fn rig() -> anyhow::Result<Rig> {
    let node = Node::new()?;
    let client = node.add_pod("client", std::net::Ipv4Addr::new(10, 244, 0, 100))?;
    for ip in [AGENT_IP, DNSMASQ_IP] {
        node.ns.exec(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
    }
    let services: String = (0..SERVICES)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  clusterIP: {}\n  ports: [{{port: 80}}]\n",
                service_ip(i)
            )
        })
        .collect();
    let dns = format!("{AGENT_IP}:53");
    let agent = AgentProcess::start_with(
        &node,
        &[("services.yaml", &services)],
        &["--pod-device", POD_DEVICE_PATTERN, "--dns-address", &dns],
    )?;
    let hosts = TempDir::new("hosts");
    let file = hosts.0.join("hosts");
    let lines: String = (0..SERVICES).map(|i| format!("{} {}\n", service_ip(i), service_name(i))).collect();
    std::fs::write(&file, lines)?;
    let dnsmasq = dnsmasq(&node.ns, format!("{DNSMASQ_IP}:53").parse()?, &file)?;
    Ok(Rig { _agent: agent, _dnsmasq: dnsmasq, _hosts: hosts, client, _node: node })
}

pub fn run() -> anyhow::Result<Section> {
    let rig = rig()?;
    let questions = questions();
    let servers: [(&str, SocketAddr); 2] =
        [("lb-agent", format!("{AGENT_IP}:53").parse()?), ("dnsmasq", format!("{DNSMASQ_IP}:53").parse()?)];
    // Warm-up, and a check that both answer every name before measuring.
    for (name, server) in servers {
        let run = load(&rig.client.ns, server, &questions)?;
        if run.failed > 0 || run.per_second == 0.0 {
            anyhow::bail!("{name} failed {} questions of its warm-up run", run.failed);
        }
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
    for round in 1..=RUNS {
        for ((name, server), runs) in servers.iter().zip(&mut runs) {
            let run = load(&rig.client.ns, *server, &questions)?;
            eprintln!("    round {round}/{RUNS}: {name} {:.0} queries/s, p99 {:?}", run.per_second, run.p99);
            runs.push(run);
        }
    }
    let mut markdown = String::from("| server | queries/s | p50 | p99 | failed |\n|---|---|---|---|---|\n");
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for ((name, _), runs) in servers.iter().zip(runs) {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (per_second, spread) = median_spread(&runs.iter().map(|r| r.per_second).collect::<Vec<_>>());
        let (p50, _) = median_spread(&runs.iter().map(|r| us(r.p50)).collect::<Vec<_>>());
        let (p99, _) = median_spread(&runs.iter().map(|r| us(r.p99)).collect::<Vec<_>>());
        let failed: usize = runs.iter().map(|r| r.failed).sum();
        markdown
            .push_str(&format!("| {name} | {per_second:.0} (±{spread:.0}) | {p50:.0} µs | {p99:.0} µs | {failed} |\n"));
        rows.push(json!({"server": name, "queries_per_second": per_second, "spread": spread,
                         "p50_us": p50, "p99_us": p99, "failed": failed}));
        series.push((name.to_string(), vec![per_second]));
    }
    markdown.push_str(&format!(
        "\nA questions for {SERVICES} Service names (`svc-N.default.svc.cluster.local`) over UDP, from \
         {CLIENT_THREADS} client threads in a pod, each keeping {IN_FLIGHT} questions outstanding, for {} s; \
         the agent answers from its model (`--dns-address`, its own thread), dnsmasq from a hosts file \
         holding the same names (`--addn-hosts`, no upstream). Both listen on the node's loopback and \
         are asked over the pod's veth. Medians of {RUNS} runs, taken in turn (± half the range; \
         latencies are the medians over runs). Clients and servers share the machine's cores.\n",
        DURATION.as_secs()
    ));
    let title = "DNS: the agent's responder and dnsmasq";
    let chart = BarChart {
        title: title.into(),
        y_label: "queries per second".into(),
        groups: vec![format!("{SERVICES} names")],
        series,
        log_y: false,
    };
    Ok(Section { title, markdown, json: json!(rows), charts: vec![("queries", chart)] })
}
