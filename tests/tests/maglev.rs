//! Maglev through the real programs (BPF_PROG_TEST_RUN): the same choices
//! on every node, and backend changes that move only the flows they must.

use std::{collections::BTreeMap, net::Ipv4Addr};

use lb_common::IPPROTO_TCP;
use lb_ebpf::packet_builder::PacketBuilder;
use lb_tests::{agent::pod_manifest, require_root};
use lb_userspace::datapath::loader::TestProgram;

mod common;
use common::{ScratchDatapath, desired_state};

const FLOWS: u32 = 10_000;

/// The kubia Service (TCP 80 -> 8080) with `pods` ready pods, half of them
/// on node-a and half on node-b, and `annotation` under its metadata.
fn manifests(pods: u8, annotation: &str) -> String {
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia\n{annotation}spec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n    targetPort: 8080\n  selector:\n    app: kubia\n"
    );
    let pods = (0..pods).map(|i| {
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        pod_manifest(&format!("kubia-{i}"), Ipv4Addr::new(10, 244, 1, 10 + i), true)
            .replace("spec:\n", &format!("spec:\n  nodeName: {node}\n"))
    });
    std::iter::once(service).chain(pods).collect::<Vec<_>>().join("---\n")
}

/// A synthetic flow: client 10.0.x.y:port to the cluster IP.
fn syn(i: u32) -> Vec<u8> {
    let client = [10, 0, (i >> 8) as u8, i as u8];
    PacketBuilder::new(IPPROTO_TCP, client, 1024 + (i % 50_000) as u16, [10, 96, 0, 10], 80).build()
}

/// The backend address each flow's first packet was sent to.
fn choices(dp: &mut ScratchDatapath, flows: impl Iterator<Item = u32>) -> Vec<[u8; 4]> {
    flows
        .map(|i| {
            let out = dp.datapath.test_run(TestProgram::PodTc, &syn(i), 1).unwrap();
            assert_eq!(out.return_value, 0, "flow {i}: TC_ACT_OK after the rewrite");
            out.frame[30..34].try_into().unwrap()
        })
        .collect()
}

fn share(choices: &[[u8; 4]]) -> BTreeMap<[u8; 4], usize> {
    let mut share = BTreeMap::new();
    for c in choices {
        *share.entry(*c).or_default() += 1;
    }
    share
}

#[test]
fn two_nodes_fed_the_same_manifests_choose_the_same_backend_for_every_flow() {
    require_root();
    let desired = desired_state(&manifests(10, ""));
    let mut node_a = ScratchDatapath::load();
    let mut node_b = ScratchDatapath::load();
    node_a.program(&desired, "node-a");
    node_b.program(&desired, "node-b");
    let a = choices(&mut node_a, 0..FLOWS);
    let b = choices(&mut node_b, 0..FLOWS);
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} of {FLOWS} flows chose differently on the two nodes");
    let share = share(&a);
    assert_eq!(share.len(), 10, "every backend gets flows: {share:?}");
    // 1 000 flows each on average; the flow hash spreads them within ±15%.
    assert!(share.values().all(|n| (850..=1150).contains(n)), "{share:?}");
}

/// Conntrack flushed between the runs, so that only the table decides:
/// removing one of 10 backends moves its own flows and (almost) no other;
/// adding it back moves about a tenth of all flows, all to it.
#[test]
fn a_backend_change_moves_only_the_flows_it_must() {
    require_root();
    let mut dp = ScratchDatapath::load();
    dp.program(&desired_state(&manifests(10, "")), "node-a");
    let before = choices(&mut dp, 0..FLOWS);
    let removed = [10, 244, 1, 19];

    let mut dp = ScratchDatapath::load();
    dp.program(&desired_state(&manifests(9, "")), "node-a");
    let after = choices(&mut dp, 0..FLOWS);
    let moved: Vec<usize> = (0..before.len()).filter(|i| before[*i] != after[*i]).collect();
    let own = moved.iter().filter(|i| before[**i] == removed).count();
    assert_eq!(own, before.iter().filter(|c| **c == removed).count(), "all of its flows moved");
    assert!(moved.len() - own <= FLOWS as usize / 100, "{} other flows moved too", moved.len() - own);

    let mut dp = ScratchDatapath::load();
    dp.program(&desired_state(&manifests(10, "")), "node-a");
    assert_eq!(choices(&mut dp, 0..FLOWS), before, "adding it back restores every choice");
}

#[test]
fn established_flows_stay_when_backends_are_added() {
    require_root();
    let mut dp = ScratchDatapath::load();
    dp.program(&desired_state(&manifests(4, "")), "node-a");
    let before = choices(&mut dp, 0..2_000);
    dp.program(&desired_state(&manifests(10, "")), "node-a");
    assert_eq!(choices(&mut dp, 0..2_000), before, "conntrack keeps every established flow where it was");
    assert!(share(&choices(&mut dp, 2_000..4_000)).len() == 10, "new flows reach the new backends");
}

#[test]
fn the_random_annotation_spreads_flows_without_a_table() {
    require_root();
    let annotation = "  annotations:\n    lb.dev/backend-selection: random\n";
    let mut node_a = ScratchDatapath::load();
    let mut node_b = ScratchDatapath::load();
    node_a.program(&desired_state(&manifests(10, annotation)), "node-a");
    node_b.program(&desired_state(&manifests(10, annotation)), "node-b");
    let a = choices(&mut node_a, 0..2_000);
    let b = choices(&mut node_b, 0..2_000);
    assert_eq!(share(&a).len(), 10);
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    // Independent random picks agree about 1 in 10 times.
    assert!(same < 400, "{same} of 2000 random choices agreed across nodes");
}
