//! Forwarding throughput over veth, pod -> cluster IP -> pod: 64-byte UDP
//! frames to a Service, of one flow or a new flow each, sent from a client
//! pod by BPF_PROG_RUN in live-frames mode (XDP_TX out of its eth0; the
//! node's end runs a pass-through XDP program so that the veth takes them),
//! forwarded by the node (lb on TC ingress), and counted where they arrive:
//! a raw-table DROP rule in the backend pod, which sees frames that came by
//! the veth and by `bpf_redirect_peer` alike.
//! The generator and the node's receive processing share a CPU (the veth
//! peer's NAPI runs where the frames are sent), so each figure is the rate
//! of generator + node datapath together; the generator's own cost is the
//! same for every datapath.

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
    synthetic::{BACKEND_POD, Datapath, Protocol, Synthetic, vip},
};

/// Frames per run: one flow, new flows (every one of which costs kube-proxy's
/// datapaths a walk of their rules).
const FRAMES: u32 = 2_000_000;
const NEW_FLOW_FRAMES: u32 = 300_000;
const RUNS: usize = 3;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 100);

/// Frames the backend's DROP rule counted so far.
fn received(backend: &Netns) -> anyhow::Result<u64> {
    let out = backend.exec(&["iptables-legacy", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("DROP"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no DROP rule counter in:\n{text}"))
}

/// A node running one datapath for some Services, with a client pod that
/// generates frames and a backend pod that counts them.
struct Rig {
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
    fn new(datapath: Datapath, services: u32) -> anyhow::Result<Self> {
        let synthetic = Synthetic { services, protocol: Protocol::Udp };
        let node = Node::new()?;
        let backend = node.add_pod("backend", BACKEND_POD)?;
        backend.ns.exec(&["iptables-legacy", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])?;
        // The node knows the backend's MAC from the start: no ARP in the runs.
        let backend_mac = backend.ns.mac("eth0")?;
        let backend_ip = BACKEND_POD.to_string();
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
        let client = node.add_pod("client", CLIENT)?;
        let agent = datapath.program(&node, &synthetic, None)?;
        // The generator's frames reach the node only through an XDP program
        // there (a veth takes XDP_TX frames only when its peer runs one).
        let pass = xdp_const::attach(&node.ns, "h-client", Action::Pass)?;
        let mac = |ns: &Netns, ifname: &str| -> anyhow::Result<[u8; 6]> {
            let text = ns.mac(ifname)?;
            let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
            bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {text}"))
        };
        // 64 bytes on the wire without the FCS: 14 + 20 + 8 + 18 bytes of payload.
        let mut frame = PacketBuilder::new(IPPROTO_UDP, CLIENT.octets(), 5000, vip(services - 1).octets(), 80)
            .payload(&[0; 18])
            .build();
        // Clients from all of 10.244.0.0/16 (see `Flows::NewEach`).
        let mut new_flows = PacketBuilder::new(IPPROTO_UDP, [10, 244, 0, 0], 5000, vip(services - 1).octets(), 80)
            .payload(&[0; 18])
            .ip_id(0xffff)
            .udp_zero_checksum()
            .build();
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
        Ok(Rig { backend, client, frame, new_flows, _pass: pass, _agent: agent, _node: node })
    }

    /// Packets per second received at the backend in one run.
    fn rate(&self, flows: Flows) -> anyhow::Result<f64> {
        let (frame, count) = match flows {
            Flows::One => (&self.frame, FRAMES),
            Flows::NewEach => (&self.new_flows, NEW_FLOW_FRAMES),
        };
        let before = received(&self.backend.ns)?;
        let start = Instant::now();
        xdp_const::send_live_frames(&self.client.ns, "eth0", frame, count, flows)?;
        // Frames still queued at the node arrive within a moment.
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = start.elapsed();
        Ok((received(&self.backend.ns)? - before) as f64 / elapsed.as_secs_f64())
    }
}

const DATAPATHS: [Datapath; 4] = [Datapath::Lb, Datapath::LbStack, Datapath::Iptables, Datapath::Nftables];

const PATTERNS: [Flows; 2] = [Flows::One, Flows::NewEach];

/// (median, spread) packets per second of each of DATAPATHS with `services`
/// Services, for each of PATTERNS: every datapath is set up on a node of
/// its own, then measured in turn, RUNS rounds.
fn measure(services: u32) -> anyhow::Result<[Vec<(f64, f64)>; 2]> {
    let rigs = DATAPATHS
        .iter()
        .map(|datapath| {
            eprintln!("  throughput: setting up {} with {services} services", datapath.name());
            Rig::new(*datapath, services)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut figures = [Vec::new(), Vec::new()];
    for (flows, figures) in PATTERNS.into_iter().zip(&mut figures) {
        let mut rates = vec![Vec::new(); rigs.len()];
        for round in 1..=RUNS {
            for ((rig, rates), datapath) in rigs.iter().zip(&mut rates).zip(DATAPATHS) {
                rates.push(rig.rate(flows)?);
                let pps = rates.last().expect("pushed") / 1e6;
                eprintln!("    {flows:?}, round {round}/{RUNS}: {} {pps:.3} Mpps", datapath.name());
            }
        }
        *figures = rates.iter().map(|r| median_spread(r)).collect();
    }
    Ok(figures)
}

pub fn run() -> anyhow::Result<Section> {
    let counts = [1u32, 1_000, 10_000];
    // figures[pattern][datapath][count]: (median, spread)
    let mut figures = [vec![Vec::new(); DATAPATHS.len()], vec![Vec::new(); DATAPATHS.len()]];
    for services in counts {
        for (pattern, measured) in measure(services)?.into_iter().enumerate() {
            for (datapath, figure) in measured.into_iter().enumerate() {
                figures[pattern][datapath].push(figure);
            }
        }
    }
    let iptables = DATAPATHS.iter().position(|d| matches!(d, Datapath::Iptables)).expect("a peer");
    let mut markdown = String::new();
    let mut rows = Vec::new();
    let mut charts = Vec::new();
    for (pattern, (flows, title, suffix)) in
        [(Flows::One, "one flow", "pps"), (Flows::NewEach, "a new flow every packet", "pps-new-flows")]
            .into_iter()
            .enumerate()
    {
        let _ = write!(markdown, "{}:\n\n| datapath |", title[..1].to_uppercase() + &title[1..]);
        for c in counts {
            let _ = write!(markdown, " {c} services |");
        }
        let _ = writeln!(markdown, "\n|---|{}", "---|".repeat(counts.len()));
        let mut series = Vec::new();
        for (datapath, values) in DATAPATHS.iter().zip(&figures[pattern]) {
            let _ = write!(markdown, "| {} |", datapath.name());
            for ((pps, spread), (base, _)) in values.iter().zip(&figures[pattern][iptables]) {
                let ratio = if *base > 0.0 { pps / base } else { 0.0 };
                let _ = write!(markdown, " {:.2} Mpps (±{:.2}), {ratio:.1}x |", pps / 1e6, spread / 1e6);
            }
            markdown.push('\n');
            for (services, (pps, spread)) in counts.iter().zip(values) {
                rows.push(json!({"datapath": datapath.name(), "flows": format!("{flows:?}"), "services": services,
                                 "pps": pps, "spread_pps": spread}));
            }
            series.push((datapath.name().to_owned(), values.iter().map(|v| v.0 / 1e6).collect()));
        }
        markdown.push('\n');
        let groups = counts.iter().map(|c| format!("{c} services")).collect();
        let title = format!("Forwarding throughput over veth, 64-byte UDP, {title}");
        charts.push((suffix, BarChart { title, y_label: "Mpps at the backend".into(), groups, series, log_y: false }));
    }
    let _ = writeln!(
        markdown,
        "Packets per second received at the backend (median of {RUNS} runs of {FRAMES} frames, {NEW_FLOW_FRAMES} \
         for new flows, ± half the range), and the ratio to iptables. The datapaths run side by side on nodes of \
         their own and are measured in turn. One flow: established after its first packet. A new flow every \
         packet: random source ports and addresses in 10.244.0.0/16, so every packet is a conntrack miss and a \
         Service lookup (a walk of KUBE-SERVICES for iptables). lb translates pod traffic on TC ingress of the \
         client's veth; the redirect row sends it on with `bpf_redirect_peer` into the backend pod, the stack \
         row through the kernel's routing (`--pod-forwarding stack`). Depends on the machine."
    );
    Ok(Section { title: "Forwarding throughput over veth, 64-byte UDP", markdown, json: json!(rows), charts })
}
