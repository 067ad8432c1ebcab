//! kube-proxy's packet-flow expectations as a table, in the style of its
//! `pkg/proxy` tests: Services and endpoints as manifests, programmed by the
//! agent's own model and plan for node `node-a` (address NODE), then each
//! flow run through the real program of the hook it arrives on
//! (BPF_PROG_TEST_RUN): from a pod (TC on its veth) or from outside (XDP on
//! the node's device). Each flow names what it must meet: the endpoints it
//! may reach and whether the backend sees this node instead of the client,
//! a reject (reset or ICMP port unreachable), a drop, or nothing (not ours).

use std::collections::BTreeSet;

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, wire};
use lb_ebpf::packet_builder::PacketBuilder;
use lb_tests::require_root;
use lb_userspace::{datapath::loader::TestProgram, plan::NodeInfo};

mod common;
use common::{ScratchDatapath, desired_state};

const NODE: [u8; 4] = [198, 51, 100, 1];
const POD_CLIENT: [u8; 4] = [10, 244, 1, 100];
const EXTERNAL: [u8; 4] = [203, 0, 113, 7];
const A: [u8; 4] = [10, 244, 1, 2];
const B: [u8; 4] = [10, 244, 2, 2];

/// A selector-less Service and its Endpoints (`a`/`b`: on node-a/node-b).
fn service(name: &str, cluster_ip: &str, spec: &str, endpoints: &[([u8; 4], &str)]) -> String {
    let addresses: Vec<String> = endpoints
        .iter()
        .map(|(ip, node)| format!("{{ip: {}.{}.{}.{}, nodeName: {node}}}", ip[0], ip[1], ip[2], ip[3]))
        .collect();
    let subsets = if endpoints.is_empty() {
        "[]".to_owned()
    } else {
        format!("[{{addresses: [{}], ports: [{{port: 8080}}]}}]", addresses.join(", "))
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {cluster_ip}\n{spec}---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}}}\nsubsets: {subsets}\n---\n"
    )
}

fn manifests() -> String {
    let both = [(A, "node-a"), (B, "node-b")];
    [
        service("web", "10.96.1.1", "  type: NodePort\n  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]\n", &both),
        service(
            "local",
            "10.96.1.2",
            "  type: NodePort\n  externalTrafficPolicy: Local\n  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]\n",
            &both,
        ),
        service(
            "elsewhere",
            "10.96.1.3",
            "  type: NodePort\n  externalTrafficPolicy: Local\n  ports: [{port: 80, targetPort: 8080, nodePort: 30082}]\n",
            &[(B, "node-b")],
        ),
        service(
            "nowhere",
            "10.96.1.4",
            "  type: NodePort\n  externalTrafficPolicy: Local\n  ports: [{port: 80, targetPort: 8080, nodePort: 30083}]\n",
            &[],
        ),
        service("empty", "10.96.1.5", "  ports: [{port: 80, targetPort: 8080}]\n", &[]),
    ]
    .concat()
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Reaches exactly these endpoints (over many flows); the ones listed
    /// second see this node as the client (masqueraded).
    Endpoints(&'static [[u8; 4]], &'static [[u8; 4]]),
    Reject,
    Drop,
    /// Not a Service flow: passed untouched.
    Untouched,
}

struct Flow {
    what: &'static str,
    from_pod: bool,
    to: [u8; 4],
    port: u16,
    proto: u8,
    expect: Expect,
}

const fn flow(what: &'static str, from_pod: bool, to: [u8; 4], port: u16, proto: u8, expect: Expect) -> Flow {
    Flow { what, from_pod, to, port, proto, expect }
}

fn flows() -> Vec<Flow> {
    use Expect::*;
    const POD: bool = true;
    const OUTSIDE: bool = false;
    const T: u8 = IPPROTO_TCP;
    vec![
        flow("pod to a cluster ip: every endpoint, no masquerade", POD, [10, 96, 1, 1], 80, T, Endpoints(&[A, B], &[])),
        flow("pod to a port the service lacks: rejected", POD, [10, 96, 1, 1], 81, T, Reject),
        flow("pod to a protocol the service lacks: rejected", POD, [10, 96, 1, 1], 80, IPPROTO_UDP, Reject),
        flow("pod to an unallocated service address: dropped", POD, [10, 96, 1, 99], 80, T, Drop),
        flow("pod to an address outside the service cidr: not ours", POD, [10, 245, 0, 1], 80, T, Untouched),
        flow("pod to a service without endpoints: rejected", POD, [10, 96, 1, 5], 80, T, Reject),
        flow(
            "outside to a node port: every endpoint, the remote one masqueraded",
            OUTSIDE,
            NODE,
            30080,
            T,
            Endpoints(&[A, B], &[B]),
        ),
        flow("outside to a cluster ip: not ours", OUTSIDE, [10, 96, 1, 1], 80, T, Untouched),
        flow(
            "outside to a local-policy node port: the local endpoint, client kept",
            OUTSIDE,
            NODE,
            30081,
            T,
            Endpoints(&[A], &[]),
        ),
        flow(
            "pod to a local-policy node port: short-circuited to every endpoint",
            POD,
            NODE,
            30081,
            T,
            Endpoints(&[A, B], &[]),
        ),
        flow("outside to a local-policy node port with no local endpoint: dropped", OUTSIDE, NODE, 30082, T, Drop),
        flow("outside to a local-policy node port with no endpoint at all: rejected", OUTSIDE, NODE, 30083, T, Reject),
        flow(
            "pod to a node port of this node: every endpoint, no masquerade",
            POD,
            NODE,
            30080,
            T,
            Endpoints(&[A, B], &[]),
        ),
    ]
}

/// What `flow` met, over `FLOWS` new flows from different source ports.
fn met(dp: &mut ScratchDatapath, flow: &Flow) -> Expect {
    const FLOWS: u16 = 32;
    let (client, program) =
        if flow.from_pod { (POD_CLIENT, TestProgram::PodTc) } else { (EXTERNAL, TestProgram::XdpNode) };
    let (mut reached, mut masqueraded, mut outcomes) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for sport in 40000..40000 + FLOWS {
        let frame = PacketBuilder::new(flow.proto, client, sport, flow.to, flow.port).tcp_flags(0x02).build();
        let out = dp.datapath.test_run(program, &frame, 1).unwrap();
        let dropped = match program {
            TestProgram::XdpNode => out.return_value == 1,
            _ => out.return_value == 2,
        };
        let outcome = if dropped {
            "drop"
        } else if out.frame == frame {
            "untouched"
        } else if out.frame[23] == 1 || (out.frame[23] == IPPROTO_TCP && out.frame[47] & 0x04 != 0) {
            "reject"
        } else {
            let backend: [u8; 4] = out.frame[30..34].try_into().unwrap();
            reached.insert(backend);
            if out.frame[26..30] != client {
                masqueraded.insert(backend);
            }
            "forward"
        };
        outcomes.insert(outcome);
    }
    assert_eq!(outcomes.len(), 1, "{}: flows met different outcomes {outcomes:?}", flow.what);
    match outcomes.into_iter().next().unwrap() {
        "drop" => Expect::Drop,
        "untouched" => Expect::Untouched,
        "reject" => Expect::Reject,
        _ => {
            let leak = |set: BTreeSet<[u8; 4]>| -> &'static [[u8; 4]] {
                Box::leak(set.into_iter().collect::<Vec<_>>().into())
            };
            Expect::Endpoints(leak(reached), leak(masqueraded))
        }
    }
}

#[test]
fn every_flow_meets_what_kube_proxy_would_do() {
    require_root();
    let mut dp = ScratchDatapath::load();
    let node = NodeInfo { name: "node-a".into(), addrs: vec![NODE.into()], ..NodeInfo::default() };
    dp.program_on(&desired_state(&manifests()), &node);
    // This node's address for SNAT, on the device test runs arrive on.
    let ingress = [(1u32, wire::addr(NODE))].into();
    dp.maps.v4.set_node_addresses(&ingress).unwrap();
    let mut failures = Vec::new();
    for flow in flows() {
        let got = met(&mut dp, &flow);
        if got != flow.expect {
            failures.push(format!("{}: expected {:?}, met {got:?}", flow.what, flow.expect));
        }
    }
    assert!(failures.is_empty(), "{} flow(s) differ from kube-proxy:\n{}", failures.len(), failures.join("\n"));
}
