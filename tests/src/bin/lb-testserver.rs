//! The server test pods run: HTTP that answers with the pod's name and the
//! peer address it saw (so tests see load spreading and source addresses),
//! and a UDP echo that does the same before echoing the payload.
//!
//! `lb-testserver --name NAME [--http ADDR:PORT]... [--udp ADDR:PORT]... [--tcp-echo ADDR:PORT]...`
//! prints `ready` once every socket is bound. `--tcp-echo` keeps a
//! connection open and answers each line with `NAME: line`, for tests of
//! long-lived flows; an HTTP request with `Connection: upgrade` and
//! `Upgrade: P` is answered `101` and the connection becomes the same echo. `--sink` reads a connection to its end and answers
//! `NAME received N bytes, digest D` (see `lb_tests::Digest`), so that a
//! bulk transfer proves every byte arrived intact; `--discard` answers
//! `NAME received N bytes` only, for throughput benchmarks. `--source`
//! reads a byte count N on a line and sends the first N bytes of
//! `lb_tests::BulkStream`, then closes.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut name, mut http, mut udp, mut tcp_echo) = (None, Vec::new(), Vec::new(), Vec::new());
    let (mut sink, mut discard, mut source) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => name = Some(value),
            "--http" => http.push(value.parse::<SocketAddr>().with_context(|| format!("--http {value}"))?),
            "--udp" => udp.push(value.parse::<SocketAddr>().with_context(|| format!("--udp {value}"))?),
            "--tcp-echo" => tcp_echo.push(value.parse::<SocketAddr>().with_context(|| format!("--tcp-echo {value}"))?),
            "--sink" => sink.push(value.parse::<SocketAddr>().with_context(|| format!("--sink {value}"))?),
            "--discard" => discard.push(value.parse::<SocketAddr>().with_context(|| format!("--discard {value}"))?),
            "--source" => source.push(value.parse::<SocketAddr>().with_context(|| format!("--source {value}"))?),
            _ => bail!(
                "unknown flag {flag}; usage: lb-testserver --name NAME [--http ADDR:PORT]... [--udp ADDR:PORT]..."
            ),
        }
    }
    let name: &'static str = Box::leak(name.context("--name is required")?.into_boxed_str());
    let mut workers = Vec::new();
    for addr in http {
        let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on tcp {addr}"))?;
        workers.push(thread::spawn(move || serve_http(name, listener)));
    }
    for addr in udp {
        let socket = UdpSocket::bind(addr).with_context(|| format!("cannot bind udp {addr}"))?;
        workers.push(thread::spawn(move || serve_udp(name, socket)));
    }
    for addr in tcp_echo {
        let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on tcp {addr}"))?;
        workers.push(thread::spawn(move || serve_tcp_echo(name, listener)));
    }
    for (addr, digest) in sink.into_iter().map(|a| (a, true)).chain(discard.into_iter().map(|a| (a, false))) {
        let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on tcp {addr}"))?;
        workers.push(thread::spawn(move || serve_sink(name, listener, digest)));
    }
    for addr in source {
        let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on tcp {addr}"))?;
        workers.push(thread::spawn(move || serve_source(listener)));
    }
    println!("ready");
    std::io::stdout().flush()?;
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// The peer as the client knows itself: an IPv4 client of a dual-stack
/// listener is named by its IPv4 address, not the mapped IPv6 one.
fn greeting(name: &str, peer: SocketAddr) -> String {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    format!("You've hit {name}\nclient: {peer}\n")
}

fn serve_http(name: &'static str, listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        thread::spawn(move || {
            let _ = answer_http(name, stream);
        });
    }
}

fn answer_http(name: &str, mut stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // Read the request head; the body, if any, is ignored. A proxy's
    // X-Forwarded-* and X-Real-IP headers, and the cookies, are echoed
    // after the greeting.
    let (mut line, mut forwarded, mut upgrade, mut asks) = (String::new(), String::new(), None, false);
    while reader.read_line(&mut line)? > 2 {
        let lower = line.trim_end().to_ascii_lowercase();
        if lower.starts_with("x-forwarded-") || lower.starts_with("x-real-ip:") || lower.starts_with("cookie:") {
            forwarded.push_str(&lower);
            forwarded.push('\n');
        }
        if let Some(protocol) = lower.strip_prefix("upgrade:") {
            upgrade = Some(protocol.trim().to_owned());
        }
        asks |= lower.strip_prefix("connection:").is_some_and(|c| c.split(',').any(|t| t.trim() == "upgrade"));
        line.clear();
    }
    if let Some(protocol) = upgrade.filter(|_| asks) {
        // Switched: from here on a line echo, as --tcp-echo.
        write!(stream, "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n")?;
        return echo_lines(name, reader, stream);
    }
    let body = greeting(name, peer) + &forwarded;
    // One write, one segment.
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

fn serve_udp(name: &str, socket: UdpSocket) {
    let mut buf = [0u8; 65536];
    while let Ok((len, peer)) = socket.recv_from(&mut buf) {
        let mut reply = greeting(name, peer).into_bytes();
        reply.extend_from_slice(&buf[..len]);
        let _ = socket.send_to(&reply, peer);
    }
}

/// Sends each connection the number of stream bytes it asks for.
fn serve_source(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        thread::spawn(move || -> Option<()> {
            let mut writer = stream.try_clone().ok()?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).ok()?;
            let mut left: usize = line.trim().parse().ok()?;
            let (mut bytes, mut chunk) = (lb_tests::BulkStream::default(), vec![0u8; 1 << 16]);
            while left > 0 {
                bytes.fill(&mut chunk);
                let n = chunk.len().min(left);
                writer.write_all(&chunk[..n]).ok()?;
                left -= n;
            }
            Some(())
        });
    }
}

/// Reads each connection to its end and reports how much came, with the
/// digest of it when `digest` (which costs more than the transfer).
fn serve_sink(name: &'static str, listener: TcpListener, digest: bool) {
    for mut stream in listener.incoming().flatten() {
        thread::spawn(move || {
            let (mut sum, mut len) = (lb_tests::Digest::default(), 0u64);
            let mut buf = vec![0u8; 1 << 18];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                len += n as u64;
                if digest {
                    sum.update(&buf[..n]);
                }
            }
            let _ = if digest {
                writeln!(stream, "{name} received {len} bytes, digest {:016x}", sum.value())
            } else {
                writeln!(stream, "{name} received {len} bytes")
            };
        });
    }
}

fn serve_tcp_echo(name: &'static str, listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        thread::spawn(move || {
            let Ok(writer) = stream.try_clone() else { return };
            let _ = echo_lines(name, BufReader::new(stream), writer);
        });
    }
}

/// Answers each line with `NAME: line` until the peer closes.
fn echo_lines(name: &str, reader: impl BufRead, mut writer: TcpStream) -> std::io::Result<()> {
    for line in reader.lines() {
        writeln!(writer, "{name}: {}", line?)?;
    }
    Ok(())
}
