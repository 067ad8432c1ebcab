//! Prometheus metrics: `GET /metrics` on `--metrics-bind-address`
//! (kube-proxy's port, 10249), encoded by `prometheus-client` in the
//! OpenMetrics text format. Two kinds:
//! - what the datapath counted, read from its maps at each scrape
//!   ([`DatapathCollector`]): packets by hook and reason, packets and bytes
//!   per Service port, rewritten packets by the way they left, conntrack
//!   entries created and removed;
//! - what the control loop measured, recorded after each pass
//!   ([`AgentMetrics`]): its duration under kube-proxy's names, map writes,
//!   Services refused, objects in error, and how full the maps are
//!   (Cilium's `bpf_map_pressure`);
//! - what the DNS responder and the Ingress proxy answered, recorded as
//!   they answer.

use std::{
    collections::BTreeMap,
    fmt,
    future::IntoFuture,
    net::SocketAddr,
    sync::{Arc, LazyLock, Mutex, PoisonError, atomic::AtomicU64},
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};
use tracing::{error, info};

use super::{get, health::listen, status::SharedStatus};
use aya::maps::MapError;
use lb_common::{FRONTEND_SCOPE_PODS, ServiceTraffic};

use crate::datapath::maps::DatapathMaps;

/// What the control loop records of its passes; shared with the scrapes.
#[derive(Debug)]
pub struct AgentMetrics {
    sync_duration: Histogram,
    programming_latency: Histogram,
    attach_latency: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    map_writes: Counter,
    map_write_failures: Counter,
    services: Gauge,
    refused_services: Gauge,
    model_errors: Gauge,
    object_errors: Family<[(&'static str, String); 1], Gauge>,
    /// The objects `object_errors` has a series for.
    objects_in_error: Mutex<Vec<String>>,
    conntrack_entries: Gauge,
    conntrack_evicted: Gauge,
    map_pressure: Family<[(&'static str, &'static str); 1], Gauge<f64, AtomicU64>>,
    dns_responses: Family<[(&'static str, &'static str); 1], Counter>,
    ingress_requests: Family<(ServicePortLabels, CodeLabel), Counter>,
    ingress_durations: Family<ServicePortLabels, Histogram, fn() -> Histogram>,
}

/// A Service port's labels: namespace, service and port. Shared strings,
/// so that counting a request under them allocates nothing.
pub type ServicePortLabels = [(&'static str, Arc<str>); 3];

pub fn service_port_labels(namespace: &str, service: &str, port: &str) -> ServicePortLabels {
    [("namespace", namespace.into()), ("service", service.into()), ("port", port.into())]
}

/// An HTTP status code's label.
type CodeLabel = [(&'static str, u16); 1];

/// The labels of an Ingress proxy's answer no rule routed.
pub static UNROUTED: LazyLock<ServicePortLabels> = LazyLock::new(|| service_port_labels("", "", ""));

/// The Ingress proxy's latency buckets: 0.5 ms to 8 s.
fn ingress_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 15))
}

impl AgentMetrics {
    /// The agent's metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(AgentMetrics {
            // kube-proxy's buckets: 1 ms to 16 s.
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            programming_latency: Histogram::new(programming_latency_buckets()),
            // 0.25 ms to 4 s.
            attach_latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            last_sync: Gauge::default(),
            map_writes: Counter::default(),
            map_write_failures: Counter::default(),
            services: Gauge::default(),
            refused_services: Gauge::default(),
            model_errors: Gauge::default(),
            object_errors: Family::default(),
            objects_in_error: Mutex::default(),
            conntrack_entries: Gauge::default(),
            conntrack_evicted: Gauge::default(),
            map_pressure: Family::default(),
            dns_responses: Family::default(),
            ingress_requests: Family::default(),
            ingress_durations: Family::new_with_constructor(ingress_duration_histogram),
        });
        let m = &metrics;
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "How long a pass from the model to the maps took (planning and writing)",
            m.sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "From the change that made an EndpointSlice's controller write it (its last-change-trigger-time) to the pass that programmed it",
            m.programming_latency.clone(),
        );
        registry.register(
            "lb_interface_attach_duration_seconds",
            "From reading the kernel's notification of a new interface to the programs attached to it",
            m.attach_latency.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "When the last pass whose every map write succeeded ended, in seconds since the epoch",
            m.last_sync.clone(),
        );
        registry.register("lb_map_writes", "Map writes the passes made", m.map_writes.clone());
        registry.register("lb_map_write_failures", "Map writes that failed", m.map_write_failures.clone());
        registry.register("lb_services", "Services in the model", m.services.clone());
        registry.register(
            "lb_services_refused",
            "Services not programmed, or kept at their last version, for want of room in the maps",
            m.refused_services.clone(),
        );
        registry.register(
            "lb_model_errors",
            "Objects the model rejects now (each logged once with its reason)",
            m.model_errors.clone(),
        );
        registry.register(
            "lb_object_errors",
            "Errors the model finds in each object now, by object (`Kind namespace/name`)",
            m.object_errors.clone(),
        );
        registry.register(
            "lb_conntrack_entries",
            "Live conntrack entries of both families at the last sweep (two per flow)",
            m.conntrack_entries.clone(),
        );
        registry.register(
            "lb_conntrack_evicted",
            "Conntrack entries the full LRUs evicted to make room, at the last sweep (created - removed - live)",
            m.conntrack_evicted.clone(),
        );
        registry.register(
            "lb_bpf_map_pressure",
            "How full each kind of map is, 0 to 1, as the agent last programmed it",
            m.map_pressure.clone(),
        );
        registry.register(
            "lb_dns_responses",
            "Answers of the DNS responder by kind: answer, nodata, nxdomain, notsynced, forwarded, refused, servfail, formerr, notimp, badvers",
            m.dns_responses.clone(),
        );
        registry.register(
            "lb_ingress_requests",
            "Requests the Ingress proxy's handler answered, by the Service port routed to (all empty when no rule routed it) and status code",
            m.ingress_requests.clone(),
        );
        registry.register(
            "lb_ingress_request_duration_seconds",
            "From a request's head read to its response's head (the backend's or the proxy's) handed to the connection, by the Service port routed to",
            m.ingress_durations.clone(),
        );
        registry.register("lb_build", "The agent's version", Info::new([("version", env!("CARGO_PKG_VERSION"))]));
        metrics
    }

    /// Records a pass through the maps.
    pub fn pass(&self, duration: Duration, writes: usize, failures: usize) {
        self.sync_duration.observe(duration.as_secs_f64());
        self.map_writes.inc_by(writes as u64);
        self.map_write_failures.inc_by(failures as u64);
        if failures == 0 {
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            self.last_sync.set(now.as_secs_f64());
        }
    }

    /// Records the errors of each object in error now; the objects no
    /// longer in error leave the family (the others' series stay).
    pub fn object_errors(&self, errors: &BTreeMap<String, i64>) {
        let mut listed = self.objects_in_error.lock().unwrap_or_else(PoisonError::into_inner);
        for mended in listed.iter().filter(|object| !errors.contains_key(*object)) {
            self.object_errors.remove(&[("object", mended.clone())]);
        }
        for (object, count) in errors {
            self.object_errors.get_or_create(&[("object", object.clone())]).set(*count);
        }
        *listed = errors.keys().cloned().collect();
    }

    /// Records how long after its link notification an interface was attached.
    pub fn attached(&self, latency: Duration) {
        self.attach_latency.observe(latency.as_secs_f64());
    }

    /// Records how long after its trigger a change reached the maps.
    pub fn programmed_change(&self, latency: Duration) {
        self.programming_latency.observe(latency.as_secs_f64());
    }

    /// Records the model's size and troubles after a pass.
    pub fn model(&self, services: usize, refused: usize, errors: usize) {
        self.services.set(services as i64);
        self.refused_services.set(refused as i64);
        self.model_errors.set(errors as i64);
    }

    /// Records how full the map kind `map` is.
    pub fn pressure(&self, map: &'static str, used: usize, capacity: usize) {
        let pressure = if capacity == 0 { 0.0 } else { used as f64 / capacity as f64 };
        self.map_pressure.get_or_create(&[("map_name", map)]).set(pressure);
    }

    /// Counts one answer of the DNS responder.
    pub fn dns_response(&self, kind: &'static str) {
        self.dns_responses.get_or_create(&[("kind", kind)]).inc();
    }

    /// Records one answer of the Ingress proxy: under the labels of the
    /// Service port it was routed to (or [`UNROUTED`]), its status code and
    /// how long until the response's head.
    pub fn ingress_request(&self, labels: &ServicePortLabels, code: u16, duration: Duration) {
        self.ingress_durations.get_or_create(labels).observe(duration.as_secs_f64());
        self.ingress_requests.get_or_create(&(labels.clone(), [("code", code)])).inc();
    }

    /// Records the live conntrack entries a sweep counted, and the evicted ones.
    pub fn conntrack(&self, live: u64, evicted: u64) {
        self.conntrack_entries.set(i64::try_from(live).unwrap_or(i64::MAX));
        self.conntrack_evicted.set(i64::try_from(evicted).unwrap_or(i64::MAX));
    }
}

/// kube-proxy's buckets for the network programming latency: 0.25 s and
/// 0.5 s, every second to 59 s, every 5 s to 115 s, every 30 s to 300 s.
fn programming_latency_buckets() -> impl Iterator<Item = f64> {
    let steps = |first: f64, step: f64, count: u32| (0..count).map(move |i| first + step * f64::from(i));
    steps(0.25, 0.25, 2).chain(steps(1.0, 1.0, 59)).chain(steps(60.0, 5.0, 12)).chain(steps(120.0, 30.0, 7))
}

/// The datapath's counters, read from its maps at each scrape.
pub struct DatapathCollector {
    maps: Mutex<DatapathMaps>,
}

impl DatapathCollector {
    /// Reads `maps` (a handle of its own on the pinned maps) at each scrape.
    pub fn new(maps: DatapathMaps) -> Self {
        DatapathCollector { maps: Mutex::new(maps) }
    }
}

impl fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatapathCollector")
    }
}

impl Collector for DatapathCollector {
    /// A map that cannot be read leaves its metrics out of this scrape,
    /// with the error logged.
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        match get::counters(&maps) {
            Ok(counters) => {
                let help = "Packets (and socket calls) the datapath decided, by hook and reason";
                let mut family = encoder.encode_descriptor("lb_datapath_packets", help, None, MetricType::Counter)?;
                for count in &counters.reasons {
                    for (hook, packets) in &count.packets {
                        let labels = [("hook", hook.as_str()), ("reason", count.reason.as_str())];
                        ConstCounter::new(*packets).encode(family.encode_family(&labels)?)?;
                    }
                }
                let help = "Rewritten packets by the way they left the datapath";
                let mut family =
                    encoder.encode_descriptor("lb_datapath_sent_packets", help, None, MetricType::Counter)?;
                for sent in &counters.sent {
                    let labels = [("sent_by", sent.sent_by.as_str())];
                    ConstCounter::new(sent.packets).encode(family.encode_family(&labels)?)?;
                }
            }
            Err(err) => error!("metrics: {err:#}"),
        }
        match maps.conntrack_totals() {
            Ok((created, removed)) => {
                for (name, help, value) in [
                    ("lb_conntrack_created", "Conntrack entries the datapath created (two per flow)", created),
                    ("lb_conntrack_removed", "Conntrack entries agents removed (expired, or flushed)", removed),
                ] {
                    ConstCounter::new(value).encode(encoder.encode_descriptor(
                        name,
                        help,
                        None,
                        MetricType::Counter,
                    )?)?;
                }
            }
            Err(err) => error!("metrics: reading LB_CT_STATS failed: {err}"),
        }
        match service_traffic(&maps) {
            Ok(traffic) => {
                for (name, help, value) in [
                    (
                        "lb_service_packets",
                        "TCP and UDP packets the datapath translated for a frontend of a Service port, both directions",
                        (|t: &ServiceTraffic| t.packets) as fn(&ServiceTraffic) -> u64,
                    ),
                    ("lb_service_bytes", "The bytes of those packets, as the hooks saw them", |t| t.bytes),
                ] {
                    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                    for (labels, t) in &traffic {
                        ConstCounter::new(value(t)).encode(family.encode_family(labels)?)?;
                    }
                }
            }
            Err(err) => error!("metrics: reading LB_SERVICE_TRAFFIC failed: {err:#}"),
        }
        Ok(())
    }
}

/// A frontend's labels: its Service port's namespace, name and port name, and its own.
type FrontendLabels = [(&'static str, String); 4];

/// Packets and bytes of each frontend, by its Service port's labels and
/// its own (`ADDR:PORT/PROTO`, ` pods` for a Local policy's twin for
/// pods). One series per frontend: a sum over a port's frontends would go
/// back when one of them goes (and its id's counts with it).
fn service_traffic(maps: &DatapathMaps) -> anyhow::Result<Vec<(FrontendLabels, ServiceTraffic)>> {
    let mut traffic = Vec::new();
    for (key, frontend) in get::frontends(maps)? {
        let Ok(meta) = maps.service_meta.get(&frontend.frontend_id, 0) else { continue };
        let counted = match maps.service_traffic(frontend.frontend_id) {
            Ok(counted) => counted,
            // Ids past the array are not counted.
            Err(MapError::OutOfBounds { .. }) => ServiceTraffic::default(),
            Err(err) => return Err(err.into()),
        };
        let twin = if key.scope == FRONTEND_SCOPE_PODS { " pods" } else { "" };
        let address = SocketAddr::new(key.addr, lb_common::wire::port_number(key.port));
        let labels = [
            ("namespace", meta.namespace().to_owned()),
            ("service", meta.name().to_owned()),
            ("port", meta.port_name().to_owned()),
            ("frontend", format!("{address}/{}{twin}", get::protocol_name(key.proto))),
        ];
        traffic.push((labels, counted));
    }
    traffic.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(traffic)
}

/// Serves `registry` (`/metrics`) and `status` (`/status`) on `addr` until
/// the agent ends; a failure to listen is logged, and the agent goes on
/// without them.
pub fn serve_metrics(addr: SocketAddr, registry: Registry, status: Arc<SharedStatus>) {
    match listen(addr) {
        Ok(listener) => {
            info!(%addr, "serving /metrics and /status");
            let router = Router::new()
                .route("/metrics", get(scrape))
                .with_state(Arc::new(registry))
                .route("/status", get(move || async move { Json(status.get()) }));
            tokio::spawn(axum::serve(listener, router).into_future());
        }
        Err(err) => error!("cannot serve /metrics on {addr}: {err}"),
    }
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    // The maps are read with syscalls: off the runtime's threads.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        encode(&mut text, &registry).map(|()| text)
    })
    .await;
    match encoded {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n").into_response(),
    }
}
