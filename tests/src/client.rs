//! Clients that run inside a namespace: what a pod would do with curl or nc.

use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::Context;

use crate::netns::Netns;

/// `GET /` to `addr` from inside `ns`; the response body.
pub fn http_get(ns: &Netns, addr: SocketAddrV4, timeout: Duration) -> anyhow::Result<String> {
    ns.run_in(|| -> anyhow::Result<String> {
        let mut stream =
            TcpStream::connect_timeout(&addr.into(), timeout).with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        // One write, one segment.
        stream.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response).with_context(|| format!("read from {addr}"))?;
        let (_, body) =
            response.split_once("\r\n\r\n").with_context(|| format!("no http response from {addr}: {response:?}"))?;
        Ok(body.to_owned())
    })?
}

/// One datagram to `addr` from a fresh socket in `ns`; the reply and the
/// address it came from.
pub fn udp_request(
    ns: &Netns,
    addr: SocketAddrV4,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<(String, SocketAddr)> {
    ns.run_in(|| -> anyhow::Result<(String, SocketAddr)> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
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
