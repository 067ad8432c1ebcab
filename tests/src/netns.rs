//! Network namespaces that clean up after themselves, and processes and
//! closures that run inside them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, bail};

/// Runs `cmd`, turning a failure into an error with its command line and stderr.
pub fn checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// `ip ARGS...`, checked.
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    checked(Command::new("ip").args(args))
}

/// A veth pair created directly in two namespaces (`a_name` in `a_ns`,
/// `b_name` in `b_ns`), so its names never clash on the host.
pub fn veth_pair(a_ns: &str, a_name: &str, b_ns: &str, b_name: &str) -> anyhow::Result<()> {
    ip(&["link", "add", a_name, "netns", a_ns, "type", "veth", "peer", "name", b_name, "netns", b_ns])?;
    Ok(())
}

/// A name unique on this host across test processes: `lb<pid><n><hint>`.
pub fn unique_name(hint: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("lb{}{}{hint}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(hint: &str) -> anyhow::Result<Self> {
        let name = unique_name(hint);
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs in this namespace. `nsenter --net` switches only
    /// the network namespace (`ip netns exec` would also remount /sys and
    /// hide the host's bpffs from the agent).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name)).arg("--").arg(program);
        cmd
    }

    /// Gives the namespace its own /etc/resolv.conf, as a pod's: seen by
    /// commands from [`Netns::command_with_etc`].
    pub fn set_resolv_conf(&self, text: &str) -> anyhow::Result<()> {
        self.set_etc_file("resolv.conf", text)
    }

    /// Gives the namespace its own /etc/hosts, likewise.
    pub fn set_hosts(&self, text: &str) -> anyhow::Result<()> {
        self.set_etc_file("hosts", text)
    }

    fn set_etc_file(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let dir = std::path::Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join(file), text).with_context(|| format!("write {}/{file}", dir.display()))
    }

    /// A command in this namespace that sees its /etc/netns files over
    /// /etc (`ip netns exec`, which also remounts /sys: for clients only).
    pub fn command_with_etc(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<Output> {
        checked(self.command(argv[0]).args(&argv[1..]))
    }

    /// Makes `ifname` send frames with complete checksums, as frames from a
    /// physical NIC always are: a veth otherwise hands on locally sent TCP
    /// and UDP with only the pseudo-header summed (checksum offload), which
    /// the kernel completes later but a frame forwarded from XDP keeps.
    pub fn send_complete_checksums(&self, ifname: &str) -> anyhow::Result<()> {
        self.exec(&["ethtool", "-K", ifname, "tx", "off"])?;
        Ok(())
    }

    /// The MAC address of `ifname`, as `aa:bb:cc:dd:ee:ff`.
    pub fn mac(&self, ifname: &str) -> anyhow::Result<String> {
        let out = self.exec(&["ip", "-o", "link", "show", ifname])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .with_context(|| format!("no MAC address for {ifname} in {text:?}"))
    }

    /// Starts a process in the namespace; it is killed when the guard drops.
    pub fn spawn(&self, cmd: &mut Command) -> anyhow::Result<ChildGuard> {
        let child = cmd.stdin(Stdio::null()).spawn().with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(ChildGuard(child))
    }

    /// Runs `f` on a thread that has entered this namespace, so that std
    /// sockets opened by `f` live there.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _inside = self.enter()?;
                    Ok(f())
                })
                .join()
                .expect("closure run in a namespace panicked")
        })
    }
}

/// The calling thread inside a namespace ([`Netns::enter`]), until dropped.
pub struct Entered {
    /// The namespace the thread came from.
    home: File,
}

impl Netns {
    /// Moves the calling thread into this namespace until the guard drops:
    /// for work that cannot move to another thread (`run_in`).
    pub fn enter(&self) -> anyhow::Result<Entered> {
        let home = File::open("/proc/thread-self/ns/net").context("open /proc/thread-self/ns/net")?;
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns on a namespace fd we own affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {path}: {}", std::io::Error::last_os_error());
        }
        Ok(Entered { home })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        let back = unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(back, 0, "setns back: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&self.name));
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unique_names_fit_interface_names_and_differ() {
        let (a, b) = (super::unique_name("n"), super::unique_name("n"));
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
    }
}
