//! `cargo xtask demo`: the kubia example of the seeds, through the eBPF
//! datapath. One node namespace, three kubia pods running lb-testserver, a
//! client pod, the seeds' Service and Pod manifests, the agent, ten
//! requests to the Service's cluster IP from the client pod and three from
//! the node itself (the socket hooks). Everything it creates is removed
//! when it ends, also on Ctrl-C or failure (the harness types clean up on
//! drop, and Ctrl-C is turned into an early return).

use std::{
    net::Ipv4Addr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context, bail};
use lb_tests::{
    agent::{AgentProcess, pod_manifest},
    netns::Netns,
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
    println!("  node address {NODE_IP}");
    check_interrupted()?;

    step("writing the seeds' kubia Service and Pod manifests, starting lb-agent");
    let pod_manifests: Vec<String> = pods.iter().map(|p| pod_manifest(&p.name, p.ip, true)).collect();
    // Its socket hooks on the cgroup root: they serve the node's processes.
    let agent = AgentProcess::start_on_root_cgroup(
        &node,
        &[("kubia-svc.yaml", KUBIA_SERVICE), ("kubia-pods.yaml", &pod_manifests.join("---\n"))],
        &["--pod-device", POD_DEVICE_PATTERN],
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

    let curl = |ns: &Netns, times: usize| -> anyhow::Result<()> {
        for _ in 0..times {
            check_interrupted()?;
            let out = ns.exec(&["curl", "-s", "-m", "2", &format!("http://{vip}/")])?;
            let text = String::from_utf8_lossy(&out.stdout).replace('\n', "   ");
            println!("  $ curl http://{vip}/   ->   {}", text.trim());
        }
        Ok(())
    };
    step(&format!("curl http://{vip} from the client pod, ten times"));
    curl(&client.ns, 10)?;
    step(&format!("curl http://{vip} from the node itself, three times (socket hooks: no packet rewritten)"));
    curl(&node.ns, 3)?;

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
