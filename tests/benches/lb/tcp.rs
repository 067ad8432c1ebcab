//! TCP through a VIP with short-lived connections: a new connection per
//! request (connect, GET, read the answer, close), from client processes
//! in a pod (`lb-testclient crr`) to the last synthetic Service, served by
//! a pod on 10 ports. Connections per second and request latency (p50,
//! p99) for each datapath on the node, lb's socket hooks among them.

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
const CLIENT_THREADS: usize = 4;

/// What one run measured.
struct Run {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    failed: usize,
}

/// Requests through `rig` from CLIENT_THREADS client processes for DURATION.
fn load(rig: &TcpRig) -> anyhow::Result<Run> {
    let outputs = rig.clients(CLIENT_THREADS, "crr", &[&DURATION.as_secs_f64().to_string()])?;
    let value = |output: &str, key: &str| -> anyhow::Result<f64> {
        let text = field(output, key).with_context(|| format!("no {key} in {output:?}"))?;
        Ok(text.parse()?)
    };
    let (mut connections, mut seconds, mut failed, mut p50s, mut p99s) = (0.0, 0.0f64, 0.0, Vec::new(), Vec::new());
    for output in &outputs {
        connections += value(output, "connections")?;
        failed += value(output, "failed")?;
        seconds = seconds.max(value(output, "seconds")?);
        p50s.push(value(output, "p50_us")?);
        p99s.push(value(output, "p99_us")?);
    }
    // The processes' percentiles, each the median over them.
    let us = |values: &[f64]| Duration::from_secs_f64(median_spread(values).0 / 1e6);
    Ok(Run { per_second: connections / seconds, p50: us(&p50s), p99: us(&p99s), failed: failed as usize })
}

/// The rig, its backend answering HTTP, after a warm-up (ARP, first flows).
fn rig(datapath: Datapath, services: u32) -> anyhow::Result<TcpRig> {
    let rig = TcpRig::new(datapath, services, |backend, ports| backend.serve_on(ports, &[]))?;
    load(&rig).map(drop).ok();
    Ok(rig)
}

const DATAPATHS: [Datapath; 4] = [Datapath::LbSocket, Datapath::Lb, Datapath::Iptables, Datapath::Nftables];
const RUNS: usize = 3;

pub fn run() -> anyhow::Result<Section> {
    let mut markdown =
        String::from("| datapath | services | connections/s | p50 | p99 | failed |\n|---|---|---|---|---|---|\n");
    let mut rows = Vec::new();
    let mut series: Vec<(String, Vec<f64>)> = DATAPATHS.iter().map(|d| (d.name().to_owned(), Vec::new())).collect();
    let mut groups = Vec::new();
    for services in [1u32, 10_000] {
        groups.push(format!("{services} services"));
        let rigs = DATAPATHS
            .iter()
            .map(|datapath| {
                eprintln!("  tcp: setting up {} with {services} services", datapath.name());
                rig(*datapath, services)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut runs: Vec<Vec<Run>> = (0..rigs.len()).map(|_| Vec::new()).collect();
        for round in 1..=RUNS {
            for ((rig, runs), datapath) in rigs.iter().zip(&mut runs).zip(DATAPATHS) {
                let run = load(rig)?;
                eprintln!("    round {round}/{RUNS}: {} {:.0} connections/s", datapath.name(), run.per_second);
                runs.push(run);
            }
        }
        drop(rigs);
        for ((datapath, runs), series) in DATAPATHS.iter().zip(runs).zip(&mut series) {
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let (per_second, spread) = median_spread(&runs.iter().map(|r| r.per_second).collect::<Vec<_>>());
            let (p50, _) = median_spread(&runs.iter().map(|r| us(r.p50)).collect::<Vec<_>>());
            let (p99, _) = median_spread(&runs.iter().map(|r| us(r.p99)).collect::<Vec<_>>());
            let failed: usize = runs.iter().map(|r| r.failed).sum();
            series.1.push(per_second);
            markdown.push_str(&format!(
                "| {} | {services} | {per_second:.0} (±{spread:.0}) | {p50:.0} µs | {p99:.0} µs | {failed} |\n",
                datapath.name(),
            ));
            rows.push(json!({"datapath": datapath.name(), "services": services,
                             "connections_per_second": per_second, "spread": spread,
                             "p50_us": p50, "p99_us": p99, "failed": failed}));
        }
    }
    markdown.push_str(&format!(
        "\n{CLIENT_THREADS} client processes for {} s after a warm-up run, each request a new TCP connection \
         through the node to a pod with 10 listening ports (10 endpoints); with lb's socket hooks \
         (`--socket-lb all`) the connection goes to the pod directly, translated at connect(); the TC \
         rigs run the default `--socket-lb host`, whose hooks see each connect() and leave it to TC. \
         Medians of {RUNS} runs (± half the range; latencies are the medians over runs of the processes' \
         median percentile); the datapaths run side by side on nodes of their own and are measured in turn. Client, node and backend share the machine's cores, so the \
         figures are the whole path's, and they depend on the machine.\n",
        DURATION.as_secs()
    ));
    let title = "TCP through a VIP: short-lived connections";
    let chart =
        BarChart { title: title.into(), y_label: "connections per second".into(), groups, series, log_y: false };
    Ok(Section { title, markdown, json: json!(rows), charts: vec![("connections", chart)] })
}
