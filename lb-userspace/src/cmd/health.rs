//! The `healthCheckNodePort` responder, with kube-proxy's semantics: a
//! cloud load balancer asks every node, on any path, whether it has local
//! endpoints for a Service with `externalTrafficPolicy: Local`; 200 with
//! their count when it does, 503 when it has none (terminating ones do not
//! count), so the load balancer only sends traffic where it stays local.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tracing::warn;

use crate::model::{DesiredState, ServiceName};

/// What one health check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ServiceName,
    pub local_endpoints: usize,
}

/// The health checks a node answers, by port.
pub fn health_checks(desired: &DesiredState, node_name: &str) -> BTreeMap<u16, HealthCheck> {
    desired
        .services
        .values()
        .filter_map(|service| {
            let port = service.health_check_node_port?;
            let local: std::collections::BTreeSet<Ipv4Addr> = service
                .ports
                .iter()
                .flat_map(|p| &p.endpoints)
                .filter(|e| e.ready && !e.terminating && e.node_name.as_deref() == Some(node_name))
                .map(|e| e.addr)
                .collect();
            Some((port, HealthCheck { service: service.name.clone(), local_endpoints: local.len() }))
        })
        .collect()
}

/// The HTTP status line and body for `check`.
pub fn response(check: &HealthCheck) -> (u16, String) {
    let status = if check.local_endpoints > 0 { 200 } else { 503 };
    let body = format!(
        "{{\"service\":{{\"namespace\":{:?},\"name\":{:?}}},\"localEndpoints\":{}}}",
        check.service.namespace, check.service.name, check.local_endpoints
    );
    (status, body)
}

/// One listener per health check port and node address (the addresses of
/// `--device`, where node ports answer; nothing else); what each answers
/// can change without reopening it.
#[derive(Default)]
pub struct HealthServer {
    listeners: BTreeMap<(Ipv4Addr, u16), Listener>,
}

/// What a listener answers now, and its task.
type Listener = (Arc<Mutex<HealthCheck>>, JoinHandle<()>);

impl HealthServer {
    /// Opens, updates and closes listeners to match `checks`. Call from
    /// within the agent's tokio runtime.
    pub fn update(&mut self, checks: BTreeMap<u16, HealthCheck>, node_addrs: &[Ipv4Addr]) {
        self.listeners.retain(|(addr, port), (_, task)| {
            let keep = checks.contains_key(port) && node_addrs.contains(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for ((port, check), ip) in checks.iter().flat_map(|c| node_addrs.iter().map(move |ip| (c, *ip))) {
            let check = check.clone();
            if let Some((shared, _)) = self.listeners.get(&(ip, *port)) {
                *shared.lock().expect("health state lock") = check;
                continue;
            }
            let addr = SocketAddr::from((ip, *port));
            let listener = match std::net::TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            }) {
                Ok(listener) => listener,
                Err(err) => {
                    warn!(%addr, service = %check.service, "cannot listen for health checks: {err}");
                    continue;
                }
            };
            let shared = Arc::new(Mutex::new(check));
            let task = tokio::spawn(serve(listener, Arc::clone(&shared)));
            self.listeners.insert((ip, *port), (shared, task));
        }
    }
}

async fn serve(listener: TcpListener, check: Arc<Mutex<HealthCheck>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let check = check.lock().expect("health state lock").clone();
        tokio::spawn(answer(stream, check));
    }
}

async fn answer(mut stream: TcpStream, check: HealthCheck) {
    // Read the request head (any path, any method); a bounded read keeps a
    // slow or hostile client from holding memory.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let (status, body) = response(&check);
    let reason = if status == 200 { "OK" } else { "Service Unavailable" };
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_like_kube_proxy() {
        let check = |n| HealthCheck { service: ServiceName::new("default", "kubia"), local_endpoints: n };
        assert_eq!(
            response(&check(2)),
            (200, r#"{"service":{"namespace":"default","name":"kubia"},"localEndpoints":2}"#.into())
        );
        assert_eq!(response(&check(0)).0, 503);
    }
}
