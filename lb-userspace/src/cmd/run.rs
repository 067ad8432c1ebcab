//! `lb-agent run`: the control loop. Source -> model -> plan -> maps on
//! every change, and the datapath attached to every interface that matches
//! the patterns, including ones that appear later.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

use lb_common::{DEVICE_INGRESS_HOOKED, DEVICE_POD, DEVICE_TAKES_XDP_FRAMES, Ipv6Wire};

use super::{
    health::{self, HealthServer, SyncHealth},
    metrics::{self, AgentMetrics, DatapathCollector},
    status::{
        self, AgentStatus, HookStatus, InterfaceStatus, MapFill, Settings, SharedStatus, SourceStatus, SyncStatus,
    },
};
use crate::{
    datapath::{
        interfaces::{InterfacePatterns, LinkEvents},
        loader::{Datapath, InterfaceRole, LoadOptions},
        maps::DatapathMaps,
        sockets::{self, SocketLb},
    },
    dns::{DnsOptions, DnsServer},
    ingress::proxy::{IngressOptions, IngressProxy},
    model::{self, DesiredState, ModelOptions},
    plan::{NodeInfo, Programmed, WireAddr},
    source::{
        Kind, Source,
        api::{ApiConfig, ApiSource, Watches},
        manifests::ManifestSource,
    },
};

/// The Node label topology hints name zones by.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// How often interfaces and addresses are listed without the kernel's
/// notifications (`LinkEvents`), which drive it otherwise.
const INTERFACE_POLL: Duration = Duration::from_millis(200);
/// How often they are listed anyway, with the notifications: a safety net.
const INTERFACE_RESYNC: Duration = Duration::from_secs(10);

/// Where the objects come from.
pub enum SourceConfig {
    /// A directory of manifests (standalone).
    Manifests(PathBuf),
    /// A Kubernetes API server.
    Api(ApiConfig),
}

pub struct AgentConfig {
    pub source: SourceConfig,
    /// How the programs are loaded.
    pub load: LoadOptions,
    /// How often expired conntrack entries are removed.
    pub ct_sweep_interval: Duration,
    /// Detach when stopping, instead of leaving the pinned links forwarding.
    pub detach_on_exit: bool,
    /// Let cluster IPs answer traffic arriving on the node's devices.
    pub cluster_ips_external: bool,
    pub node_name: String,
    /// Every interface to attach to: node devices and pod veths.
    pub interfaces: InterfacePatterns,
    /// The node's own devices (`--device`), whose addresses node ports use.
    pub node_devices: InterfacePatterns,
    /// Devices XDP may send rewritten frames to (`--xdp-redirect-device`).
    pub redirect_devices: InterfacePatterns,
    pub bpf_dir: PathBuf,
    pub model: ModelOptions,
    /// The cgroup the socket hooks attach to (`--cgroup-root`); None: the
    /// unified hierarchy's root.
    pub cgroup_root: Option<PathBuf>,
    /// Node ports answer the node's sockets on 127.0.0.1 too.
    pub nodeport_localhost: bool,
    /// Where `/healthz` and `/livez` answer, if anywhere.
    pub health_bind: Option<SocketAddr>,
    /// How long a failed pass may wait for a complete one before the agent is stale.
    pub health_timeout: Duration,
    /// Where `/metrics` answers, if anywhere.
    pub metrics_bind: Option<SocketAddr>,
    /// The DNS responder, if on.
    pub dns: Option<DnsOptions>,
    /// The Ingress proxy, if on.
    pub ingress: Option<IngressOptions>,
}

struct Agent {
    datapath: Datapath,
    maps: DatapathMaps,
    programmed: Programmed,
    source: Source,
    /// Whether the maps were planned from a complete picture of the source
    /// yet: until then nothing is planned.
    synced: bool,
    /// The cluster's ServiceCIDRs as last checked.
    cluster_service_cidrs: Vec<String>,
    /// The model's errors of the last pass, as logged.
    model_errors: BTreeSet<String>,
    /// How many of them each object has (`Kind namespace/name`).
    object_errors: BTreeMap<String, i64>,
    /// Whether the API's missing Node for this node was reported.
    missing_node: bool,
    desired: DesiredState,
    config: AgentConfig,
    /// Interfaces that failed to attach, so the error is logged once.
    failed: BTreeMap<String, u32>,
    /// This node's name and device addresses.
    node: NodeInfo,
    /// What was last written to `LB_DEVICES` (ifindex -> flags).
    devices: Option<BTreeMap<u32, u32>>,
    /// What was last written to `LB_NODE_ADDRS` and `LB_NODE_ADDRS6`
    /// (ifindex -> address).
    snat_sources: Option<(BTreeMap<u32, u32>, BTreeMap<u32, Ipv6Wire>)>,
    /// Services refused for want of room, as last logged.
    refused: BTreeMap<model::ServiceName, String>,
    health: HealthServer,
    sync_health: Arc<SyncHealth>,
    metrics: Arc<AgentMetrics>,
    status: Arc<SharedStatus>,
    /// When the agent started: changes triggered before are not measured
    /// (as kube-proxy's tracker ignores them).
    started: SystemTime,
    /// The EndpointSlices' change trigger times the maps were last
    /// programmed with, by namespace and name.
    programmed_triggers: BTreeMap<(String, String), SystemTime>,
    dns: Option<DnsServer>,
    ingress: Option<IngressProxy>,
    /// The invalid Ingresses' errors, as last logged.
    ingress_errors: BTreeSet<String>,
}

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    // Checked before anything is loaded or attached.
    let cgroup = match config.load.socket_lb {
        SocketLb::Off => None,
        SocketLb::Host | SocketLb::All => Some(sockets::cgroup_root(config.cgroup_root.as_deref())?),
    };
    // Served before the source starts: /livez answers while the API server
    // is being listed, /healthz says 503 until then.
    let sync_health = Arc::new(SyncHealth::new(config.health_timeout));
    if let Some(addr) = config.health_bind {
        health::serve_health(addr, Arc::clone(&sync_health));
    }
    // Started before the programs are loaded, so that the directory is read
    // or the API server listed meanwhile; nothing is planned before the
    // first pass below.
    let source = match &config.source {
        SourceConfig::Manifests(dir) => {
            let kinds = match &config.ingress {
                None => Kind::MODEL,
                Some(ingress) if ingress.https.is_none() => Kind::INGRESS,
                Some(_) => Kind::ALL,
            };
            Source::Manifests(
                ManifestSource::open(dir.clone(), kinds)
                    .with_context(|| format!("watching manifest directory {}", dir.display()))?,
            )
        }
        SourceConfig::Api(api) => {
            // Headless Services: DNS names them, and an Ingress may route to one.
            let ingresses = config.ingress.is_some();
            let tls_secrets = config.ingress.as_ref().is_some_and(|i| i.https.is_some());
            let watches = Watches { headless: config.dns.is_some() || ingresses, ingresses, tls_secrets };
            Source::Api(ApiSource::start(api, &config.node_name, watches).await?)
        }
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let agent_metrics = AgentMetrics::register(&mut registry);
    // Before the maps are touched, so that a bad DNS flag or a taken port
    // stops nothing but this start; it answers from the first complete model on.
    let dns = config.dns.as_ref().map(|opts| DnsServer::start(opts, Arc::clone(&agent_metrics))).transpose()?;
    let ingress =
        config.ingress.as_ref().map(|opts| IngressProxy::start(opts, Arc::clone(&agent_metrics))).transpose()?;
    // On a thread of its own: the API source's watchers run on this one.
    let (bpf_dir, load) = (config.bpf_dir.clone(), config.load.clone());
    let (datapath, mut maps, logger) = tokio::task::spawn_blocking(move || Datapath::load(&bpf_dir, &load))
        .await
        .context("loading the programs")??;
    // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd lives.
    let mut logger = logger
        .map(|l| unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }.map_err(|e| e.into_parts().1))
        .transpose()?;
    let programmed = maps.programmed().context("reading the pinned maps")?;
    match maps.clear_unnamed_backends(&programmed) {
        Ok(0) => {}
        Ok(cleared) => info!(cleared, "cleared the backends no list names"),
        Err(err) => error!("clearing the backends no list names failed: {err}"),
    }
    let agent_status = Arc::new(SharedStatus::new(initial_status(&config)));
    if let Some(addr) = config.metrics_bind {
        // A handle of its own on the maps just pinned, read by the scrapes.
        match DatapathMaps::open_pinned(&config.bpf_dir) {
            Ok(maps) => registry.register_collector(Box::new(DatapathCollector::new(maps))),
            Err(err) => error!("the datapath's counters are left out of /metrics: {err}"),
        }
        metrics::serve_metrics(addr, registry, Arc::clone(&agent_status));
    }
    let (node_name, cluster_ips_external) = (config.node_name.clone(), config.cluster_ips_external);
    let nodeport_localhost = config.nodeport_localhost;
    let mut agent = Agent {
        datapath,
        maps,
        programmed,
        source,
        synced: false,
        cluster_service_cidrs: Vec::new(),
        model_errors: BTreeSet::new(),
        object_errors: BTreeMap::new(),
        missing_node: false,
        desired: DesiredState::default(),
        config,
        failed: BTreeMap::new(),
        node: NodeInfo { name: node_name, addrs: Vec::new(), cluster_ips_external, zone: None, nodeport_localhost },
        devices: None,
        snat_sources: None,
        refused: BTreeMap::new(),
        health: HealthServer::default(),
        sync_health,
        metrics: agent_metrics,
        status: agent_status,
        started: SystemTime::now(),
        programmed_triggers: BTreeMap::new(),
        dns,
        ingress,
        ingress_errors: BTreeSet::new(),
    };
    // Subscribed before the first listing, so that no link appears unseen between.
    let mut link_events = LinkEvents::open()
        .map_err(|err| error!("no link notifications ({err}): interfaces are listed every {INTERFACE_POLL:?}"))
        .ok();
    // Interfaces first: traffic to a frontend must not start while the
    // veths of its backends are still being attached.
    match agent.config.interfaces.present() {
        Ok(present) => agent.datapath.release_stale_links(&present),
        Err(err) => error!("{err}"),
    }
    // A node device that cannot take the programs at start is a
    // configuration error (pods come and go, and are retried when new).
    let failed = agent.sync_interfaces(None);
    if let Some((_, err)) = failed.iter().find(|(name, _)| agent.config.node_devices.matches(name)) {
        anyhow::bail!("{err}");
    }
    agent.datapath.attach_sockets(cgroup.as_deref())?;
    // The first plan sees the node's addresses and the source's objects
    // together: planned with either missing, it would delete what the last
    // agent programmed and add it back a moment later, failing requests
    // between. Until the source has them all, the maps keep what they hold.
    agent.sync_node_addresses();
    let config = &agent.config;
    info!(node = %config.node_name, bpf_dir = %config.bpf_dir.display(), "agent started");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut interface_poll =
        tokio::time::interval(if link_events.is_some() { INTERFACE_RESYNC } else { INTERFACE_POLL });
    let mut ct_sweep = tokio::time::interval(agent.config.ct_sweep_interval);
    loop {
        tokio::select! {
            () = agent.source.changed() => agent.sync_source(),
            Some(notified) = async { Some(link_events.as_ref()?.changed().await) } => {
                let notified_at = Instant::now();
                if let Err(err) = notified {
                    error!("link notifications failed ({err}): interfaces are listed every {INTERFACE_POLL:?}");
                    link_events = None;
                    interface_poll = tokio::time::interval(INTERFACE_POLL);
                }
                agent.interfaces_changed(Some(notified_at));
            }
            _ = interface_poll.tick() => agent.interfaces_changed(None),
            _ = ct_sweep.tick() => agent.sweep_conntrack(),
            Some(guard) = async { Some(logger.as_mut()?.readable_mut().await) } => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    if agent.config.detach_on_exit {
        info!("stopping: detaching from every interface");
        agent.datapath.detach_all();
    } else {
        info!("stopping: the programs stay attached and keep forwarding (--detach-on-exit detaches)");
    }
    Ok(())
}

impl Agent {
    /// Takes the source's objects through the model to the maps, when they
    /// changed or have never been planned.
    fn sync_source(&mut self) {
        let started = Instant::now();
        if !self.source.refresh() && self.synced {
            return;
        }
        // Topology hints are read against the Node's zone label.
        let node = self.source.node();
        self.node.zone = node.as_ref().and_then(|node| node.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned());
        self.check_service_cidrs();
        match node {
            Some(node) => {
                self.sync_health.set_node(&node);
                self.missing_node = false;
            }
            None if matches!(self.source, Source::Api(_)) && !self.missing_node => {
                warn!(node = %self.config.node_name, "the API server has no Node of this name (check --node-name): topology hints and node eligibility are not applied");
                self.missing_node = true;
            }
            None => {}
        }
        let read = started.elapsed();
        self.build_model();
        let modelled = started.elapsed();
        let map_writes = self.program();
        // After the maps: DNS never names an address before it is programmed.
        if let Some(dns) = &self.dns {
            dns.publish(&self.desired);
        }
        if let Some(ingress) = &self.ingress {
            let (served, errors) = ingress.publish(self.source.objects(), &self.desired);
            log_new_errors(&mut self.ingress_errors, &errors);
            // Only with a published Service: every agent of the cluster
            // then writes the same address, where their own would race.
            let publishes = self.config.ingress.as_ref().is_some_and(|i| i.publish_service.is_some());
            if let (Source::Api(api), true) = (&self.source, publishes) {
                api.forget_ingress_reports(&served.iter().map(|s| (s.namespace.as_str(), s.name.as_str())).collect());
                for s in served.iter().filter(|s| s.address != s.reported) {
                    api.report_ingress_address(&s.namespace, &s.name, s.resource_version.as_deref(), &s.address);
                }
            }
            self.status.update(|status| status.ingresses = served);
        }
        let (services, total) = (self.desired.services.len(), started.elapsed());
        if self.synced {
            info!(?read, ?modelled, ?total, "source synced");
        } else {
            self.synced = true;
            info!(services, map_writes, ?read, ?modelled, ?total, "first sync: the maps match the source");
        }
    }

    /// Says once per change when the datapath's `--service-cidr` (where
    /// unallocated addresses are dropped) is not one of the cluster's.
    fn check_service_cidrs(&mut self) {
        let cluster = self.source.service_cidrs();
        if cluster == self.cluster_service_cidrs {
            return;
        }
        for ours in self.config.model.service_cidrs.iter().map(ToString::to_string) {
            if !cluster.is_empty() && !cluster.contains(&ours) {
                warn!(service_cidr = %ours, cluster = ?cluster, "--service-cidr is not one of the cluster's ServiceCIDRs: unallocated addresses are dropped only inside --service-cidr");
            }
        }
        self.cluster_service_cidrs = cluster;
    }

    fn build_model(&mut self) {
        let previous = std::mem::take(&mut self.desired);
        let (desired, errors) = model::build(self.source.objects(), previous, &self.config.model);
        // Each error once while it lasts: with the API source a pass
        // follows every change anywhere in the cluster.
        self.object_errors.clear();
        for object in errors.iter().filter_map(model::ModelError::object) {
            *self.object_errors.entry(object).or_default() += 1;
        }
        log_new_errors(&mut self.model_errors, &errors);
        self.desired = desired;
    }

    /// Brings the maps (and the health check responders) in line with the
    /// model and this node's addresses; how many map writes that took.
    fn program(&mut self) -> usize {
        self.health.update(health::health_checks(&self.desired, &self.node.name), &self.node.addrs);
        let started = Instant::now();
        let ops = self.programmed.plan(&self.desired, &self.node);
        let planned = started.elapsed();
        if self.programmed.refused() != &self.refused {
            for (service, reason) in self.programmed.refused() {
                if self.refused.get(service) != Some(reason) {
                    error!(%service, "not programmed (or kept at its last version): {reason}");
                }
            }
            self.refused = self.programmed.refused().clone();
        }
        let failed = self.maps.apply_all(&ops);
        for (index, err) in &failed {
            error!(op = ?ops[*index], "map update failed: {err}");
        }
        let failures = failed.len();
        if failures > 0 {
            // Start the next diff from what the maps really hold.
            match self.maps.programmed() {
                Ok(programmed) => self.programmed = programmed,
                Err(err) => error!("re-reading the maps failed: {err}"),
            }
        }
        self.sync_health.synced(failures == 0);
        let (services, map_writes, applied) = (self.desired.services.len(), ops.len(), started.elapsed());
        if !ops.is_empty() {
            info!(services, map_writes, failures, ?planned, ?applied, "datapath updated");
        }
        self.record_pass(applied, map_writes, failures);
        if failures == 0 {
            self.record_programmed_changes();
        }
        ops.len()
    }

    /// Observes, for each EndpointSlice whose change trigger time is new
    /// since the last complete pass (and after the agent started), how
    /// long ago that change was: kube-proxy's network programming latency.
    fn record_programmed_changes(&mut self) {
        let triggers = model::change_trigger_times(self.source.objects());
        let now = SystemTime::now();
        for (slice, &time) in &triggers {
            if time >= self.started && self.programmed_triggers.get(slice) != Some(&time) {
                self.metrics.programmed_change(now.duration_since(time).unwrap_or_default());
            }
        }
        self.programmed_triggers = triggers;
    }

    /// What a pass leaves for `/metrics` and `/status`.
    fn record_pass(&self, duration: Duration, writes: usize, failures: usize) {
        let (services, refused, errors) = (self.desired.services.len(), self.refused.len(), self.model_errors.len());
        self.metrics.pass(duration, writes, failures);
        self.metrics.model(services, refused, errors);
        self.metrics.object_errors(&self.object_errors);
        let (used, capacity) = (self.programmed.usage(), self.programmed.capacity());
        let fill = [
            ("frontends", used.frontends, capacity.frontends),
            ("backend_slots", used.slots, capacity.slots),
            ("backends", used.backends, capacity.backends),
            ("endpoints", used.endpoints, capacity.endpoints),
        ];
        for (map, used, capacity) in fill {
            self.metrics.pressure(map, used, capacity);
        }
        self.status.update(|status| {
            status.source.synced = true;
            if writes > 0 {
                let at = status::rfc3339(SystemTime::now());
                let duration_seconds = duration.as_secs_f64();
                status.last_sync = Some(SyncStatus { at, duration_seconds, map_writes: writes, failures });
            }
            (status.source.services, status.source.refused_services, status.source.object_errors) =
                (services, refused, errors);
            status.maps = fill.map(|(map, used, capacity)| MapFill { map: map.to_owned(), used, capacity }).into();
        });
    }

    /// Attaches to new interfaces, releases gone ones, and reprograms when
    /// the node's addresses changed.
    /// `notified`: when the kernel's notification that prompted this was read.
    fn interfaces_changed(&mut self, notified: Option<Instant>) {
        drop(self.sync_interfaces(notified));
        if self.sync_node_addresses() && self.synced {
            self.program();
        }
    }

    /// Reads the addresses of the node's devices: where node ports answer
    /// (whether they changed is returned), and each attached device's first
    /// one of each family, the source of SNAT by it (written when it
    /// changed; the first time also clears what an earlier agent left).
    fn sync_node_addresses(&mut self) -> bool {
        let by_device = match self.config.node_devices.addresses() {
            Ok(by_device) => by_device,
            Err(err) => {
                error!("{err}");
                return false;
            }
        };
        let snat_sources = (self.snat_sources_of(&by_device), self.snat_sources_of(&by_device));
        if self.snat_sources.as_ref() != Some(&snat_sources) {
            let written = self.maps.v4.set_node_addresses(&snat_sources.0);
            match written.and_then(|()| self.maps.v6.set_node_addresses(&snat_sources.1)) {
                Ok(()) => self.snat_sources = Some(snat_sources),
                Err(err) => error!("cannot update the node device addresses: {err}"),
            }
        }
        let mut addrs: Vec<_> = by_device.into_values().flatten().collect();
        addrs.sort();
        addrs.dedup();
        if addrs == self.node.addrs {
            return false;
        }
        info!(?addrs, "node addresses");
        self.node.addrs = addrs;
        true
    }

    /// Each attached device's first address of family `A`.
    fn snat_sources_of<A: WireAddr>(&self, by_device: &BTreeMap<String, Vec<std::net::IpAddr>>) -> BTreeMap<u32, A> {
        self.datapath
            .attached()
            .filter_map(|(name, ifindex)| Some((ifindex, by_device.get(name)?.iter().find_map(|a| A::from_ip(*a))?)))
            .collect()
    }

    /// Attaches to new interfaces and detaches from vanished ones; the
    /// ones that failed to attach just now, with the error.
    /// `notified`: when the link notification that prompted this was read,
    /// from which each attachment's latency is measured.
    fn sync_interfaces(&mut self, notified: Option<Instant>) -> Vec<(String, String)> {
        let present = match self.config.interfaces.present() {
            Ok(present) => present,
            Err(err) => {
                error!("{err}");
                return Vec::new();
            }
        };
        let stale: Vec<String> = self
            .datapath
            .attached()
            .filter(|(name, ifindex)| present.get(*name) != Some(ifindex))
            .map(|(name, _)| name.to_owned())
            .collect();
        for name in stale {
            self.datapath.detach(&name);
        }
        self.failed.retain(|name, ifindex| present.get(name) == Some(ifindex));
        let mut failed = Vec::new();
        for (name, ifindex) in present {
            let attached = self.datapath.attached().any(|(n, _)| n == name);
            if attached || self.failed.contains_key(&name) {
                continue;
            }
            let role = if self.config.node_devices.matches(&name) { InterfaceRole::Node } else { InterfaceRole::Pod };
            accept_local_sources(&name);
            match self.datapath.attach(&name, ifindex, role) {
                Ok(()) => {
                    if let Some(notified) = notified {
                        self.metrics.attached(notified.elapsed());
                    }
                }
                Err(err) => {
                    warn!("{err}");
                    failed.push((name.clone(), err.to_string()));
                    self.failed.insert(name, ifindex);
                }
            }
        }
        self.sync_devices();
        let interfaces = self
            .datapath
            .attachments()
            .into_iter()
            .map(|(name, ifindex, role, hooks)| InterfaceStatus {
                name,
                ifindex,
                role: if role == InterfaceRole::Node { "node" } else { "pod" }.to_owned(),
                hooks: hooks
                    .into_iter()
                    .map(|h| HookStatus {
                        hook: h.hook.to_owned(),
                        attached_as: h.how.to_owned(),
                        program_id: h.program_id,
                    })
                    .collect(),
            })
            .collect();
        self.status.update(|status| status.interfaces = interfaces);
        failed
    }

    /// Removes conntrack entries the datapath already ignores as expired.
    fn sweep_conntrack(&mut self) {
        match self.maps.sweep_conntrack(&self.config.load.ct_timeouts) {
            Ok(sweep) => {
                self.metrics.conntrack(sweep.live, self.maps.conntrack_evicted(sweep.live).unwrap_or(0));
                self.status.update(|status| status.conntrack_entries = sweep.live);
                if sweep.removed > 0 {
                    info!(removed = sweep.removed, live = sweep.live, "conntrack sweep removed expired entries")
                }
            }
            Err(err) => error!("conntrack sweep failed: {err}"),
        }
    }

    /// Writes what the datapath knows of devices when that changed (the
    /// first time also clears what an earlier agent left): the XDP redirect
    /// devices, the attached pod veths (TC's `bpf_redirect_peer` targets),
    /// and every attached device (whose ingress hook decided what arrived
    /// there, which TC egress then leaves alone).
    fn sync_devices(&mut self) {
        let mut devices: BTreeMap<u32, u32> = match self.config.redirect_devices.present() {
            Ok(present) => present.into_values().map(|i| (i, DEVICE_TAKES_XDP_FRAMES)).collect(),
            Err(err) => return error!("{err}"),
        };
        for (name, ifindex) in self.datapath.attached() {
            let pod = if self.config.node_devices.matches(name) { 0 } else { DEVICE_POD };
            *devices.entry(ifindex).or_default() |= DEVICE_INGRESS_HOOKED | pod;
        }
        if self.devices.as_ref() == Some(&devices) {
            return;
        }
        match self.maps.set_devices(&devices) {
            Ok(()) => self.devices = Some(devices),
            Err(err) => error!("cannot update the datapath's devices: {err}"),
        }
    }
}

/// The status an agent of `config` starts with.
fn initial_status(config: &AgentConfig) -> AgentStatus {
    let (kind, location) = match &config.source {
        SourceConfig::Manifests(dir) => ("manifests", dir.display().to_string()),
        SourceConfig::Api(ApiConfig::File(file)) => ("api", format!("kubeconfig {}", file.display())),
        SourceConfig::Api(ApiConfig::InCluster) => ("api", "in-cluster".to_owned()),
    };
    let load = &config.load;
    AgentStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        node: config.node_name.clone(),
        started: status::rfc3339(SystemTime::now()),
        source: SourceStatus { kind: kind.to_owned(), location, ..SourceStatus::default() },
        settings: Settings {
            service_cidrs: config.model.service_cidrs.iter().map(ToString::to_string).collect(),
            ct_timeout_seconds: load.ct_timeouts.into(),
            xdp_mode: format!("{:?}", load.xdp_mode).to_lowercase(),
            pod_forwarding: if load.tc_redirect { "redirect" } else { "stack" }.to_owned(),
            socket_lb: format!("{:?}", load.socket_lb).to_lowercase(),
            dns: config.dns.as_ref().map(|dns| status::DnsSettings {
                address: dns.address.to_string(),
                cluster_domain: dns.cluster_domain.clone(),
                upstream: dns.upstream.map(|u| u.to_string()),
            }),
            ingress: config.ingress.as_ref().map(|ingress| status::IngressSettings {
                http: ingress.http.map(|a| a.to_string()),
                https: ingress.https.map(|a| a.to_string()),
                class: ingress.class.clone(),
            }),
        },
        ..AgentStatus::default()
    }
}

/// Logs the errors not in `logged` (the last pass's), and keeps them there:
/// each error once while it lasts.
fn log_new_errors(logged: &mut BTreeSet<String>, errors: &[model::ModelError]) {
    let errors: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
    for err in errors.difference(logged) {
        error!("{err}");
    }
    *logged = errors;
}

/// Packets the datapath hands to the kernel may carry the node's own
/// address as their source: replies to a node port leaving a pod's veth,
/// and SNATed requests arriving on a node device. The kernel drops such
/// packets as martians unless the interface accepts local source addresses.
fn accept_local_sources(ifname: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/accept_local");
    if let Err(err) = std::fs::write(&path, "1") {
        warn!(ifname, "cannot set {path}: {err}: replies to node ports from this pod will be dropped");
    }
}
