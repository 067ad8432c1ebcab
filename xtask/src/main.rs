//! `cargo xtask`: set-up, build, demo and tests, each doing its own set-up
//! so that a fresh machine needs nothing installed by hand.

mod demo;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build target/release/lb-agent (eBPF object embedded) and the test server.
    Build,
    /// Run the kubia demo in network namespaces (needs root).
    Demo,
    /// Run every test: host unit tests, BPF_PROG_TEST_RUN fixtures, netns integration tests (needs root).
    Test {
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
    },
    /// Run the BPF_PROG_TEST_RUN and netns integration tests in a VM on another kernel (needs root).
    VmTest {
        /// The guest kernel.
        #[arg(long, default_value = "debian-6.1")]
        kernel: String,
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
    },
    /// Run the benchmarks (all, or the ones named) and write bench/results/<date>.md and .json.
    Bench {
        /// Benchmark names, e.g. `maglev`.
        names: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Build => build(),
        Task::Demo => {
            build()?;
            demo::run(&workspace_root())
        }
        Task::Test { filter } => test(filter.as_deref()),
        Task::VmTest { kernel, filter } => vm::run(&kernel, filter.as_deref()),
        Task::Bench { names } => {
            build()?;
            checked(cargo().args(["bench", "-p", "lb-tests", "--bench", "lb", "--"]).args(names))
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// Runs `cmd`, failing with its command line when it fails.
pub fn checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn build() -> anyhow::Result<()> {
    setup::run()?;
    checked(cargo().args(["build", "--release", "-p", "lb-userspace", "-p", "lb-tests", "--bins"]))
}

fn test(filter: Option<&str>) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the tests need root (network namespaces, XDP, BPF_PROG_TEST_RUN): run `sudo -E cargo xtask test`");
    }
    build()?;
    let root = workspace_root();
    let release = root.join("target/release");
    // Host unit tests of the kernel/user contract and the packet logic.
    checked(cargo().args(["test", "-p", "lb-common", "-p", "lb-ebpf", "--lib"]))?;
    // Agent unit tests, then fixtures and netns integration tests against
    // the binaries built above.
    checked(cargo().args(["test", "--release", "-p", "lb-userspace"]))?;
    let mut integration = cargo();
    integration
        .args(["test", "--release", "-p", "lb-tests"])
        .env("LB_AGENT_BIN", release.join("lb-agent"))
        .env("LB_TESTSERVER_BIN", release.join("lb-testserver"))
        .env("LB_TESTCLIENT_BIN", release.join("lb-testclient"));
    if let Some(filter) = filter {
        integration.args(["--", filter]);
    }
    checked(&mut integration)
}
