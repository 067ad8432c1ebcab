//! BPF_PROG_TEST_RUN fixture tables: the real programs, loaded into this
//! kernel, run on hand-built frames. Each row names the input, the verdict
//! and the exact output frame expected, and the counter it must bump.

use std::net::IpAddr;

use lb_common::{
    Backend, CtEntry, CtKey, CtTimeouts, FRONTEND_FLAG_EXTERNAL, FRONTEND_SCOPE_ALL, Frontend, FrontendKey,
    IPPROTO_TCP, IPPROTO_UDP, Reason, VIP_CLUSTER_IP, wire,
};
use lb_ebpf::{
    answer::{self, Answered, L4Checksum},
    packet::{
        family::{V4, V6},
        parse::{Frame, parse, parse_ipv6},
    },
    packet_builder::{PacketBuilder, checksum_errors, icmp_error},
};
use lb_tests::require_root;
use lb_userspace::{datapath::loader::TestProgram, plan::MapOp};

mod common;
use common::ScratchDatapath;

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

const VIP: [u8; 4] = [10, 96, 0, 10];
const EMPTY_VIP: [u8; 4] = [10, 96, 0, 11];
const CLIENT: [u8; 4] = [10, 244, 0, 3];
const POD: [u8; 4] = [10, 244, 1, 7];
const NODE: [u8; 4] = [198, 51, 100, 1];
/// The IPv6 twins: fd00:96::a and ::b, fd00:44::3, fd00:44:1::7, 2001:db8::1.
const VIP6: [u8; 16] = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x0a]);
const EMPTY_VIP6: [u8; 16] = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x0b]);
const CLIENT6: [u8; 16] = v6([0xfd00, 0x44, 0, 0, 0, 0, 0, 3]);
const POD6: [u8; 16] = v6([0xfd00, 0x44, 1, 0, 0, 0, 0, 7]);
const NODE6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
const ROUTER6: [u8; 16] = v6([0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1]);

const fn v6(groups: [u16; 8]) -> [u8; 16] {
    let mut octets = [0; 16];
    let mut i = 0;
    while i < 8 {
        let [hi, lo] = groups[i].to_be_bytes();
        (octets[2 * i], octets[2 * i + 1]) = (hi, lo);
        i += 1;
    }
    octets
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

fn tcp<A: Into<IpAddr>>(s: A, sp: u16, d: A, dp: u16) -> PacketBuilder {
    PacketBuilder::new(IPPROTO_TCP, s, sp, d, dp)
}

fn udp<A: Into<IpAddr>>(s: A, sp: u16, d: A, dp: u16) -> PacketBuilder {
    PacketBuilder::new(IPPROTO_UDP, s, sp, d, dp)
}

/// VIP:80/TCP and VIP:53/UDP with the one backend POD, and EMPTY_VIP:80/TCP
/// and :53/UDP without endpoints: one backend keeps every choice predictable.
/// The same in IPv6 (VIP6, POD6, EMPTY_VIP6, NODE6), frontend ids + 10.
fn program_services(dp: &mut ScratchDatapath) {
    let backend = |addr: IpAddr, port| Backend { addr, port: wire::port(port), flags: 0 };
    let frontend =
        |addr: IpAddr, port, proto| FrontendKey { addr, port: wire::port(port), proto, scope: FRONTEND_SCOPE_ALL };
    let ops = [
        MapOp::PutBackend { id: 1, backend: backend(POD.into(), 8080) },
        MapOp::PutBackend { id: 2, backend: backend(POD.into(), 5353) },
        // Frontend n's one backend is slot n - 1 (11 and 12: 2 and 3).
        MapOp::PutSlots { offset: 0, backend_ids: vec![1, 2] },
        MapOp::PutFrontend {
            key: frontend(VIP.into(), 80, IPPROTO_TCP),
            frontend: Frontend { frontend_id: 1, backend_count: 1, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(VIP.into(), 53, IPPROTO_UDP),
            frontend: Frontend { frontend_id: 2, backend_count: 1, slots_offset: 1, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(EMPTY_VIP.into(), 80, IPPROTO_TCP),
            frontend: Frontend { frontend_id: 3, backend_count: 0, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(EMPTY_VIP.into(), 53, IPPROTO_UDP),
            frontend: Frontend { frontend_id: 4, backend_count: 0, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(NODE.into(), 30080, IPPROTO_TCP),
            frontend: Frontend {
                frontend_id: 1,
                backend_count: 1,
                flags: FRONTEND_FLAG_EXTERNAL,
                ..Default::default()
            },
        },
        MapOp::PutFrontend {
            key: frontend(NODE.into(), 30081, IPPROTO_TCP),
            frontend: Frontend { frontend_id: 3, flags: FRONTEND_FLAG_EXTERNAL, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(NODE.into(), 30053, IPPROTO_UDP),
            frontend: Frontend { frontend_id: 4, flags: FRONTEND_FLAG_EXTERNAL, ..Default::default() },
        },
        MapOp::PutVip { addr: VIP.into(), frontends: 2 | VIP_CLUSTER_IP },
        MapOp::PutVip { addr: EMPTY_VIP.into(), frontends: 2 },
        MapOp::PutBackend { id: 11, backend: backend(POD6.into(), 8080) },
        MapOp::PutBackend { id: 12, backend: backend(POD6.into(), 5353) },
        MapOp::PutSlots { offset: 2, backend_ids: vec![11, 12] },
        MapOp::PutFrontend {
            key: frontend(VIP6.into(), 80, IPPROTO_TCP),
            frontend: Frontend { frontend_id: 11, backend_count: 1, slots_offset: 2, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(VIP6.into(), 53, IPPROTO_UDP),
            frontend: Frontend { frontend_id: 12, backend_count: 1, slots_offset: 3, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(EMPTY_VIP6.into(), 80, IPPROTO_TCP),
            frontend: Frontend { frontend_id: 13, backend_count: 0, ..Default::default() },
        },
        MapOp::PutFrontend {
            key: frontend(NODE6.into(), 30080, IPPROTO_TCP),
            frontend: Frontend {
                frontend_id: 11,
                backend_count: 1,
                slots_offset: 2,
                flags: FRONTEND_FLAG_EXTERNAL,
                ..Default::default()
            },
        },
        MapOp::PutFrontend {
            key: frontend(NODE6.into(), 30081, IPPROTO_TCP),
            frontend: Frontend { frontend_id: 13, flags: FRONTEND_FLAG_EXTERNAL, ..Default::default() },
        },
        MapOp::PutVip { addr: VIP6.into(), frontends: 2 | VIP_CLUSTER_IP },
        MapOp::PutVip { addr: EMPTY_VIP6.into(), frontends: 1 | VIP_CLUSTER_IP },
    ];
    for op in &ops {
        dp.maps.apply(op).unwrap();
    }
}

/// A row whose frame must leave as `output`.
fn translated(
    what: &'static str,
    program: TestProgram,
    input: Vec<u8>,
    verdict: u32,
    output: Vec<u8>,
    reason: Reason,
) -> Fixture {
    Fixture { what, program, input, verdict, output: Some(output), reason }
}

/// A row whose frame must leave untouched.
fn untouched(what: &'static str, program: TestProgram, input: Vec<u8>, verdict: u32, reason: Reason) -> Fixture {
    Fixture { what, program, input, verdict, output: None, reason }
}

fn fixtures() -> Vec<Fixture> {
    use TestProgram::{PodTc, TcEgress, XdpNode};
    let mut truncated = tcp(CLIENT, 40011, VIP, 80).build();
    truncated.truncate(14 + 20 + 12);
    let mut arp = tcp(CLIENT, 1, VIP, 80).build();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let syn_to_empty = tcp(CLIENT, 40007, EMPTY_VIP, 80).build();
    let udp_to_empty = udp(CLIENT, 5002, EMPTY_VIP, 53).payload(b"anyone?").build();
    let ping = echo_request(VIP);
    let other_port = tcp(CLIENT, 40003, VIP, 81).build();
    let other_protocol = udp(CLIENT, 40004, VIP, 80).payload(b"dns?").build();
    let syn_to_empty_node_port = tcp(CLIENT, 40022, NODE, 30081).build();
    let udp_to_empty_node_port = udp(CLIENT, 5003, NODE, 30053).payload(b"anyone?").build();
    vec![
        translated(
            "tcp syn to the vip goes to the backend",
            PodTc,
            tcp(CLIENT, 40000, VIP, 80).build(),
            TC_ACT_OK,
            tcp(CLIENT, 40000, POD, 8080).build(),
            Reason::ForwardNewFlow,
        ),
        translated(
            "the next packet of that flow goes to the same backend",
            PodTc,
            tcp(CLIENT, 40000, VIP, 80).tcp_flags(0x10).build(),
            TC_ACT_OK,
            tcp(CLIENT, 40000, POD, 8080).tcp_flags(0x10).build(),
            Reason::ForwardEstablished,
        ),
        translated(
            "the backend's reply leaves from the vip (tc ingress)",
            PodTc,
            tcp(POD, 8080, CLIENT, 40000).tcp_flags(0x12).build(),
            TC_ACT_OK,
            tcp(VIP, 80, CLIENT, 40000).tcp_flags(0x12).build(),
            Reason::ReplyReverseNat,
        ),
        translated(
            "the backend's reply leaves from the vip (tc egress)",
            TcEgress,
            tcp(POD, 8080, CLIENT, 40000).tcp_flags(0x12).build(),
            TC_ACT_OK,
            tcp(VIP, 80, CLIENT, 40000).tcp_flags(0x12).build(),
            Reason::ReplyReverseNat,
        ),
        untouched(
            "tc egress does not start flows",
            TcEgress,
            tcp(CLIENT, 40001, VIP, 80).build(),
            TC_ACT_OK,
            Reason::PassNoService,
        ),
        translated(
            "udp to the vip goes to the backend",
            PodTc,
            udp(CLIENT, 5000, VIP, 53).payload(b"query").build(),
            TC_ACT_OK,
            udp(CLIENT, 5000, POD, 5353).payload(b"query").build(),
            Reason::ForwardNewFlow,
        ),
        translated(
            "the udp answer comes from the vip",
            PodTc,
            udp(POD, 5353, CLIENT, 5000).payload(b"answer").build(),
            TC_ACT_OK,
            udp(VIP, 53, CLIENT, 5000).payload(b"answer").build(),
            Reason::ReplyReverseNat,
        ),
        translated(
            "udp without checksum keeps checksum 0",
            PodTc,
            udp(CLIENT, 5001, VIP, 53).udp_zero_checksum().build(),
            TC_ACT_OK,
            udp(CLIENT, 5001, POD, 5353).udp_zero_checksum().build(),
            Reason::ForwardNewFlow,
        ),
        untouched(
            "traffic to other addresses is untouched",
            PodTc,
            tcp(CLIENT, 40002, POD, 8080).build(),
            TC_ACT_OK,
            Reason::PassNoService,
        ),
        translated(
            "another port of a cluster ip is refused with a reset",
            PodTc,
            other_port.clone(),
            TC_ACT_OK,
            expected_reset(&other_port),
            Reason::RejectNoServicePort,
        ),
        translated(
            "udp to the tcp port of a cluster ip gets an icmp port unreachable",
            PodTc,
            other_protocol.clone(),
            TC_ACT_OK,
            expected_port_unreachable(&other_protocol),
            Reason::RejectNoServicePort,
        ),
        untouched(
            "an unallocated address of the service cidr is dropped",
            PodTc,
            tcp(CLIENT, 40012, [10, 100, 1, 1], 80).build(),
            TC_ACT_SHOT,
            Reason::DropUnallocatedServiceIp,
        ),
        untouched(
            "another port of a cluster ip from a node device is untouched",
            XdpNode,
            tcp(CLIENT, 40013, VIP, 81).build(),
            XDP_PASS,
            Reason::PassNoService,
        ),
        untouched(
            "ip options to the vip are passed untouched",
            PodTc,
            tcp(CLIENT, 40005, VIP, 80).ip_options(2).build(),
            TC_ACT_OK,
            Reason::PassIpOptions,
        ),
        untouched(
            "a fragment to the vip is passed untouched",
            PodTc,
            tcp(CLIENT, 40010, VIP, 80).fragment(true, 0).build(),
            TC_ACT_OK,
            Reason::PassFragment,
        ),
        untouched("a truncated tcp header is passed untouched", PodTc, truncated, TC_ACT_OK, Reason::PassTruncated),
        untouched("arp is passed untouched", PodTc, arp, TC_ACT_OK, Reason::PassNotIp),
        untouched(
            "icmp other than an echo request to the vip is passed untouched",
            PodTc,
            PacketBuilder::new(1, CLIENT, 0, VIP, 0).build(),
            TC_ACT_OK,
            Reason::PassNotTcpUdp,
        ),
        untouched(
            "a reset to a vip without endpoints is dropped",
            PodTc,
            tcp(CLIENT, 40006, EMPTY_VIP, 80).tcp_flags(0x04).build(),
            TC_ACT_SHOT,
            Reason::DropNoBackend,
        ),
        translated(
            "a syn to a vip without endpoints is refused with a reset",
            PodTc,
            syn_to_empty.clone(),
            TC_ACT_OK,
            expected_reset(&syn_to_empty),
            Reason::RejectNoBackend,
        ),
        translated(
            "udp to a vip without endpoints gets an icmp port unreachable",
            PodTc,
            udp_to_empty.clone(),
            TC_ACT_OK,
            expected_port_unreachable(&udp_to_empty),
            Reason::RejectNoBackend,
        ),
        translated(
            "a ping to a vip is answered",
            PodTc,
            ping.clone(),
            TC_ACT_OK,
            expected_echo_reply(&ping),
            Reason::EchoReply,
        ),
        untouched("a ping to another address is untouched", PodTc, echo_request(POD), TC_ACT_OK, Reason::PassNotTcpUdp),
        untouched(
            "a cluster ip reached through a node device is untouched",
            XdpNode,
            tcp(CLIENT, 40020, VIP, 80).build(),
            XDP_PASS,
            Reason::PassInternalOnly,
        ),
        translated(
            "a node port reached through a node device goes to the backend",
            XdpNode,
            tcp(CLIENT, 40021, NODE, 30080).build(),
            XDP_PASS,
            tcp(CLIENT, 40021, POD, 8080).build(),
            Reason::ForwardNewFlow,
        ),
        translated(
            "the node's fragmentation-needed about a translated request is about the request (tc egress)",
            TcEgress,
            icmp_error(3, 4, NODE, CLIENT, &tcp(CLIENT, 40000, POD, 8080).build()),
            TC_ACT_OK,
            icmp_error(3, 4, NODE, CLIENT, &tcp(CLIENT, 40000, VIP, 80).build()),
            Reason::IcmpErrorReverseNat,
        ),
        translated(
            "a backend's port unreachable about a translated datagram is about the datagram (tc on pods)",
            PodTc,
            icmp_error(3, 3, POD, CLIENT, &udp(CLIENT, 5000, POD, 5353).payload(b"query").build()),
            TC_ACT_OK,
            icmp_error(3, 3, POD, CLIENT, &udp(CLIENT, 5000, VIP, 53).payload(b"query").build()),
            Reason::IcmpErrorReverseNat,
        ),
        translated(
            "a router's time exceeded about a translated request is about the request (xdp)",
            XdpNode,
            icmp_error(11, 0, [192, 0, 2, 1], CLIENT, &tcp(CLIENT, 40000, POD, 8080).build()),
            XDP_PASS,
            icmp_error(11, 0, [192, 0, 2, 1], CLIENT, &tcp(CLIENT, 40000, VIP, 80).build()),
            Reason::IcmpErrorReverseNat,
        ),
        untouched(
            "an icmp error about a flow that is not ours is untouched",
            TcEgress,
            icmp_error(3, 4, NODE, CLIENT, &tcp(CLIENT, 40999, POD, 8080).build()),
            TC_ACT_OK,
            Reason::PassNotTcpUdp,
        ),
        translated(
            "a syn to a node port without endpoints is refused with a reset (xdp)",
            XdpNode,
            syn_to_empty_node_port.clone(),
            XDP_PASS,
            expected_reset(&syn_to_empty_node_port),
            Reason::RejectNoBackend,
        ),
        translated(
            "udp to a node port without endpoints gets an icmp port unreachable (xdp)",
            XdpNode,
            udp_to_empty_node_port.clone(),
            XDP_PASS,
            expected_port_unreachable(&udp_to_empty_node_port),
            Reason::RejectNoBackend,
        ),
        translated(
            "ipv6: a tcp syn to the vip goes to the backend",
            PodTc,
            tcp(CLIENT6, 40000, VIP6, 80).build(),
            TC_ACT_OK,
            tcp(CLIENT6, 40000, POD6, 8080).build(),
            Reason::ForwardNewFlow,
        ),
        translated(
            "ipv6: the next packet of that flow goes to the same backend",
            PodTc,
            tcp(CLIENT6, 40000, VIP6, 80).tcp_flags(0x10).build(),
            TC_ACT_OK,
            tcp(CLIENT6, 40000, POD6, 8080).tcp_flags(0x10).build(),
            Reason::ForwardEstablished,
        ),
        translated(
            "ipv6: the backend's reply leaves from the vip (tc ingress)",
            PodTc,
            tcp(POD6, 8080, CLIENT6, 40000).tcp_flags(0x12).build(),
            TC_ACT_OK,
            tcp(VIP6, 80, CLIENT6, 40000).tcp_flags(0x12).build(),
            Reason::ReplyReverseNat,
        ),
        translated(
            "ipv6: the backend's reply leaves from the vip (tc egress)",
            TcEgress,
            tcp(POD6, 8080, CLIENT6, 40000).tcp_flags(0x12).build(),
            TC_ACT_OK,
            tcp(VIP6, 80, CLIENT6, 40000).tcp_flags(0x12).build(),
            Reason::ReplyReverseNat,
        ),
        untouched(
            "ipv6: tc egress does not start flows",
            TcEgress,
            tcp(CLIENT6, 40001, VIP6, 80).build(),
            TC_ACT_OK,
            Reason::PassNoService,
        ),
        translated(
            "ipv6: udp to the vip goes to the backend and its answer comes from the vip",
            PodTc,
            udp(CLIENT6, 5000, VIP6, 53).payload(b"query").build(),
            TC_ACT_OK,
            udp(CLIENT6, 5000, POD6, 5353).payload(b"query").build(),
            Reason::ForwardNewFlow,
        ),
        translated(
            "ipv6: the udp answer comes from the vip",
            PodTc,
            udp(POD6, 5353, CLIENT6, 5000).payload(b"answer").build(),
            TC_ACT_OK,
            udp(VIP6, 53, CLIENT6, 5000).payload(b"answer").build(),
            Reason::ReplyReverseNat,
        ),
        translated(
            "ipv6: a node port from outside goes to the backend",
            XdpNode,
            tcp(CLIENT6, 40020, NODE6, 30080).build(),
            XDP_PASS,
            tcp(CLIENT6, 40020, POD6, 8080).build(),
            Reason::ForwardNewFlow,
        ),
        untouched(
            "ipv6: a cluster ip is not reachable from outside",
            XdpNode,
            tcp(CLIENT6, 40021, VIP6, 80).build(),
            XDP_PASS,
            Reason::PassInternalOnly,
        ),
        untouched(
            "ipv6: traffic to other addresses is untouched",
            PodTc,
            tcp(CLIENT6, 40002, POD6, 8080).build(),
            TC_ACT_OK,
            Reason::PassNoService,
        ),
        translated(
            "ipv6: another port of a cluster ip is refused with a reset",
            PodTc,
            tcp(CLIENT6, 40003, VIP6, 81).build(),
            TC_ACT_OK,
            expected_reset(&tcp(CLIENT6, 40003, VIP6, 81).build()),
            Reason::RejectNoServicePort,
        ),
        translated(
            "ipv6: a syn to a service without endpoints is refused with a reset",
            PodTc,
            tcp(CLIENT6, 40006, EMPTY_VIP6, 80).build(),
            TC_ACT_OK,
            expected_reset(&tcp(CLIENT6, 40006, EMPTY_VIP6, 80).build()),
            Reason::RejectNoBackend,
        ),
        translated(
            "ipv6: udp to a service without endpoints gets an icmpv6 port unreachable",
            PodTc,
            udp(CLIENT6, 5004, EMPTY_VIP6, 53).payload(b"anyone?").build(),
            TC_ACT_OK,
            expected_port_unreachable(&udp(CLIENT6, 5004, EMPTY_VIP6, 53).payload(b"anyone?").build()),
            Reason::RejectNoServicePort,
        ),
        translated(
            "ipv6: from outside, a node port without endpoints refuses with a reset",
            XdpNode,
            tcp(CLIENT6, 40007, NODE6, 30081).build(),
            XDP_PASS,
            expected_reset(&tcp(CLIENT6, 40007, NODE6, 30081).build()),
            Reason::RejectNoBackend,
        ),
        untouched(
            "ipv6: extension headers are passed untouched",
            PodTc,
            tcp(CLIENT6, 40004, VIP6, 80).extension_header(0).build(),
            TC_ACT_OK,
            Reason::PassExtensionHeaders,
        ),
        untouched(
            "ipv6: fragments are passed untouched",
            XdpNode,
            tcp(CLIENT6, 40005, NODE6, 30080).extension_header(44).build(),
            XDP_PASS,
            Reason::PassFragment,
        ),
        untouched(
            "ipv6: icmpv6 (neighbour discovery among it) is passed untouched",
            XdpNode,
            PacketBuilder::new(58, CLIENT6, 0, NODE6, 0).build(),
            XDP_PASS,
            Reason::PassNotTcpUdp,
        ),
        translated(
            "ipv6: a ping to the vip is answered from the vip",
            PodTc,
            icmpv6_echo(CLIENT6, VIP6, 128),
            TC_ACT_OK,
            icmpv6_echo(VIP6, CLIENT6, 129),
            Reason::EchoReply,
        ),
        translated(
            "ipv6: a ping from outside to a node port address that is a service address is answered",
            XdpNode,
            icmpv6_echo(CLIENT6, VIP6, 128),
            XDP_PASS,
            icmpv6_echo(VIP6, CLIENT6, 129),
            Reason::EchoReply,
        ),
        untouched(
            "ipv6: a ping to another address is passed untouched",
            PodTc,
            icmpv6_echo(CLIENT6, POD6, 128),
            TC_ACT_OK,
            Reason::PassNotTcpUdp,
        ),
        translated(
            "ipv6: the node's packet too big about a translated request is about the request (tc egress)",
            TcEgress,
            icmp_error(2, 0, NODE6, CLIENT6, &tcp(CLIENT6, 40000, POD6, 8080).build()),
            TC_ACT_OK,
            icmp_error(2, 0, NODE6, CLIENT6, &tcp(CLIENT6, 40000, VIP6, 80).build()),
            Reason::IcmpErrorReverseNat,
        ),
        translated(
            "ipv6: a backend's port unreachable about a translated datagram is about the datagram (tc on pods)",
            PodTc,
            icmp_error(1, 4, POD6, CLIENT6, &udp(CLIENT6, 5000, POD6, 5353).payload(b"query").build()),
            TC_ACT_OK,
            icmp_error(1, 4, POD6, CLIENT6, &udp(CLIENT6, 5000, VIP6, 53).payload(b"query").build()),
            Reason::IcmpErrorReverseNat,
        ),
        translated(
            "ipv6: a router's time exceeded about a translated node port request is about the request (xdp)",
            XdpNode,
            icmp_error(3, 0, ROUTER6, CLIENT6, &tcp(CLIENT6, 40020, POD6, 8080).build()),
            XDP_PASS,
            icmp_error(3, 0, ROUTER6, CLIENT6, &tcp(CLIENT6, 40020, NODE6, 30080).build()),
            Reason::IcmpErrorReverseNat,
        ),
        untouched(
            "ipv6: an icmpv6 error about a flow that is not ours is untouched",
            TcEgress,
            icmp_error(2, 0, NODE6, CLIENT6, &tcp(CLIENT6, 40999, POD6, 8080).build()),
            TC_ACT_OK,
            Reason::PassNotTcpUdp,
        ),
    ]
}

/// The answers, as the host build of the same code writes them (its
/// semantics have unit tests in `lb_ebpf::answer`): the kernel must agree.
fn expected_reset(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let data = out.as_mut_ptr() as usize;
    if let Ok(pkt) = parse_ipv6(data, data + out.len(), Frame::Linear) {
        unsafe { answer::write_reset(&pkt, answer::reset_for(&pkt).unwrap(), L4Checksum::Full) };
        out.truncate(V6::RST_FRAME_LEN);
    } else {
        let pkt = parse(data, data + out.len(), Frame::Linear).unwrap();
        unsafe { answer::write_reset(&pkt, answer::reset_for(&pkt).unwrap(), L4Checksum::Full) };
        out.truncate(V4::RST_FRAME_LEN);
    }
    out
}

fn expected_port_unreachable(frame: &[u8]) -> Vec<u8> {
    if frame[12..14] == [0x86, 0xdd] { unreachable_of::<V6>(frame) } else { unreachable_of::<V4>(frame) }
}

fn unreachable_of<F: Answered>(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0; F::ICMP_ERROR_GROWTH];
    out.extend_from_slice(frame);
    unsafe { F::write_unreachable(out.as_mut_ptr() as usize, answer::Unreachable::Port) };
    out.truncate(F::ICMP_ERROR_FRAME_LEN);
    out
}

fn expected_echo_reply(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let data = out.as_mut_ptr() as usize;
    assert!(unsafe { V4::write_echo_reply(data, data + out.len()) });
    out
}

/// An ICMPv6 echo message (`kind` 128 request, 129 reply) from `from` to
/// `to`, checksum (over the pseudo-header) right: built here, not by the
/// code under test.
fn icmpv6_echo(from: [u8; 16], to: [u8; 16], kind: u8) -> Vec<u8> {
    let mut frame = PacketBuilder::new(58, from, 0, to, 0).payload(b"").build();
    frame.truncate(54);
    frame.extend_from_slice(&[kind, 0, 0, 0, 0x12, 0x34, 0, 1]);
    frame.extend_from_slice(b"ping6 payload");
    let len = (frame.len() - 54) as u16;
    frame[18..20].copy_from_slice(&len.to_be_bytes());
    let pseudo: u32 = frame[22..54].chunks(2).map(|w| u32::from(u16::from_ne_bytes([w[0], w[1]]))).sum::<u32>()
        + u32::from(len.to_be())
        + u32::from(u16::from_ne_bytes([0, 58]));
    let check = lb_ebpf::packet::checksum::compute(&frame[54..], pseudo);
    frame[56..58].copy_from_slice(&check.to_ne_bytes());
    frame
}

/// An ICMP echo request from CLIENT to `to`, checksums right.
fn echo_request(to: [u8; 4]) -> Vec<u8> {
    let mut ping = PacketBuilder::new(1, CLIENT, 0, to, 0).build();
    ping[34..42].copy_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let check = lb_ebpf::packet::checksum::compute(&ping[34..], 0);
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
            TestProgram::XdpNode => 0,
            TestProgram::PodTc => 1,
            TestProgram::TcEgress => 2,
        };
        let count = |dp: &ScratchDatapath| {
            dp.maps.counters().unwrap().into_iter().find(|(r, _)| *r == fx.reason).map(|c| c.1).unwrap()
        };
        // Packets and bytes of every frontend the fixtures program.
        let traffic = |dp: &ScratchDatapath| {
            (0..32)
                .map(|id| dp.maps.service_traffic(id).unwrap())
                .fold((0, 0), |(p, b), t| (p + t.packets, b + t.bytes))
        };
        let (before, traffic_before) = (count(&dp), traffic(&dp));
        let out = dp.datapath.test_run(fx.program, &fx.input, 1).unwrap();
        let (after, traffic_after) = (count(&dp), traffic(&dp));
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
        // A translated packet counts in its frontend's traffic with all its bytes.
        let flows = matches!(fx.reason, Reason::ForwardNewFlow | Reason::ForwardEstablished | Reason::ReplyReverseNat);
        let counted = if flows { (1, fx.input.len() as u64) } else { (0, 0) };
        let moved = (traffic_after.0 - traffic_before.0, traffic_after.1 - traffic_before.1);
        if moved != counted {
            failures.push(format!("{}: service traffic moved {moved:?}, not {counted:?}", fx.what));
        }
    }
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
    // Every translated packet named its frontend: none counted under id 0.
    assert_eq!(dp.maps.service_traffic(0).unwrap(), lb_common::ServiceTraffic::default());
}

/// VIP:80 over TCP with 5 backends 10.244.2.10-14:8080 (no Maglev table:
/// random picks), the frontend's other settings as `frontend` has them.
fn five_backends(dp: &mut ScratchDatapath, frontend: Frontend) {
    let key = FrontendKey { addr: VIP.into(), port: wire::port(80), proto: IPPROTO_TCP, scope: FRONTEND_SCOPE_ALL };
    for i in 0..5u32 {
        let backend = Backend { addr: [10, 244, 2, 10 + i as u8].into(), port: wire::port(8080), flags: 0 };
        dp.maps.apply(&MapOp::PutBackend { id: 10 + i, backend }).unwrap();
    }
    dp.maps.apply(&MapOp::PutSlots { offset: 0, backend_ids: (10..15).collect() }).unwrap();
    let frontend = Frontend { frontend_id: 9, backend_count: 5, ..frontend };
    dp.maps.apply(&MapOp::PutFrontend { key, frontend }).unwrap();
}

#[test]
fn an_established_flow_keeps_its_backend_among_many() {
    require_root();
    let mut dp = ScratchDatapath::load();
    five_backends(&mut dp, Frontend::default());

    let mut chosen = std::collections::BTreeSet::new();
    for client_port in 30000..30064u16 {
        let syn = tcp(CLIENT, client_port, VIP, 80).build();
        let first = dp.datapath.test_run(TestProgram::PodTc, &syn, 1).unwrap().frame;
        for _ in 0..5 {
            let again = dp.datapath.test_run(TestProgram::PodTc, &syn, 1).unwrap().frame;
            assert_eq!(again, first, "client port {client_port} changed backend");
        }
        chosen.insert(first[30..34].to_vec());
    }
    assert_eq!(chosen.len(), 5, "64 flows should have reached all 5 backends, reached {chosen:?}");
}

/// `sessionAffinity: ClientIP` with a 1 s timeout on the real maps: each new
/// connection of a client renews its entry (rewritten in place), so a
/// client that connects every 0.6 s stays on its backend 1.2 s after its
/// first connection, for each of 8 clients of a 5-backend Service.
#[test]
fn each_new_connection_renews_the_client_s_affinity() {
    require_root();
    let mut dp = ScratchDatapath::load();
    five_backends(&mut dp, Frontend { affinity_timeout_s: 1, ..Default::default() });
    let clients: Vec<[u8; 4]> = (0..8).map(|i| [10, 244, 1, 50 + i]).collect();
    let mut connect = |client: [u8; 4], sport: u16| {
        let syn = tcp(client, sport, VIP, 80).build();
        dp.datapath.test_run(TestProgram::PodTc, &syn, 1).unwrap().frame[30..34].to_vec()
    };
    let first: Vec<Vec<u8>> = clients.iter().map(|&c| connect(c, 30000)).collect();
    for sport in [30001, 30002] {
        std::thread::sleep(std::time::Duration::from_millis(600));
        let now: Vec<Vec<u8>> = clients.iter().map(|&c| connect(c, sport)).collect();
        assert_eq!(now, first, "connections from port {sport} changed backend");
    }
}

/// A session affinity entry that outlived its backend (a packet wrote it as
/// the agent purged them, or an agent stopped between the two) names an id
/// whose element the agent cleared: the client picks anew among the
/// Service's backends, never a stranger's that took the id.
#[test]
fn an_affinity_naming_a_cleared_backend_picks_anew() {
    use lb_common::{AffinityEntry, AffinityKey};
    use lb_userspace::datapath::maps::monotonic_ns;
    require_root();
    let mut dp = ScratchDatapath::load();
    five_backends(&mut dp, Frontend { affinity_timeout_s: 60, ..Default::default() });
    let client = [10, 244, 1, 50];
    let stranger = Backend { addr: [10, 244, 9, 9].into(), port: wire::port(8080), flags: 0 };
    dp.maps.apply(&MapOp::PutBackend { id: 99, backend: stranger }).unwrap();
    let key = AffinityKey { client: wire::addr(client), frontend_id: 9 };
    let entry = AffinityEntry { backend_id: 99, _pad: 0, last_used_ns: monotonic_ns() };
    dp.maps.v4.affinity.insert(key, entry, 0).unwrap();
    let mut connect = |sport: u16| {
        let syn = tcp(client, sport, VIP, 80).build();
        dp.datapath.test_run(TestProgram::PodTc, &syn, 1).unwrap().frame[30..34].to_vec()
    };
    assert_eq!(connect(30000), [10, 244, 9, 9], "a fresh affinity is followed");
    dp.maps.v4.affinity.insert(key, entry, 0).unwrap();
    dp.maps.apply(&MapOp::ClearBackend(99)).unwrap();
    let picked = connect(30001);
    assert!(picked[..3] == [10, 244, 2] && (10..15).contains(&picked[3]), "picked {picked:?}");
}

/// The datapath reads its clock from the jiffies, with no helper call per
/// packet, yet it is the agent's CLOCK_MONOTONIC at tick resolution: flows
/// opened 100 ms apart carry the times they were opened, give or take two
/// ticks, as the sweep and session affinity compare them.
#[test]
fn conntrack_entries_carry_the_monotonic_time_their_flow_opened() {
    use lb_userspace::datapath::maps::monotonic_ns;
    require_root();
    let mut dp = ScratchDatapath::load();
    program_services(&mut dp);
    // The clock may lag by two ticks (its offset one, its resolution one):
    // three at 100 Hz, the slowest tick Linux has.
    const SLACK_NS: u64 = 30_000_000;
    let mut opened = Vec::new();
    for sport in [41000, 41001] {
        if sport != 41000 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let before = monotonic_ns();
        dp.datapath.test_run(TestProgram::PodTc, &tcp(CLIENT, sport, VIP, 80).build(), 1).unwrap();
        let after = monotonic_ns();
        let key = CtKey {
            saddr: wire::addr(CLIENT),
            daddr: wire::addr(VIP),
            sport: wire::port(sport),
            dport: wire::port(80),
            proto: IPPROTO_TCP,
            _pad: 0,
            _pad2: 0,
        };
        let created = dp.maps.v4.conntrack.get(&key, 0).unwrap().created_ns;
        assert!(
            before - SLACK_NS <= created && created <= after + SLACK_NS,
            "flow {sport} opened between {before} and {after} ns, its entry says {created}"
        );
        opened.push(created);
    }
    assert!(opened[1] - opened[0] >= 100_000_000 - SLACK_NS, "{opened:?}");
}

/// The sweep removes an entry only if it is expired as it is removed: one
/// a packet refreshed after the sweep read it stays.
#[test]
fn the_sweep_keeps_an_entry_refreshed_after_it_was_read_as_expired() {
    require_root();
    let mut dp = ScratchDatapath::load();
    // One second: a freshly booted VM's monotonic clock may be below the default.
    let timeouts = CtTimeouts { udp_s: 1, ..CtTimeouts::DEFAULT };
    let key = |sport: u16| CtKey {
        saddr: wire::addr(CLIENT),
        daddr: wire::addr(VIP),
        sport: wire::port(sport),
        dport: wire::port(53),
        proto: IPPROTO_UDP,
        _pad: 0,
        _pad2: 0,
    };
    let stale = CtEntry { last_seen_ns: 0, ..CtEntry::default() };
    for sport in [1000, 1001] {
        dp.maps.v4.conntrack.insert(key(sport), stale, 0).unwrap();
    }
    let (expired, _) = dp.maps.v4.expired_conntrack(&timeouts).unwrap();
    assert_eq!(expired.len(), 2);
    // A packet of flow 1001 refreshes its entry now.
    let fresh = CtEntry { last_seen_ns: lb_userspace::datapath::maps::monotonic_ns(), ..stale };
    dp.maps.v4.conntrack.insert(key(1001), fresh, 0).unwrap();
    assert_eq!(dp.maps.v4.remove_expired_conntrack(&expired, &timeouts).unwrap(), (1, 1));
    assert!(dp.maps.v4.conntrack.get(&key(1000), 0).is_err(), "the expired entry is gone");
    assert_eq!(dp.maps.v4.conntrack.get(&key(1001), 0).unwrap().last_seen_ns, fresh.last_seen_ns);
}

/// The hash maps the agent updates while packets read them are not
/// preallocated, so an update never recycles an element a packet is reading.
/// (The arrays, backends and their lists and Maglev tables, are written
/// only where no frontend points: the plan's unit tests check that.)
#[test]
fn control_maps_free_updated_elements_only_after_readers_are_done() {
    require_root();
    let dp = ScratchDatapath::load();
    const BPF_F_NO_PREALLOC: u32 = 1;
    for name in ["LB_FRONTENDS", "LB_FRONTENDS6", "LB_VIPS", "LB_VIPS6", "LB_DEVICES", "LB_NODE_ADDRS"] {
        let info = aya::maps::MapInfo::from_pin(dp.dir().join(name)).unwrap();
        assert_ne!(info.map_flags() & BPF_F_NO_PREALLOC, 0, "{name} is preallocated");
    }
}

/// Maps pinned by an earlier agent keep their size; asking for another one
/// is refused with the flag and both sizes, not silently ignored.
#[test]
fn a_different_ct_max_over_pinned_maps_is_refused_naming_the_flag() {
    use lb_userspace::datapath::loader::{Datapath, LoadOptions};
    require_root();
    let dp = ScratchDatapath::load();
    let options = LoadOptions { ct_max: 2048, ..LoadOptions::default() };
    let err = Datapath::load(dp.dir(), &options).err().expect("refused").to_string();
    assert!(err.contains("--ct-max") && err.contains("262144") && err.contains("2048"), "{err}");
    let options = LoadOptions { maglev_entries: 1 << 20, ..LoadOptions::default() };
    let err = Datapath::load(dp.dir(), &options).err().expect("refused").to_string();
    assert!(err.contains("--maglev-entries") && err.contains(&(1u32 << 24).to_string()), "{err}");
    assert!(Datapath::load(dp.dir(), &LoadOptions::default()).is_ok(), "the same sizes adopt the pins");
}

/// Counters pinned by an agent that counted fewer hooks or reasons (3 x 23
/// before the socket hooks) start again: reused, every index would shift
/// and the new ones would be out of bounds.
#[test]
fn counters_pinned_with_another_layout_start_again() {
    use lb_userspace::datapath::loader::{Datapath, LoadOptions};
    require_root();
    let dp = ScratchDatapath::load();
    let pin = dp.dir().join(lb_common::map_names::COUNTERS);
    std::fs::remove_file(&pin).unwrap();
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    pin_map(&pin, [BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 69]);
    let (_, maps, _) = Datapath::load(dp.dir(), &LoadOptions::default()).unwrap();
    let counters = maps.counters().expect("every hook's and reason's counter is there");
    assert_eq!(counters.len(), Reason::COUNT as usize);
    let info = aya::maps::MapInfo::from_pin(&pin).unwrap();
    assert_eq!(info.max_entries(), lb_common::Hook::COUNT * Reason::COUNT);
}

/// An agent upgraded over the IPv4 conntrack of the layout before entries
/// kept their route (40 bytes, 4 of them padding where the route now is)
/// copies its flows: an established flow keeps the backend its entry names
/// (one the Service no longer has), and its entry asks the FIB anew.
#[test]
fn conntrack_of_the_previous_layout_is_copied_and_established_flows_keep_their_backend() {
    use lb_common::{CT_FORWARD, CT_STATE_ESTABLISHED, map_names};
    use lb_userspace::datapath::{
        loader::{Datapath, LoadOptions},
        maps::monotonic_ns,
    };
    require_root();
    let mut dp = ScratchDatapath::load();
    program_services(&mut dp);
    let pin = dp.dir().join(map_names::CONNTRACK);
    std::fs::remove_file(&pin).unwrap();
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    pin_map(&pin, [BPF_MAP_TYPE_LRU_HASH, 16, 40, lb_common::MAX_CONNTRACK]);
    let gone = [10, 244, 2, 99];
    let key = CtKey {
        saddr: wire::addr(CLIENT),
        daddr: wire::addr(VIP),
        sport: wire::port(40000),
        dport: wire::port(80),
        proto: IPPROTO_TCP,
        _pad: 0,
        _pad2: 0,
    };
    let now = monotonic_ns();
    let entry = CtEntry {
        nat_addr: wire::addr(gone),
        nat_port: wire::port(8080),
        direction: CT_FORWARD,
        frontend_id: 1,
        state: CT_STATE_ESTABLISHED,
        created_ns: now,
        last_seen_ns: now,
        ..CtEntry::default()
    };
    // SAFETY: both are plain C structs without implicit padding.
    let (key, entry) =
        unsafe { (std::mem::transmute::<CtKey, [u8; 16]>(key), std::mem::transmute::<CtEntry, [u8; 56]>(entry)) };
    let mut previous = [0u8; 40];
    previous[..20].copy_from_slice(&entry[..20]);
    previous[24..].copy_from_slice(&entry[40..]);
    let old = aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(&pin).unwrap());
    let mut old: aya::maps::HashMap<_, [u8; 16], [u8; 40]> = aya::maps::HashMap::try_from(old).unwrap();
    old.insert(key, previous, 0).unwrap();

    let (mut datapath, _, _) = Datapath::load(dp.dir(), &LoadOptions::default()).unwrap();
    let info = aya::maps::MapInfo::from_pin(&pin).unwrap();
    assert_eq!(info.value_size() as usize, size_of::<CtEntry>());
    let ack = tcp(CLIENT, 40000, VIP, 80).tcp_flags(0x10).build();
    let out = datapath.test_run(TestProgram::PodTc, &ack, 1).unwrap();
    assert_eq!(out.frame[30..34], gone, "the flow kept the backend its entry named");
    assert_eq!(checksum_errors(&out.frame), None);
}

/// An agent upgraded over one whose frontends were 20 bytes and whose
/// backends were a hash map replaces every map of their ids together: an
/// affinity that names one of the old agent's ids is gone, and the Services
/// written anew are translated.
#[test]
fn frontends_and_backends_of_the_hash_layout_are_replaced_with_every_map_of_their_ids() {
    use lb_common::{AffinityEntry, AffinityKey, MAX_BACKENDS, MAX_FRONTENDS, map_names};
    use lb_userspace::datapath::loader::{Datapath, LoadOptions};
    require_root();
    let mut dp = ScratchDatapath::load();
    let affinity = AffinityKey { client: wire::addr(CLIENT), frontend_id: 1 };
    dp.maps.v4.affinity.insert(affinity, AffinityEntry { backend_id: 7, _pad: 0, last_used_ns: 1 }, 0).unwrap();
    const BPF_MAP_TYPE_HASH: u32 = 1;
    for (name, key_size, value_size, entries) in
        [(map_names::FRONTENDS, 8, 20, MAX_FRONTENDS), (map_names::BACKENDS, 4, 8, MAX_BACKENDS)]
    {
        let pin = dp.dir().join(name);
        std::fs::remove_file(&pin).unwrap();
        pin_map(&pin, [BPF_MAP_TYPE_HASH, key_size, value_size, entries]);
    }
    let (datapath, maps, _) = Datapath::load(dp.dir(), &LoadOptions::default()).unwrap();
    (dp.datapath, dp.maps) = (datapath, maps);
    assert!(dp.maps.v4.affinity.get(&affinity, 0).is_err(), "the affinity of an old id is gone");
    let backends = aya::maps::MapInfo::from_pin(dp.dir().join(map_names::BACKENDS)).unwrap();
    assert!(matches!(backends.map_type(), Ok(aya::maps::MapType::Array)));
    program_services(&mut dp);
    let syn = tcp(CLIENT, 40000, VIP, 80).tcp_flags(0x02).build();
    let out = dp.datapath.test_run(TestProgram::PodTc, &syn, 1).unwrap();
    assert_eq!(out.frame[30..34], POD, "the Service written anew is translated");
}

/// The endpoints an older agent listed (IPv4 only, 72-byte entries) are
/// listed anew: reused, every write of this agent's would be refused.
#[test]
fn endpoints_listed_with_another_layout_are_listed_anew() {
    use lb_userspace::datapath::loader::{Datapath, LoadOptions};
    require_root();
    let dp = ScratchDatapath::load();
    let pin = dp.dir().join(lb_common::map_names::ENDPOINTS);
    std::fs::remove_file(&pin).unwrap();
    const BPF_MAP_TYPE_HASH: u32 = 1;
    pin_map(&pin, [BPF_MAP_TYPE_HASH, 8, 72, lb_common::MAX_ENDPOINTS]);
    let (_, mut maps, _) = Datapath::load(dp.dir(), &LoadOptions::default()).unwrap();
    let key = lb_common::EndpointKey { frontend_id: 1, index: 0 };
    let meta = lb_common::EndpointMeta::new(std::net::Ipv6Addr::LOCALHOST.octets(), 80, lb_common::EP_READY, "pod");
    maps.apply(&MapOp::PutEndpoint { key, meta }).expect("an endpoint of this layout is written");
    let info = aya::maps::MapInfo::from_pin(&pin).unwrap();
    assert_eq!(info.value_size() as usize, size_of::<lb_common::EndpointMeta>());
}

/// IPv6 program arrays pinned with another size (an older agent's) are
/// replaced, and the new ones filled: IPv6 is still translated.
#[test]
fn ipv6_program_arrays_of_another_size_are_replaced_and_filled() {
    use lb_userspace::datapath::loader::{Datapath, LoadOptions};
    require_root();
    let dp = ScratchDatapath::load();
    const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
    for name in [lb_common::map_names::IPV6_XDP, lb_common::map_names::IPV6_TC] {
        let pin = dp.dir().join(name);
        std::fs::remove_file(&pin).unwrap();
        pin_map(&pin, [BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 2]);
    }
    let (mut datapath, maps, _) = Datapath::load(dp.dir(), &LoadOptions::default()).unwrap();
    for (name, slots) in [
        (lb_common::map_names::IPV6_XDP, lb_common::ipv6_programs::XDP_SLOTS),
        (lb_common::map_names::IPV6_TC, lb_common::ipv6_programs::TC_SLOTS),
    ] {
        let info = aya::maps::MapInfo::from_pin(dp.dir().join(name)).unwrap();
        assert_eq!(info.max_entries(), slots, "{name}");
    }
    // Decided by the IPv6 program (nothing of its own, here), not passed
    // as not IPv4 for want of it.
    let count = |reason| maps.counters().unwrap().into_iter().find(|(r, _)| *r == reason).map(|c| c.1[1]).unwrap();
    let before = count(Reason::PassNoService);
    let out = datapath.test_run(TestProgram::PodTc, &tcp(CLIENT6, 40100, POD6, 8080).build(), 1).unwrap();
    assert_eq!(out.return_value, TC_ACT_OK);
    assert_eq!(count(Reason::PassNoService), before + 1);
}

/// Pins a map of (type, key size, value size, entries) at `path`, as an
/// older agent's (raw bpf(2): aya creates maps only from an object).
fn pin_map(path: &std::path::Path, definition: [u32; 4]) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let bpf = |cmd: libc::c_long, attr: &mut [u32; 32]| {
        // SAFETY: bpf(2) reads the zero-padded attribute block it is given.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
        assert!(rc >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
        rc as u32
    };
    // map_type, key_size, value_size, max_entries.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&definition);
    let fd = bpf(BPF_MAP_CREATE, &mut create);
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // pathname (a u64, low half first on this little-endian target), bpf_fd.
    let mut pin = [0u32; 32];
    let pathname = path.as_ptr() as u64;
    pin[..3].copy_from_slice(&[pathname as u32, (pathname >> 32) as u32, fd]);
    bpf(BPF_OBJ_PIN, &mut pin);
    // SAFETY: the map's descriptor, ours; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// A small deterministic generator (xorshift64*): the same frames every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One frame of the kinds the datapath must survive: random bytes; well-
/// formed TCP, UDP and ICMP frames to the Services, other addresses and node
/// ports (with IP options, fragments, odd flags and lengths), as they are or
/// truncated, with bytes flipped, behind a VLAN tag, or relabelled IPv6.
fn odd_frame(rng: &mut Rng) -> Vec<u8> {
    let kind = rng.below(8);
    if kind == 0 {
        let len = 14 + rng.below(300) as usize;
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    // Half to the Services' ports, half anywhere; a third IPv6.
    let any_port = rng.below(65536) as u16;
    let other_port = rng.pick(&[8080, 443, any_port]);
    let ipv6 = rng.below(3) == 0;
    let (client, to, port): (IpAddr, IpAddr, u16) = if ipv6 {
        let mut client = CLIENT6;
        client[14..].copy_from_slice(&[rng.below(4) as u8, rng.below(256) as u8]);
        let services = [(VIP6, 80), (VIP6, 53), (EMPTY_VIP6, 80), (NODE6, 30080)];
        let elsewhere = (rng.pick(&[VIP6, EMPTY_VIP6, NODE6, POD6, CLIENT6]), other_port);
        let (to, port) = if rng.below(2) == 0 { rng.pick(&services) } else { elsewhere };
        (client.into(), to.into(), port)
    } else {
        let client = [10, 244, rng.below(4) as u8, rng.below(256) as u8];
        let services = [(VIP, 80), (VIP, 53), (EMPTY_VIP, 80), (EMPTY_VIP, 53), (NODE, 30080)];
        let elsewhere = (rng.pick(&[VIP, EMPTY_VIP, NODE, POD, CLIENT, [192, 0, 2, 1]]), other_port);
        let (to, port) = if rng.below(2) == 0 { rng.pick(&services) } else { elsewhere };
        (client.into(), to.into(), port)
    };
    let sport = rng.below(65536) as u16;
    let flags = if rng.below(2) == 0 { 0x02 } else { rng.next() as u8 };
    let mut builder = match rng.below(3) {
        0 => tcp(client, sport, to, port).tcp_flags(flags),
        1 => udp(client, sport, to, port),
        _ => PacketBuilder::new(if ipv6 { 58 } else { 1 }, client, sport, to, port),
    };
    builder = builder.payload(&vec![0x5a; rng.below(100) as usize]);
    if rng.below(8) == 0 {
        builder = if ipv6 {
            builder.extension_header(rng.pick(&[0, 43, 44, 60]))
        } else {
            builder.ip_options(1 + rng.below(10) as usize)
        };
    }
    if !ipv6 && rng.below(8) == 0 {
        builder = builder.fragment(rng.below(2) == 0, rng.below(4) as u16);
    }
    let mut frame = builder.build();
    match kind {
        1 => frame.truncate(14 + rng.below(frame.len() as u64 - 13) as usize),
        2 => {
            for _ in 0..1 + rng.below(3) {
                let at = 12 + rng.below(frame.len() as u64 - 12) as usize;
                frame[at] ^= 1 << rng.below(8);
            }
        }
        3 => {
            let tag = [0x81, 0x00, 0x00, rng.below(256) as u8];
            frame.splice(12..12, tag);
        }
        // The other family's EtherType.
        4 if ipv6 => frame[12..14].copy_from_slice(&[0x08, 0x00]),
        4 => frame[12..14].copy_from_slice(&[0x86, 0xdd]),
        // The lengths in the headers disagree with the frame.
        5 => {
            let at = if ipv6 { rng.pick(&[14usize, 18, 19, 20]) } else { rng.pick(&[16usize, 17, 14, 38, 39]) };
            frame[at] = rng.next() as u8;
        }
        _ => {}
    }
    frame
}

/// At least a million odd frames through every program: none aborts, TC
/// egress passes them all, TC on pods passes or drops, a frame that comes out changed was a well-formed
/// packet the datapath translates or answers, and what it wrote has valid
/// checksums whenever the frame it got had.
#[test]
fn a_million_odd_frames_abort_nothing_and_change_only_service_packets() {
    require_root();
    const XDP_ABORTED: u32 = 0;
    let mut dp = ScratchDatapath::load();
    program_services(&mut dp);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut changed, mut failures) = (0u32, Vec::new());
    let programs = [TestProgram::PodTc, TestProgram::XdpNode, TestProgram::TcEgress];
    for i in 0..1_000_000u32 {
        let frame = odd_frame(&mut rng);
        let mut program = programs[i as usize % programs.len()];
        // The kernel builds no socket buffer shorter than its IP header says
        // (BPF_PROG_TEST_RUN refuses one): XDP takes those instead.
        let ip_header = match frame[12..14] {
            [0x08, 0x00] => 20,
            [0x86, 0xdd] => 40,
            _ => 0,
        };
        if program != TestProgram::XdpNode && frame.len() < 14 + ip_header {
            program = TestProgram::XdpNode;
        }
        let out = dp.datapath.test_run(program, &frame, 1).unwrap();
        let verdict_ok = match program {
            TestProgram::TcEgress => out.return_value == TC_ACT_OK,
            TestProgram::PodTc => [TC_ACT_OK, TC_ACT_SHOT].contains(&out.return_value),
            TestProgram::XdpNode => out.return_value != XDP_ABORTED,
        };
        if !verdict_ok {
            failures.push(format!("{program:?} gave verdict {} for {frame:02x?}", out.return_value));
        }
        if out.frame != frame {
            changed += 1;
            let data = frame.as_ptr() as usize;
            // Pings to Service addresses are answered (ICMP, or ICMPv6).
            let icmp = frame.len() > 23 && frame[12..14] == [0x08, 0x00] && frame[23] == 1
                || frame.len() > 20 && frame[12..14] == [0x86, 0xdd] && frame[20] == 58;
            let tcp_udp = parse(data, data + frame.len(), Frame::Linear).is_ok()
                || parse_ipv6(data, data + frame.len(), Frame::Linear).is_ok();
            if !tcp_udp && !icmp {
                failures.push(format!("{program:?} changed a frame that is no TCP/UDP packet: {frame:02x?}"));
            }
            if checksum_errors(&frame).is_none()
                && let Some(err) = checksum_errors(&out.frame)
            {
                failures.push(format!("{program:?}: {err} in {:02x?} (from {frame:02x?})", out.frame));
            }
        }
        if failures.len() > 20 {
            break;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{changed} of 1 000 000 frames were translated or answered");
    assert!(changed > 10_000, "only {changed} frames were translated: the generator misses the Services");
}
