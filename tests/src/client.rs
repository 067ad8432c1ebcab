//! Clients that run inside a namespace: what a pod would do with curl or nc.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::netns::Netns;

/// `GET /` to `addr` from inside `ns`; the response body.
pub fn http_get(ns: &Netns, addr: impl Into<SocketAddr>, timeout: Duration) -> anyhow::Result<String> {
    Ok(http_request(ns, addr, timeout)?.1)
}

/// `GET /` to `addr` from inside `ns`; the status code and the body.
pub fn http_request(ns: &Netns, addr: impl Into<SocketAddr>, timeout: Duration) -> anyhow::Result<(u16, String)> {
    http_request_path(ns, addr, "/", timeout)
}

/// `GET PATH` to `addr` from inside `ns`; the status code and the body.
pub fn http_request_path(
    ns: &Netns,
    addr: impl Into<SocketAddr>,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let addr = addr.into();
    ns.run_in(|| http_exchange(addr, path, timeout).map(|answer| (answer.status, answer.body)))?
}

/// One scrape of the agent's `/metrics` (`--metrics-bind-address`'s
/// default, 127.0.0.1:10249) in `ns`: each sample (`name{labels}`) with its
/// value.
pub fn scrape_metrics(ns: &Netns, timeout: Duration) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let (status, body) = http_request_path(ns, ([127, 0, 0, 1], 10249), "/metrics", timeout)?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    anyhow::ensure!(body.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF:\n{body}");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (sample, value) = line.rsplit_once(' ').with_context(|| format!("not a sample: {line:?}"))?;
            Ok((sample.to_owned(), value.parse().with_context(|| format!("{line:?}"))?))
        })
        .collect()
}

/// What an HTTP request got back, and the peer the socket named.
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
    /// getpeername() of the connection.
    pub peer: SocketAddr,
}

/// `GET PATH` to `addr` from this thread's namespace, on a new connection.
pub fn http_exchange(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<HttpAnswer> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    // One write, one segment.
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let peer = stream.peer_addr()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| format!("read from {addr}"))?;
    let (head, body) =
        response.split_once("\r\n\r\n").with_context(|| format!("no http response from {addr}: {response:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    Ok(HttpAnswer { status: status.with_context(|| format!("no status in {head:?}"))?, body: body.to_owned(), peer })
}

/// One datagram to `addr` from a fresh socket in `ns`; the reply and the
/// address it came from.
pub fn udp_request(
    ns: &Netns,
    addr: impl Into<SocketAddr>,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<(String, SocketAddr)> {
    udp_request_from(ns, 0, addr, payload, timeout)
}

/// Like [`udp_request`], from local port `from_port` (0: any): the same
/// flow every time.
pub fn udp_request_from(
    ns: &Netns,
    from_port: u16,
    addr: impl Into<SocketAddr>,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<(String, SocketAddr)> {
    let addr = addr.into();
    let unspecified = if addr.is_ipv4() { IpAddr::from(Ipv4Addr::UNSPECIFIED) } else { Ipv6Addr::UNSPECIFIED.into() };
    ns.run_in(|| -> anyhow::Result<(String, SocketAddr)> {
        let socket = UdpSocket::bind(SocketAddr::new(unspecified, from_port))?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send_to(payload, addr).with_context(|| format!("send to {addr}"))?;
        let mut buf = [0u8; 2048];
        let (len, from) = socket.recv_from(&mut buf).with_context(|| format!("no udp reply from {addr}"))?;
        Ok((String::from_utf8_lossy(&buf[..len]).into_owned(), from))
    })?
}

/// The pod name in a test server's answer (`You've hit NAME`).
pub fn served_by(answer: &str) -> &str {
    answer.lines().next().and_then(|l| l.strip_prefix("You've hit ")).unwrap_or("")
}

/// The peer the test server saw (`client: IP:PORT`).
pub fn seen_client(answer: &str) -> &str {
    answer.lines().nth(1).and_then(|l| l.strip_prefix("client: ")).unwrap_or("")
}

/// Sends `len` bytes of a pseudo-random stream to a sink (`Pod::serve_sink`)
/// at `addr` from `ns` in large writes (GSO super-packets from a pod), and
/// checks that the sink received exactly them; its report.
pub fn bulk_send(ns: &Netns, addr: impl Into<SocketAddr>, len: usize, timeout: Duration) -> anyhow::Result<String> {
    let addr = addr.into();
    ns.run_in(|| send_stream(addr, len, timeout))?
}

/// [`bulk_send`] from this thread's namespace.
pub fn send_stream(addr: SocketAddr, len: usize, timeout: Duration) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    let (mut sent, mut stream_bytes) = (crate::Digest::default(), crate::BulkStream::default());
    let mut chunk = vec![0u8; 1 << 16];
    while (sent.len() as usize) < len {
        stream_bytes.fill(&mut chunk);
        let n = chunk.len().min(len - sent.len() as usize);
        stream.write_all(&chunk[..n]).with_context(|| format!("send to {addr} after {} bytes", sent.len()))?;
        sent.update(&chunk[..n]);
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut report = String::new();
    stream.read_to_string(&mut report).with_context(|| format!("no report from the sink at {addr}"))?;
    let want = format!("received {} bytes, digest {:016x}", sent.len(), sent.value());
    anyhow::ensure!(report.contains(&want), "the sink at {addr} reported {report:?}, sent {want}");
    Ok(report.trim().to_owned())
}

/// Asks a source (`Pod::serve_source`) at `addr` from `ns` for `len` bytes,
/// which it sends in large writes (GSO super-packets towards the client),
/// and checks that exactly the stream's first `len` bytes came.
pub fn bulk_receive(ns: &Netns, addr: impl Into<SocketAddr>, len: usize, timeout: Duration) -> anyhow::Result<()> {
    let addr = addr.into();
    ns.run_in(|| -> anyhow::Result<()> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        writeln!(stream, "{len}")?;
        let (mut got, mut buf) = (crate::Digest::default(), vec![0u8; 1 << 16]);
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.update(&buf[..n]),
                Err(e) => return Err(e).with_context(|| format!("receive from {addr} after {} bytes", got.len())),
            }
        }
        let (mut want, mut chunk) = (crate::Digest::default(), vec![0u8; len]);
        crate::BulkStream::default().fill(&mut chunk);
        want.update(&chunk);
        anyhow::ensure!(
            got == want,
            "from {addr}: got {} bytes, digest {:016x}; want {len}, {:016x}",
            got.len(),
            got.value(),
            want.value()
        );
        Ok(())
    })?
}

/// A TCP connection from `local` to `remote`, made in `ns` by a socket bound
/// first (as a client that picks its port does): the flow is known before
/// its first packet.
pub fn tcp_connect_from(
    ns: &Netns,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    let sockaddr = |addr: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.ip().octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    ns.run_in(|| -> anyhow::Result<TcpStream> {
        // SAFETY: a new socket, owned by the stream at once; the options and
        // addresses passed are plain values of the sizes given.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            anyhow::ensure!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let stream = TcpStream::from_raw_fd(fd);
            let one: libc::c_int = 1;
            let timeval = libc::timeval {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
            };
            let options = [
                (libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>()),
                // connect() gives up after the send timeout.
                (libc::SO_SNDTIMEO, (&timeval as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>()),
            ];
            for (option, value, size) in options {
                if libc::setsockopt(fd, libc::SOL_SOCKET, option, value, size as libc::socklen_t) != 0 {
                    anyhow::bail!("setsockopt {option}: {}", io::Error::last_os_error());
                }
            }
            let (local_addr, remote_addr) = (sockaddr(local), sockaddr(remote));
            if libc::bind(fd, (&local_addr as *const libc::sockaddr_in).cast(), len) != 0 {
                anyhow::bail!("bind {local}: {}", io::Error::last_os_error());
            }
            if libc::connect(fd, (&remote_addr as *const libc::sockaddr_in).cast(), len) != 0 {
                anyhow::bail!("connect {local} -> {remote}: {}", io::Error::last_os_error());
            }
            stream.set_read_timeout(Some(timeout))?;
            Ok(stream)
        }
    })?
}

/// How a TCP connection attempt to `addr` from `ns` ends: `Ok(())` when it
/// connects, else the error and how long it took to come.
pub fn tcp_connect(
    ns: &Netns,
    addr: impl Into<SocketAddr>,
    timeout: Duration,
) -> anyhow::Result<Result<(), (io::ErrorKind, Duration)>> {
    let addr = addr.into();
    ns.run_in(|| {
        let start = Instant::now();
        TcpStream::connect_timeout(&addr, timeout).map(drop).map_err(|e| (e.kind(), start.elapsed()))
    })
}

/// Tries TCP connections to `addr` from `ns` until one goes unanswered
/// (dropped: no reset, no ICMP error), for at most `within`: how a test
/// sees that a change it made to a Service has reached the datapath.
pub fn until_unanswered(ns: &Netns, addr: impl Into<SocketAddr>, within: Duration) -> anyhow::Result<()> {
    let (addr, deadline) = (addr.into(), Instant::now() + within);
    loop {
        match tcp_connect(ns, addr, Duration::from_millis(300))? {
            Err((io::ErrorKind::TimedOut, _)) => return Ok(()),
            other if Instant::now() > deadline => anyhow::bail!("{addr} still answers ({other:?}) after {within:?}"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A datagram to `addr` on a connected UDP socket from `ns`: the reply, or
/// the error the socket reports (an ICMP port unreachable makes it
/// `ConnectionRefused`).
pub fn udp_exchange(ns: &Netns, addr: impl Into<SocketAddr>, timeout: Duration) -> anyhow::Result<io::Result<Vec<u8>>> {
    let addr = addr.into();
    ns.run_in(|| {
        let socket = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        socket.set_read_timeout(Some(timeout))?;
        socket.connect(addr)?;
        socket.send(b"anyone there?")?;
        let mut buf = [0u8; 2048];
        let len = socket.recv(&mut buf)?;
        Ok(buf[..len].to_vec())
    })
}

/// Sends one ICMP (ICMPv6) echo request to `addr` from `ns` (a raw socket:
/// we are root) and says whether an echo reply from `addr` came back in time.
pub fn ping(ns: &Netns, addr: impl Into<IpAddr>, timeout: Duration) -> anyhow::Result<bool> {
    let addr = addr.into();
    ns.run_in(|| -> anyhow::Result<bool> {
        // SAFETY: plain socket calls on a descriptor this closure owns, and
        // socket addresses of the sizes given.
        unsafe {
            let (family, protocol) = match addr {
                IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
                IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
            };
            let fd = libc::socket(family, libc::SOCK_RAW, protocol);
            anyhow::ensure!(fd >= 0, "raw icmp socket: {}", io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            // Echo request, identifier "LB"; the kernel sums ICMPv6 itself.
            let mut request = [if addr.is_ipv4() { 8u8 } else { 128 }, 0, 0, 0, 0x4c, 0x42, 0, 1, b'l', b'b'];
            if addr.is_ipv4() {
                let mut sum: u32 = request.chunks(2).map(|w| u32::from(u16::from_ne_bytes([w[0], w[1]]))).sum();
                sum = (sum & 0xffff) + (sum >> 16);
                sum = (sum & 0xffff) + (sum >> 16);
                request[2..4].copy_from_slice(&(!(sum as u16)).to_ne_bytes());
            }
            let mut to: libc::sockaddr_storage = std::mem::zeroed();
            let to_len = match addr {
                IpAddr::V4(a) => {
                    let sin = &mut *(&raw mut to).cast::<libc::sockaddr_in>();
                    sin.sin_family = libc::AF_INET as u16;
                    sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) };
                    size_of::<libc::sockaddr_in>()
                }
                IpAddr::V6(a) => {
                    let sin6 = &mut *(&raw mut to).cast::<libc::sockaddr_in6>();
                    sin6.sin6_family = libc::AF_INET6 as u16;
                    sin6.sin6_addr = libc::in6_addr { s6_addr: a.octets() };
                    size_of::<libc::sockaddr_in6>()
                }
            };
            let sent = libc::sendto(
                fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const to).cast(),
                to_len as u32,
            );
            anyhow::ensure!(sent >= 0, "send ping: {}", io::Error::last_os_error());
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                let mut pollfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                let left = deadline.saturating_duration_since(Instant::now()).as_millis() as i32;
                if libc::poll(&mut pollfd, 1, left.max(1)) <= 0 {
                    continue;
                }
                let mut buf = [0u8; 1500];
                let mut from: libc::sockaddr_storage = std::mem::zeroed();
                let mut from_len = size_of::<libc::sockaddr_storage>() as u32;
                let len = libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut from_len,
                );
                // An echo reply (type 0, ICMPv6 129) from `addr` carrying our
                // identifier; an IPv4 raw socket gets the IP header too.
                let (reply, from_addr) = match addr {
                    IpAddr::V4(_) if len >= 28 => {
                        (&buf[20..len as usize], IpAddr::from(<[u8; 4]>::try_from(&buf[12..16]).unwrap()))
                    }
                    IpAddr::V6(_) if len >= 8 => {
                        let sin6 = &*(&raw const from).cast::<libc::sockaddr_in6>();
                        (&buf[..len as usize], IpAddr::from(sin6.sin6_addr.s6_addr))
                    }
                    _ => continue,
                };
                let echo_reply = if addr.is_ipv4() { 0 } else { 129 };
                if from_addr == addr && reply[0] == echo_reply && reply[4..6] == [0x4c, 0x42] {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    })?
}
