//! Per-packet cost of the datapath's two packet hooks through
//! BPF_PROG_TEST_RUN, in IPv4 and in IPv6 (which each hook hands to
//! programs of its own by tail call, counted here as it is paid): the pod
//! veths' TC ingress program and the node devices' XDP program. The
//! programs run in a node namespace whose FIB answers as a real node's: the
//! client is a pod behind a veth, and TC sends what it rewrites into it with
//! `bpf_redirect_peer`.
//!
//! Two ways of running, both reported:
//! - hot: a frame repeated in the kernel's own loop. A repeat runs on the
//!   previous run's output, so the flows measured so have an identity
//!   backend (a Service whose endpoint is its own address and port): the
//!   rewrite writes what was there, and only the TTL changes (it is 255, and
//!   a call repeats the frame 250 times).
//! - one-shot: the measured Service's frames (10 Maglev backends) run once
//!   each, with the fixed cost of a single run taken out (see [`single`]):
//!   closer to a packet that finds the caches cold.
//!
//! Beside every figure: the same run's cost for a packet to no Service and
//! for a frame that is not IP (BPF_PROG_TEST_RUN's own floor, mostly).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use lb_common::{DEVICE_POD, IPPROTO_TCP, IPPROTO_UDP, ServiceCidr};
use lb_ebpf::packet_builder::PacketBuilder;
use lb_tests::topology::{Node, Pod};
use lb_userspace::{
    datapath::loader::{LoadOptions, TestProgram},
    model::{
        BackendSelection, DesiredState, Endpoint, IpCidr, Protocol, Service, ServiceName, ServicePort, ServiceType,
        SessionAffinity, TrafficPolicy,
    },
    plan::WireAddr,
};
use serde_json::json;

use crate::{
    Section,
    chart::BarChart,
    common::ScratchDatapath,
    median_spread,
    synthetic::{BenchFamily, Family},
};

const RUNS: usize = 5;
/// Single runs per one-shot figure and run.
const SINGLES: u32 = 20_000;
/// A hot figure's calls per run and kernel repeats per call: on TC, a TTL
/// of 255 lasts 250 repeats; on XDP (whose rewrite leaves the TTL alone,
/// without a fast path device) every call with repeats swaps the kernel's
/// XDP dispatcher and waits for an RCU grace period, so one call.
const TC_HOT: (u32, u32) = (400, 250);
const XDP_HOT: (u32, u32) = (1, 500_000);
const NODE: &str = "bench-node";
/// In IPv4; IPv6 runs use their twins (see [`BenchFamily`]).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The cluster IP whose endpoint is itself (TCP 80, UDP 53).
const SELF_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// The external IP whose endpoint, on this node, is itself (TCP 80).
const SELF_EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 9);
/// Where the measured Service's backends are (10.245.0.10-19).
const BACKENDS: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 245, 0, 0), 16);
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
const COUNTS: [u32; 4] = [1, 1_000, 10_000, 100_000];

fn endpoint(family: Family, addr: Ipv4Addr, port: u16, node: Option<&str>) -> Endpoint {
    Endpoint {
        addr: family.twin(addr),
        port,
        ready: true,
        serving: true,
        terminating: false,
        node_name: node.map(str::to_owned),
        target: None,
        hostname: None,
        hints: Default::default(),
    }
}

fn service(family: Family, i: u32, ip: Ipv4Addr, selection: BackendSelection, ports: Vec<ServicePort>) -> Service {
    Service {
        name: ServiceName::new("bench", format!("svc-{i}")),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![family.twin(ip)],
        external_name: None,
        external_ips: Vec::new(),
        source_ranges: Vec::new(),
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity: SessionAffinity::None,
        backend_selection: selection,
        ports,
        portless_endpoints: Vec::new(),
    }
}

fn port(port: u16, protocol: Protocol, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort { name: String::new(), port, protocol, node_port: None, endpoints }
}

/// `count` Services of `family`: the measured one at VIP (TCP 80 and UDP
/// 53, 10 backends, Maglev), the identity ones at SELF_VIP and
/// SELF_EXTERNAL (see the module's comment), and the others one backend
/// each, picked at random (their tables would only cost memory here).
fn services(family: Family, count: u32) -> DesiredState {
    let backends = |port| (0..10).map(|i| endpoint(family, Ipv4Addr::new(10, 245, 0, 10 + i), port, None)).collect();
    let measured = vec![port(80, Protocol::Tcp, backends(8080)), port(53, Protocol::Udp, backends(8080))];
    let measured = service(family, 0, VIP, BackendSelection::Maglev, measured);
    let to_itself = |addr, p, protocol| port(p, protocol, vec![endpoint(family, addr, p, Some(NODE))]);
    let itself = service(
        family,
        1,
        SELF_VIP,
        BackendSelection::Random,
        vec![to_itself(SELF_VIP, 80, Protocol::Tcp), to_itself(SELF_VIP, 53, Protocol::Udp)],
    );
    let external = Service {
        external_ips: vec![family.twin(SELF_EXTERNAL)],
        external_traffic_policy: TrafficPolicy::Local,
        ..service(
            family,
            2,
            Ipv4Addr::new(10, 96, 0, 12),
            BackendSelection::Random,
            vec![to_itself(SELF_EXTERNAL, 80, Protocol::Tcp)],
        )
    };
    let others = (3..count.max(3)).map(|i| {
        let ip = Ipv4Addr::new(10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let backend = Ipv4Addr::new(10, 246 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        service(
            family,
            i,
            ip,
            BackendSelection::Random,
            vec![port(80, Protocol::Tcp, vec![endpoint(family, backend, 8080, None)])],
        )
    });
    DesiredState::new([measured, itself, external].into_iter().chain(others))
}

/// A dual-stack node's datapath: the service CIDR of each family, as
/// `--service-cidr` would set them.
fn load_options() -> LoadOptions {
    fn cidr<A: WireAddr>(family: Family) -> ServiceCidr<A> {
        let cidr: IpCidr = family.service_cidr().parse().expect("a CIDR");
        let wire = |ip| A::from_ip(ip).expect("of the family");
        ServiceCidr { network: wire(cidr.network()), mask: wire(cidr.mask()) }
    }
    LoadOptions { service_cidr: cidr(Family::V4), service_cidr6: cidr(Family::V6), ..LoadOptions::default() }
}

/// The node the programs run in, with the client pod. The FIB sends the
/// client's address, the identity cluster IP and the measured Service's
/// backends into the client pod's veth (through the client as their
/// gateway), with a neighbour entry, so that TC's fast path finds a pod.
fn node(family: Family) -> anyhow::Result<(Node, Pod, u32)> {
    let node = Node::new()?;
    let pod = family.add_pod(&node, "client", CLIENT)?;
    let client = family.twin(CLIENT).to_string();
    let veth = pod.host_veth.as_str();
    let mac = pod.ns.mac("eth0")?;
    let ip = |args: &[&str]| node.ns.exec(&[&["ip", family.flag()][..], args].concat()).map(drop);
    ip(&["neigh", "replace", &client, "lladdr", &mac, "dev", veth, "nud", "permanent"])?;
    let backends = format!("{}/{}", family.twin(BACKENDS.0), family.prefix_len(BACKENDS.1));
    for to in [backends, family.twin(SELF_VIP).to_string()] {
        ip(&["route", "add", &to, "via", &client, "dev", veth])?;
    }
    let listed = node.ns.exec(&["ip", "-o", "link", "show", veth])?;
    let ifindex = String::from_utf8_lossy(&listed.stdout).split(':').next().unwrap_or_default().trim().parse()?;
    Ok((node, pod, ifindex))
}

/// Median ns per packet over RUNS runs of SINGLES frames `frame(k)` run
/// once each (k counts on across runs), and the spread. A single run's
/// time carries a fixed overhead that repeats spread out: it is measured
/// on ARP frames, which the program passes at once, interleaved with the
/// frames, and replaced by `floor`, the repeated ARP frame's time.
fn single(dp: &mut ScratchDatapath, program: TestProgram, frame: impl Fn(u32) -> Vec<u8>, floor: f64) -> (f64, f64) {
    let arp = arp();
    let mut once = |frame: &[u8]| dp.datapath.test_run(program, frame, 1).expect("test run").duration;
    let runs: Vec<f64> = (0..RUNS as u32)
        .map(|run| {
            let (mut total, mut overhead) = (Duration::ZERO, Duration::ZERO);
            for i in 0..SINGLES {
                total += once(&frame(run * SINGLES + i));
                overhead += once(&arp);
            }
            (total.as_nanos() as f64 - overhead.as_nanos() as f64) / f64::from(SINGLES) + floor
        })
        .collect();
    median_spread(&runs)
}

/// A frame that is not IP: the program's floor.
fn arp() -> Vec<u8> {
    let mut arp = PacketBuilder::new(IPPROTO_TCP, CLIENT, 1024, VIP, 80).build();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp
}

/// Median ns per packet over RUNS runs of `program`'s hot calls (see
/// `TC_HOT`) repeating `frame` in the kernel, and the spread.
fn hot(dp: &mut ScratchDatapath, program: TestProgram, frame: &[u8]) -> (f64, f64) {
    let (calls, repeat) = if program == TestProgram::XdpNode { XDP_HOT } else { TC_HOT };
    let runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let total: Duration =
                (0..calls).map(|_| dp.datapath.test_run(program, frame, repeat).expect("test run").duration).sum();
            total.as_nanos() as f64 / f64::from(calls)
        })
        .collect();
    median_spread(&runs)
}

/// (median, spread) in ns.
type Figure = (f64, f64);

/// One hook's figures with `count` Services of one family.
#[derive(Default)]
struct Hook {
    /// One-shot.
    new_flow: Figure,
    /// One-shot, the measured Service's flow.
    established_once: Figure,
    /// Hot, the identity flows.
    established: Figure,
    udp: Option<Figure>,
    reply: Figure,
    not_a_service: Figure,
    floor: Figure,
}

impl Hook {
    fn ratio(&self, figure: Figure) -> f64 {
        figure.0 / self.not_a_service.0
    }
}

/// A TCP frame of the client's flow `sport` to `to`:80 with `flags`, a
/// TTL of 255.
fn tcp(family: Family, from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    PacketBuilder::new(IPPROTO_TCP, family.twin(from.0), from.1, family.twin(to.0), to.1)
        .tcp_flags(flags)
        .ttl(255)
        .build()
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
/// Where no Service is.
const NOWHERE: (Ipv4Addr, u16) = (Ipv4Addr::new(192, 0, 2, 1), 443);

/// The SYN of one-shot flow k from `client` to `to`: a port and a client
/// address of its own (60 000 ports each).
fn syn(family: Family, client: Ipv4Addr, to: (Ipv4Addr, u16), k: u32) -> Vec<u8> {
    let client = Ipv4Addr::from(u32::from(client) + k / 60_000);
    tcp(family, (client, 1024 + (k % 60_000) as u16), to, SYN)
}

/// The pod veths' TC program: flows from the client pod.
fn tc(dp: &mut ScratchDatapath, family: Family) -> anyhow::Result<Hook> {
    let program = TestProgram::PodTc;
    let floor = hot(dp, program, &arp());
    let new_flow = single(dp, program, |k| syn(family, CLIENT, (VIP, 80), k), floor.0);
    // Flow 0 of the SYNs is open: its ACKs.
    let ack = tcp(family, (CLIENT, 1024), (VIP, 80), ACK);
    let established_once = single(dp, program, |_| ack.clone(), floor.0);
    // The identity flows: opened once, then repeated.
    dp.datapath.test_run(program, &tcp(family, (CLIENT, 2000), (SELF_VIP, 80), SYN), 1)?;
    let established = hot(dp, program, &tcp(family, (CLIENT, 2000), (SELF_VIP, 80), ACK));
    let udp = PacketBuilder::new(IPPROTO_UDP, family.twin(CLIENT), 5000, family.twin(SELF_VIP), 53).ttl(255).build();
    dp.datapath.test_run(program, &udp, 1)?;
    let udp = hot(dp, program, &udp);
    let reply = hot(dp, program, &tcp(family, (SELF_VIP, 80), (CLIENT, 2000), ACK));
    let not_a_service = hot(dp, program, &tcp(family, (CLIENT, 40000), NOWHERE, ACK));
    Ok(Hook { new_flow, established_once, established, udp: Some(udp), reply, not_a_service, floor })
}

/// The node devices' XDP program: flows from an external client to the
/// external IPs.
fn xdp(dp: &mut ScratchDatapath, family: Family) -> anyhow::Result<Hook> {
    let program = TestProgram::XdpNode;
    let floor = hot(dp, program, &arp());
    let client = Ipv4Addr::new(198, 51, 100, 7);
    let new_flow = single(dp, program, |k| syn(family, client, (SELF_EXTERNAL, 80), k), floor.0);
    let ack = tcp(family, (client, 1024), (SELF_EXTERNAL, 80), ACK);
    let established_once = single(dp, program, |_| ack.clone(), floor.0);
    let established = hot(dp, program, &ack);
    let reply = hot(dp, program, &tcp(family, (SELF_EXTERNAL, 80), (client, 1024), ACK));
    let not_a_service = hot(dp, program, &tcp(family, (client, 40000), NOWHERE, ACK));
    Ok(Hook { new_flow, established_once, established, udp: None, reply, not_a_service, floor })
}

/// Both hooks' figures for one family with `count` Services, on a datapath
/// and node of their own.
fn measure(family: Family, count: u32) -> anyhow::Result<[(&'static str, Hook); 2]> {
    let (node, _pod, veth) = node(family)?;
    let mut dp = ScratchDatapath::load_with(&load_options());
    dp.program(&services(family, count), NODE);
    dp.maps.set_devices(&BTreeMap::from([(veth, DEVICE_POD)]))?;
    let _inside = node.ns.enter()?;
    Ok([("TC", tc(&mut dp, family)?), ("XDP", xdp(&mut dp, family)?)])
}

pub fn run() -> anyhow::Result<Section> {
    let mut markdown = String::from(
        "| services | family | hook | new TCP SYN, once | established TCP, once | established TCP | established UDP | reply | not a service | not IP (floor) | established / not a service | reply / not a service |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut results: BTreeMap<String, BTreeMap<String, BTreeMap<String, serde_json::Value>>> = BTreeMap::new();
    let mut ratios = results.clone();
    let mut series: Vec<(String, Vec<f64>)> =
        ["established TCP", "reply", "not a service", "not IP (floor)"].map(|n| (n.to_owned(), Vec::new())).into();
    let mut groups = Vec::new();
    let mut worst: f64 = 0.0;
    for count in COUNTS {
        // The families one after the other at each count: as close in time as can be.
        for family in FAMILIES {
            eprintln!("  per_packet: {count} services, {family}");
            for (hook, f) in measure(family, count)? {
                let cell = |(median, spread): Figure| format!("{median:.0} ns (±{spread:.0})");
                let udp = f.udp.map_or("-".to_owned(), cell);
                let (established, reply) = (f.ratio(f.established), f.ratio(f.reply));
                worst = worst.max(established);
                markdown.push_str(&format!(
                    "| {count} | {family} | {hook} | {:.0} ns | {} | {} | {udp} | {} | {} | {} | {established:.2}x | {reply:.2}x |\n",
                    f.new_flow.0,
                    cell(f.established_once),
                    cell(f.established),
                    cell(f.reply),
                    cell(f.not_a_service),
                    cell(f.floor),
                ));
                groups.push(format!("{count} svc, {family}, {hook}"));
                for (values, figure) in series.iter_mut().zip([f.established, f.reply, f.not_a_service, f.floor]) {
                    values.1.push(figure.0);
                }
                let json_figure = |(median, spread): Figure| json!({"ns": median, "spread_ns": spread});
                results.entry(family.to_string()).or_default().entry(hook.to_owned()).or_default().insert(
                    count.to_string(),
                    json!({
                        "new_tcp_syn_once": json_figure(f.new_flow),
                        "established_tcp_once": json_figure(f.established_once),
                        "established_tcp": json_figure(f.established),
                        "established_udp": f.udp.map(json_figure),
                        "reply": json_figure(f.reply),
                        "not_a_service": json_figure(f.not_a_service),
                        "not_ip": json_figure(f.floor),
                    }),
                );
                ratios.entry(family.to_string()).or_default().entry(hook.to_owned()).or_default().insert(
                    count.to_string(),
                    json!({
                        "established_over_not_a_service": established,
                        "reply_over_not_a_service": reply,
                        "established_udp_over_not_a_service": f.udp.map(|udp| f.ratio(udp)),
                    }),
                );
            }
        }
    }
    markdown.push_str(&format!(
        "\nMedian of {RUNS} runs (± half the range), ns per packet through BPF_PROG_TEST_RUN, its own loop \
         included (the floor is mostly that). Hot: the frame repeated in the kernel (TC: {} calls of {} \
         repeats; XDP: {} call of {}), on identity flows (a Service whose endpoint is its own address, so that the rewrite \
         is valid on its own output; TC's packets then go into the client pod by `bpf_redirect_peer`, as the \
         FIB of the node namespace they run in says). Once: {SINGLES} frames of the measured Service (10 \
         Maglev backends; new SYNs: distinct flows) run once each, the fixed overhead of a single run \
         (measured on ARP frames run in between) replaced by the floor. TC: the pod veths' ingress, flows \
         from a client pod to cluster IPs; XDP: the node devices', flows from an external client to an \
         external IP (traffic policy Local, no fast path device). Each family on a datapath of its own with \
         Services of that family only (IPv6: the twins fd00::<IPv4> of the IPv4 addresses, service CIDR \
         fd00::a60:0/108); an IPv6 frame costs the tail call into the IPv6 programs (a new flow a second \
         one). Goal: an established packet at most 1.1x a packet for no Service at every scale; the worst \
         here: {worst:.2}x. Depends on the machine (CPU, kernel, other load).\n",
        TC_HOT.0, TC_HOT.1, XDP_HOT.0, XDP_HOT.1
    ));
    let title = "Per-packet cost (BPF_PROG_TEST_RUN, TC on a pod veth and XDP on a node device)";
    let chart = BarChart { title: title.into(), y_label: "ns per packet".into(), groups, series, log_y: false };
    Ok(Section { title, markdown, json: json!({"figures": results, "ratios": ratios}), charts: vec![("ns", chart)] })
}
