//! The cgroup socket hooks (`--socket-lb`): the cgroup v2 directory they
//! attach to (the unified hierarchy's root unless `--cgroup-root` says
//! otherwise, mounted when nothing has mounted it), and their links,
//! pinned as `socket-links/CGROUP_INODE-HOOK` so that they outlive the
//! agent. The next agent swaps its programs into them in place
//! (`BPF_LINK_UPDATE`): no connect() goes untranslated between two agents.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, links::FdLink},
};
use tracing::info;

use super::mounts::Filesystem;

/// Which sockets the hooks serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketLb {
    /// None: the node's own processes reach no Service.
    Off,
    /// The node's own network namespace (host processes, hostNetwork pods).
    Host,
    /// Every namespace, pods' too.
    All,
}

/// The programs and the hook each attaches to (lb-ebpf's `sockets`).
pub(super) const PROGRAMS: [(&str, &str); 10] = [
    ("lb_sock_connect4", "connect4"),
    ("lb_sock_sendmsg4", "sendmsg4"),
    ("lb_sock_recvmsg4", "recvmsg4"),
    ("lb_sock_getpeername4", "getpeername4"),
    ("lb_sock_bind4", "bind4"),
    ("lb_sock_connect6", "connect6"),
    ("lb_sock_sendmsg6", "sendmsg6"),
    ("lb_sock_recvmsg6", "recvmsg6"),
    ("lb_sock_getpeername6", "getpeername6"),
    ("lb_sock_bind6", "bind6"),
];

/// Where the unified hierarchy is mounted when nothing mounted it.
const OWN_CGROUP2_MOUNT: &str = "/run/lb/cgroup2";

#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    #[error("cgroup {}: {reason}", path.display())]
    Cgroup { path: PathBuf, reason: String },
    #[error("mounting the cgroup v2 hierarchy on {OWN_CGROUP2_MOUNT}: {0}")]
    Mount(io::Error),
    #[error("socket hook {hook} on cgroup {}: {reason}", cgroup.display())]
    Attach { hook: &'static str, cgroup: PathBuf, reason: String },
    /// The kernel's errno is in the source, shown by the agent's `{:#}`.
    #[error("socket hook {hook} on cgroup {}", cgroup.display())]
    Link { hook: &'static str, cgroup: PathBuf, source: ProgramError },
    #[error("the network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14): {0}")]
    NetnsCookie(io::Error),
}

/// The cgroup the hooks attach to: `asked`, which must be a cgroup v2
/// directory, else the unified hierarchy's root.
pub fn cgroup_root(asked: Option<&Path>) -> Result<PathBuf, SocketsError> {
    let path = match asked {
        Some(path) => path.to_owned(),
        None => match cgroup2_mount() {
            Some(path) => path,
            // Another agent may have mounted it a moment ago.
            None if Filesystem::Cgroup2.holds(Path::new(OWN_CGROUP2_MOUNT)) => PathBuf::from(OWN_CGROUP2_MOUNT),
            None => {
                Filesystem::Cgroup2.mount(Path::new(OWN_CGROUP2_MOUNT)).map_err(SocketsError::Mount)?;
                info!(path = OWN_CGROUP2_MOUNT, "mounted the cgroup v2 hierarchy");
                PathBuf::from(OWN_CGROUP2_MOUNT)
            }
        },
    };
    if !Filesystem::Cgroup2.holds(&path) {
        let reason = "not a cgroup v2 directory (mount -t cgroup2 none DIR)".to_owned();
        return Err(SocketsError::Cgroup { path, reason });
    }
    Ok(path)
}

/// Where the root of the unified hierarchy is mounted, if anywhere.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPER_OPTIONS
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let mount_point = fields.get(4)?;
        (fs.split(' ').next() == Some("cgroup2") && fields.get(3) == Some(&"/"))
            .then(|| PathBuf::from(mount_point.replace("\\040", " ")))
    })
}

/// The cookie of this process's network namespace: the node's own, which
/// the programs tell apart from pods' by it.
pub fn netns_cookie() -> Result<u64, SocketsError> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(SocketsError::NetnsCookie(io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 { Ok(cookie) } else { Err(SocketsError::NetnsCookie(io::Error::last_os_error())) }
}

/// Attaches the loaded socket programs to `cgroup`, taking over the links
/// an earlier agent pinned in `links_dir` for it; links pinned there for
/// another cgroup are released.
pub(super) fn attach(ebpf: &mut Ebpf, cgroup: &Path, links_dir: &Path) -> Result<(), SocketsError> {
    let cgroup_err = |reason: String| SocketsError::Cgroup { path: cgroup.to_owned(), reason };
    let dir = fs::File::open(cgroup).map_err(|e| cgroup_err(format!("cannot open it: {e}")))?;
    let inode = dir.metadata().map_err(|e| cgroup_err(format!("cannot stat it: {e}")))?.ino();
    fs::create_dir_all(links_dir).map_err(|e| cgroup_err(format!("creating {}: {e}", links_dir.display())))?;
    release(links_dir, Some(inode));
    for (name, hook) in PROGRAMS {
        let attach_err = |reason: String| SocketsError::Attach { hook, cgroup: cgroup.to_owned(), reason };
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| attach_err(format!("program {name} is not loaded")))?;
        let prog_fd = program.fd().map_err(|e| attach_err(e.to_string()))?;
        let pin = links_dir.join(format!("{inode}-{hook}"));
        if pin.exists() {
            match pinned_link(&pin).and_then(|link| link_update(link.as_fd(), prog_fd.as_fd())) {
                Ok(()) => {
                    info!(hook, cgroup = %cgroup.display(), "took over the pinned socket link");
                    continue;
                }
                Err(err) => {
                    info!(hook, error = %err, "the pinned socket link is gone, attaching anew");
                    let _ = fs::remove_file(&pin);
                }
            }
        }
        // A bpf_link never excludes others on the cgroup; the kernel refuses
        // attach flags with one (aya passes the mode as those flags).
        let link_err = |source| SocketsError::Link { hook, cgroup: cgroup.to_owned(), source };
        let id = program.attach(&dir, CgroupAttachMode::Single).map_err(link_err)?;
        let link = program.take_link(id).map_err(|e| attach_err(e.to_string()))?;
        let link = FdLink::try_from(link).map_err(|e| attach_err(format!("not a bpf_link (before 5.7?): {e}")))?;
        link.pin(&pin).map_err(|e| attach_err(format!("pinning at {}: {e}", pin.display())))?;
    }
    info!(cgroup = %cgroup.display(), "socket hooks attached");
    Ok(())
}

/// Unpins the socket links in `links_dir`, but those of this agent's hooks
/// on cgroup `keep`: nothing else holds them, so they detach (a hook only
/// another version of the agent had goes too).
pub(super) fn release(links_dir: &Path, keep: Option<u64>) {
    let Ok(entries) = fs::read_dir(links_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let (inode, hook) = name.split_once('-').unwrap_or_default();
        let ours = PROGRAMS.iter().any(|(_, h)| *h == hook);
        if keep.is_none() || inode.parse::<u64>().ok() != keep || !ours {
            info!(link = name, "releasing a socket link");
            let _ = fs::remove_file(entry.path());
        }
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `union bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_LINK_UPDATE`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// The link pinned at `pin` (`BPF_OBJ_GET`).
fn pinned_link(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let mut attr = ObjGetAttr { pathname: path.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Swaps `prog` into `link`, atomically (`BPF_LINK_UPDATE`).
fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr =
        LinkUpdateAttr { link_fd: link.as_raw_fd() as u32, new_prog_fd: prog.as_raw_fd() as u32, ..Default::default() };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i32> {
    // SAFETY: bpf(2) reads (and may write) the attribute block of the given size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc as i32) }
}
