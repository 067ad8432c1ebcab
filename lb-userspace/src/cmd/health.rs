//! The agent's HTTP endpoints, served with axum on the agent's runtime.
//!
//! `/healthz` and `/livez` on `--health-bind-address`, with kube-proxy's
//! semantics (`pkg/proxy/healthcheck/proxier_health.go`). The control loop
//! reports every pass through the maps to a [`SyncHealth`]: complete when
//! every write succeeded (the maps match the source), failed otherwise. The
//! agent is stale when a failed pass has waited longer than the health
//! timeout for a complete one. `/livez` answers 200 unless stale;
//! `/healthz` answers 200 when not stale, after the first complete pass
//! (an API server not listed yet means 503), and while this node is
//! eligible: its Node object has no `deletionTimestamp` and no
//! `ToBeDeletedByClusterAutoscaler` taint, so load balancers drain a node
//! before it goes away.
//!
//! The `healthCheckNodePort` responders: a cloud load balancer asks every
//! node, on any path, whether it has local endpoints for a Service with
//! `externalTrafficPolicy: Local`; 200 with their count when it does, 503
//! when it has none (terminating ones do not count), so the load balancer
//! only sends traffic where it stays local.

use std::{
    collections::BTreeMap,
    future::IntoFuture,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use k8s_openapi::api::core::v1::Node;
use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{error, info, warn};

use crate::model::{DesiredState, ServiceName};

/// The cluster autoscaler's taint on a node it is about to delete.
const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// How well the control loop keeps the maps in line with the source, as
/// `/healthz` and `/livez` report it. Written by the control loop, read by
/// the HTTP handlers.
pub struct SyncHealth {
    timeout: Duration,
    state: Mutex<SyncState>,
}

struct SyncState {
    /// When the last complete pass ended.
    last_synced: Option<SystemTime>,
    /// When the first failed pass since the last complete one ended.
    failing_since: Option<Instant>,
    node_eligible: bool,
}

/// What the endpoints answer at one moment.
struct Report {
    live: bool,
    ready: bool,
    node_eligible: bool,
    last_updated: Option<SystemTime>,
    current_time: SystemTime,
}

impl SyncHealth {
    /// A failed pass not followed by a complete one within `timeout` makes the agent stale.
    pub fn new(timeout: Duration) -> Self {
        let state = SyncState { last_synced: None, failing_since: None, node_eligible: true };
        SyncHealth { timeout, state: Mutex::new(state) }
    }

    /// Records a pass through the maps: `complete` when every write succeeded.
    pub fn synced(&self, complete: bool) {
        let mut state = self.lock();
        if complete {
            state.last_synced = Some(SystemTime::now());
            state.failing_since = None;
        } else {
            state.failing_since.get_or_insert_with(Instant::now);
        }
    }

    /// Takes this node's eligibility from its Node object, as kube-proxy
    /// does from every Node event (a deleted Node keeps its last state).
    pub fn set_node(&self, node: &Node) {
        let mut taints = node.spec.iter().flat_map(|spec| spec.taints.iter().flatten());
        let eligible = node.metadata.deletion_timestamp.is_none() && !taints.any(|t| t.key == TO_BE_DELETED_TAINT);
        let mut state = self.lock();
        if state.node_eligible == eligible {
            return;
        }
        state.node_eligible = eligible;
        if eligible {
            info!("this node is no longer being deleted: /healthz counts it eligible again");
        } else {
            info!(
                "this node is being deleted (deletionTimestamp or {TO_BE_DELETED_TAINT} taint): /healthz answers 503"
            );
        }
    }

    fn report(&self, now: Instant) -> Report {
        let state = self.lock();
        let live = state.failing_since.is_none_or(|since| now.saturating_duration_since(since) < self.timeout);
        let ready = live && state.last_synced.is_some() && state.node_eligible;
        // As kube-proxy reports it: while no failed pass waits, the maps
        // match the source now.
        let current_time = SystemTime::now();
        let last_updated = match state.failing_since {
            None => state.last_synced.map(|_| current_time),
            Some(_) => state.last_synced,
        };
        Report { live, ready, node_eligible: state.node_eligible, last_updated, current_time }
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The body of `/healthz` (with `nodeEligible`) and `/livez` (without).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    last_updated: Option<String>,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
}

/// `/healthz` and `/livez`, any method; the router metrics can join.
pub fn router(health: Arc<SyncHealth>) -> Router {
    Router::new().route("/healthz", any(healthz)).route("/livez", any(livez)).with_state(health)
}

async fn healthz(State(health): State<Arc<SyncHealth>>) -> Response {
    let report = health.report(Instant::now());
    status_response(report.ready, &report, Some(report.node_eligible))
}

async fn livez(State(health): State<Arc<SyncHealth>>) -> Response {
    let report = health.report(Instant::now());
    status_response(report.live, &report, None)
}

fn status_response(ok: bool, report: &Report, node_eligible: Option<bool>) -> Response {
    let rfc3339 = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    let body = Status {
        last_updated: report.last_updated.map(rfc3339),
        current_time: rfc3339(report.current_time),
        node_eligible,
    };
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::X_CONTENT_TYPE_OPTIONS, "nosniff")], Json(body)).into_response()
}

/// Serves [`router`] on `addr` from a task of the current runtime. Failing
/// to bind is logged and nothing more: health is not worth the datapath.
pub fn serve_health(addr: SocketAddr, health: Arc<SyncHealth>) {
    match listen(addr) {
        Ok(listener) => {
            info!(%addr, "serving /healthz and /livez");
            // Until the agent ends: axum retries failed accepts itself.
            tokio::spawn(axum::serve(listener, router(health)).into_future());
        }
        Err(err) => error!("cannot serve /healthz and /livez on {addr}: {err}"),
    }
}

/// A listening socket on `addr`, bound at once (the caller need not be async).
pub(super) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

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
            let local: std::collections::BTreeSet<IpAddr> = service
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

/// kube-proxy's health check body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckBody<'a> {
    service: CheckService<'a>,
    local_endpoints: usize,
}

#[derive(Serialize)]
struct CheckService<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// The HTTP status and body for `check`.
pub fn response(check: &HealthCheck) -> (StatusCode, String) {
    let status = if check.local_endpoints > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let service = CheckService { namespace: &check.service.namespace, name: &check.service.name };
    let body = serde_json::to_string(&CheckBody { service, local_endpoints: check.local_endpoints })
        .expect("strings and a number serialize");
    (status, body)
}

/// One listener per health check port and node address (the addresses of
/// `--device`, where node ports answer; nothing else); what each answers
/// can change without reopening it.
#[derive(Default)]
pub struct HealthServer {
    listeners: BTreeMap<(IpAddr, u16), Listener>,
}

/// What a listener answers now, and its task.
type Listener = (Arc<Mutex<HealthCheck>>, JoinHandle<std::io::Result<()>>);

impl HealthServer {
    /// Opens, updates and closes listeners to match `checks`. Call from
    /// within the agent's tokio runtime.
    pub fn update(&mut self, checks: BTreeMap<u16, HealthCheck>, node_addrs: &[IpAddr]) {
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
            let listener = match listen(addr) {
                Ok(listener) => listener,
                Err(err) => {
                    warn!(%addr, service = %check.service, "cannot listen for health checks: {err}");
                    continue;
                }
            };
            let shared = Arc::new(Mutex::new(check));
            let app = Router::new().fallback(answer).with_state(Arc::clone(&shared));
            let task = tokio::spawn(axum::serve(listener, app).into_future());
            self.listeners.insert((ip, *port), (shared, task));
        }
    }
}

/// Any method, any path: what the port's Service has on this node.
async fn answer(State(check): State<Arc<Mutex<HealthCheck>>>) -> Response {
    let check = check.lock().expect("health state lock").clone();
    let (status, body) = response(&check);
    // One answer per connection: a closed port's keep-alive connections
    // must not go on answering with what it last knew.
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CONNECTION, "close")], body).into_response()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};

    use super::*;

    #[test]
    fn answers_like_kube_proxy() {
        let check = |n| HealthCheck { service: ServiceName::new("default", "kubia"), local_endpoints: n };
        assert_eq!(
            response(&check(2)),
            (StatusCode::OK, r#"{"service":{"namespace":"default","name":"kubia"},"localEndpoints":2}"#.into())
        );
        assert_eq!(response(&check(0)).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn not_ready_before_the_first_complete_pass_and_stale_after_the_timeout() {
        let timeout = Duration::from_secs(60);
        let health = SyncHealth::new(timeout);
        let now = Instant::now();
        let before = health.report(now);
        assert_eq!((before.live, before.ready, before.last_updated), (true, false, None));

        health.synced(false);
        assert!(!health.report(now).ready, "a failed first pass is not a sync");
        health.synced(true);
        let synced = health.report(Instant::now());
        assert!(synced.live && synced.ready && synced.last_updated.is_some());

        // Failures stay tolerated until the timeout, counted from the first.
        health.synced(false);
        let failed_at = Instant::now();
        health.synced(false);
        assert!(health.report(failed_at + timeout / 2).ready);
        let stale = health.report(failed_at + timeout + Duration::from_millis(1));
        assert_eq!((stale.live, stale.ready), (false, false));
        assert!(stale.last_updated.is_some_and(|t| t <= SystemTime::now()), "the last complete pass");
        health.synced(true);
        assert!(health.report(failed_at + timeout * 2).ready);
    }

    #[test]
    fn a_node_being_deleted_is_not_eligible() {
        let health = SyncHealth::new(Duration::from_secs(60));
        health.synced(true);
        let taint = |key: &str| Taint { key: key.into(), effect: "NoSchedule".into(), ..Taint::default() };
        let mut node = Node {
            spec: Some(NodeSpec {
                taints: Some(vec![taint("other"), taint(TO_BE_DELETED_TAINT)]),
                ..NodeSpec::default()
            }),
            ..Node::default()
        };
        health.set_node(&node);
        let report = health.report(Instant::now());
        assert_eq!((report.live, report.ready, report.node_eligible), (true, false, false));

        node.spec = None;
        health.set_node(&node);
        assert!(health.report(Instant::now()).ready);

        node.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
        health.set_node(&node);
        assert!(!health.report(Instant::now()).node_eligible);
    }
}
