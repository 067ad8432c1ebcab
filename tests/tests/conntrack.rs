//! Conntrack at work in a node namespace: `get conntrack`, idle timeouts
//! and the agent's sweep, a flood of new flows beyond the capacity, and
//! agents killed and restarted under traffic.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddrV4, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::AgentProcess,
    client::{http_get, udp_request},
    kubia::{self, KUBIA_SERVICE, TIMEOUT, VIP},
    require_root,
    topology::Pod,
};

/// The kubia Service plus a `chat` port (7 -> the pods' line echo on 7007).
fn service_with_chat() -> String {
    KUBIA_SERVICE.replace("  selector:", "  - name: chat\n    port: 7\n    targetPort: 7007\n  selector:")
}

fn start(c: &mut kubia::Cluster, args: &[&str]) -> AgentProcess {
    for pod in &mut c.backends {
        pod.serve_tcp_echo(7007).unwrap();
    }
    let pods = kubia::pods_manifest(&c.backends.iter().collect::<Vec<_>>(), |_| true);
    let mut all = vec!["--pod-device", "h-*"];
    all.extend(args);
    let agent =
        AgentProcess::start_with(&c.node, &[("svc.yaml", &service_with_chat()), ("pods.yaml", &pods)], &all).unwrap();
    agent.wait_for_services(TIMEOUT, |s| kubia::endpoint_count(s) == c.backends.len()).unwrap();
    agent
}

/// A line-echo connection through the VIP: each line comes back prefixed
/// with the name of the pod that answered.
struct Chat {
    stream: TcpStream,
    lines: std::io::Lines<BufReader<TcpStream>>,
}

impl Chat {
    fn open(client: &Pod) -> Self {
        let stream = client
            .ns
            .run_in(|| TcpStream::connect_timeout(&SocketAddrV4::new(VIP, 7).into(), TIMEOUT))
            .unwrap()
            .unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let lines = BufReader::new(stream.try_clone().unwrap()).lines();
        Self { stream, lines }
    }

    /// Which pod echoed `text`.
    fn say(&mut self, text: &str) -> String {
        writeln!(&self.stream, "{text}").unwrap();
        let line = self.lines.next().expect("connection closed").expect("echo");
        let (pod, echoed) = line.split_once(": ").unwrap();
        assert_eq!(echoed, text);
        pod.to_owned()
    }
}

/// The data rows of `get conntrack` (header and totals left out).
fn flows(agent: &AgentProcess, filter: &[&str]) -> Vec<Vec<String>> {
    let text = agent.get_filtered("conntrack", filter).unwrap();
    text.lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The `evicted ~N` of the totals line.
fn evicted(agent: &AgentProcess) -> u64 {
    let text = agent.get("conntrack").unwrap();
    let totals = text.lines().last().unwrap();
    totals.rsplit('~').next().unwrap().trim().parse().unwrap_or_else(|_| panic!("{totals}"))
}

#[test]
fn get_conntrack_lists_each_flow_with_its_backend_and_state_and_filters_them() {
    require_root();
    let mut c = kubia::cluster(2);
    let agent = start(&mut c, &[]);
    let mut chat = Chat::open(&c.client);
    let owner = chat.say("hello");
    let backend = c.backends.iter().find(|p| p.name == owner).unwrap().ip.to_string();
    let other = c.backends.iter().find(|p| p.name != owner).unwrap().ip.to_string();
    udp_request(&c.client.ns, SocketAddrV4::new(VIP, 53), b"ping", TIMEOUT).unwrap();

    let tcp = flows(&agent, &["--protocol", "tcp", "--client", "10.244.0.100"]);
    assert_eq!(tcp.len(), 1, "{tcp:?}");
    let row = &tcp[0];
    // PROTO CLIENT FRONTEND BACKEND SOURCE-AS SERVICE STATE AGE IDLE
    assert_eq!((row[0].as_str(), row[2].as_str()), ("TCP", "10.96.0.10:7"));
    assert_eq!(row[3], format!("{backend}:7007"));
    assert_eq!((row[5].as_str(), row[6].as_str()), ("default/kubia:chat", "ESTABLISHED"));
    assert!(row[1].starts_with("10.244.0.100:"));

    let udp = flows(&agent, &["--service", "default/kubia", "--protocol", "udp"]);
    assert_eq!(udp.len(), 1, "{udp:?}");
    assert_eq!((udp[0][0].as_str(), udp[0][6].as_str()), ("UDP", "-"));
    assert!(flows(&agent, &["--backend", &other, "--protocol", "tcp"]).is_empty());
    assert!(flows(&agent, &["--service", "default/other"]).is_empty());
    assert_eq!(flows(&agent, &[]).len(), 2);
}

/// Idle flows expire after their timeout: the datapath ignores them at
/// once, the agent's sweep removes them and counts them.
#[test]
fn idle_flows_expire_and_the_sweep_removes_them() {
    require_root();
    let mut c = kubia::cluster(1);
    let mut agent = start(&mut c, &["--ct-timeout-udp", "2s", "--ct-sweep-interval", "1s"]);
    let mut chat = Chat::open(&c.client);
    chat.say("hello");
    udp_request(&c.client.ns, SocketAddrV4::new(VIP, 53), b"ping", TIMEOUT).unwrap();
    assert_eq!(flows(&agent, &["--protocol", "udp"]).len(), 1);

    let deadline = Instant::now() + Duration::from_secs(10);
    while !flows(&agent, &["--protocol", "udp"]).is_empty() {
        assert!(Instant::now() < deadline, "the UDP flow was never swept");
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.wait_for_log("conntrack sweep removed expired entries", TIMEOUT).unwrap();
    // The TCP flow (6 h) outlives it, and still works.
    assert_eq!(flows(&agent, &["--protocol", "tcp"]).len(), 1);
    chat.say("still here");
    let totals = agent.get("conntrack").unwrap();
    assert!(totals.contains("removed 2"), "the UDP flow's two entries: {totals}");
}

/// 40 000 new UDP flows (80 000 entries) in about 3 s into a conntrack of
/// 4 096 entries: the LRU evicts, and a TCP connection that keeps talking
/// stays on its backend throughout.
#[test]
fn a_flood_of_new_flows_beyond_capacity_leaves_active_connections_on_their_backend() {
    require_root();
    let mut c = kubia::cluster(3);
    let agent = start(&mut c, &["--ct-max", "4096"]);
    let mut chat = Chat::open(&c.client);
    let owner = chat.say("before");
    let said = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            c.client.ns.run_in(|| {
                // A socket per datagram: each leaves from a new port, a new
                // flow; about 20 000 flows (40 000 entries) a second.
                for i in 0..40_000u32 {
                    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                    let _ = socket.send_to(&i.to_be_bytes(), SocketAddrV4::new(VIP, 53));
                    if i % 20 == 19 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        });
        let mut said = 0;
        while !flood.is_finished() {
            assert_eq!(chat.say(&format!("during {said}")), owner, "the connection moved during the flood");
            said += 1;
        }
        flood.join().unwrap().unwrap();
        said
    });
    assert!(said > 0);
    assert_eq!(chat.say("after"), owner);
    assert!(evicted(&agent) > 0, "{}", agent.get("conntrack").unwrap());
}

/// The agent is SIGKILLed and started again three times while a TCP
/// connection talks through the VIP and a loop sends HTTP requests to it:
/// the programs stay attached through the pinned links and keep working
/// on the pinned maps, and each new agent takes them over.
#[test]
fn killing_and_restarting_the_agent_fails_no_request_and_keeps_connections() {
    require_root();
    let mut c = kubia::cluster(3);
    let mut agent = start(&mut c, &[]);
    let mut chat = Chat::open(&c.client);
    let owner = chat.say("before");
    let done = AtomicBool::new(false);
    let (requests, failures) = std::thread::scope(|s| {
        let requests = s.spawn(|| {
            let (mut requests, mut failures) = (0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                if let Err(err) = http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT) {
                    failures.push(err.to_string());
                }
                requests += 1;
            }
            (requests, failures)
        });
        for round in 0..3 {
            agent.kill().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(chat.say(&format!("no agent {round}")), owner, "the connection moved without an agent");
            agent.restart(&c.node).unwrap();
            // Pod veths' TC programs are netlink filters, which the new
            // agent takes over in place.
            if !agent.log_text().contains("replaced the tc filter an earlier agent left") {
                done.store(true, Ordering::Relaxed);
                panic!("the filters were not taken over:\n{}", agent.log_text());
            }
            agent.wait_for_services(TIMEOUT, |s| kubia::endpoint_count(s) == c.backends.len()).unwrap();
            assert_eq!(chat.say(&format!("agent {round}")), owner, "the connection moved after a restart");
        }
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, Ordering::Relaxed);
        requests.join().unwrap()
    });
    eprintln!("{requests} requests through three kills and restarts, {} failed", failures.len());
    assert!(requests > 100, "only {requests} requests");
    assert!(failures.is_empty(), "{} of {requests} requests failed: {failures:?}", failures.len());
    let client = c.client.ip.to_string();
    assert!(!flows(&agent, &["--client", &client]).is_empty(), "the client's flows are gone from conntrack");
    // The pod veths' TC programs are netlink filters: the kills must not
    // have left one each.
    for (direction, program) in [("egress", "lb_tc_egress"), ("ingress", "lb_tc_pod")] {
        let out = c.node.ns.exec(&["tc", "filter", "show", "dev", &c.backends[0].host_veth, direction]).unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        let filters = listed.lines().filter(|l| l.contains(program)).count();
        assert_eq!(filters, 1, "{program} filters after three restarts:\n{listed}");
    }
}

/// A stopped agent (SIGTERM) leaves its programs translating, the pod
/// veths' netlink filters included, and the next agent takes them over in
/// place.
#[test]
fn a_stopped_agent_leaves_the_service_answering_and_the_next_takes_over() {
    require_root();
    let mut c = kubia::cluster(1);
    let mut agent = start(&mut c, &[]);
    agent.stop().unwrap();
    assert!(agent.log_text().contains("the programs stay attached"), "{}", agent.log_text());
    let answer = http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    assert_eq!(lb_tests::client::served_by(&answer), c.backends[0].name, "no agent: {answer}");
    agent.restart(&c.node).unwrap();
    assert!(agent.log_text().contains("replaced the tc filter an earlier agent left"), "{}", agent.log_text());
    http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
}

/// With --detach-on-exit, a stopped agent leaves nothing attached: the VIP
/// no longer answers.
#[test]
fn an_agent_stopped_with_detach_on_exit_leaves_nothing_attached() {
    require_root();
    let mut c = kubia::cluster(1);
    let mut agent = start(&mut c, &["--detach-on-exit"]);
    http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap();
    agent.stop().unwrap();
    assert!(http_get(&c.client.ns, SocketAddrV4::new(VIP, 80), Duration::from_millis(500)).is_err());
    assert_eq!(std::fs::read_dir(agent.bpf_dir.join("links")).unwrap().count(), 0, "links left pinned");
}
