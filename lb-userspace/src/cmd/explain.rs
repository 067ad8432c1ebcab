//! `lb-agent explain`: what the datapath would do with one packet, step by
//! step. The packet is built, parsed and decided by the programs' own code
//! (`lb_ebpf`), over the live pinned maps (`datapath::replay`), and the
//! rewrite is applied to it; nothing is written to the maps.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context as _, bail};
use aya::{Pod, maps::MapError};
use lb_common::{
    CT_FORWARD, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_SYN, CtTimeouts, DEVICE_INGRESS_HOOKED, DEVICE_POD,
    FRONTEND_SCOPE_PODS, Hook, IPPROTO_TCP, Ipv6Wire, Reason, ServiceCidr, ServiceMeta,
};
use lb_ebpf::{
    decide::{Verdict, decide},
    packet::{
        family::{Family, V4, V6},
        nat::{self, Side},
        parse::{Frame, Packet, parse, parse_ipv6},
        tcp,
    },
    packet_builder::{PacketBuilder, checksum_errors},
};
use pcap_parser::{Block, Linktype, PcapCapture, PcapNGCapture};
use serde::{Deserialize, Serialize};

use super::get::Output;
use crate::{
    datapath::{
        loader::LoadOptions,
        maps::{DatapathMaps, FamilyMaps},
        replay::{Flow, FlowEntry, LoadedSettings, Replay, Step},
    },
    model::IpCidr,
    plan::{WireAddr, datapath_cidr},
};

/// The packet to explain: an Ethernet frame arriving on `ifindex`.
#[derive(Clone, Debug)]
pub struct Question {
    pub frame: Vec<u8>,
    pub ifindex: u32,
}

impl Question {
    /// A packet from `from` to `to` of `proto` (`IPPROTO_TCP` or
    /// `IPPROTO_UDP`; `tcp_flags` for TCP), with valid checksums.
    pub fn built(from: SocketAddr, to: SocketAddr, proto: u8, tcp_flags: u8, ifindex: u32) -> anyhow::Result<Self> {
        if from.is_ipv4() != to.is_ipv4() {
            bail!("--from {from} and --to {to} are of two families");
        }
        let frame = PacketBuilder::new(proto, from.ip(), from.port(), to.ip(), to.port()).tcp_flags(tcp_flags).build();
        Ok(Question { frame, ifindex })
    }

    /// Frame `number` (from 1) of the capture in `path` (pcap or pcapng, of
    /// Ethernet frames: `tcpdump -i IFACE -w FILE`).
    pub fn captured(path: &Path, number: usize, ifindex: u32) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let frames = captured_frames(&bytes).with_context(|| format!("{}", path.display()))?;
        let count = frames.len();
        let (linktype, frame) = frames
            .into_iter()
            .nth(number.saturating_sub(1))
            .with_context(|| format!("{} holds {count} frames, none numbered {number}", path.display()))?;
        if linktype != Linktype::ETHERNET {
            bail!(
                "{}: frame {number} is of link type {linktype}, not Ethernet (capture on the interface itself, `tcpdump -i IFACE`, not on `any`)",
                path.display()
            );
        }
        Ok(Question { frame: frame.to_vec(), ifindex })
    }
}

/// Every packet of a pcap or pcapng capture with its link type.
fn captured_frames(bytes: &[u8]) -> anyhow::Result<Vec<(Linktype, &[u8])>> {
    match bytes.get(..4) {
        // Legacy pcap in this host's order, microseconds or nanoseconds.
        Some([0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1]) => {
            let capture = PcapCapture::from_file(bytes).map_err(|e| anyhow::anyhow!("not a readable pcap: {e:?}"))?;
            return Ok(capture.blocks.iter().map(|b| (capture.header.network, b.data)).collect());
        }
        Some([0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d]) => {
            bail!("a big-endian pcap: write it again in this host's order (editcap -F pcapng)")
        }
        _ => {}
    }
    let capture =
        PcapNGCapture::from_file(bytes).map_err(|e| anyhow::anyhow!("neither a pcap nor a pcapng capture ({e:?})"))?;
    let mut frames = Vec::new();
    for section in &capture.sections {
        // Packets name their interface by its place among the section's
        // descriptions; a simple packet block, the first's.
        let mut interfaces: Vec<(Linktype, u32)> = Vec::new();
        let interface = |interfaces: &[(Linktype, u32)], id: u32| {
            interfaces
                .get(id as usize)
                .copied()
                .with_context(|| format!("a packet names interface {id}, which the capture does not describe"))
        };
        for block in &section.blocks {
            match block {
                Block::InterfaceDescription(idb) => interfaces.push((idb.linktype, idb.snaplen)),
                Block::EnhancedPacket(epb) => {
                    let (linktype, _) = interface(&interfaces, epb.if_id)?;
                    frames.push((linktype, &epb.data[..(epb.caplen as usize).min(epb.data.len())]));
                }
                Block::SimplePacket(spb) => {
                    let (linktype, snaplen) = interface(&interfaces, 0)?;
                    let len = match snaplen {
                        0 => spb.origlen,
                        snaplen => spb.origlen.min(snaplen),
                    };
                    frames.push((linktype, &spb.data[..(len as usize).min(spb.data.len())]));
                }
                _ => {}
            }
        }
    }
    Ok(frames)
}

/// What the programs were loaded with that no map holds: from the agent's
/// `/status`, or its defaults when it does not answer.
pub struct Loaded {
    pub ct_timeouts: CtTimeouts,
    pub service_cidr: ServiceCidr,
    pub service_cidr6: ServiceCidr<Ipv6Wire>,
}

/// What `explain` prints.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `TCP 10.244.0.100:40000 -> 10.96.0.10:80 [SYN]`.
    pub packet: String,
    pub interface: String,
    /// The counters' hook name (`XDP-NODE`, `TC-POD`).
    pub hook: String,
    /// Each lookup with its answer, and each write left out, in order.
    pub steps: Vec<String>,
    /// `hit`, `miss`, or none when the packet was not looked up.
    pub conntrack: Option<String>,
    /// `namespace/name:port` of the frontend that decided, if any.
    pub service: Option<String>,
    /// The backend the packet goes to (a new or established flow).
    pub backend: Option<String>,
    /// That backend's pod, when the endpoint names one.
    pub backend_pod: Option<String>,
    /// `rewrite`, `pass`, `drop` or `reject`.
    pub verdict: String,
    /// The verdict's reason: the counter it bumps.
    pub reason: String,
    /// The counter as `/metrics` names it.
    pub counter: String,
    /// The packet once rewritten, with its checksums checked.
    pub rewritten: Option<String>,
    pub checksums: Option<String>,
    /// Map writes the real packet would make that were left out.
    pub writes_left_out: usize,
    pub notes: Vec<String>,
}

/// `lb-agent explain`: `question` against the maps pinned under `bpf_dir`,
/// with the settings of the agent serving metrics on `agent`.
pub fn explain_live(
    question: &Question,
    interface: &str,
    bpf_dir: &Path,
    agent: SocketAddr,
) -> anyhow::Result<Explanation> {
    let (loaded, unanswered) = match super::status::fetch(agent) {
        Ok(status) => (Loaded::from_settings(&status.settings)?, None),
        Err(err) => (Loaded::defaults(), Some(err)),
    };
    let maps = DatapathMaps::open_pinned(bpf_dir)?;
    let mut explanation = explain(&maps, question, interface, &loaded)?;
    if let Some(err) = unanswered {
        explanation
            .notes
            .push(format!("{err:#}: the agent's default service CIDR and conntrack timeouts were assumed"));
    }
    Ok(explanation)
}

/// Explains `question` against `maps`.
pub fn explain(
    maps: &DatapathMaps,
    question: &Question,
    interface: &str,
    loaded: &Loaded,
) -> anyhow::Result<Explanation> {
    let flags = match maps.devices.get(&question.ifindex, 0) {
        Ok(flags) => flags,
        Err(MapError::KeyNotFound) => 0,
        Err(err) => return Err(err).context("reading the devices map"),
    };
    if flags & DEVICE_INGRESS_HOOKED == 0 {
        bail!(
            "interface {interface} (ifindex {}) has no program of the agent pinned here: it attaches to --device and --pod-device interfaces only",
            question.ifindex
        );
    }
    let hook = if flags & DEVICE_POD != 0 { Hook::PodTc } else { Hook::NodeXdp };
    let mut frame = question.frame.clone();
    let mut explanation = Explanation {
        packet: format!("a frame of {} bytes", frame.len()),
        interface: format!("{interface} (ifindex {})", question.ifindex),
        hook: hook.name().to_owned(),
        ..Explanation::default()
    };
    let (data, end) = (frame.as_mut_ptr() as usize, frame.as_mut_ptr() as usize + frame.len());
    // As each program parses: TC's socket buffer may hold more than its
    // linear part (a GSO packet).
    let how = if hook == Hook::PodTc { Frame::Skb { len: frame.len() as u32 } } else { Frame::Linear };
    let timeouts = loaded.ct_timeouts;
    if frame.get(12..14) != Some(&[0x86, 0xdd]) {
        let settings = LoadedSettings { ct_timeouts: timeouts, service_cidr: loaded.service_cidr };
        let parsed = parse(data, end, how);
        decide_family::<V4>(maps, &maps.v4, settings, parsed, hook, question.ifindex, &mut explanation)?;
    } else {
        let settings = LoadedSettings { ct_timeouts: timeouts, service_cidr: loaded.service_cidr6 };
        let parsed = parse_ipv6(data, end, how);
        decide_family::<V6>(maps, &maps.v6, settings, parsed, hook, question.ifindex, &mut explanation)?;
    }
    if explanation.verdict == "rewrite" {
        let (flow, tcp_flags) = reparse(&frame).context("the rewritten packet does not parse")?;
        explanation.rewritten = Some(describe(&flow, tcp_flags));
        explanation.checksums = Some(checksum_errors(&frame).unwrap_or_else(|| "valid".into()));
    }
    explanation.counter =
        format!("lb_datapath_packets_total{{hook=\"{}\",reason=\"{}\"}}", explanation.hook, explanation.reason);
    Ok(explanation)
}

/// The decision for a packet of family `F` (parsed as `parsed` out of the
/// frame, which is rewritten in place), into `out`.
fn decide_family<F: Family>(
    maps: &DatapathMaps,
    family: &FamilyMaps<F::Addr>,
    settings: LoadedSettings<F::Addr>,
    parsed: Result<Packet<F>, Reason>,
    hook: Hook,
    ifindex: u32,
    out: &mut Explanation,
) -> anyhow::Result<()>
where
    F::Addr: WireAddr + Pod,
{
    let pkt = match parsed {
        Ok(pkt) => pkt,
        Err(reason) => {
            out.steps.push(match reason {
                Reason::PassNotTcpUdp => "parse: not TCP or UDP: ICMP is decided apart (echo requests to a Service address answered, errors about translated packets translated back), not explained here".into(),
                _ => format!("parse: {}: passed untouched", reason.name()),
            });
            (out.verdict, out.reason) = ("pass".into(), reason.name().into());
            return Ok(());
        }
    };
    let flow = pkt.flow();
    out.packet = describe(&Flow::of(&flow), pkt.tcp_flags());
    out.steps.push("parse: TCP/UDP over IP, no options or fragments: decided".into());
    let replay = Replay::new(maps, family, settings, ifindex);
    let verdict = decide(&flow, pkt.tcp_flags(), &replay, hook);
    let steps = replay.into_steps()?;
    let names = Names { maps };
    // The flow's entry counts when the verdict is the entry's; otherwise it
    // was expired, or a SYN reopened a closed connection's ports.
    let by_entry = matches!(verdict.reason(), Reason::ForwardEstablished | Reason::ReplyReverseNat);
    let mut frontend_id = None;
    for step in &steps {
        let mut aside = None;
        match step {
            Step::Conntrack { found, .. } if out.conntrack.is_none() => {
                let result = match found {
                    None => "miss",
                    Some(entry) if by_entry => {
                        frontend_id = Some(entry.frontend_id);
                        "hit"
                    }
                    Some(_) => {
                        aside =
                            Some("the entry does not count: expired, or a SYN opening a new connection on its ports");
                        "ignored"
                    }
                };
                out.conntrack = Some(result.into());
            }
            Step::Frontend { found: Some(frontend), .. } => frontend_id = Some(frontend.frontend_id),
            Step::WouldWriteConntrack { .. } | Step::WouldRefreshConntrack { .. } | Step::WouldWriteAffinity { .. } => {
                out.writes_left_out += 1
            }
            _ => {}
        }
        out.steps.push(names.step(step));
        out.steps.extend(aside.map(str::to_owned));
    }
    out.service = frontend_id.map(|id| names.service(id));
    out.reason = verdict.reason().name().to_owned();
    match verdict {
        Verdict::Pass(_) => out.verdict = "pass".into(),
        Verdict::Drop(_) => out.verdict = "drop".into(),
        Verdict::Reject(_) => {
            out.verdict = "reject".into();
            let answer = if flow.proto == IPPROTO_TCP { "a TCP reset" } else { "an ICMP port unreachable" };
            out.notes.push(format!("the datapath answers the client with {answer}"));
        }
        Verdict::Rewrite { side, addr, port, other, .. } => {
            out.verdict = "rewrite".into();
            let to = SocketAddr::new(addr.ip(), lb_common::wire::port_number(port));
            if side == Side::Dst {
                out.backend = Some(to.to_string());
                out.backend_pod = frontend_id.and_then(|id| names.pod(id, to));
            }
            // SAFETY: `pkt` was parsed from the frame just now, which
            // nothing has touched since and which is writable.
            unsafe { nat::rewrite(&pkt, side, (addr, port), other.get()) };
            out.notes
                .push("where it goes next is the kernel FIB's answer for the rewritten packet (not asked here)".into());
        }
    }
    // A random number decides when a frontend without a Maglev table picks
    // (the list entry follows it) or a SNAT port is tried again (another
    // lookup follows); the SNAT loop also draws one it may never use.
    let random_decided =
        steps.windows(2).any(|w| matches!(w, [Step::Random(_), Step::ListEntry { .. } | Step::Conntrack { .. }]));
    if random_decided {
        out.notes.push("a random number took part: the real packet draws its own".into());
    }
    Ok(())
}

/// Names for the ids the maps hold.
struct Names<'m> {
    maps: &'m DatapathMaps,
}

impl Names<'_> {
    /// The Service port `frontend_id` serves (see `service_port`).
    fn service(&self, frontend_id: u32) -> String {
        match self.maps.service_meta.get(&frontend_id, 0) {
            Ok(meta) => service_port(&meta),
            Err(_) => format!("frontend {frontend_id} (no Service names it)"),
        }
    }

    /// The pod behind `backend` among `frontend_id`'s endpoints.
    fn pod(&self, frontend_id: u32, backend: SocketAddr) -> Option<String> {
        self.maps.endpoints.iter().flatten().find_map(|(key, ep)| {
            let at = super::get::endpoint_address(&ep);
            (key.frontend_id == frontend_id && at == backend && !ep.target().is_empty()).then(|| ep.target().to_owned())
        })
    }

    fn step(&self, step: &Step) -> String {
        match step {
            Step::Conntrack { key, found: None } => format!("conntrack {}: miss", describe(key, 0)),
            Step::Conntrack { key, found: Some(entry) } => {
                format!("conntrack {}: hit, {}", describe(key, 0), self.entry(entry))
            }
            Step::Frontend { addr, proto, scope, found } => {
                let scope = if *scope == FRONTEND_SCOPE_PODS { " (pods' twin)" } else { "" };
                let what = match found {
                    None => "none".to_owned(),
                    Some(fe) => {
                        let selection = match fe.maglev_size {
                            0 => "picked at random".to_owned(),
                            size => format!("Maglev table of {size} entries"),
                        };
                        let affinity = match fe.affinity_timeout_s {
                            0 => String::new(),
                            s => format!(", session affinity {s}s"),
                        };
                        format!(
                            "{} (frontend {}), {} backends, {selection}{affinity}",
                            self.service(fe.frontend_id),
                            fe.frontend_id,
                            fe.backend_count
                        )
                    }
                };
                format!("frontend {addr}/{}{scope}: {what}", super::get::protocol_name(*proto))
            }
            Step::SourceRange { frontend_id, client, allowed } => format!(
                "loadBalancerSourceRanges of {}: {client} {}",
                self.service(*frontend_id),
                if *allowed { "is inside one" } else { "is in none: dropped" }
            ),
            Step::Affinity { client, frontend_id, found } => match found {
                None => format!("session affinity of {client} to {}: none", self.service(*frontend_id)),
                Some(a) => format!(
                    "session affinity of {client} to {}: backend {}, last used {:.0}s ago",
                    self.service(*frontend_id),
                    a.backend_id,
                    crate::datapath::maps::monotonic_ns().saturating_sub(a.last_used_ns) as f64 / 1e9
                ),
            },
            Step::MaglevEntry { index, slot } => format!("Maglev entry {index}: slot {}", some(slot)),
            Step::ListEntry { index, backend_id } => {
                format!("backend list entry {index}: backend {}", some(backend_id))
            }
            Step::Backend { id, found } => match found {
                Some(addr) => format!("backend {id}: {addr}"),
                None => format!("backend {id}: none (cleared)"),
            },
            Step::ServiceAddress { addr, flags } => match flags {
                Some(_) => format!("service address {addr}: a Service's"),
                None => format!("service address {addr}: no Service's"),
            },
            Step::NodeAddress { toward, found } => format!("this node's address toward {toward}: {}", some(found)),
            Step::Random(value) => format!("random number {value}"),
            Step::WouldWriteConntrack { key, entry, only_if_new } => {
                let unless = if *only_if_new { " unless its key is taken" } else { "" };
                format!("would write conntrack {}{unless}: {}", describe(key, 0), self.entry(entry))
            }
            Step::WouldRefreshConntrack { key, state } => {
                format!("would refresh conntrack {}: {}", describe(key, 0), state_name(*state))
            }
            Step::WouldWriteAffinity { client, frontend_id, backend_id } => format!(
                "would remember backend {backend_id} for {client} (session affinity to {})",
                self.service(*frontend_id)
            ),
        }
    }

    fn entry(&self, entry: &FlowEntry) -> String {
        let (direction, side) =
            if entry.direction == CT_FORWARD { ("forward", "destination") } else { ("reply", "source") };
        let other = match entry.other {
            Some(other) => format!(", other end -> {other}"),
            None => String::new(),
        };
        format!(
            "{direction} entry of {}: {side} -> {}{other}, {}, idle {:.0}s",
            self.service(entry.frontend_id),
            entry.nat,
            state_name(entry.state),
            entry.idle_ns as f64 / 1e9
        )
    }
}

/// `namespace/name:port`, or `namespace/name` for a Service's only, unnamed port.
fn service_port(meta: &ServiceMeta) -> String {
    match meta.port_name() {
        "" => format!("{}/{}", meta.namespace(), meta.name()),
        port => format!("{}/{}:{port}", meta.namespace(), meta.name()),
    }
}

fn some<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string)
}

fn state_name(state: u8) -> &'static str {
    match state {
        CT_STATE_SYN => "opening",
        CT_STATE_ESTABLISHED => "established",
        CT_STATE_CLOSING => "closing",
        _ => "?",
    }
}

/// `TCP a -> b [SYN,ACK]` (no flags for 0).
fn describe(flow: &Flow, tcp_flags: u8) -> String {
    let names: Vec<&str> = [(tcp::SYN, "SYN"), (tcp::ACK, "ACK"), (tcp::FIN, "FIN"), (tcp::RST, "RST")]
        .into_iter()
        .filter(|(bit, _)| tcp_flags & bit != 0)
        .map(|(_, name)| name)
        .collect();
    let flags = if names.is_empty() { String::new() } else { format!(" [{}]", names.join(",")) };
    format!("{} {} -> {}{flags}", super::get::protocol_name(flow.proto), flow.from, flow.to)
}

/// The 5-tuple of a frame, and its TCP flags.
fn reparse(frame: &[u8]) -> Option<(Flow, u8)> {
    let (data, end) = (frame.as_ptr() as usize, frame.as_ptr() as usize + frame.len());
    fn of<F: Family>(pkt: Packet<F>) -> (Flow, u8)
    where
        F::Addr: WireAddr,
    {
        (Flow::of(&pkt.flow()), pkt.tcp_flags())
    }
    match frame.get(12..14)? {
        [0x86, 0xdd] => parse_ipv6(data, end, Frame::Linear).ok().map(of),
        _ => parse(data, end, Frame::Linear).ok().map(of),
    }
}

/// TCP flags from `syn,ack`-style text.
pub fn parse_tcp_flags(text: &str) -> Result<u8, String> {
    text.split(',').filter(|f| !f.is_empty()).try_fold(0, |flags, name| {
        let bit = match name.trim().to_ascii_lowercase().as_str() {
            "syn" => tcp::SYN,
            "ack" => tcp::ACK,
            "fin" => tcp::FIN,
            "rst" => tcp::RST,
            other => return Err(format!("unknown TCP flag {other:?} (syn, ack, fin, rst)")),
        };
        Ok(flags | bit)
    })
}

/// The text `explain` prints.
pub fn format_explanation(e: &Explanation, output: Output) -> anyhow::Result<String> {
    if let Some(text) = super::get::structured(e, output)? {
        return Ok(text);
    }
    let mut out = format!("packet:    {}\narrives:   on {}, decided by {}\n", e.packet, e.interface, e.hook);
    for (n, step) in e.steps.iter().enumerate() {
        out += &format!("{:>3}. {step}\n", n + 1);
    }
    let service = e.service.as_deref().map(|s| format!(" for {s}")).unwrap_or_default();
    out += &format!("verdict:   {} ({}){service}\n", e.verdict, e.reason);
    if let Some(backend) = &e.backend {
        let pod = e.backend_pod.as_deref().map(|p| format!(" (pod {p})")).unwrap_or_default();
        out += &format!("backend:   {backend}{pod}\n");
    }
    out += &format!("counter:   {} +1\n", e.counter);
    if let (Some(rewritten), Some(checksums)) = (&e.rewritten, &e.checksums) {
        out += &format!("rewritten: {rewritten}, checksums {checksums}\n");
    }
    if e.writes_left_out > 0 {
        out += &format!("left out:  {} map writes the real packet would make\n", e.writes_left_out);
    }
    for note in &e.notes {
        out += &format!("note:      {note}\n");
    }
    Ok(out)
}

impl Loaded {
    /// The settings an agent's status gives.
    pub fn from_settings(settings: &super::status::Settings) -> anyhow::Result<Self> {
        let cidrs = settings
            .service_cidrs
            .iter()
            .map(|text| text.parse().map_err(|e| anyhow::anyhow!("the agent's service CIDR {text}: {e}")))
            .collect::<anyhow::Result<Vec<IpCidr>>>()?;
        Ok(Loaded {
            ct_timeouts: settings.ct_timeout_seconds.into(),
            service_cidr: datapath_cidr(&cidrs),
            service_cidr6: datapath_cidr(&cidrs),
        })
    }

    /// The agent's defaults.
    pub fn defaults() -> Self {
        let load = LoadOptions::default();
        Loaded { ct_timeouts: load.ct_timeouts, service_cidr: load.service_cidr, service_cidr6: load.service_cidr6 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A legacy pcap file (little-endian, microseconds) of `frames` of link type `linktype`.
    fn pcap(linktype: u32, frames: &[&[u8]]) -> Vec<u8> {
        let mut file = Vec::new();
        for word in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65_535, linktype] {
            file.extend(word.to_le_bytes());
        }
        for frame in frames {
            for word in [1u32, 0, frame.len() as u32, frame.len() as u32] {
                file.extend(word.to_le_bytes());
            }
            file.extend(*frame);
        }
        file
    }

    #[test]
    fn a_capture_gives_its_numbered_frame_and_refuses_frames_without_ethernet() {
        let dir = std::env::temp_dir().join(format!("lb-explain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (first, second) = ([1u8; 60], [2u8; 64]);
        let ethernet = dir.join("ethernet.pcap");
        std::fs::write(&ethernet, pcap(1, &[&first, &second])).unwrap();
        assert_eq!(Question::captured(&ethernet, 2, 7).unwrap().frame, second);
        assert_eq!(Question::captured(&ethernet, 1, 7).unwrap().frame, first);
        let err = Question::captured(&ethernet, 3, 7).unwrap_err().to_string();
        assert!(err.contains("holds 2 frames, none numbered 3"), "{err}");
        // `tcpdump -i any` writes Linux cooked frames (link type 113).
        let cooked = dir.join("cooked.pcap");
        std::fs::write(&cooked, pcap(113, &[&first])).unwrap();
        let err = format!("{:#}", Question::captured(&cooked, 1, 7).unwrap_err());
        assert!(err.contains("not Ethernet") && err.contains("cooked.pcap"), "{err}");
        let big_endian = dir.join("big.pcap");
        std::fs::write(&big_endian, [0xa1, 0xb2, 0xc3, 0xd4, 0, 2, 0, 4]).unwrap();
        let err = format!("{:#}", Question::captured(&big_endian, 1, 7).unwrap_err());
        assert!(err.contains("big-endian"), "{err}");
        let text = dir.join("text.pcap");
        std::fs::write(&text, "not a capture").unwrap();
        let err = format!("{:#}", Question::captured(&text, 1, 7).unwrap_err());
        assert!(err.contains("neither a pcap nor a pcapng capture"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tcp_flags_are_named_as_tcpdump_spells_them() {
        assert_eq!(parse_tcp_flags("syn,ack"), Ok(tcp::SYN | tcp::ACK));
        assert_eq!(parse_tcp_flags("FIN"), Ok(tcp::FIN));
        assert!(parse_tcp_flags("syn,urg").unwrap_err().contains("\"urg\""));
    }

    #[test]
    fn the_text_says_the_verdict_the_backend_its_pod_and_the_counter() {
        let e = Explanation {
            packet: "TCP 10.244.0.100:40000 -> 10.96.0.10:80 [SYN]".into(),
            interface: "h-client (ifindex 5)".into(),
            hook: "TC-POD".into(),
            steps: vec!["conntrack TCP 10.244.0.100:40000 -> 10.96.0.10:80: miss".into()],
            conntrack: Some("miss".into()),
            service: Some("default/kubia:http".into()),
            backend: Some("10.244.0.3:8080".into()),
            backend_pod: Some("kubia-1".into()),
            verdict: "rewrite".into(),
            reason: "forward_new_flow".into(),
            counter: "lb_datapath_packets_total{hook=\"TC-POD\",reason=\"forward_new_flow\"}".into(),
            rewritten: Some("TCP 10.244.0.100:40000 -> 10.244.0.3:8080 [SYN]".into()),
            checksums: Some("valid".into()),
            writes_left_out: 2,
            notes: Vec::new(),
        };
        let text = format_explanation(&e, Output::Table).unwrap();
        for line in [
            "  1. conntrack TCP 10.244.0.100:40000 -> 10.96.0.10:80: miss",
            "verdict:   rewrite (forward_new_flow) for default/kubia:http",
            "backend:   10.244.0.3:8080 (pod kubia-1)",
            "rewritten: TCP 10.244.0.100:40000 -> 10.244.0.3:8080 [SYN], checksums valid",
            "left out:  2 map writes the real packet would make",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        let json: Explanation = serde_json::from_str(&format_explanation(&e, Output::Json).unwrap()).unwrap();
        assert_eq!(json, e);
    }
}
