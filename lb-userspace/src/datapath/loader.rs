//! Loads the embedded eBPF object with its maps pinned under the bpf
//! directory, and attaches it to interfaces: XDP on the node's devices, TC
//! ingress on pod veths, TC egress on both (DESIGN.md §4); and to a cgroup
//! (the socket hooks, see `sockets`).
//!
//! The links are pinned too (`links/IFNAME@IFINDEX-xdp|tc-ingress|tc`), so the
//! programs stay attached when the agent exits or is killed, and forward
//! with the pinned maps until the next agent swaps its own programs into
//! the same links (an atomic `bpf_link_update`: no packet goes unprocessed).
//! Pod veths' TC programs are netlink filters instead (see
//! `attach_tc_anew`), left in place likewise and taken over in place.

use std::{
    collections::BTreeMap,
    fs, io,
    os::{
        fd::AsFd as _,
        unix::fs::{MetadataExt as _, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as AyaHashMap, Map, MapData, MapError, MapType, ProgramArray},
    programs::{
        CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{
            NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle, qdisc_add_clsact,
            qdisc_detach_program,
        },
        xdp::XdpLink,
    },
    util::KernelVersion,
};
use tracing::{info, warn};

use lb_common::{
    CtEntry, CtKey, CtTimeouts, EndpointMeta, FastPath, Frontend, Hook as CountedHook, Ipv6Wire,
    MAGLEV_ENTRIES_PER_ELEMENT, MAX_CONNTRACK, MAX_MAGLEV_ENTRIES, Reason, ServiceCidr, ipv6_programs, map_names, wire,
};

use super::{
    maps::{DatapathMaps, MapsError},
    mounts::Filesystem,
    sockets::{self, SocketLb, SocketsError},
};

static DATAPATH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-datapath"));

const XDP_NODE_PROGRAM: &str = "lb_xdp_node";
const TC_POD_PROGRAM: &str = "lb_tc_pod";
const TC_EGRESS_PROGRAM: &str = "lb_tc_egress";
/// Load-time constants of the programs (lb-ebpf's statics of these names).
const FAST_PATH_GLOBAL: &str = "LB_FAST_PATH";
const TC_REDIRECT_GLOBAL: &str = "LB_TC_REDIRECT";
const SERVICE_CIDR_GLOBAL: &str = "LB_SERVICE_CIDR";
const SERVICE_CIDR6_GLOBAL: &str = "LB_SERVICE_CIDR6";
const CT_TIMEOUTS_GLOBAL: &str = "LB_CT_TIMEOUTS";
const NODE_NETNS_GLOBAL: &str = "LB_NODE_NETNS";
const SOCKET_PODS_GLOBAL: &str = "LB_SOCKET_PODS";
const TICK_NS_GLOBAL: &str = "LB_TICK_NS";
/// Beside `links`, under the bpf directory.
const SOCKET_LINKS_DIR: &str = "socket-links";
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(
        "this lb-agent was built without its eBPF object (bpf-linker was missing at build time): build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("bpf directory {}: {reason}", path.display())]
    BpfDir { path: PathBuf, reason: String },
    #[error("loading the eBPF object failed (maps pinned in {}): {source}", bpf_dir.display())]
    Load { bpf_dir: PathBuf, source: Box<aya::EbpfError> },
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("program {program}: cannot put it where the hooks hand IPv6 packets over: {source}")]
    Ipv6Program { program: &'static str, source: aya::maps::MapError },
    #[error("interface {ifname}: {what}: {source}")]
    Attach { ifname: String, what: &'static str, source: ProgramError },
    #[error("interface {ifname}: pinning its {what} link at {}: {reason}", path.display())]
    PinLink { ifname: String, what: &'static str, path: PathBuf, reason: String },
    #[error(
        "bpf directory {}: {why} and this agent runs in a private mount namespace (ip netns exec?): pins made here vanish with it and `lb-agent get` and the next agent cannot see them; run it with nsenter --net=... instead, mount bpffs on /sys/fs/bpf in the host namespace, or pass --allow-private-bpffs",
        path.display()
    )]
    PrivateBpffs { path: PathBuf, why: &'static str },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Sockets(#[from] SocketsError),
    #[error("reading the datapath's log: {0}")]
    Log(#[from] aya_log::Error),
    #[error(
        "pinned map {} holds {pinned} entries but {flag} asks for {asked}: restart with {flag} {pinned}, or remove the pin (its state is lost)",
        path.display()
    )]
    PinnedSize { path: PathBuf, flag: &'static str, pinned: u64, asked: u64 },
}

/// What the programs are loaded with.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub xdp_mode: XdpAttachMode,
    /// Log every verdict through aya-log; without it the log statements
    /// are dead code the verifier removes.
    pub debug_log: bool,
    /// Keep the FIB lookup after each rewrite (`--xdp-redirect-device`).
    pub fast_path: bool,
    /// Send pod traffic on by `bpf_redirect_peer`/`bpf_redirect_neigh`
    /// (`--pod-forwarding redirect`) rather than the kernel's routing.
    pub tc_redirect: bool,
    /// Where cluster IPs are allocated, per family: addresses in it no
    /// Service has are dropped (none when zero).
    pub service_cidr: ServiceCidr,
    pub service_cidr6: ServiceCidr<Ipv6Wire>,
    /// Conntrack capacity, in entries (two per flow).
    pub ct_max: u32,
    pub ct_timeouts: CtTimeouts,
    /// Room for all Maglev tables, in entries.
    pub maglev_entries: u32,
    /// Pin into a bpffs that only this agent's private mount namespace
    /// sees (`--allow-private-bpffs`).
    pub allow_private_bpffs: bool,
    /// Which sockets the socket hooks serve; with `Off` they are not loaded.
    pub socket_lb: SocketLb,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            xdp_mode: XdpAttachMode::Auto,
            debug_log: false,
            fast_path: false,
            tc_redirect: true,
            // The agent's default --service-cidr, 10.96.0.0/12.
            service_cidr: ServiceCidr { network: wire::addr([10, 96, 0, 0]), mask: 0xfff0_0000u32.to_be() },
            service_cidr6: ServiceCidr::default(),
            ct_max: MAX_CONNTRACK,
            ct_timeouts: CtTimeouts::DEFAULT,
            maglev_entries: MAX_MAGLEV_ENTRIES,
            allow_private_bpffs: false,
            socket_lb: SocketLb::Host,
        }
    }
}

/// How XDP is attached, as `--xdp-mode` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// Native (driver) mode where the driver has it, generic otherwise.
    Auto,
    Native,
    Skb,
}

/// The program a test run goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestProgram {
    /// The node devices' XDP program.
    XdpNode,
    /// The pod veths' TC ingress program.
    PodTc,
    TcEgress,
}

#[derive(Debug)]
pub struct TestRunOutput {
    /// XDP action or TC verdict.
    pub return_value: u32,
    /// The packet as the program left it.
    pub frame: Vec<u8>,
    /// Average run time per repetition.
    pub duration: std::time::Duration,
}

/// What an interface is to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceRole {
    /// The host side of a pod's veth.
    Pod,
    /// One of the node's own devices (`--device`).
    Node,
}

struct Attachment {
    ifindex: u32,
    role: InterfaceRole,
    links: Vec<Link>,
    /// How each hook's link came to be, for `lb-agent status`.
    how: Vec<(Hook, &'static str)>,
}

/// One attached hook as `lb-agent status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedHook {
    /// `xdp`, `tc ingress` or `tc egress`.
    pub hook: &'static str,
    /// `xdp native`, `xdp generic`, `tcx`, `tc filter`, or `taken over` (an
    /// earlier agent's link, given this agent's program).
    pub how: &'static str,
    pub program_id: u32,
}

/// An attached program: pinned (XDP, and TC on node devices where the
/// kernel has TCX, 6.6), else a netlink TC filter. Neither goes when this
/// value is dropped, however the agent ends (a stop, an error, a panic):
/// the next agent takes them over. Only `release` detaches.
enum Link {
    Pinned(PinnedLink),
    /// aya detaches a filter when its link is dropped.
    Netlink(std::mem::ManuallyDrop<SchedClassifierLink>),
}

impl Link {
    /// Detaches: a pinned link is unpinned and closed, which detaches it
    /// when nothing else holds it; a filter is deleted.
    fn release(self) {
        match self {
            Link::Pinned(link) => drop(link.unpin()),
            Link::Netlink(link) => drop(std::mem::ManuallyDrop::into_inner(link)),
        }
    }
}

/// Where on an interface a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc ingress",
            Hook::TcEgress => "tc egress",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Hook::Xdp => XDP_NODE_PROGRAM,
            Hook::TcIngress => TC_POD_PROGRAM,
            Hook::TcEgress => TC_EGRESS_PROGRAM,
        }
    }

    /// The hooks an interface of `role` gets.
    fn of(role: InterfaceRole) -> &'static [Hook] {
        match role {
            InterfaceRole::Node => &[Hook::Xdp, Hook::TcEgress],
            InterfaceRole::Pod => &[Hook::TcIngress, Hook::TcEgress],
        }
    }

    /// The suffix of the link's pin (`tc` is egress, as earlier agents named it).
    fn pin_suffix(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc-ingress",
            Hook::TcEgress => "tc",
        }
    }

    fn tc(self) -> Option<(&'static str, TcAttachType)> {
        match self {
            Hook::Xdp => None,
            Hook::TcIngress => Some((TC_POD_PROGRAM, TcAttachType::Ingress)),
            Hook::TcEgress => Some((TC_EGRESS_PROGRAM, TcAttachType::Egress)),
        }
    }
}

/// Forwards the datapath's aya-log records to the agent's log.
pub type DatapathLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct Datapath {
    ebpf: Ebpf,
    mode: XdpAttachMode,
    attached: BTreeMap<String, Attachment>,
    /// Where the links are pinned.
    links_dir: PathBuf,
    /// Maps an earlier agent pinned with another layout, unpinned and held
    /// open here: a program array that nothing holds is emptied by the
    /// kernel, and the hooks still attached tail-call the old one until this
    /// agent's replace them.
    _superseded: Vec<MapData>,
}

impl Datapath {
    /// Loads the programs, creating or reusing the maps pinned in `bpf_dir`.
    /// With `debug_log`, read the programs' log records with the returned logger.
    pub fn load(
        bpf_dir: &Path,
        options: &LoadOptions,
    ) -> Result<(Self, DatapathMaps, Option<DatapathLogger>), LoaderError> {
        if DATAPATH_OBJECT.is_empty() {
            return Err(LoaderError::NoObject);
        }
        prepare_bpf_dir(bpf_dir, options.allow_private_bpffs)?;
        let maglev_elements = options.maglev_entries.div_ceil(MAGLEV_ENTRIES_PER_ELEMENT);
        for conntrack in [map_names::CONNTRACK, map_names::CONNTRACK6] {
            check_pinned_size(bpf_dir, conntrack, options.ct_max, 1, "--ct-max")?;
        }
        check_pinned_size(bpf_dir, map_names::MAGLEV, maglev_elements, MAGLEV_ENTRIES_PER_ELEMENT, "--maglev-entries")?;
        let mut superseded = Vec::new();
        for (name, layout, consequence) in [
            (map_names::COUNTERS, Layout::Entries(CountedHook::COUNT * Reason::COUNT), COUNT_AGAIN),
            (map_names::FAST_PATH_COUNTERS, Layout::Entries(FastPath::COUNT), COUNT_AGAIN),
            (map_names::ENDPOINTS, Layout::ValueSize(size_of::<EndpointMeta>()), "it is written again"),
            (map_names::IPV6_XDP, Layout::Entries(ipv6_programs::XDP_SLOTS), "it is filled anew"),
            (map_names::IPV6_TC, Layout::Entries(ipv6_programs::TC_SLOTS), "it is filled anew"),
        ] {
            superseded.extend(drop_pin_of_another_layout(bpf_dir, name, layout, consequence));
        }
        let id_maps_differ =
            [(map_names::FRONTENDS, Layout::ValueSize(size_of::<Frontend>())), (map_names::BACKENDS, Layout::Array)]
                .into_iter()
                .any(|(name, layout)| has_another_layout(bpf_dir, name, layout));
        if id_maps_differ {
            info!("the pinned frontends and backends have another layout: the maps of their ids are written anew");
            superseded.extend(ID_KEYED_MAPS.iter().filter_map(|name| drop_pin(bpf_dir, name)));
        }
        let old_conntrack = drop_pin_of_another_layout(
            bpf_dir,
            map_names::CONNTRACK,
            Layout::ValueSize(size_of::<CtEntry>()),
            "its flows are copied into the new layout",
        );
        let log_level = if options.debug_log { aya_log::Level::Debug as u8 } else { 0 };
        let node_netns = if options.socket_lb == SocketLb::Off { 0 } else { sockets::netns_cookie()? };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(bpf_dir)
            .override_global(aya_log::LEVEL, &log_level, false)
            .override_global(FAST_PATH_GLOBAL, &u8::from(options.fast_path), true)
            .override_global(TC_REDIRECT_GLOBAL, &u8::from(options.tc_redirect), true)
            .override_global(SERVICE_CIDR_GLOBAL, &options.service_cidr, true)
            .override_global(SERVICE_CIDR6_GLOBAL, &options.service_cidr6, true)
            .override_global(CT_TIMEOUTS_GLOBAL, &options.ct_timeouts, true)
            .override_global(NODE_NETNS_GLOBAL, &node_netns, true)
            .override_global(SOCKET_PODS_GLOBAL, &u8::from(options.socket_lb == SocketLb::All), true)
            .override_global(TICK_NS_GLOBAL, &super::maps::tick_ns(), true)
            .map_max_entries(map_names::CONNTRACK, options.ct_max)
            .map_max_entries(map_names::CONNTRACK6, options.ct_max)
            .map_max_entries(map_names::MAGLEV, maglev_elements)
            .load(DATAPATH_OBJECT)
            .map_err(|source| LoaderError::Load { bpf_dir: bpf_dir.to_owned(), source: Box::new(source) })?;
        let program_err = |name| move |source| LoaderError::Program { name, source };
        program::<Xdp>(&mut ebpf, XDP_NODE_PROGRAM)?.load().map_err(program_err(XDP_NODE_PROGRAM))?;
        for name in [TC_POD_PROGRAM, TC_EGRESS_PROGRAM] {
            program::<SchedClassifier>(&mut ebpf, name)?.load().map_err(program_err(name))?;
        }
        load_ipv6_programs(&mut ebpf)?;
        if options.socket_lb != SocketLb::Off {
            for (name, _) in sockets::PROGRAMS {
                program::<CgroupSockAddr>(&mut ebpf, name)?.load().map_err(program_err(name))?;
            }
        }
        if let Some(old) = &old_conntrack {
            let copied = copy_conntrack_of_the_previous_layout(old, &mut ebpf)?;
            info!(map = map_names::CONNTRACK, flows = copied, "conntrack entries copied into the new layout");
        }
        superseded.extend(old_conntrack);
        let maps = DatapathMaps::take(&mut ebpf)?;
        let logger = if options.debug_log { Some(aya_log::EbpfLogger::init(&mut ebpf)?) } else { None };
        let links_dir = bpf_dir.join("links");
        fs::create_dir_all(&links_dir)
            .map_err(|e| LoaderError::BpfDir { path: links_dir.clone(), reason: format!("cannot create it: {e}") })?;
        Ok((
            Self { ebpf, mode: options.xdp_mode, attached: BTreeMap::new(), links_dir, _superseded: superseded },
            maps,
            logger,
        ))
    }

    /// Attaches the socket hooks to `cgroup`, or with `None` releases the
    /// ones an earlier agent left (`--socket-lb off`).
    pub fn attach_sockets(&mut self, cgroup: Option<&Path>) -> Result<(), LoaderError> {
        let dir = self.links_dir.with_file_name(SOCKET_LINKS_DIR);
        match cgroup {
            Some(cgroup) => Ok(sockets::attach(&mut self.ebpf, cgroup, &dir)?),
            None => {
                sockets::release(&dir, None);
                Ok(())
            }
        }
    }

    /// The interfaces the programs are attached to, with their ifindex.
    pub fn attached(&self) -> impl Iterator<Item = (&str, u32)> {
        self.attached.iter().map(|(name, a)| (name.as_str(), a.ifindex))
    }

    /// Each attached interface with its ifindex, role and hooks.
    pub fn attachments(&self) -> Vec<(String, u32, InterfaceRole, Vec<AttachedHook>)> {
        let program_id = |hook: Hook| {
            let program = self.ebpf.program(hook.program())?;
            program.info().ok().map(|info| info.id())
        };
        self.attached
            .iter()
            .map(|(name, a)| {
                let hooks = a
                    .how
                    .iter()
                    .map(|&(hook, how)| AttachedHook {
                        hook: hook.name(),
                        how,
                        program_id: program_id(hook).unwrap_or(0),
                    })
                    .collect();
                (name.clone(), a.ifindex, a.role, hooks)
            })
            .collect()
    }

    /// Attaches the programs of `role` to `ifname` (XDP on a node device,
    /// TC ingress on a pod veth, TC egress on both). Links an earlier agent
    /// left pinned for this interface get this agent's programs in place,
    /// atomically; its links on hooks this role does not use are released.
    pub fn attach(&mut self, ifname: &str, ifindex: u32, role: InterfaceRole) -> Result<(), LoaderError> {
        let hooks = Hook::of(role);
        let (mut links, mut how) = (Vec::new(), Vec::new());
        for &hook in hooks {
            let pin = self.link_pin(ifname, ifindex, hook.pin_suffix());
            let attached = match hook.tc() {
                None => self.attach_xdp(ifname, &pin).map(|(link, how)| (Link::Pinned(link), how)),
                Some((name, attach_type)) => {
                    self.attach_tc(ifname, &pin, (name, attach_type, hook.name()), role == InterfaceRole::Pod)
                }
            };
            match attached {
                Ok((link, way)) => {
                    links.push(link);
                    how.push((hook, way));
                }
                // What this call attached or took over stays: it translates
                // with the same maps, and a link taken over was working.
                Err(err) => return Err(err),
            }
        }
        for hook in [Hook::Xdp, Hook::TcIngress, Hook::TcEgress].into_iter().filter(|h| !hooks.contains(h)) {
            if let Some(link) = adopt_link(&self.link_pin(ifname, ifindex, hook.pin_suffix())) {
                info!(ifname, ?hook, "releasing a link an earlier agent pinned for another role");
                drop(link);
            }
        }
        self.attached.insert(ifname.to_owned(), Attachment { ifindex, role, links, how });
        info!(ifname, ifindex, ?role, "attached");
        Ok(())
    }

    /// The pinned link, and how it was attached.
    fn attach_xdp(&mut self, ifname: &str, pin: &Path) -> Result<(PinnedLink, &'static str), LoaderError> {
        let attach_err = |what| {
            let ifname = ifname.to_owned();
            move |source| LoaderError::Attach { ifname, what, source }
        };
        let mode = self.mode;
        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_NODE_PROGRAM)?;
        let adopted = adopt_link(pin).and_then(|fd| XdpLink::try_from(fd).ok()).and_then(|link| {
            xdp.attach_to_link(link)
                .inspect_err(|err| warn!(ifname, error = %err, "cannot take over the pinned xdp link, attaching anew"))
                .ok()
        });
        const NATIVE: &str = "xdp native";
        const GENERIC: &str = "xdp generic";
        let (id, how) = match (adopted, mode) {
            (Some(id), _) => {
                info!(ifname, "took over the pinned xdp link");
                (id, "taken over")
            }
            (None, XdpAttachMode::Native) => {
                (xdp.attach(ifname, XdpMode::Driver).map_err(attach_err("xdp (native)"))?, NATIVE)
            }
            (None, XdpAttachMode::Skb) => (xdp.attach(ifname, XdpMode::Skb).map_err(attach_err("xdp (skb)"))?, GENERIC),
            (None, XdpAttachMode::Auto) => match xdp.attach(ifname, XdpMode::Driver) {
                Ok(id) => (id, NATIVE),
                Err(err) => {
                    warn!(ifname, error = %err, "native xdp unavailable, using generic (skb) mode");
                    (xdp.attach(ifname, XdpMode::Skb).map_err(attach_err("xdp (skb)"))?, GENERIC)
                }
            },
        };
        let link = xdp.take_link(id).map_err(attach_err("xdp"))?;
        // Dropping the link on an error detaches it.
        let fd = FdLink::try_from(link)
            .map_err(|e| pin_err(ifname, "xdp", pin, format!("not a bpf_link (kernel before 5.9?): {e}")))?;
        Ok((fd.pin(pin).map_err(|e| pin_err(ifname, "xdp", pin, e.to_string()))?, how))
    }

    fn attach_tc(
        &mut self,
        ifname: &str,
        pin: &Path,
        (name, attach_type, what): (&'static str, TcAttachType, &'static str),
        filter: bool,
    ) -> Result<(Link, &'static str), LoaderError> {
        let attach_err = |source| LoaderError::Attach { ifname: ifname.to_owned(), what, source };
        let tc: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        let adopted = adopt_link(pin).and_then(|fd| SchedClassifierLink::try_from(fd).ok()).and_then(|link| {
            tc.attach_to_link(link)
                .inspect_err(
                    |err| warn!(ifname, error = %err, "cannot take over the pinned {what} link, attaching anew"),
                )
                .ok()
        });
        let (id, taken_over) = match adopted {
            Some(id) => {
                info!(ifname, "took over the pinned {what} link");
                (id, true)
            }
            None => (attach_tc_anew(tc, ifname, name, attach_type, filter).map_err(attach_err)?, false),
        };
        let link = tc.take_link(id).map_err(attach_err)?;
        if <&FdLink>::try_from(&link).is_err() {
            return Ok((Link::Netlink(std::mem::ManuallyDrop::new(link)), "tc filter"));
        }
        let fd = FdLink::try_from(link).map_err(|e| pin_err(ifname, what, pin, e.to_string()))?;
        let how = if taken_over { "taken over" } else { "tcx" };
        Ok((Link::Pinned(fd.pin(pin).map_err(|e| pin_err(ifname, what, pin, e.to_string()))?), how))
    }

    /// bpffs refuses names with a dot (VLAN devices have one): the name is
    /// for people, the ifindex tells the interface.
    fn link_pin(&self, ifname: &str, ifindex: u32, hook: &str) -> PathBuf {
        self.links_dir.join(format!("{}@{ifindex}-{hook}", ifname.replace('.', "_")))
    }

    /// Unpins the links earlier agents left for interfaces that are gone,
    /// or that `present` (what this agent attaches to) no longer names:
    /// nothing else holds them, so they detach.
    pub fn release_stale_links(&self, present: &BTreeMap<String, u32>) {
        let Ok(entries) = fs::read_dir(&self.links_dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // IFNAME@IFINDEX-HOOK, where the hook may hold a dash itself.
            let ifindex = name.rsplit_once('@').and_then(|(_, rest)| rest.split('-').next());
            let wanted = ifindex.is_some_and(|ifindex| present.values().any(|i| i.to_string() == ifindex));
            if !wanted {
                info!(link = name, "releasing a link an earlier agent pinned");
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Detaches from `ifname`; a vanished interface took its links with it,
    /// so errors from the kernel are expected and ignored.
    pub fn detach(&mut self, ifname: &str) {
        let Some(attachment) = self.attached.remove(ifname) else { return };
        attachment.links.into_iter().for_each(Link::release);
        info!(ifname, "detached");
    }

    /// Detaches from every interface and from the cgroup.
    pub fn detach_all(&mut self) {
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for name in names {
            self.detach(&name);
        }
        sockets::release(&self.links_dir.with_file_name(SOCKET_LINKS_DIR), None);
    }

    /// Runs one program on `frame` with BPF_PROG_TEST_RUN, against the live
    /// maps: the basis of the fixture tables and the per-packet benchmark.
    pub fn test_run(
        &mut self,
        program_kind: TestProgram,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutput, LoaderError> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat, ..Default::default() };
        let (name, result) = match program_kind {
            TestProgram::XdpNode => {
                (XDP_NODE_PROGRAM, program::<Xdp>(&mut self.ebpf, XDP_NODE_PROGRAM)?.test_run(opts))
            }
            TestProgram::PodTc => {
                (TC_POD_PROGRAM, program::<SchedClassifier>(&mut self.ebpf, TC_POD_PROGRAM)?.test_run(opts))
            }
            TestProgram::TcEgress => {
                (TC_EGRESS_PROGRAM, program::<SchedClassifier>(&mut self.ebpf, TC_EGRESS_PROGRAM)?.test_run(opts))
            }
        };
        let result = result.map_err(|source| LoaderError::Program { name, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutput { return_value: result.return_value, frame: out, duration: result.duration })
    }
}

/// Where this agent's netlink TC filters sit: always the same
/// priority and handle, so that a new agent replaces a killed one's filter
/// in place, atomically, as `bpf_link_update` does for links.
const TC_FILTER_PRIORITY: u16 = 1;
const TC_FILTER_HANDLE: TcHandle = TcHandle::new(0, 1);

/// A new TC attachment: a TCX link where the kernel has them (6.6) and
/// not `filter`, else a netlink filter on the clsact qdisc, which cannot be
/// pinned: one an earlier agent left at our priority and handle gets this
/// program in its place (no moment without one: pod packets would pass
/// untranslated); filters of this program elsewhere (older agents) are
/// removed before a new one is made. Pod veths get filters on every
/// kernel: a pod may send as soon as its veth is configured, and the
/// kernel makes a filter in under 3 ms where a TCX link took 7 to 60 ms
/// (6.18, 2 cores) and held the rtnl lock meanwhile. A kernel with TCX but
/// without `cls_bpf` gets a TCX link all the same.
fn attach_tc_anew(
    tc: &mut SchedClassifier,
    ifname: &str,
    name: &str,
    attach_type: TcAttachType,
    filter: bool,
) -> Result<SchedClassifierLinkId, ProgramError> {
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if tcx && !filter {
        return tc.attach(ifname, attach_type);
    }
    let ours = SchedClassifierLink::attached(ifname, attach_type, TC_FILTER_PRIORITY, TC_FILTER_HANDLE, None);
    if let Ok(id) = ours.map_err(ProgramError::from).and_then(|link| tc.attach_to_link(link)) {
        info!(ifname, ?attach_type, "replaced the tc filter an earlier agent left");
        return Ok(id);
    }
    let _ = qdisc_add_clsact(ifname);
    let _ = qdisc_detach_program(ifname, attach_type, name);
    let options = NlOptions { priority: TC_FILTER_PRIORITY, handle: TC_FILTER_HANDLE, ..Default::default() };
    match tc.attach_with_options(ifname, attach_type, TcAttachOptions::Netlink(options)) {
        Err(err) if tcx => {
            warn!(ifname, ?attach_type, error = %err, "no tc filter here, attaching a TCX link");
            tc.attach(ifname, attach_type)
        }
        attached => attached,
    }
}

/// The link pinned at `pin`, unpinned (this agent holds it until it pins
/// it again): None when there is none.
fn adopt_link(pin: &Path) -> Option<FdLink> {
    let pinned = PinnedLink::from_pin(pin).ok()?;
    pinned.unpin().ok()
}

fn pin_err(ifname: &str, what: &'static str, path: &Path, reason: String) -> LoaderError {
    LoaderError::PinLink { ifname: ifname.to_owned(), what, path: path.to_owned(), reason }
}

/// Loads the IPv6 programs and puts them where the hooks tail-call them
/// (`lb_common::ipv6_programs`), replacing an earlier agent's in the pinned
/// arrays.
fn load_ipv6_programs(ebpf: &mut Ebpf) -> Result<(), LoaderError> {
    for (name, array, index) in ipv6_programs::ALL {
        let program_err = |source| LoaderError::Program { name, source };
        let fd = if array == map_names::IPV6_XDP {
            let xdp = program::<Xdp>(ebpf, name)?;
            xdp.load().map_err(program_err)?;
            xdp.fd().map_err(program_err)?.try_clone()
        } else {
            let tc = program::<SchedClassifier>(ebpf, name)?;
            tc.load().map_err(program_err)?;
            tc.fd().map_err(program_err)?.try_clone()
        };
        let fd = fd.map_err(|e| program_err(ProgramError::IOError(e)))?;
        let map = ebpf.map_mut(array).ok_or(MapsError::Missing { name: array })?;
        let mut programs = ProgramArray::try_from(map).map_err(|source| MapsError::Layout { name: array, source })?;
        programs.set(index, &fd, 0).map_err(|source| LoaderError::Ipv6Program { program: name, source })?;
    }
    Ok(())
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoaderError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(LoaderError::Program { name, source: ProgramError::NotLoaded })?;
    program.try_into().map_err(|source| LoaderError::Program { name, source })
}

const COUNT_AGAIN: &str = "they start again from zero";

/// What a pinned map must match to be reused as it is.
enum Layout {
    Entries(u32),
    ValueSize(usize),
    /// A plain array (`BPF_MAP_TYPE_ARRAY`).
    Array,
}

/// The maps whose keys or values hold frontend or backend ids, or that the
/// agent adopts with them. Agents before the backends and their lists were
/// arrays indexed by id (frontends of 20 bytes) numbered ids otherwise:
/// these maps start again together, so that no entry names an id the new
/// agent hands out to something else. Established flows keep their
/// conntrack entries, which hold addresses.
const ID_KEYED_MAPS: [&str; 12] = [
    map_names::FRONTENDS,
    map_names::FRONTENDS6,
    map_names::BACKEND_SLOTS,
    map_names::BACKENDS,
    map_names::BACKENDS6,
    map_names::SERVICE_META,
    map_names::ENDPOINTS,
    map_names::SOURCE_RANGES,
    map_names::SOURCE_RANGES6,
    map_names::AFFINITY,
    map_names::AFFINITY6,
    map_names::SERVICE_TRAFFIC,
];

/// A map pinned by an agent that laid it out otherwise would be reused as it
/// is (aya compares no sizes), every index shifted or every write refused:
/// it starts again instead, with the `consequence` logged. That is so for
/// counters (of other hooks or reasons), the endpoint listing the datapath
/// never reads (IPv4-only endpoints were 72 bytes; the first sync lists
/// every endpoint anew) and the IPv6 program arrays (the hooks this load
/// attaches use the new ones). The old map is returned still open, for the
/// caller to hold while the old hooks may use it.
fn drop_pin_of_another_layout(bpf_dir: &Path, name: &str, layout: Layout, consequence: &str) -> Option<MapData> {
    if !has_another_layout(bpf_dir, name, layout) {
        return None;
    }
    info!(map = name, "the pinned map has another layout: {consequence}");
    drop_pin(bpf_dir, name)
}

/// Is `name` pinned in `bpf_dir`, laid out otherwise than `layout`?
fn has_another_layout(bpf_dir: &Path, name: &str, layout: Layout) -> bool {
    let differs = |info: aya::maps::MapInfo| match layout {
        Layout::Entries(entries) => info.max_entries() != entries,
        Layout::ValueSize(size) => info.value_size() as usize != size,
        Layout::Array => !matches!(info.map_type(), Ok(MapType::Array)),
    };
    aya::maps::MapInfo::from_pin(bpf_dir.join(name)).is_ok_and(differs)
}

/// Unpins `name`, returning the old map still open (None if it was not pinned).
fn drop_pin(bpf_dir: &Path, name: &str) -> Option<MapData> {
    let path = bpf_dir.join(name);
    let old = MapData::from_pin(&path).ok();
    let _ = fs::remove_file(&path);
    old
}

/// IPv4 conntrack entries as agents before the kept route laid them out:
/// the bytes before the route (20) and the timestamps (16) after 4 bytes of
/// padding, which the route took the place of.
const PREVIOUS_CT_ENTRY: usize = 40;

/// Copies the entries of `old`, an IPv4 conntrack map of the previous
/// layout (other layouts are left behind), into the new one, their routes
/// not asked yet: established flows keep their translation through an
/// upgrade. Flows the old programs start after the copy, before the new
/// ones replace them, are picked up again by their next packet. Returns
/// how many were copied.
fn copy_conntrack_of_the_previous_layout(old: &MapData, ebpf: &mut Ebpf) -> Result<u64, LoaderError> {
    const KEY: usize = size_of::<CtKey>();
    let old_layout = old.info().is_ok_and(|info| info.value_size() as usize == PREVIOUS_CT_ENTRY);
    if !old_layout {
        return Ok(0);
    }
    let layout = |source| MapsError::Layout { name: map_names::CONNTRACK, source };
    // A second handle: the first stays held until the new programs replace the old.
    let handle = old.fd().as_fd().try_clone_to_owned().map_err(|e| layout(MapError::IoError(e)))?;
    let old = Map::LruHashMap(MapData::from_fd(handle).map_err(layout)?);
    let old: AyaHashMap<MapData, [u8; KEY], [u8; PREVIOUS_CT_ENTRY]> = AyaHashMap::try_from(old).map_err(layout)?;
    let map = ebpf.map_mut(map_names::CONNTRACK).ok_or(MapsError::Missing { name: map_names::CONNTRACK })?;
    let mut new: AyaHashMap<_, [u8; KEY], [u8; size_of::<CtEntry>()]> = AyaHashMap::try_from(map).map_err(layout)?;
    let mut copied = 0;
    // Entries the LRU evicts or the old programs delete meanwhile are skipped.
    for (key, entry) in old.iter().filter_map(Result::ok) {
        let mut moved = [0u8; size_of::<CtEntry>()];
        moved[..20].copy_from_slice(&entry[..20]);
        moved[size_of::<CtEntry>() - 16..].copy_from_slice(&entry[PREVIOUS_CT_ENTRY - 16..]);
        if new.insert(key, moved, 0).is_ok() {
            copied += 1;
        }
    }
    Ok(copied)
}

/// A map pinned by an earlier agent keeps its size: a different one asked
/// for now (`asked` elements of `per_element` entries) would be ignored.
fn check_pinned_size(
    bpf_dir: &Path,
    name: &str,
    asked: u32,
    per_element: u32,
    flag: &'static str,
) -> Result<(), LoaderError> {
    let path = bpf_dir.join(name);
    match aya::maps::MapInfo::from_pin(&path) {
        Ok(info) if info.max_entries() != asked => {
            let entries = |elements: u32| u64::from(elements) * u64::from(per_element);
            Err(LoaderError::PinnedSize { path, flag, pinned: entries(info.max_entries()), asked: entries(asked) })
        }
        _ => Ok(()),
    }
}

/// Makes sure `bpf_dir` exists (0700) on a bpf filesystem, mounting bpffs
/// on /sys/fs/bpf when the directory lives there and nothing is mounted.
/// In a private mount namespace (unless `allow_private`), the bpffs must
/// be the host's: pins in any other vanish with the namespace.
fn prepare_bpf_dir(bpf_dir: &Path, allow_private: bool) -> Result<(), LoaderError> {
    let dir_err = |reason: String| LoaderError::BpfDir { path: bpf_dir.to_owned(), reason };
    let host = if allow_private { None } else { host_outside_this_mount_namespace() };
    let refuse = |why| LoaderError::PrivateBpffs { path: bpf_dir.to_owned(), why };
    if bpf_dir.starts_with(DEFAULT_BPFFS) && !Filesystem::Bpf.holds(Path::new(DEFAULT_BPFFS)) {
        if host.is_some() {
            return Err(refuse("bpffs is not mounted"));
        }
        Filesystem::Bpf
            .mount(Path::new(DEFAULT_BPFFS))
            .map_err(|e| dir_err(format!("mounting bpffs on {DEFAULT_BPFFS} failed: {e}")))?;
        info!(path = DEFAULT_BPFFS, "mounted bpffs");
    }
    fs::create_dir_all(bpf_dir).map_err(|e| dir_err(format!("cannot create it: {e}")))?;
    fs::set_permissions(bpf_dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| dir_err(format!("cannot make it 0700: {e}")))?;
    if !Filesystem::Bpf.holds(bpf_dir) {
        return Err(dir_err("not on a bpf filesystem (mount -t bpf bpf DIR)".into()));
    }
    if host.is_some_and(|pid| !seen_by(pid, bpf_dir)) {
        return Err(refuse("its bpffs was mounted inside this namespace, not the host's"));
    }
    Ok(())
}

/// A process of the host's mount namespace when this one has another (as
/// under `ip netns exec` or `unshare --mount`): pid 1, or the parent when
/// pid 1's namespace cannot be read (some inits refuse even root), since
/// both of those leave the parent outside. None when the same, or unknown.
fn host_outside_this_mount_namespace() -> Option<u32> {
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let ours = ns("self")?;
    let parent = std::os::unix::process::parent_id();
    let (pid, host) = ns("1").map(|init| (1, init)).or_else(|| Some((parent, ns(&parent.to_string())?)))?;
    (host != ours).then_some(pid)
}

/// Whether process `pid` finds the same filesystem at `dir`; true when it
/// cannot tell.
fn seen_by(pid: u32, dir: &Path) -> bool {
    let (Ok(dir), Ok(ours)) = (fs::canonicalize(dir), fs::metadata(dir)) else { return true };
    let theirs = Path::new(&format!("/proc/{pid}/root")).join(dir.strip_prefix("/").unwrap_or(&dir));
    match fs::metadata(theirs) {
        Ok(theirs) => theirs.dev() == ours.dev(),
        Err(err) => err.kind() != io::ErrorKind::NotFound,
    }
}
