//! Control plane: a cold sync of SERVICES Services x 10 endpoints from a
//! manifest directory, and from an API server (the tests' double), until
//! the datapath answers, then one endpoint change (file write or
//! EndpointSlice `apply` to map update), against the rule sets kube-proxy would load
//! for the same Services: iptables (`iptables-restore`, legacy and nft
//! back ends) and nftables (`nft -f`). Also the memory of it all: the BPF
//! maps' locked memory (the kernel's fdinfo) and the agent's RSS.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_tests::{
    agent::AgentProcess,
    apiserver::ApiServer,
    client::http_get,
    netns::{Netns, unique_name},
    topology::Node,
};
use serde_json::{Value, json};

use crate::{
    Section,
    chart::BarChart,
    median_spread,
    synthetic::{BACKEND_POD, ENDPOINTS, Family, Protocol, Synthetic, vip},
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

/// Where the agent reads the Services from.
enum Source<'a> {
    /// These manifest files (name, text), written before the agent starts.
    Manifests(&'a [(String, String)]),
    /// The API server double, holding these objects and the Node before
    /// the agent starts.
    Api(&'a [Value]),
}

impl Source<'_> {
    fn name(&self) -> &'static str {
        match self {
            Source::Manifests(_) => "manifests",
            Source::Api(_) => "API server",
        }
    }
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
    /// API source only: how long the double took to serve the lists alone
    /// (see [`list_all`]); the agent's list requests (see [`AgentLists`]).
    served: Option<Listed>,
    lists: Option<AgentLists>,
}

/// The agent on a fresh node: cold sync until the last Service answers, then
/// one endpoint of it goes (file write or `apply` -> map update).
fn agent_run(synthetic: &Synthetic, source: &Source) -> anyhow::Result<AgentRun> {
    let node = Node::new()?;
    let mut backend = node.add_pod("backend", BACKEND_POD)?;
    backend.serve_on(&(8080..8080 + ENDPOINTS as u16).collect::<Vec<_>>(), &[])?;
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100))?;
    let maglev_entries = MAGLEV_ENTRIES.to_string();
    let args = ["--pod-device", "h-*", "--maglev-entries", &maglev_entries];

    // Declared before the agent, so that it outlives it.
    let mut api = None;
    let kubeconfig = Scratch(std::env::temp_dir().join(unique_name("kubeconfig")));
    let (mut served, mut lists) = (None, None);
    let mut agent = match source {
        Source::Manifests(files) => {
            eprintln!("  control_plane: lb-agent, manifests, cold sync of {SERVICES} services x {ENDPOINTS} endpoints");
            let manifests: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
            AgentProcess::start_with(&node, &manifests, &args)?
        }
        Source::Api(objects) => {
            let server = ApiServer::start_in(&node.ns)?;
            server.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.ns.name()}}))?;
            for object in *objects {
                server.apply(object.clone())?;
            }
            served = Some(list_all(&node.ns, &server)?);
            server.write_kubeconfig(&kubeconfig.0)?;
            eprintln!(
                "  control_plane: lb-agent, API server, cold sync of {SERVICES} services x {ENDPOINTS} endpoints"
            );
            let (agent, window) = agent_lists(&server, || AgentProcess::start_api(&node, &kubeconfig.0, &args));
            lists = Some(window);
            api = Some(server);
            agent?
        }
    };
    let start = agent.spawned_at().expect("started");
    let synced = start.elapsed();
    let last = SocketAddrV4::new(vip(SERVICES - 1), 80);
    while http_get(&client.ns, last, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "the last Service never answered");
    }
    let answered = start.elapsed();
    let (map_bytes, rss) = memory(agent.pid().expect("running"));

    // The last Service loses its last endpoint, made ready before the clock starts.
    let (last_file, changed) = synthetic.manifest_files(ENDPOINTS - 1).pop().expect("files");
    let slice = synthetic.endpoint_slices(SERVICES - 1, ENDPOINTS - 1).pop().expect("slices");
    let updates = |agent: &AgentProcess| agent.log_text().matches("datapath updated").count();
    let before = updates(&agent);
    // Timed alike for both sources: from the call that changes the source
    // to the agent's log line of the map writes.
    let written = Instant::now();
    match &api {
        None => agent.write_manifest(&last_file, &changed)?,
        Some(api) => drop(api.apply(slice)?),
    }
    while updates(&agent) == before {
        anyhow::ensure!(written.elapsed() < Duration::from_secs(30), "the change never reached the maps");
        std::thread::sleep(Duration::from_micros(500));
    }
    let change = written.elapsed();
    let timings = agent
        .log_text()
        .lines()
        .filter(|l| {
            ["agent started", "first sync", "source synced", "datapath updated"].iter().any(|what| l.contains(what))
        })
        .filter_map(log_line)
        .collect();
    agent.stop()?;
    Ok(AgentRun { synced, answered, change, map_bytes, rss, timings, served, lists })
}

/// `2026-11-29T12:34:56.789012Z  INFO target: message fields` as
/// `    12:34:56.789012 message fields`: the time shows where a cold sync went.
fn log_line(line: &str) -> Option<String> {
    let (stamp, rest) = line.split_once(' ')?;
    let (_, message) = rest.trim_start().split_once(": ")?;
    let time = stamp.split_once('T').map_or(stamp, |(_, t)| t.trim_end_matches('Z'));
    Some(format!("    {time} {message}"))
}

/// The agent's lists of Services and EndpointSlices, as the double saw
/// them arrive: how many requests (pages), and when the first and the last
/// came, since the agent's start.
struct AgentLists {
    requests: usize,
    first: Duration,
    last: Duration,
}

/// Runs `start` (the agent's start, until its first sync) while watching
/// `api`'s request log for the agent's list requests.
fn agent_lists<T>(api: &ApiServer, start: impl FnOnce() -> T) -> (T, AgentLists) {
    // Requests before (the bench's own lists) are not the agent's.
    let seen = api.requests().len();
    let is_list = |(_, path): &(String, String)| {
        (path.contains("/services?") || path.contains("/endpointslices?")) && !path.contains("watch=")
    };
    let done = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut lists = AgentLists { requests: 0, first: Duration::ZERO, last: Duration::ZERO };
            while !done.load(Ordering::Relaxed) {
                let requests = api.requests().iter().skip(seen).filter(|r| is_list(r)).count();
                if requests > lists.requests {
                    let now = started.elapsed();
                    if lists.requests == 0 {
                        lists.first = now;
                    }
                    (lists.requests, lists.last) = (requests, now);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            lists
        });
        let result = start();
        done.store(true, Ordering::Relaxed);
        (result, poller.join().expect("the poller does not panic"))
    })
}

/// A file removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The agent's label selector (kube-proxy's), URL-encoded.
const PROXY_SELECTOR: &str = "%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless";

/// What the API double served to a plain HTTP client.
struct Listed {
    took: Duration,
    pages: usize,
    items: usize,
    bytes: usize,
}

/// The API double's own share of a cold sync: the Services and
/// EndpointSlices listed as kube-rs's watchers list them (pages of 500,
/// the agent's label selector), one plain HTTP/1.1 GET per page from
/// inside the node's namespace; only the requests are timed, not parsing
/// the continue tokens out of the pages.
fn list_all(ns: &Netns, api: &ApiServer) -> anyhow::Result<Listed> {
    let addr: SocketAddr = api.url().trim_start_matches("http://").parse()?;
    ns.run_in(|| {
        let mut listed = Listed { took: Duration::ZERO, pages: 0, items: 0, bytes: 0 };
        for path in ["/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"] {
            let mut next = String::new();
            loop {
                let target = format!("{path}?labelSelector={PROXY_SELECTOR}&limit=500&continue={next}");
                let start = Instant::now();
                let body = get(addr, &target)?;
                listed.took += start.elapsed();
                let page: Value = serde_json::from_slice(&body)?;
                listed.pages += 1;
                listed.bytes += body.len();
                listed.items += page["items"].as_array().map_or(0, Vec::len);
                match page["metadata"]["continue"].as_str() {
                    Some(token) if !token.is_empty() => next = token.to_owned(),
                    _ => break,
                }
            }
        }
        Ok(listed)
    })?
}

/// `GET target` on a connection of its own; the body of a 200 answer.
fn get(addr: SocketAddr, target: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").context("no end of the headers")?;
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    anyhow::ensure!(head.starts_with("http/1.1 200"), "GET {target}: {head}");
    // A list is answered whole, with its length: the rest is the body.
    anyhow::ensure!(!head.contains("transfer-encoding: chunked"), "GET {target}: a chunked answer");
    Ok(response.split_off(end + 4))
}

/// (median, half the range) in ms of a figure of the agent's runs.
type Figure = (f64, f64);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Cold sync (maps answer), cold sync (datapath answers), one change.
fn agent_figures(runs: &[AgentRun]) -> [Figure; 3] {
    let figure = |pick: fn(&AgentRun) -> Duration| median_spread(&runs.iter().map(|r| ms(pick(r))).collect::<Vec<_>>());
    [figure(|r| r.synced), figure(|r| r.answered), figure(|r| r.change)]
}

pub fn run() -> anyhow::Result<Section> {
    let synthetic = Synthetic { services: SERVICES, protocol: Protocol::Tcp, family: Family::V4 };
    let files = synthetic.manifest_files(ENDPOINTS);
    let objects = synthetic.api_objects();
    let slices = objects.iter().filter(|o| o["kind"] == "EndpointSlice").count();
    // Rounds of the agent from each source and every peer in turn.
    let (mut manifest_runs, mut api_runs) = (Vec::new(), Vec::new());
    let mut peer_runs: Vec<Vec<(&'static str, Duration, Duration)>> = Vec::new();
    for round in 1..=RUNS {
        eprintln!("  control_plane: round {round}/{RUNS}");
        // Wall times, to keep the whole benchmark's in view.
        let timed = Instant::now();
        manifest_runs.push(agent_run(&synthetic, &Source::Manifests(&files))?);
        eprintln!("  control_plane: lb-agent from manifests took {:.1} s", timed.elapsed().as_secs_f64());
        let timed = Instant::now();
        api_runs.push(agent_run(&synthetic, &Source::Api(&objects))?);
        eprintln!("  control_plane: lb-agent from the API server took {:.1} s", timed.elapsed().as_secs_f64());
        let timed = Instant::now();
        peer_runs.push(peers(&synthetic)?);
        eprintln!("  control_plane: the peers took {:.1} s", timed.elapsed().as_secs_f64());
    }
    let sources = [(Source::Manifests(&files), &manifest_runs), (Source::Api(&objects), &api_runs)];
    let figure = |values: Vec<f64>| median_spread(&values);
    // (name, cold, change) of each peer.
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
        "{SERVICES} Services x {ENDPOINTS} endpoints, the agent reading them from manifests (Services without \
         selector and their Endpoints, {} JSON files) or from an API server ({SERVICES} Services and their \
         {slices} EndpointSlices). Medians of {RUNS} rounds (± half the range), each round the agent from \
         manifests, from the API server, then every peer.\n\n\
         | datapath | cold sync | one endpoint change |\n|---|---|---|\n",
        files.len(),
    );
    for (source, runs) in &sources {
        let [synced, answered, change] = agent_figures(runs);
        let _ = writeln!(
            markdown,
            "| lb-agent, {} (maps answer / datapath answers) | {:.0} ms (±{:.0}) / {:.0} ms (±{:.0}) | {:.1} ms (±{:.1}) |",
            source.name(),
            synced.0,
            synced.1,
            answered.0,
            answered.1,
            change.0,
            change.1,
        );
    }
    for (name, cold, change) in &peers {
        let _ = writeln!(
            markdown,
            "| {name} | {:.0} ms (±{:.0}) | {:.1} ms (±{:.1}) |",
            cold.0, cold.1, change.0, change.1
        );
    }
    // Issue 18's goals, as ratios of this run's medians: the cold sync
    // against iptables-legacy-restore's load, one change against
    // iptables-nft-restore's partial restore.
    let peer = |name: &str| peers.iter().find(|(n, ..)| *n == name);
    let ratio = |peer: Option<f64>, ours: f64| peer.filter(|_| ours > 0.0).map(|p| p / ours);
    let [manifest_cold, _, manifest_change] = agent_figures(&manifest_runs);
    let [api_cold, _, api_change] = agent_figures(&api_runs);
    let legacy_cold = peer("iptables-legacy-restore").map(|p| p.1.0);
    let nft_change = peer("iptables-nft-restore").map(|p| p.2.0);
    let ratios = [
        ("cold_sync_manifests", ratio(legacy_cold, manifest_cold.0)),
        ("cold_sync_api", ratio(legacy_cold, api_cold.0)),
        ("one_change_manifests", ratio(nft_change, manifest_change.0)),
        ("one_change_api", ratio(nft_change, api_change.0)),
    ];
    let shown = |r: Option<f64>| r.map_or_else(|| "n/a (peer not installed)".to_owned(), |r| format!("{r:.1}x"));
    let _ = writeln!(
        markdown,
        "\nRatios (medians of this run; goal >= 6x): cold sync, iptables-legacy-restore / lb-agent: {} from \
         manifests, {} from the API server; one endpoint change, iptables-nft-restore's partial restore / \
         lb-agent: {} from manifests, {} from the API server.",
        shown(ratios[0].1),
        shown(ratios[1].1),
        shown(ratios[2].1),
        shown(ratios[3].1),
    );
    let served: Vec<&Listed> = api_runs.iter().filter_map(|r| r.served.as_ref()).collect();
    let list_ms = figure(served.iter().map(|l| ms(l.took)).collect());
    let listed = served.last().expect("RUNS > 0");
    let lists: Vec<&AgentLists> = api_runs.iter().filter_map(|r| r.lists.as_ref()).collect();
    let list_requests = lists.last().expect("RUNS > 0").requests;
    let first_list = figure(lists.iter().map(|l| ms(l.first)).collect());
    let last_list = figure(lists.iter().map(|l| ms(l.last)).collect());
    let _ = write!(
        markdown,
        "\nlb-agent: from starting the process (the source already holding everything; programs loaded, maps \
         created) to its first complete sync, then to the first HTTP answer through the last Service's VIP; a \
         change is timed from the call that changes the source to the agent's `datapath updated` log line: the \
         file's rename into the manifest directory (the watcher's debounce included), or the API server's \
         `apply` of the changed EndpointSlice (the watch event, the reflector, the plan). Peers: the time of the \
         command that loads the rule set into an empty network namespace; kube-proxy's partial sync for the \
         change (`--noflush` with the one Service's chains, or an nft transaction for its chains). Goals: cold \
         < 2 s, one change < 50 ms; issue 18: a cold sync 6x faster than iptables-legacy-restore's, one \
         change 6x faster than iptables-nft-restore's partial restore (the ratios above).\n\n\
         The API server is the tests' in-process double (`lb_tests::apiserver`, one thread) listening in the \
         node's namespace, holding the Node, the Services (cluster IPs written) and their slices: one per port, \
         as the EndpointSlice mirroring controller makes them of Endpoints subsets, so {} EndpointSlices of 10 \
         addresses and the last Service (one pod on 10 ports) ten of one; its change empties one of these. The \
         agent's cold sync includes its kube-rs watchers listing everything and filling their stores: \
         {list_requests} list requests of Services and EndpointSlices (pages of 500), the first arriving at the \
         double {:.0} ms (±{:.0}) after the agent's start, the last {:.0} ms (±{:.0}) after (polled from the \
         double's request log every millisecond). The double alone serves those lists ({} pages, {} objects, \
         {:.1} MiB of JSON) to a plain HTTP client, one GET after the other, in {:.0} ms (±{:.0}).\n\n",
        SERVICES - 1,
        first_list.0,
        first_list.1,
        last_list.0,
        last_list.1,
        listed.pages,
        listed.items,
        listed.bytes as f64 / 1048576.0,
        list_ms.0,
        list_ms.1,
    );
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let _ = writeln!(
        markdown,
        "Memory with these Services programmed (last round): BPF maps {:.1} MiB locked from manifests, {:.1} MiB \
         from the API server (preallocated to their capacity, and {:.0} MiB of it the Maglev tables: {} bytes per \
         Service of 10 backends); agent RSS {:.1} MiB from manifests, {:.1} MiB from the API server.",
        mib(manifest_runs.last().expect("RUNS > 0").map_bytes),
        mib(api_runs.last().expect("RUNS > 0").map_bytes),
        MAGLEV_ENTRIES as f64 * 2.0 / 1048576.0,
        lb_userspace::plan::maglev::table_size(ENDPOINTS as usize) * 2,
        mib(manifest_runs.last().expect("RUNS > 0").rss),
        mib(api_runs.last().expect("RUNS > 0").rss),
    );
    for (source, runs) in &sources {
        let _ = write!(
            markdown,
            "\nThe agent's log (last round, {}) of the cold sync and the change (read: the files read and parsed, \
             or the watchers' stores taken, what the first scan did not do while the programs loaded; modelled: \
             endpoints and addresses; planned: the diff; applied: the map writes, the Maglev tables built \
             meanwhile; times since the pass, or the plan, started):\n\n{}\n",
            source.name(),
            runs.last().expect("RUNS > 0").timings.join("\n"),
        );
    }
    let agent_json = |runs: &[AgentRun]| {
        let [synced, answered, change] = agent_figures(runs);
        let last = runs.last().expect("RUNS > 0");
        json!({"cold_sync_ms": synced.0, "cold_sync_spread_ms": synced.1, "cold_answer_ms": answered.0,
               "cold_answer_spread_ms": answered.1, "one_change_ms": change.0, "one_change_spread_ms": change.1,
               // Each round's, for a noisy machine's sake.
               "cold_answer_rounds_ms": runs.iter().map(|r| ms(r.answered)).collect::<Vec<_>>(),
               "one_change_rounds_ms": runs.iter().map(|r| ms(r.change)).collect::<Vec<_>>(),
               "bpf_map_bytes": last.map_bytes, "rss_bytes": last.rss,
               "log": last.timings.iter().map(|l| l.trim()).collect::<Vec<_>>()})
    };
    let mut api_json = agent_json(&api_runs);
    api_json["endpoint_slices"] = slices.into();
    api_json["list_requests"] = list_requests.into();
    api_json["first_list_ms"] = first_list.0.into();
    api_json["last_list_ms"] = last_list.0.into();
    api_json["apiserver_list"] = json!({"ms": list_ms.0, "spread_ms": list_ms.1, "pages": listed.pages,
                                        "items": listed.items, "bytes": listed.bytes});
    let json = json!({
        "services": SERVICES, "endpoints_per_service": ENDPOINTS,
        "lb_agent": agent_json(&manifest_runs),
        "lb_agent_api": api_json,
        "ratios": ratios.iter().map(|(name, r)| ((*name).to_owned(), json!(r))).collect::<serde_json::Map<_, _>>(),
        "peers": peers.iter().map(|(n, c, o)| json!({"name": n, "cold_ms": c.0, "cold_spread_ms": c.1,
                                                      "one_change_ms": o.0, "one_change_spread_ms": o.1})).collect::<Vec<_>>(),
    });
    let agents =
        [("lb-agent (manifests)", agent_figures(&manifest_runs)), ("lb-agent (API)", agent_figures(&api_runs))];
    let names: Vec<String> = agents.iter().map(|a| a.0).chain(peers.iter().map(|p| p.0)).map(str::to_owned).collect();
    let cold: Vec<f64> = agents.iter().map(|a| a.1[1].0).chain(peers.iter().map(|p| p.1.0)).collect();
    let one: Vec<f64> = agents.iter().map(|a| a.1[2].0).chain(peers.iter().map(|p| p.2.0)).collect();
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
