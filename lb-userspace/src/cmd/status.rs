//! The agent's own state, which no pinned map holds: `GET /status` on the
//! metrics address (JSON, [`AgentStatus`]), kept up to date by the control
//! loop, and `lb-agent status`, which asks for it and prints it beside the
//! kernel's release.

use std::{
    net::SocketAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::{Deserialize, Serialize};

use super::get::Output;
use crate::ingress::table::ServedIngress;

/// What `lb-agent status` shows of a running agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub version: String,
    pub node: String,
    /// When the agent started (RFC 3339).
    pub started: String,
    pub source: SourceStatus,
    /// The last pass that wrote the maps (or failed to), none before the first.
    pub last_sync: Option<SyncStatus>,
    /// The interfaces the programs are attached to, by name.
    pub interfaces: Vec<InterfaceStatus>,
    /// How full the maps the agent allocates are.
    pub maps: Vec<MapFill>,
    /// Live conntrack entries at the last sweep.
    pub conntrack_entries: u64,
    /// What the programs were loaded with.
    pub settings: Settings,
    /// The Ingresses the proxy serves (`lb-agent get ingresses`).
    #[serde(default)]
    pub ingresses: Vec<ServedIngress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// `manifests` or `api`.
    pub kind: String,
    /// The manifest directory, or the API server's URL.
    pub location: String,
    /// Whether the source gave a complete picture yet (an API server listed).
    pub synced: bool,
    pub services: usize,
    /// Services not programmed for want of room, with the reason.
    pub refused_services: usize,
    /// Objects the model refused, each logged once.
    pub object_errors: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// When it ended (RFC 3339).
    pub at: String,
    pub duration_seconds: f64,
    pub map_writes: usize,
    pub failures: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    /// `node` (`--device`) or `pod` (`--pod-device`).
    pub role: String,
    pub hooks: Vec<HookStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookStatus {
    /// `xdp`, `tc ingress` or `tc egress`.
    pub hook: String,
    /// How: `xdp native`, `xdp generic`, `tcx` or `tc filter` (netlink),
    /// and whether an earlier agent's link was taken over.
    pub attached_as: String,
    pub program_id: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapFill {
    pub map: String,
    pub used: usize,
    pub capacity: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub service_cidrs: Vec<String>,
    pub ct_timeout_seconds: CtTimeoutSeconds,
    pub xdp_mode: String,
    pub pod_forwarding: String,
    pub socket_lb: String,
    /// The DNS responder: where it listens, for which domain, where other
    /// names go; None when off.
    #[serde(default)]
    pub dns: Option<DnsSettings>,
    /// The Ingress proxy: where it listens, for which class; None when off.
    #[serde(default)]
    pub ingress: Option<IngressSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressSettings {
    pub http: Option<String>,
    pub https: Option<String>,
    pub class: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsSettings {
    pub address: String,
    pub cluster_domain: String,
    pub upstream: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CtTimeoutSeconds {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
}

impl From<lb_common::CtTimeouts> for CtTimeoutSeconds {
    fn from(t: lb_common::CtTimeouts) -> Self {
        CtTimeoutSeconds {
            tcp_syn: t.tcp_syn_s,
            tcp_established: t.tcp_established_s,
            tcp_closing: t.tcp_closing_s,
            udp: t.udp_s,
        }
    }
}

impl From<CtTimeoutSeconds> for lb_common::CtTimeouts {
    fn from(t: CtTimeoutSeconds) -> Self {
        lb_common::CtTimeouts {
            tcp_syn_s: t.tcp_syn,
            tcp_established_s: t.tcp_established,
            tcp_closing_s: t.tcp_closing,
            udp_s: t.udp,
        }
    }
}

/// The status the control loop keeps and `/status` serves.
#[derive(Debug, Default)]
pub struct SharedStatus(Mutex<AgentStatus>);

impl SharedStatus {
    pub fn new(status: AgentStatus) -> Self {
        SharedStatus(Mutex::new(status))
    }

    /// Changes the status in place.
    pub fn update(&self, change: impl FnOnce(&mut AgentStatus)) {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    pub fn get(&self) -> AgentStatus {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// `time` as RFC 3339, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// How long `status` and `explain` wait for the agent's answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `lb-agent status`: the kernel, and the status of the agent serving
/// metrics on `agent`.
pub fn node_status(agent: SocketAddr) -> anyhow::Result<NodeStatus> {
    Ok(NodeStatus { kernel: kernel_release(), agent: fetch(agent)? })
}

/// Asks the agent serving metrics on `addr` for its status.
pub fn fetch(addr: SocketAddr) -> anyhow::Result<AgentStatus> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(ask(addr, TIMEOUT))
}

async fn ask(addr: SocketAddr, timeout: Duration) -> anyhow::Result<AgentStatus> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = format!("http://{addr}/status").parse()?;
    let asked = async {
        let response = client.get(uri).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "answered {status}: {}", String::from_utf8_lossy(&body).trim());
        Ok(serde_json::from_slice::<AgentStatus>(&body)?)
    };
    let answer = match tokio::time::timeout(timeout, asked).await {
        Ok(answer) => answer,
        Err(_) => Err(anyhow::anyhow!("no answer within {timeout:?}")),
    };
    answer.with_context(|| {
        format!("asking the agent at http://{addr}/status (is it running with --metrics-bind-address {addr}?)")
    })
}

/// This kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given; its fields are C strings.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(name.release.as_ptr()).to_string_lossy().into_owned()
    }
}

/// What `lb-agent status` prints: the kernel and the agent's status.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub kernel: String,
    pub agent: AgentStatus,
}

pub fn format_status(status: &NodeStatus, output: Output) -> anyhow::Result<String> {
    if let Some(text) = super::get::structured(status, output)? {
        return Ok(text);
    }
    let NodeStatus { kernel, agent } = status;
    let mut out = format!(
        "kernel:    {kernel}\nagent:     {} on node {}, started {}\n",
        agent.version, agent.node, agent.started
    );
    let source = &agent.source;
    let synced = if source.synced { "synced" } else { "not synced yet" };
    out += &format!(
        "source:    {} {} ({synced}): {} services, {} refused for want of room, {} objects in error\n",
        source.kind, source.location, source.services, source.refused_services, source.object_errors
    );
    out += &match &agent.last_sync {
        Some(sync) => format!(
            "last sync: {} took {:.3}s, {} map writes, {} failed\n",
            sync.at, sync.duration_seconds, sync.map_writes, sync.failures
        ),
        None => "last sync: none yet\n".to_owned(),
    };
    let s = &agent.settings;
    let t = s.ct_timeout_seconds;
    out += &format!(
        "settings:  service CIDRs {}; xdp mode {}; pod forwarding {}; socket LB {}; conntrack timeouts tcp syn {}s, established {}s, closing {}s, udp {}s\n",
        s.service_cidrs.join(", "),
        s.xdp_mode,
        s.pod_forwarding,
        s.socket_lb,
        t.tcp_syn,
        t.tcp_established,
        t.tcp_closing,
        t.udp
    );
    out += &match &s.dns {
        Some(dns) => format!(
            "dns:       {} for {}, other names {}\n",
            dns.address,
            dns.cluster_domain,
            dns.upstream.as_deref().map_or("refused".to_owned(), |u| format!("to {u}"))
        ),
        None => "dns:       off\n".to_owned(),
    };
    out += &match &s.ingress {
        Some(ingress) => format!(
            "ingress:   class {}, http {}, https {}, {} Ingresses served\n",
            ingress.class,
            ingress.http.as_deref().unwrap_or("off"),
            ingress.https.as_deref().unwrap_or("off"),
            agent.ingresses.len()
        ),
        None => "ingress:   off\n".to_owned(),
    };
    out += &format!("\nconntrack: {} live entries at the last sweep\n", agent.conntrack_entries);
    out += "\nMAP             USED  CAPACITY  FILL\n";
    for map in &agent.maps {
        let fill = if map.capacity == 0 { 0.0 } else { 100.0 * map.used as f64 / map.capacity as f64 };
        out += &format!("{:<14} {:>5}  {:>8}  {fill:.1}%\n", map.map, map.used, map.capacity);
    }
    out += "\nINTERFACE        IFINDEX  ROLE  HOOK        ATTACHED AS                PROGRAM\n";
    for iface in &agent.interfaces {
        for hook in &iface.hooks {
            out += &format!(
                "{:<16} {:>7}  {:<4}  {:<10}  {:<25}  {}\n",
                iface.name, iface.ifindex, iface.role, hook.hook, hook.attached_as, hook.program_id
            );
        }
    }
    Ok(out)
}
