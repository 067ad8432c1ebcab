//! What the agent says when the machine or its command line is not what it
//! needs: one line naming the problem, exit status 1, never a panic.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{netns::unique_name, require_root, topology::Node, workspace_binary};

/// A scratch manifest directory, removed on drop.
struct Manifests(PathBuf);

impl Manifests {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("e"));
        std::fs::create_dir_all(&dir).unwrap();
        Manifests(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` (an `lb-agent` invocation) to its end: it must fail with
/// status 1 and a last line `lb-agent: ...` that contains `needle`.
fn assert_refused(cmd: &mut Command, needle: &str) {
    let mut child = cmd.env("NO_COLOR", "1").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lb-agent did not stop within 30 s: it took {needle:?} for no error");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("lb-agent: ") && last.contains(needle), "last line {last:?} of:\n{stderr}");
}

fn agent_bin() -> PathBuf {
    workspace_binary("LB_AGENT_BIN", "lb-agent").unwrap()
}

/// `lb-agent run` in a fresh node namespace with `args` after the manifests.
fn run_in_node(node: &Node, manifests: &Manifests, args: &[&str]) -> Command {
    let mut cmd = node.ns.command(agent_bin());
    cmd.args(["run", "--manifests", manifests.path(), "--node-name", "n"]).args(args);
    cmd
}

#[test]
fn without_root_the_agent_says_it_needs_root() {
    require_root();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(agent_bin()).args(["get", "services"]);
    assert_refused(&mut cmd, "needs root");
}

#[test]
fn a_bpf_dir_outside_bpffs_is_refused() {
    require_root();
    let (node, manifests) = (Node::new().unwrap(), Manifests::new());
    let dir = std::env::temp_dir().join(unique_name("nobpf"));
    let mut cmd = run_in_node(&node, &manifests, &["--pod-device", "h-*", "--bpf-dir", dir.to_str().unwrap()]);
    assert_refused(&mut cmd, "not on a bpf filesystem");
    let _ = std::fs::remove_dir_all(dir);
}

/// `cmd` run in a private mount namespace (as `ip netns exec` makes one)
/// after the shell command `setup` ran there.
fn in_private_mount_namespace(setup: &str, cmd: &Command) -> Command {
    let mut private = Command::new("unshare");
    private.args(["--mount", "--propagation", "private", "sh", "-c", &format!("{setup} && exec \"$@\""), "sh"]);
    private.arg(cmd.get_program()).args(cmd.get_args());
    private
}

/// An agent in a private mount namespace where /sys/fs/bpf is no bpffs
/// (here a tmpfs) would mount a bpffs of its own, or finds one mounted
/// there and not on the host: its pins would vanish with the namespace,
/// so it refuses and says why, unless --allow-private-bpffs.
#[test]
fn a_bpffs_private_to_the_agents_mount_namespace_is_refused_unless_allowed() {
    require_root();
    let (node, manifests) = (Node::new().unwrap(), Manifests::new());
    let bpf_dir = format!("/sys/fs/bpf/{}", unique_name("e"));
    let agent = run_in_node(&node, &manifests, &["--pod-device", "h-*", "--bpf-dir", &bpf_dir]);
    let no_bpffs = "mount -t tmpfs none /sys/fs/bpf";
    assert_refused(
        &mut in_private_mount_namespace(no_bpffs, &agent),
        "bpffs is not mounted and this agent runs in a private mount namespace (ip netns exec?)",
    );
    let own_bpffs = "mount -t bpf bpf /sys/fs/bpf";
    assert_refused(&mut in_private_mount_namespace(own_bpffs, &agent), "its bpffs was mounted inside this namespace");
    assert!(!std::path::Path::new(&bpf_dir).exists(), "nothing was made on the host's bpffs");

    let log = manifests.0.join("agent.log");
    let mut allowed = in_private_mount_namespace(no_bpffs, &agent);
    allowed.arg("--allow-private-bpffs").stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let mut child = lb_tests::netns::ChildGuard(allowed.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap().contains("agent started") {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(child.0.try_wait().unwrap().is_none(), "lb-agent exited:\n{text}");
        assert!(Instant::now() < deadline, "lb-agent did not start within 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().unwrap();
}

#[test]
fn a_missing_manifest_directory_is_named() {
    require_root();
    let node = Node::new().unwrap();
    let mut cmd = node.ns.command(agent_bin());
    cmd.args(["run", "--manifests", "/nonexistent/manifests", "--node-name", "n", "--pod-device", "h-*"]);
    assert_refused(&mut cmd, "manifest directory /nonexistent/manifests does not exist");
}

#[test]
fn a_cgroup_root_that_is_not_cgroup_v2_is_named() {
    require_root();
    let (node, manifests) = (Node::new().unwrap(), Manifests::new());
    let mut cmd = run_in_node(&node, &manifests, &["--pod-device", "h-*", "--cgroup-root", "/tmp"]);
    assert_refused(&mut cmd, "cgroup /tmp: not a cgroup v2 directory");
}

#[test]
fn an_absent_device_is_named() {
    require_root();
    let (node, manifests) = (Node::new().unwrap(), Manifests::new());
    assert_refused(&mut run_in_node(&node, &manifests, &["--device", "nosuch0"]), "device nosuch0 does not exist");
}

/// A bridge has no native XDP: asked for it, the agent names the device and
/// the mode and stops (a pod veth failing later is retried instead).
#[test]
fn a_device_without_native_xdp_is_refused_in_native_mode() {
    require_root();
    let (node, manifests) = (Node::new().unwrap(), Manifests::new());
    node.ns.exec(&["ip", "link", "add", "br0", "type", "bridge"]).unwrap();
    node.ns.exec(&["ip", "link", "set", "br0", "up"]).unwrap();
    let bpf_dir = format!("/sys/fs/bpf/{}", unique_name("e"));
    let mut cmd = run_in_node(&node, &manifests, &["--device", "br0", "--xdp-mode", "native", "--bpf-dir", &bpf_dir]);
    assert_refused(&mut cmd, "interface br0: xdp (native)");
    let _ = std::fs::remove_dir_all(bpf_dir);
}

/// A DNS responder or Ingress proxy that cannot serve stops the agent with
/// one line naming the flag, before any map is pinned.
#[test]
fn dns_and_ingress_flags_that_cannot_serve_are_named_before_the_maps_are_touched() {
    require_root();
    let (node, manifests) = (Node::new().unwrap(), Manifests::new());
    let bpf_dir = format!("/sys/fs/bpf/{}", unique_name("e"));
    let taken = node.ns.run_in(|| std::net::UdpSocket::bind("127.0.0.1:5353").unwrap()).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--dns-address", "0.0.0.0:53"],
            "--dns-address 0.0.0.0:53: give one of the node's addresses, not a wildcard",
        ),
        (&["--dns-address", "127.0.0.1:5353"], "--dns-address 127.0.0.1:5353: udp: Address already in use"),
        (&["--dns-address", "127.0.0.1:53", "--cluster-domain", "a..b"], "--cluster-domain \"a..b\""),
        (
            &["--dns-address", "127.0.0.1:53", "--dns-upstream", "127.0.0.1:53"],
            "--dns-upstream 127.0.0.1:53: the responder's own address would forward to itself",
        ),
    ];
    let taken_tcp = node.ns.run_in(|| std::net::TcpListener::bind("127.0.0.1:8081").unwrap()).unwrap();
    let ingress: [(&[&str], &str); 2] = [
        (&["--ingress-bind", "127.0.0.1:8081"], "--ingress-bind 127.0.0.1:8081: Address already in use"),
        (
            &["--ingress-bind", "127.0.0.1:8082", "--ingress-tls-bind", "127.0.0.1:8081"],
            "--ingress-tls-bind 127.0.0.1:8081: Address already in use",
        ),
    ];
    for (dns, needle) in cases.into_iter().chain(ingress) {
        let args = [&["--pod-device", "h-*", "--bpf-dir", &bpf_dir][..], dns].concat();
        assert_refused(&mut run_in_node(&node, &manifests, &args), needle);
        assert!(!std::path::Path::new(&bpf_dir).exists(), "{needle}: the maps were pinned");
    }
    drop((taken, taken_tcp));
}
