//! A cgroup v2 directory of a test's own, for the socket hooks: the agent
//! attaches its programs there (`--cgroup-root`) and the test starts its
//! clients inside it, as processes (`lb-testclient`). The test process
//! itself, and every other test's sockets, stay outside.

use std::{
    ffi::CString,
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::netns::{Netns, unique_name};

/// Where this harness mounts the unified hierarchy when nothing has.
const OWN_MOUNT: &str = "/run/lb-tests/cgroup2";

pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn create() -> anyhow::Result<Self> {
        let path = unified_root()?.join(unique_name("cg"));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `lb-testclient ARGS` in `ns`, as a process of this cgroup; its
    /// output (`key: value` lines) when it succeeds.
    pub fn client(&self, ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
        client_in(&self.path, ns, args)
    }
}

/// [`TestCgroup::client`] in the cgroup at `path`.
pub fn client_in(path: &Path, ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let bin = crate::workspace_binary("LB_TESTCLIENT_BIN", "lb-testclient")?;
    let mut cmd = ns.command(bin);
    cmd.args(args);
    let procs = CString::new(path.join("cgroup.procs").into_os_string().into_encoded_bytes())?;
    // SAFETY: between fork and exec only open/write/close, which are
    // async-signal-safe; "0" moves the writing process itself.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            let moved = fd >= 0 && libc::write(fd, c"0".as_ptr().cast(), 1) == 1;
            if fd >= 0 {
                libc::close(fd);
            }
            if moved { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("lb-testclient {args:?} failed: {}{stdout}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(stdout)
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its processes have exited (clients are waited for); a cgroup is
        // removed once the kernel has let go of them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of the first `key: value` line of a client's output.
pub fn field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(": "))
}

/// Where the root of the unified hierarchy is mounted, mounting it if it
/// is mounted nowhere (hosts with cgroup v1 only, the test VM).
fn unified_root() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mounted = mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let mount_point = *fields.get(4)?;
        (fs.starts_with("cgroup2 ") && fields.get(3) == Some(&"/")).then(|| PathBuf::from(mount_point))
    });
    if let Some(path) = mounted {
        return Ok(path);
    }
    fs::create_dir_all(OWN_MOUNT)?;
    crate::netns::checked(std::process::Command::new("mount").args(["-t", "cgroup2", "none", OWN_MOUNT]))?;
    Ok(PathBuf::from(OWN_MOUNT))
}
