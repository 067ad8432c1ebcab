//! BPF_PROG_TEST_RUN fixture tables: the real programs, loaded into this
//! kernel, run on hand-built frames. Each row names the input, the verdict
//! and the exact output frame expected, and the counter it must bump.

use lb_common::{Backend, BackendSlotKey, Frontend, FrontendKey, IPPROTO_TCP, IPPROTO_UDP, Reason, wire};
use lb_ebpf::{
    packet_builder::{PacketBuilder, checksum_errors},
    parse::{Frame, parse},
    reply,
};
use lb_tests::{netns::unique_name, require_root};
use lb_userspace::{
    datapath::{
        loader::{Datapath, TestProgram, XdpAttachMode},
        maps::DatapathMaps,
    },
    reconcile::MapOp,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;

const VIP: [u8; 4] = [10, 96, 0, 10];
const EMPTY_VIP: [u8; 4] = [10, 96, 0, 11];
const CLIENT: [u8; 4] = [10, 244, 0, 3];
const POD: [u8; 4] = [10, 244, 1, 7];

/// The datapath loaded into this kernel, its maps pinned in a scratch
/// directory that is removed on drop.
struct ScratchDatapath {
    datapath: Datapath,
    maps: DatapathMaps,
    dir: std::path::PathBuf,
}

impl ScratchDatapath {
    fn load() -> Self {
        let dir = std::path::PathBuf::from("/sys/fs/bpf").join(unique_name("f"));
        let (datapath, maps, _) = Datapath::load(&dir, XdpAttachMode::Auto, false).expect("load the datapath");
        Self { datapath, maps, dir }
    }
}

impl Drop for ScratchDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Fixture {
    what: &'static str,
    program: TestProgram,
    input: Vec<u8>,
    verdict: u32,
    /// `None`: the frame must leave exactly as it came.
    output: Option<Vec<u8>>,
    reason: Reason,
}

fn tcp(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16) -> PacketBuilder {
    PacketBuilder::new(IPPROTO_TCP, s, sp, d, dp)
}

fn udp(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16) -> PacketBuilder {
    PacketBuilder::new(IPPROTO_UDP, s, sp, d, dp)
}

/// VIP:80/TCP and VIP:53/UDP with the one backend POD, and EMPTY_VIP:80/TCP
/// and :53/UDP without endpoints: one backend keeps every choice predictable.
fn program_services(dp: &mut ScratchDatapath) {
    let backend = |port| Backend { addr: wire::addr(POD), port: wire::port(port), _pad: 0 };
    let frontend = |addr, port, proto| FrontendKey { addr: wire::addr(addr), port: wire::port(port), proto, _pad: 0 };
    let ops = [
        MapOp::PutBackend { id: 1, backend: backend(8080) },
        MapOp::PutBackend { id: 2, backend: backend(5353) },
        MapOp::PutSlot { key: BackendSlotKey { svc_id: 1, slot: 0 }, backend_id: 1 },
        MapOp::PutSlot { key: BackendSlotKey { svc_id: 2, slot: 0 }, backend_id: 2 },
        MapOp::PutFrontend {
            key: frontend(VIP, 80, IPPROTO_TCP),
            frontend: Frontend { svc_id: 1, backend_count: 1, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(VIP, 53, IPPROTO_UDP),
            frontend: Frontend { svc_id: 2, backend_count: 1, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(EMPTY_VIP, 80, IPPROTO_TCP),
            frontend: Frontend { svc_id: 3, backend_count: 0, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(EMPTY_VIP, 53, IPPROTO_UDP),
            frontend: Frontend { svc_id: 4, backend_count: 0, ..Default::default() },
        },
        MapOp::PutVip { addr: wire::addr(VIP), frontends: 2 },
        MapOp::PutVip { addr: wire::addr(EMPTY_VIP), frontends: 2 },
    ];
    for op in &ops {
        dp.maps.apply(op).unwrap();
    }
}

fn fixtures() -> Vec<Fixture> {
    use TestProgram::{TcEgress, Xdp};
    let f = |what, program, input: PacketBuilder, verdict, output: Option<PacketBuilder>, reason| Fixture {
        what,
        program,
        input: input.build(),
        verdict,
        output: output.map(|o| o.build()),
        reason,
    };
    let mut fragment = tcp(CLIENT, 40010, VIP, 80).fragment(true, 0).build();
    let truncated = {
        let mut t = tcp(CLIENT, 40011, VIP, 80).build();
        t.truncate(14 + 20 + 12);
        t
    };
    let mut rows = vec![
        f(
            "tcp syn to the vip goes to the backend",
            Xdp,
            tcp(CLIENT, 40000, VIP, 80),
            XDP_PASS,
            Some(tcp(CLIENT, 40000, POD, 8080)),
            Reason::ForwardNewFlow,
        ),
        f(
            "the next packet of that flow goes to the same backend",
            Xdp,
            tcp(CLIENT, 40000, VIP, 80).tcp_flags(0x10),
            XDP_PASS,
            Some(tcp(CLIENT, 40000, POD, 8080).tcp_flags(0x10)),
            Reason::ForwardEstablished,
        ),
        f(
            "the backend's reply leaves from the vip (xdp)",
            Xdp,
            tcp(POD, 8080, CLIENT, 40000).tcp_flags(0x12),
            XDP_PASS,
            Some(tcp(VIP, 80, CLIENT, 40000).tcp_flags(0x12)),
            Reason::ReplyReverseNat,
        ),
        f(
            "the backend's reply leaves from the vip (tc egress)",
            TcEgress,
            tcp(POD, 8080, CLIENT, 40000).tcp_flags(0x12),
            TC_ACT_OK,
            Some(tcp(VIP, 80, CLIENT, 40000).tcp_flags(0x12)),
            Reason::ReplyReverseNat,
        ),
        f(
            "tc egress does not start flows",
            TcEgress,
            tcp(CLIENT, 40001, VIP, 80),
            TC_ACT_OK,
            None,
            Reason::PassNoService,
        ),
        f(
            "udp to the vip goes to the backend",
            Xdp,
            udp(CLIENT, 5000, VIP, 53).payload(b"query"),
            XDP_PASS,
            Some(udp(CLIENT, 5000, POD, 5353).payload(b"query")),
            Reason::ForwardNewFlow,
        ),
        f(
            "the udp answer comes from the vip",
            Xdp,
            udp(POD, 5353, CLIENT, 5000).payload(b"answer"),
            XDP_PASS,
            Some(udp(VIP, 53, CLIENT, 5000).payload(b"answer")),
            Reason::ReplyReverseNat,
        ),
        f(
            "udp without checksum keeps checksum 0",
            Xdp,
            udp(CLIENT, 5001, VIP, 53).udp_zero_checksum(),
            XDP_PASS,
            Some(udp(CLIENT, 5001, POD, 5353).udp_zero_checksum()),
            Reason::ForwardNewFlow,
        ),
        f(
            "traffic to other addresses is untouched",
            Xdp,
            tcp(CLIENT, 40002, POD, 8080),
            XDP_PASS,
            None,
            Reason::PassNoService,
        ),
        f(
            "another port of the vip is untouched",
            Xdp,
            tcp(CLIENT, 40003, VIP, 81),
            XDP_PASS,
            None,
            Reason::PassNoService,
        ),
        f(
            "udp to the tcp port of the vip is untouched",
            Xdp,
            udp(CLIENT, 40004, VIP, 80),
            XDP_PASS,
            None,
            Reason::PassNoService,
        ),
        f(
            "ip options to the vip are passed untouched",
            Xdp,
            tcp(CLIENT, 40005, VIP, 80).ip_options(2),
            XDP_PASS,
            None,
            Reason::PassIpOptions,
        ),
        f(
            "icmp other than an echo request to the vip is passed untouched",
            Xdp,
            PacketBuilder::new(1, CLIENT, 0, VIP, 0),
            XDP_PASS,
            None,
            Reason::PassNotTcpUdp,
        ),
        f(
            "a reset to a vip without endpoints is dropped",
            Xdp,
            tcp(CLIENT, 40006, EMPTY_VIP, 80).tcp_flags(0x04),
            XDP_DROP,
            None,
            Reason::DropNoBackend,
        ),
    ];
    let syn = tcp(CLIENT, 40007, EMPTY_VIP, 80).build();
    rows.push(Fixture {
        what: "a syn to a vip without endpoints is refused with a reset",
        program: Xdp,
        output: Some(expected_reset(&syn)),
        input: syn,
        verdict: XDP_PASS,
        reason: Reason::RejectNoBackend,
    });
    let datagram = udp(CLIENT, 5002, EMPTY_VIP, 53).payload(b"anyone?").build();
    rows.push(Fixture {
        what: "udp to a vip without endpoints gets an icmp port unreachable",
        program: Xdp,
        output: Some(expected_port_unreachable(&datagram)),
        input: datagram,
        verdict: XDP_PASS,
        reason: Reason::RejectNoBackend,
    });
    let ping = echo_request(VIP);
    rows.push(Fixture {
        what: "a ping to a vip is answered",
        program: Xdp,
        output: Some(expected_echo_reply(&ping)),
        input: ping,
        verdict: XDP_PASS,
        reason: Reason::EchoReply,
    });
    rows.push(Fixture {
        what: "a ping to another address is untouched",
        program: Xdp,
        input: echo_request(POD),
        verdict: XDP_PASS,
        output: None,
        reason: Reason::PassNotTcpUdp,
    });
    fragment[12..14].copy_from_slice(&[0x08, 0x00]);
    rows.push(Fixture {
        what: "a fragment to the vip is passed untouched",
        program: Xdp,
        input: fragment,
        verdict: XDP_PASS,
        output: None,
        reason: Reason::PassFragment,
    });
    rows.push(Fixture {
        what: "a truncated tcp header is passed untouched",
        program: Xdp,
        input: truncated,
        verdict: XDP_PASS,
        output: None,
        reason: Reason::PassTruncated,
    });
    let mut arp = tcp(CLIENT, 1, VIP, 80).build();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    rows.push(Fixture {
        what: "arp is passed untouched",
        program: Xdp,
        input: arp,
        verdict: XDP_PASS,
        output: None,
        reason: Reason::PassNotIpv4,
    });
    rows
}

/// The answers, as the host build of the same code writes them (its
/// semantics have unit tests in `lb_ebpf::reply`): the kernel must agree.
fn expected_reset(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let data = out.as_mut_ptr() as usize;
    let pkt = parse(data, data + out.len(), Frame::Linear).unwrap();
    let tot_len = u16::from_be_bytes([out[16], out[17]]);
    unsafe { reply::write_reset(&pkt, reply::reset_for(&pkt, tot_len).unwrap()) };
    out.truncate(reply::RST_FRAME_LEN);
    out
}

fn expected_port_unreachable(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0; reply::ICMP_ERROR_GROWTH];
    out.extend_from_slice(frame);
    unsafe { reply::write_port_unreachable(out.as_mut_ptr() as usize) };
    out.truncate(reply::ICMP_ERROR_FRAME_LEN);
    out
}

fn expected_echo_reply(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let data = out.as_mut_ptr() as usize;
    assert!(unsafe { reply::write_echo_reply(data, data + out.len()) });
    out
}

/// An ICMP echo request from CLIENT to `to`, checksums right.
fn echo_request(to: [u8; 4]) -> Vec<u8> {
    let mut ping = PacketBuilder::new(1, CLIENT, 0, to, 0).build();
    ping[34..42].copy_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let check = lb_ebpf::checksum::compute(&ping[34..], 0);
    ping[36..38].copy_from_slice(&check.to_ne_bytes());
    ping
}

#[test]
fn datapath_fixture_table() {
    require_root();
    let mut dp = ScratchDatapath::load();
    program_services(&mut dp);
    let mut failures = Vec::new();
    for fx in fixtures() {
        let index = |program| match program {
            TestProgram::Xdp => 1,
            TestProgram::TcEgress => 2,
        };
        let count = |dp: &ScratchDatapath| {
            dp.maps.counters().unwrap().into_iter().find(|(r, ..)| *r == fx.reason).map(|c| [0, c.1, c.2]).unwrap()
        };
        let before = count(&dp);
        let out = dp.datapath.test_run(fx.program, &fx.input, 1).unwrap();
        let after = count(&dp);
        let expected = fx.output.as_ref().unwrap_or(&fx.input);
        if out.return_value != fx.verdict {
            failures.push(format!("{}: verdict {} != {}", fx.what, out.return_value, fx.verdict));
        }
        if &out.frame != expected {
            failures
                .push(format!("{}: output frame differs\n got  {:02x?}\n want {:02x?}", fx.what, out.frame, expected));
        }
        if fx.output.is_some()
            && let Some(err) = checksum_errors(&out.frame)
        {
            failures.push(format!("{}: {err}", fx.what));
        }
        let i = index(fx.program);
        if after[i] != before[i] + 1 {
            failures.push(format!("{}: counter {} went {} -> {}", fx.what, fx.reason.name(), before[i], after[i]));
        }
    }
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn an_established_flow_keeps_its_backend_among_many() {
    require_root();
    let mut dp = ScratchDatapath::load();
    let frontend = FrontendKey { addr: wire::addr(VIP), port: wire::port(80), proto: IPPROTO_TCP, _pad: 0 };
    for i in 0..5u32 {
        let backend = Backend { addr: wire::addr([10, 244, 2, 10 + i as u8]), port: wire::port(8080), _pad: 0 };
        dp.maps.apply(&MapOp::PutBackend { id: 10 + i, backend }).unwrap();
        dp.maps.apply(&MapOp::PutSlot { key: BackendSlotKey { svc_id: 9, slot: i }, backend_id: 10 + i }).unwrap();
    }
    dp.maps
        .apply(&MapOp::PutFrontend {
            key: frontend,
            frontend: Frontend { svc_id: 9, backend_count: 5, ..Default::default() },
        })
        .unwrap();

    let mut chosen = std::collections::BTreeSet::new();
    for client_port in 30000..30064u16 {
        let syn = tcp(CLIENT, client_port, VIP, 80).build();
        let first = dp.datapath.test_run(TestProgram::Xdp, &syn, 1).unwrap().frame;
        for _ in 0..5 {
            let again = dp.datapath.test_run(TestProgram::Xdp, &syn, 1).unwrap().frame;
            assert_eq!(again, first, "client port {client_port} changed backend");
        }
        chosen.insert(first[30..34].to_vec());
    }
    assert_eq!(chosen.len(), 5, "64 flows should have reached all 5 backends, reached {chosen:?}");
}
