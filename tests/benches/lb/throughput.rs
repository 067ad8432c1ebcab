//! Forwarding throughput over veth, pod -> cluster IP -> pod, in IPv4 and
//! in IPv6: UDP frames with 18 bytes of payload (64 bytes on the wire in
//! IPv4, 84 in IPv6) to a Service, of one flow or a new flow each, sent
//! from a client pod by BPF_PROG_RUN in live-frames mode (XDP_TX out of
//! its eth0; the node's end runs a pass-through XDP program so that the
//! veth takes them), forwarded by the node (lb on TC ingress), and counted
//! where they arrive: a raw-table DROP rule in the backend pod, which sees
//! frames that came by the veth and by `bpf_redirect_peer` alike.
//! The generator and the node's receive processing share a CPU (the veth
//! peer's NAPI runs where the frames are sent), so each figure is the rate
//! of generator + node datapath together; the generator's own cost is the
//! same for every datapath. (Apart, the client veth's host side running
//! threaded NAPI pinned to the other of this machine's two vCPUs, every
//! datapath measured slower: 0.71-0.76 Mpps one flow for lb and 0.34-0.42
//! for the peers, a new flow every packet 0.09-0.13 for lb; the wake-ups
//! across the CPUs cost more here than the generator does.)

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_common::IPPROTO_UDP;
use lb_ebpf::packet_builder::PacketBuilder;
use lb_tests::{
    netns::Netns,
    topology::Node,
    xdp_const::{self, Action, Flows},
};
use serde_json::json;

use crate::{
    Section,
    chart::BarChart,
    median_spread,
    synthetic::{BACKEND_POD, BenchFamily, Datapath, Family, Protocol, Synthetic, vip},
};

/// Frames per run: one flow, new flows (every one of which costs kube-proxy's
/// datapaths a walk of their rules). A second or more per run even for the
/// fastest, and few enough that both families fit in a few minutes.
const FRAMES: u32 = 1_000_000;
const NEW_FLOW_FRAMES: u32 = 150_000;
const RUNS: usize = 3;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 100);
/// Frames the backend's DROP rule (for `family`) counted so far.
fn received(backend: &Netns, family: Family) -> anyhow::Result<u64> {
    let out = backend.exec(&[family.iptables(), "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("DROP"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no DROP rule counter in:\n{text}"))
}

/// A node running one datapath for some Services of one family, with a
/// client pod that generates frames and a backend pod that counts them.
struct Rig {
    family: Family,
    backend: lb_tests::topology::Pod,
    client: lb_tests::topology::Pod,
    /// One flow's frame, and the template of new flows' frames.
    frame: Vec<u8>,
    new_flows: Vec<u8>,
    // Held for as long as the rig is measured.
    _pass: std::os::fd::OwnedFd,
    _agent: Option<lb_tests::agent::AgentProcess>,
    _node: Node,
}

impl Rig {
    fn new(datapath: Datapath, services: u32, family: Family) -> anyhow::Result<Self> {
        let synthetic = Synthetic { services, protocol: Protocol::Udp, family };
        let node = Node::new()?;
        let backend = family.add_pod(&node, "backend", BACKEND_POD)?;
        backend.ns.exec(&[family.iptables(), "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])?;
        // The node knows the backend's MAC from the start: no ARP (or
        // neighbour discovery) in the runs.
        let backend_mac = backend.ns.mac("eth0")?;
        let backend_ip = family.twin(BACKEND_POD).to_string();
        node.ns.exec(&[
            "ip",
            "neigh",
            "replace",
            &backend_ip,
            "lladdr",
            &backend_mac,
            "dev",
            "h-backend",
            "nud",
            "permanent",
        ])?;
        let client = family.add_pod(&node, "client", CLIENT)?;
        let agent = datapath.program(&node, &synthetic, None)?;
        // The generator's frames reach the node only through an XDP program
        // there (a veth takes XDP_TX frames only when its peer runs one).
        let pass = xdp_const::attach(&node.ns, "h-client", Action::Pass)?;
        let mac = |ns: &Netns, ifname: &str| -> anyhow::Result<[u8; 6]> {
            let text = ns.mac(ifname)?;
            let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
            bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {text}"))
        };
        // 64 bytes on the wire without the FCS in IPv4: 14 + 20 + 8 + 18
        // bytes of payload; IPv6's header is 20 bytes longer.
        let to = family.twin(vip(services - 1));
        let mut frame = PacketBuilder::new(IPPROTO_UDP, family.twin(CLIENT), 5000, to, 80).payload(&[0; 18]).build();
        // Clients from all of 10.244.0.0/16 (or its twin), from ports
        // the generator writes (see `Flows::NewEach`).
        let new_flows =
            PacketBuilder::new(IPPROTO_UDP, family.twin(Ipv4Addr::new(10, 244, 0, 0)), 0, to, 80).payload(&[0; 18]);
        let mut new_flows = match family {
            Family::V4 => new_flows.ip_id(0xffff).udp_zero_checksum().build(),
            Family::V6 => new_flows.build(),
        };
        for frame in [&mut frame, &mut new_flows] {
            frame[0..6].copy_from_slice(&mac(&node.ns, "h-client")?);
            frame[6..12].copy_from_slice(&mac(&client.ns, "eth0")?);
        }
        // They arrive on h-client, whose route covers only the client pod.
        for conf in ["all", "h-client"] {
            node.ns.exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{conf}.rp_filter=0")])?;
        }
        // The first frames create the flow (and fill the FIB's caches).
        xdp_const::send_live_frames(&client.ns, "eth0", &frame, 1_000, Flows::One)?;
        std::thread::sleep(Duration::from_millis(100));
        Ok(Rig { family, backend, client, frame, new_flows, _pass: pass, _agent: agent, _node: node })
    }

    /// Packets per second received at the backend in one run.
    fn rate(&self, flows: Flows) -> anyhow::Result<f64> {
        let (frame, count) = match flows {
            Flows::One => (&self.frame, FRAMES),
            Flows::NewEach => (&self.new_flows, NEW_FLOW_FRAMES),
        };
        let before = received(&self.backend.ns, self.family)?;
        let start = Instant::now();
        xdp_const::send_live_frames(&self.client.ns, "eth0", frame, count, flows)?;
        // Frames still queued at the node arrive within a moment.
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = start.elapsed();
        Ok((received(&self.backend.ns, self.family)? - before) as f64 / elapsed.as_secs_f64())
    }
}

const DATAPATHS: [Datapath; 4] = [Datapath::Lb, Datapath::LbStack, Datapath::Iptables, Datapath::Nftables];

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// Each of DATAPATHS in each of FAMILIES: the table's rows, in order.
fn setups() -> Vec<(Datapath, Family)> {
    DATAPATHS.into_iter().flat_map(|datapath| FAMILIES.map(|family| (datapath, family))).collect()
}

const PATTERNS: [Flows; 2] = [Flows::One, Flows::NewEach];

/// (median, spread) packets per second of each of `setups()` with
/// `services` Services, for each of PATTERNS: every setup is on a node of
/// its own, then all are measured in turn, RUNS rounds, so that the
/// families see the same moments of the machine.
fn measure(services: u32) -> anyhow::Result<[Vec<(f64, f64)>; 2]> {
    let rigs = setups()
        .into_iter()
        .map(|(datapath, family)| {
            eprintln!("  throughput: setting up {} {family} with {services} services", datapath.name());
            Rig::new(datapath, services, family)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut figures = [Vec::new(), Vec::new()];
    for (flows, figures) in PATTERNS.into_iter().zip(&mut figures) {
        let mut rates = vec![Vec::new(); rigs.len()];
        for round in 1..=RUNS {
            for ((rig, rates), (datapath, family)) in rigs.iter().zip(&mut rates).zip(setups()) {
                rates.push(rig.rate(flows)?);
                let pps = rates.last().expect("pushed") / 1e6;
                eprintln!("    {flows:?}, round {round}/{RUNS}: {} {family} {pps:.3} Mpps", datapath.name());
            }
        }
        *figures = rates.iter().map(|r| median_spread(r)).collect();
    }
    Ok(figures)
}

pub fn run() -> anyhow::Result<Section> {
    let counts = [1u32, 1_000, 10_000];
    let setups = setups();
    // figures[pattern][setup][count]: (median, spread)
    let mut figures = [vec![Vec::new(); setups.len()], vec![Vec::new(); setups.len()]];
    for services in counts {
        for (pattern, measured) in measure(services)?.into_iter().enumerate() {
            for (setup, figure) in measured.into_iter().enumerate() {
                figures[pattern][setup].push(figure);
            }
        }
    }
    let setup = |datapath: Datapath, family| {
        setups.iter().position(|&(d, f)| d.name() == datapath.name() && f == family).expect("a setup")
    };
    let iptables = |family| setup(Datapath::Iptables, family);
    let mut markdown = String::new();
    let mut rows = Vec::new();
    let mut charts = Vec::new();
    for (pattern, (flows, title, suffix)) in
        [(Flows::One, "one flow", "pps"), (Flows::NewEach, "a new flow every packet", "pps-new-flows")]
            .into_iter()
            .enumerate()
    {
        let _ = write!(markdown, "{}:\n\n| datapath | family |", title[..1].to_uppercase() + &title[1..]);
        for c in counts {
            let _ = write!(markdown, " {c} services |");
        }
        let _ = writeln!(markdown, "\n|---|---|{}", "---|".repeat(counts.len()));
        for (&(datapath, family), values) in setups.iter().zip(&figures[pattern]) {
            let _ = write!(markdown, "| {} | {family} |", datapath.name());
            for ((pps, spread), (base, _)) in values.iter().zip(&figures[pattern][iptables(family)]) {
                let ratio = if *base > 0.0 { pps / base } else { 0.0 };
                let _ = write!(markdown, " {:.2} Mpps (±{:.2}), {ratio:.1}x |", pps / 1e6, spread / 1e6);
            }
            markdown.push('\n');
            for (services, (pps, spread)) in counts.iter().zip(values) {
                rows.push(
                    json!({"datapath": datapath.name(), "family": family.to_string(), "flows": format!("{flows:?}"),
                                 "services": services, "pps": pps, "spread_pps": spread}),
                );
            }
        }
        markdown.push('\n');
        // A group of bars per count and family, a series per datapath.
        let groups = counts.iter().flat_map(|c| FAMILIES.map(|f| format!("{c} services, {f}"))).collect();
        let series = DATAPATHS
            .iter()
            .enumerate()
            .map(|(d, datapath)| {
                let values = (0..counts.len())
                    .flat_map(|c| (0..FAMILIES.len()).map(move |f| (c, d * FAMILIES.len() + f)))
                    .map(|(c, setup)| figures[pattern][setup][c].0 / 1e6)
                    .collect();
                (datapath.name().to_owned(), values)
            })
            .collect();
        let title = format!("Forwarding throughput over veth, UDP, {title}");
        charts.push((suffix, BarChart { title, y_label: "Mpps at the backend".into(), groups, series, log_y: false }));
    }
    // Issue 18's goals: a new flow every packet at >= 0.6x the one-flow
    // rate, and >= 10x nftables at 10 000 Services.
    let (one, new) = (0, 1); // PATTERNS' order
    let mut ratios = serde_json::Map::new();
    let _ = writeln!(
        markdown,
        "Ratios (goals: a new flow every packet >= 0.6x the one-flow rate, >= 10x nftables at 10 000 \
         Services):\n\n| datapath | family | services | new flows / one flow | new flows / nftables' new flows |\n|---|---|---|---|---|"
    );
    for datapath in [Datapath::Lb, Datapath::LbStack] {
        for family in FAMILIES {
            let (lb, nft) = (setup(datapath, family), setup(Datapath::Nftables, family));
            for (c, services) in counts.iter().enumerate() {
                let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
                let own = ratio(figures[new][lb][c].0, figures[one][lb][c].0);
                let peer = ratio(figures[new][lb][c].0, figures[new][nft][c].0);
                let _ = writeln!(markdown, "| {} | {family} | {services} | {own:.2}x | {peer:.1}x |", datapath.name());
                ratios.insert(
                    format!("{} {family} {services}", datapath.name()),
                    json!({"new_flows_over_one_flow": own, "new_flows_over_nftables": peer}),
                );
            }
        }
    }
    markdown.push('\n');
    let _ = writeln!(
        markdown,
        "Packets per second received at the backend (median of {RUNS} runs of {FRAMES} frames, {NEW_FLOW_FRAMES} \
         for new flows, ± half the range), and the ratio to iptables (ip6tables for IPv6). Each datapath runs in \
         each family on a node of its own, single-stack (IPv6: the twins fd00::<IPv4> of the IPv4 addresses), \
         all side by side and measured in turn. UDP with 18 bytes of payload: 64-byte frames on the wire in \
         IPv4, 84 in IPv6. One flow: established after its first packet. A new flow every packet: random \
         source ports and addresses in 10.244.0.0/16 (its twin in IPv6), so every packet is a conntrack miss \
         and a Service lookup (a walk of KUBE-SERVICES for iptables). lb translates pod traffic on TC ingress \
         of the client's veth (IPv6 in a program of its own, reached by tail call); the redirect row sends it on \
         with `bpf_redirect_peer` into the backend pod, the stack row through the kernel's routing \
         (`--pod-forwarding stack`). The generator and the node share a CPU. Depends on the machine."
    );
    Ok(Section {
        title: "Forwarding throughput over veth, UDP, IPv4 and IPv6",
        markdown,
        json: json!({"figures": rows, "ratios": ratios}),
        charts,
    })
}
