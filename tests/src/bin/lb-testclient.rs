//! A client as a process of its own, so that a test can start it inside a
//! cgroup (the socket hooks serve the sockets of a cgroup's processes;
//! the test process itself stays outside). Each command prints one line
//! per result, `key: value`, and exits 0 when the calls it makes succeed.
//!
//! - `http ADDR`: GET / over TCP; `body: ...` lines, then `peer: IP:PORT`
//!   as getpeername() shows it.
//! - `udp ADDR`: one datagram from an unconnected socket (sendto/recvfrom);
//!   `body:` lines, then `from: IP:PORT` as recvfrom() shows it.
//! - `udp-connected ADDR`: the same on a connected socket, `peer:` last.
//! - `connect ADDR`: a TCP connect(); `connect: ok` or `connect: ERRNO_NAME`.
//! - `bind tcp|udp|tcp6|udp6 PORT`: bind(0.0.0.0:PORT), or [::]:PORT for
//!   the `6` ones; `bind: ok` or `bind: ERRNO_NAME`.
//!
//! An ADDR in brackets (`[::ffff:10.96.0.10]:80`) makes an IPv6 socket.
//! - `crr ADDR SECONDS`: new TCP connections, each one GET and close, for
//!   that long; `connections: N`, `failed: N`, `seconds: S`, and the
//!   latency percentiles `p50_us: U`, `p99_us: U`.
//! - `bulk ADDR SECONDS`: one connection writing 256 KiB at a time to a
//!   discard server for that long; `gbps: G` as the server counted.
//! - `upgrade ADDR HOST PROTOCOL`: GET /chat for HOST with `Connection:
//!   upgrade` and `Upgrade: PROTOCOL`; `status: CODE` and the answer's
//!   `connection:` and `upgrade:` headers, then, if switched, two lines
//!   sent and their echoes as `echo: ...` (lb-testserver's upgrade echo).
//! - `send ADDR BYTES`: BYTES of `lb_tests::BulkStream` to a sink, which
//!   must report exactly them (`lb_tests::client::send_stream`); `report: R`.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use lb_tests::client::http_exchange;

const TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).with_context(|| format!("usage: see the header of {}", file!()));
    let addr = || -> anyhow::Result<SocketAddr> {
        let text = arg(1)?;
        text.parse().with_context(|| format!("address {text}"))
    };
    match arg(0)?.as_str() {
        "http" => http(addr()?),
        "udp" => udp(addr()?, false),
        "udp-connected" => udp(addr()?, true),
        "connect" => {
            let result = TcpStream::connect_timeout(&addr()?, TIMEOUT);
            println!("connect: {}", outcome(result.map(drop)));
            Ok(())
        }
        "bind" => {
            let port: u16 = arg(2)?.parse().context("port")?;
            let (v4, v6) = ((Ipv4Addr::UNSPECIFIED, port), (Ipv6Addr::UNSPECIFIED, port));
            let result = match arg(1)?.as_str() {
                "tcp" => TcpListener::bind(v4).map(drop),
                "udp" => UdpSocket::bind(v4).map(drop),
                "tcp6" => TcpListener::bind(v6).map(drop),
                "udp6" => UdpSocket::bind(v6).map(drop),
                other => bail!("bind: protocol {other} is none of tcp, udp, tcp6, udp6"),
            };
            println!("bind: {}", outcome(result));
            Ok(())
        }
        "upgrade" => upgrade(addr()?, arg(2)?, arg(3)?),
        "send" => {
            let len: usize = arg(2)?.parse().context("bytes")?;
            println!("report: {}", lb_tests::client::send_stream(addr()?, len, Duration::from_secs(30))?);
            Ok(())
        }
        "crr" | "bulk" => {
            let seconds: f64 = arg(2)?.parse().context("seconds")?;
            let duration = Duration::from_secs_f64(seconds);
            if arg(0)? == "crr" { connections_for(addr()?, duration) } else { bulk(addr()?, duration) }
        }
        other => bail!("unknown command {other}"),
    }
}

fn outcome(result: io::Result<()>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(err) => match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => "ECONNREFUSED".to_owned(),
            Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".to_owned(),
            Some(libc::EADDRINUSE) => "EADDRINUSE".to_owned(),
            Some(libc::EPERM) => "EPERM".to_owned(),
            _ => format!("{:?}", err.kind()),
        },
    }
}

fn http(addr: SocketAddr) -> anyhow::Result<()> {
    let answer = http_exchange(addr, "/", TIMEOUT)?;
    answer.body.lines().for_each(|line| println!("body: {line}"));
    println!("peer: {}", answer.peer);
    Ok(())
}

fn upgrade(addr: SocketAddr, host: &str, protocol: &str) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    write!(writer, "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n")?;
    let mut reader = io::BufReader::new(stream);
    let mut line = String::new();
    io::BufRead::read_line(&mut reader, &mut line)?;
    let status = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
    println!("status: {status}");
    while line.trim_end() != "" {
        line.clear();
        if io::BufRead::read_line(&mut reader, &mut line)? == 0 {
            bail!("the connection closed in the response head");
        }
        let lower = line.trim_end().to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("upgrade:") {
            println!("{lower}");
        }
    }
    if status != "101" {
        return Ok(());
    }
    for text in ["hello", "again"] {
        writeln!(writer, "{text}")?;
        line.clear();
        io::BufRead::read_line(&mut reader, &mut line)?;
        println!("echo: {}", line.trim_end());
    }
    Ok(())
}

fn udp(addr: SocketAddr, connected: bool) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = [0u8; 2048];
    let (len, from) = if connected {
        socket.connect(addr)?;
        socket.send(b"hello")?;
        (socket.recv(&mut buf).with_context(|| format!("no reply from {addr}"))?, socket.peer_addr()?)
    } else {
        socket.send_to(b"hello", addr)?;
        socket.recv_from(&mut buf).with_context(|| format!("no reply from {addr}"))?
    };
    String::from_utf8_lossy(&buf[..len]).lines().for_each(|line| println!("body: {line}"));
    println!("{}: {from}", if connected { "peer" } else { "from" });
    Ok(())
}

fn connections_for(addr: SocketAddr, duration: Duration) -> anyhow::Result<()> {
    let (start, mut latencies, mut failed) = (Instant::now(), Vec::new(), 0u64);
    while start.elapsed() < duration {
        let t = Instant::now();
        match http_exchange(addr, "/", TIMEOUT) {
            Ok(_) => latencies.push(t.elapsed()),
            Err(_) => failed += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(!latencies.is_empty(), "no connection to {addr} succeeded");
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!("connections: {}\nfailed: {failed}\nseconds: {seconds:.3}", latencies.len());
    println!("p50_us: {:.0}\np99_us: {:.0}", at(0.5), at(0.99));
    Ok(())
}

fn bulk(addr: SocketAddr, duration: Duration) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let chunk = vec![0x5au8; 1 << 18];
    let start = Instant::now();
    while start.elapsed() < duration {
        stream.write_all(&chunk)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut report = String::new();
    stream.read_to_string(&mut report)?;
    let seconds = start.elapsed().as_secs_f64();
    // `NAME received N bytes`
    let bytes: u64 = report
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no byte count in {report:?}"))?;
    println!("gbps: {:.3}", bytes as f64 * 8.0 / seconds / 1e9);
    Ok(())
}
