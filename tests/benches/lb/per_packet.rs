//! Per-packet cost of the pod veths' TC ingress program through
//! BPF_PROG_TEST_RUN, in IPv4 and in IPv6 (which that program hands to
//! programs of its own by tail call, counted here as it is paid): the
//! kernel's own time per run (its ~25 ns loop overhead included).
//! A frame the program passes untouched is run `REPEAT` times in the kernel.
//! A frame it rewrites cannot be: the kernel runs a repeat on the output of
//! the run before (an established flow's second run would see a packet to
//! the backend, not to the Service), so those are run once each, and the
//! fixed overhead of a single run is taken out (see [`single`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, ServiceCidr};
use lb_ebpf::packet_builder::PacketBuilder;
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

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;
/// Single runs per figure and run.
const SINGLES: u32 = 20_000;
/// In IPv4; IPv6 runs use their twins (see [`BenchFamily`]).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 9);
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// `count` Services of `family`: the measured one at VIP (TCP 80 and UDP
/// 53, 10 backends, Maglev), the others one backend each, picked at random
/// (their tables would only cost memory here).
fn services(family: Family, count: u32) -> DesiredState {
    let endpoints = |n: u8, base: [u8; 2]| -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint {
                addr: family.twin(Ipv4Addr::new(10, base[0], base[1], 10 + i)),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                node_name: None,
                target: None,
                hints: Default::default(),
            })
            .collect()
    };
    let port =
        |port, protocol, endpoints| ServicePort { name: String::new(), port, protocol, node_port: None, endpoints };
    let service = |i: u32, ip: Ipv4Addr, selection, ports| Service {
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
    };
    let measured =
        vec![port(80, Protocol::Tcp, endpoints(10, [245, 0])), port(53, Protocol::Udp, endpoints(10, [245, 0]))];
    let first = service(0, VIP, BackendSelection::Maglev, measured);
    let others = (1..count).map(|i| {
        let ip = Ipv4Addr::new(10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let backend = [246 + (i >> 16) as u8, (i >> 8) as u8];
        let mut eps = endpoints(1, backend);
        eps[0].addr = family.twin(Ipv4Addr::new(10, backend[0], backend[1], i as u8));
        service(i, ip, BackendSelection::Random, vec![port(80, Protocol::Tcp, eps)])
    });
    DesiredState::new(std::iter::once(first).chain(others))
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

/// Median ns per packet over RUNS runs of SINGLES frames `frame(k)` run
/// once each (k counts on across runs), and the spread. A single run's
/// time carries a fixed overhead that repeats spread out: it is measured
/// on ARP frames, which the program passes at once, interleaved with the
/// frames, and replaced by `floor`, the repeated ARP frame's time.
fn single(dp: &mut ScratchDatapath, frame: impl Fn(u32) -> Vec<u8>, floor: f64) -> (f64, f64) {
    let arp = arp();
    let mut once = |frame: &[u8]| dp.datapath.test_run(TestProgram::PodTc, frame, 1).expect("test run").duration;
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

/// The destination address of an IPv4 or IPv6 frame.
fn destination(frame: &[u8]) -> anyhow::Result<IpAddr> {
    Ok(if frame[12..14] == [0x86, 0xdd] {
        <[u8; 16]>::try_from(&frame[38..54]).map(Ipv6Addr::from)?.into()
    } else {
        <[u8; 4]>::try_from(&frame[30..34]).map(Ipv4Addr::from)?.into()
    })
}

/// Median ns per packet over RUNS runs of REPEAT, and the spread.
fn repeated(dp: &mut ScratchDatapath, program: TestProgram, frame: &[u8]) -> (f64, f64) {
    let runs: Vec<f64> = (0..RUNS)
        .map(|_| dp.datapath.test_run(program, frame, REPEAT).expect("test run").duration.as_nanos() as f64)
        .collect();
    median_spread(&runs)
}

/// What one family costs with `count` Services, on a datapath of its own:
/// new SYN, then (median, spread) of established TCP, established UDP,
/// reply and not a service, then the floor.
struct Figures {
    new_flow: f64,
    measured: [(f64, f64); 4],
    floor: f64,
}

fn measure(family: Family, count: u32) -> anyhow::Result<Figures> {
    let mut dp = ScratchDatapath::load_with(&load_options());
    dp.program(&services(family, count), "bench-node");
    let floor = repeated(&mut dp, TestProgram::PodTc, &arp()).0;
    let (vip, client) = (family.twin(VIP), family.twin(CLIENT));
    // Flow k: a port and a client address of its own (60 000 ports each).
    let syn = |k: u32| {
        let [a, b, c, d] = CLIENT.octets();
        let client = family.twin(Ipv4Addr::new(a, b, c, d.wrapping_add((k / 60_000) as u8)));
        PacketBuilder::new(IPPROTO_TCP, client, 1024 + (k % 60_000) as u16, vip, 80).build()
    };
    let new_flow = single(&mut dp, syn, floor).0;
    // Flow 0 is open: its ACKs.
    let ack = PacketBuilder::new(IPPROTO_TCP, client, 1024, vip, 80).tcp_flags(0x10).build();
    let established = single(&mut dp, |_| ack.clone(), floor);
    let udp = PacketBuilder::new(IPPROTO_UDP, client, 5000, vip, 53).build();
    dp.datapath.test_run(TestProgram::PodTc, &udp, 1)?;
    let udp = single(&mut dp, |_| udp.clone(), floor);
    // The backend's answer to flow 0, as it arrives from its veth.
    let backend = destination(&dp.datapath.test_run(TestProgram::PodTc, &ack, 1)?.frame)?;
    let reply = PacketBuilder::new(IPPROTO_TCP, backend, 8080, client, 1024).tcp_flags(0x10).build();
    let reply = single(&mut dp, |_| reply.clone(), floor);
    let other = PacketBuilder::new(IPPROTO_TCP, client, 40000, family.twin(Ipv4Addr::new(192, 0, 2, 1)), 443).build();
    let other = repeated(&mut dp, TestProgram::PodTc, &other);
    Ok(Figures { new_flow, measured: [established, udp, reply, other], floor })
}

pub fn run() -> anyhow::Result<Section> {
    let mut markdown = String::from(
        "| services | family | new TCP SYN | established TCP | established UDP | reply reverse-NAT | not a service | not IP (floor) |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut results: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    let mut series: Vec<(String, Vec<f64>)> =
        ["established TCP", "established UDP", "reply reverse-NAT", "not a service"]
            .map(|n| (n.to_owned(), Vec::new()))
            .into();
    let mut groups = Vec::new();
    for count in [1u32, 100, 10_000, 100_000] {
        // The families one after the other at each count: as close in time as can be.
        for family in FAMILIES {
            eprintln!("  per_packet: {count} services, {family}");
            let Figures { new_flow, measured, floor } = measure(family, count)?;
            let [established, udp, reply, other] = measured;
            let cell = |(median, spread): (f64, f64)| format!("{median:.0} ns (±{spread:.0})");
            markdown.push_str(&format!(
                "| {count} | {family} | {new_flow:.0} ns | {} | {} | {} | {} | {floor:.0} ns |\n",
                cell(established),
                cell(udp),
                cell(reply),
                cell(other)
            ));
            groups.push(format!("{count} svc, {family}"));
            for (values, figure) in series.iter_mut().zip(measured) {
                values.1.push(figure.0);
            }
            results.entry(family.to_string()).or_default().insert(
                count.to_string(),
                json!({
                    "new_tcp_syn_ns": new_flow,
                    "established_tcp_ns": established.0, "established_tcp_spread_ns": established.1,
                    "established_udp_ns": udp.0, "established_udp_spread_ns": udp.1,
                    "reply_reverse_nat_ns": reply.0, "reply_reverse_nat_spread_ns": reply.1,
                    "not_a_service_ns": other.0, "not_a_service_spread_ns": other.1,
                    "not_ip_ns": floor,
                }),
            );
        }
    }
    markdown.push_str(&format!(
        "\nMedian of {RUNS} runs (± half the range). Frames the program rewrites (every column but the last \
         two) are run once each, {SINGLES} per run (new SYNs: distinct flows), with the fixed overhead of a \
         single run (measured on ARP frames run in between) replaced by the floor; the others are repeated \
         {REPEAT} times in the kernel. Every figure includes BPF_PROG_TEST_RUN's own loop overhead (the floor \
         is mostly that). Each family on a datapath of its own with Services of that family only (IPv6: the \
         twins fd00::<IPv4> of the IPv4 addresses, service CIDR fd00::a60:0/108); an IPv6 frame costs the tail \
         call into lb_tc_pod6 (a new flow a second one, into lb_tc_pod6_new). Depends on the machine (CPU, \
         kernel, other load).\n"
    ));
    let title = "Per-packet cost (BPF_PROG_TEST_RUN, TC ingress on a pod veth)";
    let chart = BarChart { title: title.into(), y_label: "ns per packet".into(), groups, series, log_y: false };
    Ok(Section { title, markdown, json: json!(results), charts: vec![("ns", chart)] })
}
