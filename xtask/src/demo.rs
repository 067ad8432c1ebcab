//! `cargo xtask demo`: the kubia example of the seeds, through the eBPF
//! datapath. One node namespace, three kubia pods running lb-testserver, a
//! client pod, the seeds' Service and Pod manifests, the agent with its DNS
//! responder, ten requests to `http://kubia` from the client pod (its
//! resolv.conf points at the agent, with the cluster's search path) and
//! three to the cluster IP from the node itself (the socket hooks). Everything it creates is removed
//! when it ends, also on Ctrl-C or failure (the harness types clean up on
//! drop, and Ctrl-C is turned into an early return).

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context, bail};
use lb_tests::{
    agent::{AgentProcess, pod_manifest},
    dns::pod_resolv_conf,
    netns::checked,
    topology::{Node, POD_DEVICE_PATTERN},
};

/// The Service of the seeds (Kubernetes in Action §5.1): no clusterIP, the
/// agent allocates one as the API server would.
const KUBIA_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: kubia
spec:
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: kubia
";

/// The node's address (on its loopback: the demo node has no uplink).
const NODE_IP: &str = "192.0.2.1";
/// Where the agent answers DNS: NodeLocal DNSCache's address, on the node's loopback.
const DNS_IP: &str = "169.254.20.10";
const PODS: [(&str, [u8; 4]); 3] =
    [("kubia-7nogl", [10, 244, 1, 2]), ("kubia-dmdck", [10, 244, 1, 3]), ("kubia-gzwli", [10, 244, 1, 4])];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    let result = demo(root);
    // Everything `demo` created has been dropped, i.e. removed, by now.
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("\ninterrupted: the demo's namespaces, processes and pinned maps are removed");
        return Ok(());
    }
    result
}

fn demo(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions; the handler only stores a flag.
    unsafe {
        if libc::geteuid() != 0 {
            bail!("the demo creates network namespaces and attaches eBPF programs: run `sudo -E cargo xtask demo`");
        }
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    // SAFETY: plain setenv before any thread is started.
    unsafe {
        std::env::set_var("LB_AGENT_BIN", root.join("target/release/lb-agent"));
        std::env::set_var("LB_TESTSERVER_BIN", root.join("target/release/lb-testserver"));
    }

    step("creating a node namespace with three kubia pods and a client pod");
    let node = Node::new()?;
    let mut pods = Vec::new();
    for (name, ip) in PODS {
        let mut pod = node.add_pod(name, Ipv4Addr::from(ip))?;
        pod.serve(8080, 8080)?;
        println!("  pod {name:<12} {}  (lb-testserver on :8080)", pod.ip);
        pods.push(pod);
    }
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 1, 100))?;
    println!("  pod {:<12} {}", "client", client.ip);
    // The node's own address, which its sockets leave with.
    node.ns.exec(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
    node.ns.exec(&["ip", "addr", "add", &format!("{DNS_IP}/32"), "dev", "lo"])?;
    println!("  node address {NODE_IP}, DNS on {DNS_IP}");
    client.ns.set_resolv_conf(&pod_resolv_conf(DNS_IP))?;
    println!("  client's /etc/resolv.conf:\n{}", indent(&indent(&pod_resolv_conf(DNS_IP))));
    check_interrupted()?;

    step("writing the seeds' kubia Service and Pod manifests, starting lb-agent");
    let pod_manifests: Vec<String> = pods.iter().map(|p| pod_manifest(&p.name, p.ip, true)).collect();
    // Its socket hooks on the cgroup root: they serve the node's processes.
    let agent = AgentProcess::start_on_root_cgroup(
        &node,
        &[("kubia-svc.yaml", KUBIA_SERVICE), ("kubia-pods.yaml", &pod_manifests.join("---\n"))],
        &["--pod-device", POD_DEVICE_PATTERN, "--dns-address", &format!("{DNS_IP}:53")],
    )?;
    println!("{}", indent(KUBIA_SERVICE));
    agent.wait_for_services(Duration::from_secs(5), |s| s.matches(":8080").count() == 3)?;

    step("lb-agent get services");
    let services = agent.get("services")?;
    println!("{}", indent(&services));
    let vip = services
        .lines()
        .nth(1)
        .and_then(|row| row.split_whitespace().nth(3))
        .context("no kubia row in `get services`")?
        .to_owned();
    check_interrupted()?;

    step("dig kubia.default.svc.cluster.local from the client pod (the agent's DNS responder)");
    let out =
        client.ns.exec(&["dig", &format!("@{DNS_IP}"), "+noall", "+answer", "kubia.default.svc.cluster.local"])?;
    println!("{}", indent(String::from_utf8_lossy(&out.stdout).trim()));

    // The pod's commands see its resolv.conf; the node's use the cluster IP.
    let curl = |mut command: Command, url: &str, times: usize| -> anyhow::Result<()> {
        command.args(["-s", "-m", "2", url]);
        for _ in 0..times {
            check_interrupted()?;
            let out = checked(&mut command)?;
            let text = String::from_utf8_lossy(&out.stdout).replace('\n', "   ");
            println!("  $ curl {url}   ->   {}", text.trim());
        }
        Ok(())
    };
    step("curl http://kubia from the client pod, ten times (the name found through its search path)");
    curl(client.ns.command_with_etc("curl"), "http://kubia/", 10)?;
    step(&format!("curl http://{vip} from the node itself, three times (socket hooks: no packet rewritten)"));
    curl(node.ns.command("curl"), &format!("http://{vip}/"), 3)?;

    step("lb-agent get counters (packets per verdict; SOCKET: calls of the node's sockets)");
    let counters = agent.get("counters")?;
    let nonzero =
        counters.lines().enumerate().filter(|(i, l)| *i == 0 || l.split_whitespace().skip(1).any(|n| n != "0"));
    println!("{}", indent(&nonzero.map(|(_, l)| l).collect::<Vec<_>>().join("\n")));
    step("cleaning up: agent stopped, namespaces removed");
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}
