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

use crate::Section;

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 10;
/// Services per manifest file.
const PER_FILE: u32 = 500;
/// The last Service's endpoints are a real pod listening on 10 ports.
const BACKEND_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
/// Room for 10 007 entries (the table of 10 backends) for each Service.
const MAGLEV_ENTRIES: u32 = 1 << 27;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i)
}

/// Endpoint `j` of Service `i`: address and port.
fn endpoint(i: u32, j: u32) -> (Ipv4Addr, u16) {
    if i == SERVICES - 1 {
        (BACKEND_POD, 8080 + j as u16)
    } else {
        (Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * ENDPOINTS + j), 8080)
    }
}

/// A Service without selector and its Endpoints object, as JSON items.
fn service_items(i: u32, endpoints: u32) -> [serde_json::Value; 2] {
    let name = format!("svc-{i}");
    let subsets: Vec<_> = (0..endpoints)
        .map(|j| {
            let (ip, port) = endpoint(i, j);
            json!({"addresses": [{"ip": ip.to_string()}], "ports": [{"port": port}]})
        })
        .collect();
    [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
               "spec": {"clusterIP": vip(i).to_string(), "ports": [{"port": 80}]}}),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": "bench"}, "subsets": subsets}),
    ]
}

/// Manifest file `f` (a JSON List); the last Service has `last_endpoints`.
fn manifest_file(f: u32, last_endpoints: u32) -> String {
    let items: Vec<_> = (f * PER_FILE..((f + 1) * PER_FILE).min(SERVICES))
        .flat_map(|i| service_items(i, if i == SERVICES - 1 { last_endpoints } else { ENDPOINTS }))
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// kube-proxy's iptables rules for the Services (the last with `last_endpoints`),
/// for `iptables-restore`: KUBE-SERVICES -> KUBE-SVC-* (statistic random,
/// probability 1/(n-k) for the k-th endpoint) -> KUBE-SEP-* (mark, DNAT).
fn iptables_rules(last_endpoints: u32, only_last: bool) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let services = if only_last { SERVICES - 1..SERVICES } else { 0..SERVICES };
    if !only_last {
        chains.push_str(":PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
        chains.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
        rules.push_str(
            "-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n",
        );
        rules.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
        rules.push_str("-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n");
    }
    for i in services {
        let n = if i == SERVICES - 1 { last_endpoints } else { ENDPOINTS };
        let _ = writeln!(chains, ":KUBE-SVC-{i} - [0:0]");
        if !only_last {
            let _ = writeln!(rules, "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}", vip(i));
        }
        for j in 0..n {
            let (ip, port) = endpoint(i, j);
            let _ = writeln!(chains, ":KUBE-SEP-{i}-{j} - [0:0]");
            let remaining = n - j;
            if remaining > 1 {
                let p = 1.0 / f64::from(remaining);
                let _ = writeln!(
                    rules,
                    "-A KUBE-SVC-{i} -m statistic --mode random --probability {p:.10} -j KUBE-SEP-{i}-{j}"
                );
            } else {
                let _ = writeln!(rules, "-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{j}");
            }
            let _ = writeln!(rules, "-A KUBE-SEP-{i}-{j} -s {ip}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(rules, "-A KUBE-SEP-{i}-{j} -p tcp -m tcp -j DNAT --to-destination {ip}:{port}");
        }
        if only_last {
            // kube-proxy's partial sync also deletes the chain that went.
            for j in n..ENDPOINTS {
                let _ = writeln!(chains, ":KUBE-SEP-{i}-{j} - [0:0]");
                let _ = writeln!(rules, "-X KUBE-SEP-{i}-{j}");
            }
        }
    }
    format!("*nat\n{chains}{rules}COMMIT\n")
}

/// kube-proxy's nftables rules: a verdict map on daddr . proto . dport,
/// `numgen random mod n` per Service, a chain per endpoint.
fn nft_rules() -> String {
    let mut out = String::from("table ip kube-proxy {\n");
    out.push_str("  chain mark-for-masquerade {\n    meta mark set meta mark | 0x4000\n  }\n");
    let mut elements = Vec::new();
    let mut chains = String::new();
    for i in 0..SERVICES {
        elements.push(format!("{} . tcp . 80 : goto service-{i}", vip(i)));
        let mut vmap = Vec::new();
        for j in 0..ENDPOINTS {
            let (ip, port) = endpoint(i, j);
            vmap.push(format!("{j} : goto endpoint-{i}-{j}"));
            let _ = writeln!(
                chains,
                "  chain endpoint-{i}-{j} {{\n    ip saddr {ip} jump mark-for-masquerade\n    meta l4proto tcp dnat to {ip}:{port}\n  }}"
            );
        }
        let _ = writeln!(
            chains,
            "  chain service-{i} {{\n    numgen random mod {ENDPOINTS} vmap {{ {} }}\n  }}",
            vmap.join(", ")
        );
    }
    out.push_str(&chains);
    let _ = writeln!(
        out,
        "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}",
        elements.join(", ")
    );
    out.push_str("  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n");
    out.push_str("  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n");
    out.push_str(
        "  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n}\n",
    );
    out
}

/// What kube-proxy's nftables mode sends for the last Service losing one endpoint.
fn nft_change() -> String {
    let i = SERVICES - 1;
    let vmap: Vec<String> = (0..ENDPOINTS - 1).map(|j| format!("{j} : goto endpoint-{i}-{j}")).collect();
    format!(
        "flush chain ip kube-proxy service-{i}\nadd rule ip kube-proxy service-{i} numgen random mod {} vmap {{ {} }}\ndelete chain ip kube-proxy endpoint-{i}-{}\n",
        ENDPOINTS - 1,
        vmap.join(", "),
        ENDPOINTS - 1
    )
}

/// Runs `program` with `input` on its stdin inside `ns`; how long it took.
fn timed_load(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<Duration> {
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

/// (cold load, one change) for each peer that is installed.
fn peers() -> anyhow::Result<Vec<(&'static str, Duration, Duration)>> {
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
        let cold = timed_load(&ns, program, &[], &iptables_rules(ENDPOINTS, false))?;
        let change = timed_load(&ns, program, &["--noflush"], &iptables_rules(ENDPOINTS - 1, true))?;
        results.push((name, cold, change));
    }
    eprintln!("  control_plane: nft -f, {SERVICES} services (the slowest peer: tens of seconds)");
    let ns = Netns::create("b")?;
    let cold = timed_load(&ns, "nft", &["-f", "-"], &nft_rules())?;
    let change = timed_load(&ns, "nft", &["-f", "-"], &nft_change())?;
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

pub fn run() -> anyhow::Result<Section> {
    let node = Node::new()?;
    let mut backend = node.add_pod("backend", BACKEND_POD)?;
    backend.serve_on(&(8080..8080 + ENDPOINTS as u16).collect::<Vec<_>>(), &[])?;
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100))?;
    let files: Vec<(String, String)> =
        (0..SERVICES.div_ceil(PER_FILE)).map(|f| (format!("svc-{f:03}.json"), manifest_file(f, ENDPOINTS))).collect();
    let manifests: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let maglev_entries = MAGLEV_ENTRIES.to_string();
    let args = ["--pod-device", "h-*", "--maglev-entries", &maglev_entries];

    eprintln!("  control_plane: lb-agent, cold sync of {SERVICES} services x {ENDPOINTS} endpoints");
    let start = Instant::now();
    let mut agent = AgentProcess::start_with(&node, &manifests, &args)?;
    let synced = start.elapsed();
    let last = SocketAddrV4::new(vip(SERVICES - 1), 80);
    while http_get(&client.ns, last, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "the last Service never answered");
    }
    let answered = start.elapsed();
    let (map_bytes, rss) = memory(agent.pid().expect("running"));

    // One endpoint of the last Service goes: file write -> map update.
    let updates = |agent: &AgentProcess| agent.log_text().matches("datapath updated").count();
    let before = updates(&agent);
    let last_file = &files[files.len() - 1].0;
    let changed = manifest_file(SERVICES.div_ceil(PER_FILE) - 1, ENDPOINTS - 1);
    let written = Instant::now();
    agent.write_manifest(last_file, &changed)?;
    while updates(&agent) == before {
        anyhow::ensure!(written.elapsed() < Duration::from_secs(30), "the change never reached the maps");
        std::thread::sleep(Duration::from_micros(500));
    }
    let change = written.elapsed();

    // The agent's own account: parse, model, plan and map writes.
    let timings: Vec<String> = agent
        .log_text()
        .lines()
        .filter(|l| l.contains("manifests synced") || l.contains("datapath updated"))
        .filter_map(|l| l.split_once("agent: ").map(|(_, rest)| format!("    {rest}")))
        .collect();
    agent.stop()?;
    let peers = peers()?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut markdown = format!(
        "{SERVICES} Services x {ENDPOINTS} endpoints (Services without selector and their Endpoints, {} JSON files).\n\n\
         | datapath | cold sync | one endpoint change |\n|---|---|---|\n\
         | lb-agent (maps answer / datapath answers) | {:.0} ms / {:.0} ms | {:.1} ms |\n",
        files.len(),
        ms(synced),
        ms(answered),
        ms(change)
    );
    for (name, cold, change) in &peers {
        let _ = writeln!(markdown, "| {name} | {:.0} ms | {:.1} ms |", ms(*cold), ms(*change));
    }
    let _ = write!(
        markdown,
        "\nlb-agent: from starting the process (programs loaded, maps created) to its first complete sync, \
         then to the first HTTP answer through the last Service's VIP; a change is timed from the file's \
         rename into the manifest directory to the agent's `datapath updated` log line (the watcher's \
         debounce included). Peers: the time of the command that loads the rule set into an empty \
         network namespace; kube-proxy's partial sync for the change (`--noflush` with the one Service's \
         chains, or an nft transaction for its chains). Goals: cold < 2 s, one change < 50 ms.\n\n\
         Memory with these Services programmed: BPF maps {:.1} MiB locked (preallocated to their \
         capacity, and {:.0} MiB of it the Maglev tables: {} bytes per Service of 10 backends), agent \
         RSS {:.1} MiB.\n\nThe agent's log of the cold sync and the change (scan: read and parse the files; \
         model: endpoints and addresses; planned/applied: time since the plan started):\n\n{}\n",
        map_bytes as f64 / 1048576.0,
        MAGLEV_ENTRIES as f64 * 2.0 / 1048576.0,
        lb_userspace::maglev::table_size(ENDPOINTS as usize) * 2,
        rss as f64 / 1048576.0,
        timings.join("\n"),
    );
    let json = json!({
        "services": SERVICES, "endpoints_per_service": ENDPOINTS,
        "lb_agent": {"cold_sync_ms": ms(synced), "cold_answer_ms": ms(answered), "one_change_ms": ms(change),
                     "bpf_map_bytes": map_bytes, "rss_bytes": rss},
        "peers": peers.iter().map(|(n, c, o)| json!({"name": n, "cold_ms": ms(*c), "one_change_ms": ms(*o)})).collect::<Vec<_>>(),
    });
    Ok(Section { title: "Control plane and memory", markdown, json })
}
