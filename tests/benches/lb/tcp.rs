//! TCP through a VIP with short-lived connections: a new connection per
//! request (connect, GET, read the answer, close), from a client pod to the
//! last synthetic Service, served by a pod on 10 ports. Connections per
//! second and request latency (p50, p99) for each datapath on the node.

use std::{
    io::{Read, Write},
    net::{SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::netns::Netns;
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

/// Requests from `client` to `to` on CLIENT_THREADS threads for DURATION.
fn load(client: &Netns, to: SocketAddrV4) -> anyhow::Result<Run> {
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENT_THREADS)
            .map(|_| {
                scope.spawn(|| {
                    client.run_in(|| {
                        let (mut latencies, mut failed) = (Vec::new(), 0);
                        while started.elapsed() < DURATION {
                            let t = Instant::now();
                            match request(to) {
                                Ok(()) => latencies.push(t.elapsed()),
                                Err(_) => failed += 1,
                            }
                        }
                        (latencies, failed)
                    })
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("client thread").expect("client namespace")).collect()
    });
    let elapsed = started.elapsed();
    let failed = results.iter().map(|r| r.1).sum();
    let mut latencies: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
    anyhow::ensure!(!latencies.is_empty(), "no request to {to} succeeded");
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok(Run { per_second: latencies.len() as f64 / elapsed.as_secs_f64(), p50: at(0.5), p99: at(0.99), failed })
}

fn request(to: SocketAddrV4) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    if answer.starts_with(b"HTTP/1.1 200") { Ok(()) } else { Err(std::io::ErrorKind::InvalidData.into()) }
}

/// The rig, its backend answering HTTP, after a warm-up (ARP, first flows).
fn rig(datapath: Datapath, services: u32) -> anyhow::Result<TcpRig> {
    let rig = TcpRig::new(datapath, services, |backend, ports| backend.serve_on(ports, &[]))?;
    load(&rig.client.ns, rig.to).map(drop).ok();
    Ok(rig)
}

const DATAPATHS: [Datapath; 3] = [Datapath::Lb, Datapath::Iptables, Datapath::Nftables];
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
                let run = load(&rig.client.ns, rig.to)?;
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
        "\n{CLIENT_THREADS} client threads for {} s after a warm-up run, each request a new TCP connection \
         through the node to a pod with 10 listening ports (10 endpoints). Medians of {RUNS} runs (± half the \
         range; latencies are the medians of each run's percentile); the datapaths run side by side on nodes \
         of their own and are measured in turn. Client, node and backend share the machine's cores, so the \
         figures are the whole path's, and they depend on the machine.\n",
        DURATION.as_secs()
    ));
    let title = "TCP through a VIP: short-lived connections";
    let chart =
        BarChart { title: title.into(), y_label: "connections per second".into(), groups, series, log_y: false };
    Ok(Section { title, markdown, json: json!(rows), charts: vec![("connections", chart)] })
}
