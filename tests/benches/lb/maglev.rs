//! Maglev tables as the agent builds them: balance (max/min share of table
//! entries over equal backends), disruption (flows that change backend when
//! one backend leaves or joins; ideal 1/N), build time and memory per frontend.

use std::time::Instant;

use lb_common::{Backend, wire};
use lb_userspace::plan::maglev;
use serde_json::json;

use crate::{Section, chart::BarChart};

fn backends(n: usize) -> Vec<Backend> {
    (0..n as u32)
        .map(|i| Backend { addr: wire::addr([10, 244, (i >> 8) as u8, i as u8]), port: wire::port(8080), flags: 0 })
        .collect()
}

pub fn run() -> anyhow::Result<Section> {
    let mut rows = Vec::new();
    let (mut groups, mut moved, mut ideal) = (Vec::new(), Vec::new(), Vec::new());
    let mut markdown = String::from(
        "| backends N | table size M | bytes per frontend | build | imbalance (max/min - 1) | removing one moves (ideal 1/N) | adding one moves (ideal 1/(N+1)) |\n|---|---|---|---|---|---|---|\n",
    );
    for n in [3usize, 10, 100, 1000] {
        let all = backends(n + 1);
        let (current, grown) = (&all[..n], &all[..]);
        let fewer = &all[..n - 1];
        let size = maglev::table_size(n);
        let start = Instant::now();
        let table = maglev::build(current, size);
        let build = start.elapsed();
        let imbalance = maglev::imbalance(&table, n);
        let removed = maglev::disruption(&table, current, &maglev::build(fewer, maglev::resized(size, n - 1)), fewer);
        let added = maglev::disruption(&table, current, &maglev::build(grown, maglev::resized(size, n + 1)), grown);
        // 2 bytes per entry, rounded up to whole 8-byte array elements.
        let bytes = u64::from(size).div_ceil(4) * 8;
        markdown.push_str(&format!(
            "| {n} | {size} | {bytes} | {:.2} ms | {:.3}% | {:.2}% ({:.2}%) | {:.2}% ({:.2}%) |\n",
            build.as_secs_f64() * 1e3,
            imbalance * 100.0,
            removed * 100.0,
            100.0 / n as f64,
            added * 100.0,
            100.0 / (n + 1) as f64,
        ));
        groups.push(format!("N = {n}"));
        moved.push(removed * 100.0);
        ideal.push(100.0 / n as f64);
        rows.push(json!({
            "backends": n, "table_size": size, "bytes_per_frontend": bytes, "build_ms": build.as_secs_f64() * 1e3,
            "imbalance": imbalance, "disruption_remove": removed, "ideal_remove": 1.0 / n as f64,
            "disruption_add": added, "ideal_add": 1.0 / (n + 1) as f64,
        }));
    }
    markdown.push_str(
        "\nGoals: imbalance <= 1%, disruption within 1 percentage point of the ideal. A new table has \
         1 000 entries per backend and keeps its size while it has 500 to 4 000, so one backend more or \
         less keeps the size. Disruption is measured over a fixed sample of 100 000 flow hashes. Memory is the frontend's share of `LB_MAGLEV` (each node port \
         and external IP of a Service is a frontend of its own); the frontend, slot and backend map \
         entries come on top. Figures other than build time do not depend on the machine.\n",
    );
    let chart = BarChart {
        title: "Maglev: flows moved when one of N backends is removed".into(),
        y_label: "% of flows (log)".into(),
        groups,
        series: vec![("measured".into(), moved), ("ideal 1/N".into(), ideal)],
        log_y: true,
    };
    Ok(Section { title: "Maglev tables", markdown, json: json!(rows), charts: vec![("disruption", chart)] })
}
