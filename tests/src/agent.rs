//! `lb-agent run` as a process inside a node namespace, with its own
//! manifest directory (or a kubeconfig) and bpf directory, removed again on
//! drop.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    cgroup::TestCgroup,
    netns::{ChildGuard, unique_name},
    topology::{Node, POD_DEVICE_PATTERN},
};

pub struct AgentProcess {
    pub manifests: PathBuf,
    pub bpf_dir: PathBuf,
    pub log: PathBuf,
    bin: PathBuf,
    /// Watch the API server this names instead of `manifests`.
    kubeconfig: Option<PathBuf>,
    /// The arguments after `run --manifests DIR --node-name NAME`.
    args: Vec<String>,
    child: Option<ChildGuard>,
    /// When the running agent's process was started.
    spawned: Option<Instant>,
    /// Where its socket hooks attach unless `args` say (`--cgroup-root`): a
    /// cgroup of its own, which no process is in, so that they serve
    /// nothing of the machine's; None for the agent's default, the
    /// unified hierarchy's root.
    cgroup: Option<TestCgroup>,
}

impl AgentProcess {
    /// Starts the agent in `node`, attached to all of the node's pod veths,
    /// and waits until it has attached and programmed its first state.
    pub fn start(node: &Node, manifests: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with(node, manifests, &["--pod-device", POD_DEVICE_PATTERN])
    }

    /// Like [`AgentProcess::start`], with `args` instead of `--pod-device 'h-*'`.
    pub fn start_with(node: &Node, manifests: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Self> {
        let mut agent = Self::new(args)?;
        for (file, text) in manifests {
            agent.write_manifest(file, text)?;
        }
        agent.spawn(node)?;
        Ok(agent)
    }

    /// Like [`AgentProcess::start_with`], the socket hooks on the agent's
    /// default cgroup, the unified hierarchy's root: they serve every
    /// process of the node namespace, as on a real node, the test's own
    /// threads there too (and stay on the root if the test is killed).
    pub fn start_on_root_cgroup(node: &Node, manifests: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Self> {
        let mut agent = Self::new(args)?;
        agent.cgroup = None;
        for (file, text) in manifests {
            agent.write_manifest(file, text)?;
        }
        agent.spawn(node)?;
        Ok(agent)
    }

    /// Starts the agent in `node` watching the API server `kubeconfig`
    /// names, with `args`; waits until it has programmed the server's
    /// objects once.
    pub fn start_api(node: &Node, kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_api_until(node, kubeconfig, args, "first sync")
    }

    /// Like [`AgentProcess::start_api`], waiting only until it logs
    /// `needle` (an API server that is down never lets it sync).
    pub fn start_api_until(
        node: &Node,
        kubeconfig: &std::path::Path,
        args: &[&str],
        needle: &str,
    ) -> anyhow::Result<Self> {
        let mut agent = Self::new(args)?;
        agent.kubeconfig = Some(kubeconfig.to_owned());
        agent.spawn_until(node, needle)?;
        Ok(agent)
    }

    fn new(args: &[&str]) -> anyhow::Result<Self> {
        let id = unique_name("a");
        let dir = std::env::temp_dir().join(&id);
        let manifests_dir = dir.join("manifests");
        fs::create_dir_all(&manifests_dir)?;
        Ok(Self {
            manifests: manifests_dir,
            bpf_dir: PathBuf::from("/sys/fs/bpf").join(&id),
            log: dir.join("agent.log"),
            bin: crate::workspace_binary("LB_AGENT_BIN", "lb-agent")?,
            kubeconfig: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            spawned: None,
            cgroup: Some(TestCgroup::create()?),
        })
    }

    /// Starts the agent process (its log starts afresh) and waits until it
    /// has attached and programmed its first state.
    fn spawn(&mut self, node: &Node) -> anyhow::Result<()> {
        self.spawn_until(node, "first sync")
    }

    /// Starts the agent process and waits until it logs `needle`.
    fn spawn_until(&mut self, node: &Node, needle: &str) -> anyhow::Result<()> {
        let log = fs::File::create(&self.log)?;
        let mut cmd = node.ns.command(&self.bin);
        cmd.arg("run");
        match &self.kubeconfig {
            Some(kubeconfig) => cmd.arg("--kubeconfig").arg(kubeconfig),
            None => cmd.arg("--manifests").arg(&self.manifests),
        };
        cmd.args(["--node-name", node.ns.name()]).args(&self.args);
        if let Some(cgroup) = self.cgroup() {
            cmd.arg("--cgroup-root").arg(cgroup.path());
        }
        cmd.arg("--bpf-dir")
            .arg(&self.bpf_dir)
            .env("RUST_LOG", "info,lb_datapath=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log);
        self.spawned = Some(Instant::now());
        self.child = Some(node.ns.spawn(&mut cmd)?);
        self.wait_for_log(needle, Duration::from_secs(60))
    }

    /// Kills the agent with SIGKILL: no chance to clean up.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.0.kill()?;
            child.0.wait()?;
        }
        Ok(())
    }

    /// Starts a new agent (after [`AgentProcess::kill`] or
    /// [`AgentProcess::stop`]) with the same arguments, manifests and
    /// pinned state.
    pub fn restart(&mut self, node: &Node) -> anyhow::Result<()> {
        self.restart_until(node, "first sync")
    }

    /// Like [`AgentProcess::restart`], with `args` instead of the ones it
    /// was started with.
    pub fn restart_with(&mut self, node: &Node, args: &[&str]) -> anyhow::Result<()> {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.restart(node)
    }

    /// Like [`AgentProcess::restart`], waiting only until it logs `needle`
    /// (a source that is not there yet never lets it sync).
    pub fn restart_until(&mut self, node: &Node, needle: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the agent is still running");
        self.spawn_until(node, needle)
    }

    /// Writes (or replaces) a manifest file the way an editor would: a new
    /// file renamed into place, so the agent never reads half a file.
    pub fn write_manifest(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.manifests.join(file)).with_context(|| format!("install manifest {file}"))
    }

    pub fn remove_manifest(&self, file: &str) -> anyhow::Result<()> {
        fs::remove_file(self.manifests.join(file)).with_context(|| format!("remove manifest {file}"))
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.0.try_wait().ok().flatten()) {
                bail!("lb-agent exited with {status}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("lb-agent did not log {needle:?} within {timeout:?}:\n{}", self.log_text())
    }

    /// `lb-agent get WHAT` against this agent's pinned maps.
    pub fn get(&self, what: &str) -> anyhow::Result<String> {
        self.get_filtered(what, &[])
    }

    /// `lb-agent get WHAT ARGS...` (filters such as `--client IP`).
    pub fn get_filtered(&self, what: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["get", what, "--bpf-dir"]).arg(&self.bpf_dir).args(args);
        Ok(String::from_utf8(crate::netns::checked(&mut cmd)?.stdout)?)
    }

    /// `lb-agent explain ARGS... -o json` against this agent's maps, run in
    /// `node`'s namespace (where its interfaces and its /status are).
    pub fn explain(&self, node: &Node, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut cmd = node.ns.command(&self.bin);
        cmd.args(["explain", "-o", "json", "--bpf-dir"]).arg(&self.bpf_dir).args(args);
        Ok(serde_json::from_slice(&crate::netns::checked(&mut cmd)?.stdout)?)
    }

    /// `lb-agent get ingresses ARGS...`, run in `node`'s namespace (it asks
    /// the agent's /status there).
    pub fn get_ingresses(&self, node: &Node, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = node.ns.command(&self.bin);
        cmd.args(["get", "ingresses"]).args(args);
        Ok(String::from_utf8(crate::netns::checked(&mut cmd)?.stdout)?)
    }

    /// `lb-agent status ARGS...`, run in `node`'s namespace.
    pub fn status(&self, node: &Node, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = node.ns.command(&self.bin);
        cmd.arg("status").args(args);
        Ok(String::from_utf8(crate::netns::checked(&mut cmd)?.stdout)?)
    }

    /// `lb-agent env --namespace NAMESPACE` against this agent's pinned maps.
    pub fn get_env(&self, namespace: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["env", "--namespace", namespace, "--bpf-dir"]).arg(&self.bpf_dir);
        Ok(String::from_utf8(crate::netns::checked(&mut cmd)?.stdout)?)
    }

    /// Polls `get services` until `check` accepts it; how long that took.
    pub fn wait_for_services(&self, timeout: Duration, check: impl Fn(&str) -> bool) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let services = self.get("services")?;
            if check(&services) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "programmed services did not converge within {timeout:?}:\n{services}\nagent log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The counter in `column` (a hook: `XDP-NODE`, `TC-POD`, `TC-EGRESS`;
    /// or `PACKETS` for how rewritten packets left) of the row `reason`.
    pub fn counter(&self, column: &str, reason: &str) -> anyhow::Result<u64> {
        let counters = self.get("counters")?;
        let mut index = None;
        for line in counters.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.first().is_some_and(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '-')) {
                index = cols.iter().position(|c| *c == column);
            } else if cols.first() == Some(&reason)
                && let Some(value) = index.and_then(|i| cols.get(i))
            {
                return Ok(value.parse()?);
            }
        }
        anyhow::bail!("no counter {reason} in column {column} of:\n{counters}")
    }

    /// The cgroup its socket hooks serve, unless `args` named another or it
    /// was started on the root: clients started there are served as the
    /// node's own processes.
    pub fn cgroup(&self) -> Option<&TestCgroup> {
        self.cgroup.as_ref().filter(|_| !self.args.iter().any(|a| a == "--cgroup-root"))
    }

    /// The `map_writes` of the running agent's `first sync` log line.
    pub fn first_sync_writes(&self) -> usize {
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains("first sync")).unwrap_or_else(|| panic!("no first sync in:\n{log}"));
        line.split_whitespace()
            .find_map(|word| word.strip_prefix("map_writes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no map_writes in {line:?}"))
    }

    /// When the running agent's process was started (its manifests were
    /// written before).
    pub fn spawned_at(&self) -> Option<Instant> {
        self.spawned
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    /// Stops the agent with SIGTERM, as a service manager would.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
            child.0.wait()?;
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = fs::remove_dir_all(&self.bpf_dir);
        if let Some(dir) = self.manifests.parent().filter(|d| d.starts_with(std::env::temp_dir())) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Manifest text for a pod of the kubia example.
pub fn pod_manifest(name: &str, ip: std::net::Ipv4Addr, ready: bool) -> String {
    pod_manifest_ips(name, &[ip.into()], ready)
}

/// Like [`pod_manifest`], with `status.podIPs` (`podIP` the first).
pub fn pod_manifest_ips(name: &str, ips: &[std::net::IpAddr], ready: bool) -> String {
    let status = if ready { "True" } else { "False" };
    let pod_ips: String = ips.iter().map(|ip| format!("  - ip: {ip}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: kubia\nspec:\n  containers:\n  - name: kubia\n    image: luksa/kubia\n    ports:\n    - name: http\n      containerPort: 8080\nstatus:\n  podIP: {}\n  podIPs:\n{pod_ips}  conditions:\n  - type: Ready\n    status: \"{status}\"\n",
        ips[0]
    )
}
