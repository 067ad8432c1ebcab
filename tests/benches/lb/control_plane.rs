//! Control plane: a cold sync of SERVICES Services x 10 endpoints from a
//! manifest directory until the datapath answers, then one endpoint change
//! (file write to map update), against the rule sets kube-proxy would load
//! for the same Services: iptables (`iptables-restore`, legacy and nft
//! back ends) and nftables (`nft -f`). Also the memory of it all: the BPF
//! maps' locked memory (the kernel's fdinfo) and the agent's RSS.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{agent::AgentProcess, client::http_get, netns::Netns, topology::Node};
use serde_json::json;

use crate::{
    Section,
    chart::BarChart,
    median_spread,
    synthetic::{BACKEND_POD, ENDPOINTS, Protocol, Synthetic, vip},
};

const SERVICES: u32 = 10_000;
const RUNS: usize = 3;
/// Room for 10 007 entries (the table of 10 backends) for each Service.
const MAGLEV_ENTRIES: u32 = 1 << 27;

/// Runs `program` with `input` on its stdin inside `ns`; how long it took.
pub fn timed_load(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<Duration> {
    let mut cmd = ns.command(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().expect("piped"), input.as_bytes())?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    anyhow::ensure!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(took)
}

/// (cold load, one change) for each peer that is installed: one round.
fn peers(synthetic: &Synthetic) -> anyhow::Result<Vec<(&'static str, Duration, Duration)>> {
    let mut results = Vec::new();
    for (name, program) in
        [("iptables-legacy-restore", "iptables-legacy-restore"), ("iptables-nft-restore", "iptables-nft-restore")]
    {
        if Command::new(program).arg("--version").output().is_err() {
            eprintln!("  control_plane: {program} is not installed, skipped");
            continue;
        }
        eprintln!("  control_plane: {name}, {SERVICES} services");
        let ns = Netns::create("b")?;
        let cold = timed_load(&ns, program, &[], &synthetic.iptables_rules(ENDPOINTS, false))?;
        let change = timed_load(&ns, program, &["--noflush"], &synthetic.iptables_rules(ENDPOINTS - 1, true))?;
        results.push((name, cold, change));
    }
    eprintln!("  control_plane: nft -f, {SERVICES} services (the slowest peer: tens of seconds)");
    let ns = Netns::create("b")?;
    let cold = timed_load(&ns, "nft", &["-f", "-"], &synthetic.nft_rules())?;
    let change = timed_load(&ns, "nft", &["-f", "-"], &synthetic.nft_change())?;
    results.push(("nft -f", cold, change));
    Ok(results)
}

/// Locked memory of the BPF maps `pid` holds, and its resident set, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let mut maps = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten() {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if info.contains("map_type:") {
            maps += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (maps, rss_kb * 1024)
}

/// What one cold start and change of the agent measured.
struct AgentRun {
    synced: Duration,
    answered: Duration,
    change: Duration,
    map_bytes: u64,
    rss: u64,
    /// Its log lines about the sync and the change.
    timings: Vec<String>,
}

/// The agent on a fresh node: cold sync until the last Service answers, then
/// one endpoint of it goes (file write -> map update).
fn agent_run(synthetic: &Synthetic, files: &[(String, String)]) -> anyhow::Result<AgentRun> {
    let node = Node::new()?;
    let mut backend = node.add_pod("backend", BACKEND_POD)?;
    backend.serve_on(&(8080..8080 + ENDPOINTS as u16).collect::<Vec<_>>(), &[])?;
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100))?;
    let manifests: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let maglev_entries = MAGLEV_ENTRIES.to_string();
    let args = ["--pod-device", "h-*", "--maglev-entries", &maglev_entries];

    eprintln!("  control_plane: lb-agent, cold sync of {SERVICES} services x {ENDPOINTS} endpoints");
    let mut agent = AgentProcess::start_with(&node, &manifests, &args)?;
    let start = agent.spawned_at().expect("started");
    let synced = start.elapsed();
    let last = SocketAddrV4::new(vip(SERVICES - 1), 80);
    while http_get(&client.ns, last, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "the last Service never answered");
    }
    let answered = start.elapsed();
    let (map_bytes, rss) = memory(agent.pid().expect("running"));

    let updates = |agent: &AgentProcess| agent.log_text().matches("datapath updated").count();
    let before = updates(&agent);
    let (last_file, changed) = synthetic.manifest_files(ENDPOINTS - 1).pop().expect("files");
    let written = Instant::now();
    agent.write_manifest(&last_file, &changed)?;
    while updates(&agent) == before {
        anyhow::ensure!(written.elapsed() < Duration::from_secs(30), "the change never reached the maps");
        std::thread::sleep(Duration::from_micros(500));
    }
    let change = written.elapsed();
    let timings = agent
        .log_text()
        .lines()
        .filter(|l| ["first sync", "manifests synced", "datapath updated"].iter().any(|what| l.contains(what)))
        .filter_map(|l| l.split_once("agent: ").map(|(_, rest)| format!("    {rest}")))
        .collect();
    agent.stop()?;
    Ok(AgentRun { synced, answered, change, map_bytes, rss, timings })
}

pub fn run() -> anyhow::Result<Section> {
    let synthetic = Synthetic { services: SERVICES, protocol: Protocol::Tcp };
    let files = synthetic.manifest_files(ENDPOINTS);
    // Rounds of the agent and every peer in turn.
    let mut agent_runs = Vec::new();
    let mut peer_runs: Vec<Vec<(&'static str, Duration, Duration)>> = Vec::new();
    for round in 1..=RUNS {
        eprintln!("  control_plane: round {round}/{RUNS}");
        agent_runs.push(agent_run(&synthetic, &files)?);
        peer_runs.push(peers(&synthetic)?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let figure = |values: Vec<f64>| median_spread(&values);
    let synced = figure(agent_runs.iter().map(|r| ms(r.synced)).collect());
    let answered = figure(agent_runs.iter().map(|r| ms(r.answered)).collect());
    let change = figure(agent_runs.iter().map(|r| ms(r.change)).collect());
    let last = agent_runs.last().expect("RUNS > 0");
    let (map_bytes, rss, timings) = (last.map_bytes, last.rss, &last.timings);
    // (name, cold, change) of each peer, as (median, spread) in ms.
    type Figure = (f64, f64);
    let peers: Vec<(&str, Figure, Figure)> = peer_runs[0]
        .iter()
        .enumerate()
        .map(|(i, (name, ..))| {
            let of = |pick: fn(&(&str, Duration, Duration)) -> Duration| {
                figure(peer_runs.iter().map(|round| ms(pick(&round[i]))).collect())
            };
            (*name, of(|p| p.1), of(|p| p.2))
        })
        .collect();
    let mut markdown = format!(
        "{SERVICES} Services x {ENDPOINTS} endpoints (Services without selector and their Endpoints, {} JSON files). \
         Medians of {RUNS} rounds (± half the range), each round the agent and then every peer.\n\n\
         | datapath | cold sync | one endpoint change |\n|---|---|---|\n\
         | lb-agent (maps answer / datapath answers) | {:.0} ms (±{:.0}) / {:.0} ms (±{:.0}) | {:.1} ms (±{:.1}) |\n",
        files.len(),
        synced.0,
        synced.1,
        answered.0,
        answered.1,
        change.0,
        change.1,
    );
    for (name, cold, change) in &peers {
        let _ = writeln!(
            markdown,
            "| {name} | {:.0} ms (±{:.0}) | {:.1} ms (±{:.1}) |",
            cold.0, cold.1, change.0, change.1
        );
    }
    let _ = write!(
        markdown,
        "\nlb-agent: from starting the process (the manifests already written; programs loaded, maps created) to its first complete sync, \
         then to the first HTTP answer through the last Service's VIP; a change is timed from the file's \
         rename into the manifest directory to the agent's `datapath updated` log line (the watcher's \
         debounce included). Peers: the time of the command that loads the rule set into an empty \
         network namespace; kube-proxy's partial sync for the change (`--noflush` with the one Service's \
         chains, or an nft transaction for its chains). Goals: cold < 2 s, one change < 50 ms.\n\n\
         Memory with these Services programmed: BPF maps {:.1} MiB locked (preallocated to their \
         capacity, and {:.0} MiB of it the Maglev tables: {} bytes per Service of 10 backends), agent \
         RSS {:.1} MiB.\n\nThe agent's log (last round) of the cold sync and the change (scan: read and parse the files; \
         model: endpoints and addresses; planned/applied: time since the plan started):\n\n{}\n",
        map_bytes as f64 / 1048576.0,
        MAGLEV_ENTRIES as f64 * 2.0 / 1048576.0,
        lb_userspace::plan::maglev::table_size(ENDPOINTS as usize) * 2,
        rss as f64 / 1048576.0,
        timings.join("\n"),
    );
    let json = json!({
        "services": SERVICES, "endpoints_per_service": ENDPOINTS,
        "lb_agent": {"cold_sync_ms": synced.0, "cold_sync_spread_ms": synced.1, "cold_answer_ms": answered.0,
                     "cold_answer_spread_ms": answered.1, "one_change_ms": change.0, "one_change_spread_ms": change.1,
                     "bpf_map_bytes": map_bytes, "rss_bytes": rss},
        "peers": peers.iter().map(|(n, c, o)| json!({"name": n, "cold_ms": c.0, "cold_spread_ms": c.1,
                                                      "one_change_ms": o.0, "one_change_spread_ms": o.1})).collect::<Vec<_>>(),
    });
    let names: Vec<String> = std::iter::once("lb-agent").chain(peers.iter().map(|p| p.0)).map(str::to_owned).collect();
    let cold: Vec<f64> = std::iter::once(answered.0).chain(peers.iter().map(|p| p.1.0)).collect();
    let one: Vec<f64> = std::iter::once(change.0).chain(peers.iter().map(|p| p.2.0)).collect();
    let chart = |title: &str, values| BarChart {
        title: format!("{title}, {SERVICES} Services x {ENDPOINTS} endpoints"),
        y_label: "ms (log)".into(),
        groups: names.clone(),
        series: vec![(title.into(), values)],
        log_y: true,
    };
    let charts = vec![("cold", chart("cold sync", cold)), ("change", chart("one endpoint change", one))];
    Ok(Section { title: "Control plane and memory", markdown, json, charts })
}
