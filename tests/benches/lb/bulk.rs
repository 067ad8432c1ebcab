//! Bulk TCP through a cluster IP: one connection from a client pod
//! (`lb-testclient bulk`) to the last synthetic Service, served by a pod on
//! the same node, writing 256 KiB at a time for a few seconds with the
//! pods' default offloads (TSO/GSO: the node forwards 64 KB super-packets).
//! Gbit/s as the receiver counted.

use std::time::Duration;

use anyhow::Context as _;
use lb_tests::cgroup::field;
use serde_json::json;

use crate::{
    Section,
    chart::BarChart,
    median_spread,
    synthetic::{Datapath, TcpRig},
};

const DURATION: Duration = Duration::from_secs(3);
const RUNS: usize = 3;
const DATAPATHS: [Datapath; 5] =
    [Datapath::LbSocket, Datapath::Lb, Datapath::LbStack, Datapath::Iptables, Datapath::Nftables];

/// Gbit/s of one connection through `rig` for DURATION, as the receiver
/// reports it.
fn transfer(rig: &TcpRig) -> anyhow::Result<f64> {
    let outputs = rig.clients(1, "bulk", &[&DURATION.as_secs_f64().to_string()])?;
    let gbps = outputs.first().and_then(|o| field(o, "gbps")).with_context(|| format!("no gbps in {outputs:?}"))?;
    Ok(gbps.parse()?)
}

pub fn run() -> anyhow::Result<Section> {
    let mut markdown = String::from("| datapath | services | Gbit/s |\n|---|---|---|\n");
    let mut rows = Vec::new();
    let mut series: Vec<(String, Vec<f64>)> = DATAPATHS.iter().map(|d| (d.name().to_owned(), Vec::new())).collect();
    let mut groups = Vec::new();
    for services in [1u32, 10_000] {
        groups.push(format!("{services} services"));
        let rigs = DATAPATHS
            .iter()
            .map(|datapath| {
                eprintln!("  bulk: setting up {} with {services} services", datapath.name());
                TcpRig::new(*datapath, services, |backend, ports| backend.serve_discard(ports))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); rigs.len()];
        for round in 1..=RUNS {
            for ((rig, runs), datapath) in rigs.iter().zip(&mut runs).zip(DATAPATHS) {
                let gbps = transfer(rig)?;
                eprintln!("    round {round}/{RUNS}: {} {gbps:.2} Gbit/s", datapath.name());
                runs.push(gbps);
            }
        }
        drop(rigs);
        for ((datapath, runs), series) in DATAPATHS.iter().zip(runs).zip(&mut series) {
            let (gbps, spread) = median_spread(&runs);
            series.1.push(gbps);
            markdown.push_str(&format!("| {} | {services} | {gbps:.2} (±{spread:.2}) |\n", datapath.name()));
            rows.push(json!({"datapath": datapath.name(), "services": services, "gbps": gbps, "spread": spread}));
        }
    }
    markdown.push_str(&format!(
        "\nOne TCP connection for {} s per run, pod -> cluster IP -> pod on the same node, default offloads \
         (GSO/TSO) in both pods; medians of {RUNS} runs (± half the range), the datapaths side by side on nodes \
         of their own, measured in turn. Sender, node and receiver share the machine's cores.\n",
        DURATION.as_secs()
    ));
    let title = "TCP bulk through a cluster IP (GSO)";
    let chart = BarChart { title: title.into(), y_label: "Gbit/s".into(), groups, series, log_y: false };
    Ok(Section { title, markdown, json: json!(rows), charts: vec![("gbps", chart)] })
}
