//! `cargo xtask bench [NAME...]`: every benchmark, or the ones named, in one
//! run; the results go to `bench/results/<date>.md` (`<date>-<names>.md`
//! for some only), with the machine they ran on, a `.json` and SVG charts
//! beside it.

mod bulk;
mod chart;
#[path = "../../tests/common/mod.rs"]
mod common;
mod control_plane;
mod dns;
mod ingress;
mod maglev;
mod per_packet;
mod synthetic;
mod tcp;
mod throughput;

use std::{fmt::Write as _, path::PathBuf};

use serde_json::{Map, Value};

/// What one benchmark reports: a Markdown section, its figures, and charts
/// of them (file name suffix, chart).
pub struct Section {
    pub title: &'static str,
    pub markdown: String,
    pub json: Value,
    pub charts: Vec<(&'static str, chart::BarChart)>,
}

type Bench = fn() -> anyhow::Result<Section>;

const BENCHES: &[(&str, Bench)] = &[
    ("per_packet", per_packet::run),
    ("throughput", throughput::run),
    ("tcp", tcp::run),
    ("bulk", bulk::run),
    ("control_plane", control_plane::run),
    ("maglev", maglev::run),
    ("dns", dns::run),
    ("ingress", ingress::run),
];

/// The median of `values` and half their range.
pub fn median_spread(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    (median, (sorted[sorted.len() - 1] - sorted[0]) / 2.0)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; every other argument names a benchmark.
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if let Some(unknown) = wanted.iter().find(|w| !BENCHES.iter().any(|(name, _)| name == w)) {
        let known: Vec<&str> = BENCHES.iter().map(|(name, _)| *name).collect();
        anyhow::bail!("no benchmark named {unknown:?} (there are: {})", known.join(", "));
    }
    let machine = machine();
    let date = machine_date();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    // A run of some benchmarks only does not overwrite the day's full
    // report, nor another partial run's charts.
    let stem = if wanted.is_empty() { date.clone() } else { format!("{date}-{}", wanted.join("-")) };
    let mut markdown = format!("# Benchmarks, {date}\n\nMachine: {machine}\n");
    let mut json = Map::new();
    json.insert("machine".into(), Value::String(machine));
    for (name, bench) in BENCHES.iter().filter(|(name, _)| wanted.is_empty() || wanted.iter().any(|w| w == name)) {
        eprintln!("bench {name}: running");
        let section = bench()?;
        eprintln!("bench {name}: done");
        let _ = write!(markdown, "\n## {}\n\n{}", section.title, section.markdown);
        for (suffix, chart) in &section.charts {
            let file = format!("{stem}-{name}-{suffix}.svg");
            chart.draw(&dir.join(&file))?;
            let _ = write!(markdown, "\n![{}]({file})\n", chart.title);
        }
        json.insert((*name).into(), section.json);
    }
    let stem = dir.join(stem);
    std::fs::write(stem.with_extension("md"), &markdown)?;
    std::fs::write(stem.with_extension("json"), serde_json::to_string_pretty(&Value::Object(json))? + "\n")?;
    print!("{markdown}");
    eprintln!("written: {}", stem.with_extension("md").display());
    Ok(())
}

/// Cores, CPU model and kernel: the figures depend on them.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({model}), Linux {}", kernel.trim())
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn machine_date() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%F"]).output();
    out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_else(|| "undated".into())
}
