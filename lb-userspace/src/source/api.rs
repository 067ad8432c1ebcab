//! The Kubernetes API as a control source: kube-rs watchers and reflector
//! stores on `v1` Services, `discovery.k8s.io/v1` EndpointSlices, this
//! node's `v1` Node and, where the server has them, `networking.k8s.io/v1`
//! ServiceCIDRs. Pods are never read: in a cluster the EndpointSlices are
//! the truth for endpoints.
//!
//! The watchers relist on their own when a watch ends or the server answers
//! 410 Gone, and retry with backoff while the server is unreachable; the
//! stores keep the last complete state meanwhile, so the datapath keeps
//! what it was programmed with. The agent plans nothing until the Service,
//! EndpointSlice and Node stores have had their first full list.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{Node, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass, ServiceCIDR},
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{Objects, Sourced};

/// kube-proxy's selector: Services and slices another proxy owns, and
/// headless ones, are none of this agent's business.
const PROXY_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// The same, headless ones included: DNS names them and their endpoints.
const PROXY_SELECTOR_WITH_HEADLESS: &str = "!service.kubernetes.io/service-proxy-name";

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("in-cluster config: {0}")]
    InCluster(String),
    #[error("kubernetes client: {0}")]
    Client(String),
}

/// What is watched beyond Services, EndpointSlices and the Node.
#[derive(Clone, Copy, Debug, Default)]
pub struct Watches {
    /// Headless Services and their slices (for DNS).
    pub headless: bool,
    /// Ingresses and IngressClasses (for the Ingress proxy).
    pub ingresses: bool,
    /// `kubernetes.io/tls` Secrets (for the Ingress proxy's HTTPS).
    pub tls_secrets: bool,
}

/// The address written to each Ingress's status (by namespace, name),
/// and the version of the object it was written over.
type Reported = HashMap<(String, String), (Option<String>, Vec<IpAddr>)>;

/// What the Ingress proxy reads.
struct IngressStores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    secrets: Option<Store<Secret>>,
}

/// Where the API server is and how to talk to it.
pub enum ApiConfig {
    /// A kubeconfig file (`--kubeconfig`).
    File(PathBuf),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST` and the mounted token).
    InCluster,
}

/// The reflector stores the watchers keep, and a counter bumped on every
/// change any of them sees.
pub struct ApiSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    node: Store<Node>,
    service_cidrs: Store<ServiceCIDR>,
    /// Watched for the Ingress proxy only.
    ingresses: Option<IngressStores>,
    changes: watch::Receiver<u64>,
    /// The change count [`ApiSource::refresh`] last took objects at.
    refreshed_at: Option<u64>,
    /// Every object came through the API; the model's messages name it.
    origin: Arc<Path>,
    objects: Objects,
    client: Client,
    /// The Ingress addresses written (or being written), by namespace/name.
    reported: Arc<std::sync::Mutex<Reported>>,
}

impl ApiSource {
    /// Starts the watchers. Returns at once: the server may be unreachable,
    /// in which case the watchers retry with backoff and say so.
    pub async fn start(config: &ApiConfig, node_name: &str, watches: Watches) -> Result<Self, ApiError> {
        let client = client(config).await?;
        let (changed, changes) = watch::channel(0u64);
        let selector = if watches.headless { PROXY_SELECTOR_WITH_HEADLESS } else { PROXY_SELECTOR };
        let services =
            reflect(Api::<Service>::all(client.clone()), watcher::Config::default().labels(selector), &changed);
        let slices =
            reflect(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default().labels(selector), &changed);
        let node_field = format!("metadata.name={node_name}");
        let node = reflect(Api::<Node>::all(client.clone()), watcher::Config::default().fields(&node_field), &changed);
        // Kubernetes 1.33 and later; on older servers its watcher reports
        // the missing API once and retries quietly.
        let service_cidrs = reflect(Api::<ServiceCIDR>::all(client.clone()), watcher::Config::default(), &changed);
        let ingresses = watches.ingresses.then(|| IngressStores {
            ingresses: reflect(Api::<Ingress>::all(client.clone()), watcher::Config::default(), &changed),
            classes: reflect(Api::<IngressClass>::all(client.clone()), watcher::Config::default(), &changed),
            // Only the TLS ones: the agent has no business with the others.
            secrets: watches.tls_secrets.then(|| {
                let tls = watcher::Config::default().fields("type=kubernetes.io/tls");
                reflect(Api::<Secret>::all(client.clone()), tls, &changed)
            }),
        });
        let origin: Arc<Path> = Arc::from(Path::new("kubernetes-api"));
        let objects = Objects::default();
        Ok(ApiSource {
            services,
            slices,
            node,
            service_cidrs,
            ingresses,
            changes,
            refreshed_at: None,
            origin,
            objects,
            client,
            reported: Default::default(),
        })
    }

    /// Waits until every store has had its first full list: planning before
    /// would delete what the maps hold for Services not listed yet.
    /// ServiceCIDRs only inform, and Ingresses feed only the proxy: a server
    /// without them (or RBAC without them) must not hold up the first sync.
    async fn wait_until_listed(&self) {
        let ready = [
            self.services.wait_until_ready().await.is_ok(),
            self.slices.wait_until_ready().await.is_ok(),
            self.node.wait_until_ready().await.is_ok(),
        ];
        if !ready.iter().all(|r| *r) {
            // A watcher task ended before its first list: planning from what
            // the stores hold would delete what is not in them.
            error!("a watcher stopped before listing everything: the datapath keeps its state, nothing is planned");
            std::future::pending::<()>().await;
        }
    }

    /// Waits for the next change any watcher saw; the first time, until
    /// every store has had its first full list.
    pub async fn changed(&mut self) {
        if self.refreshed_at.is_none() {
            return self.wait_until_listed().await;
        }
        if self.changes.changed().await.is_err() {
            // The watcher tasks hold the sender and never end; if they did,
            // nothing would change any more.
            std::future::pending::<()>().await;
        }
    }

    /// Takes the stores' objects, in (namespace, name) order; whether any
    /// watcher saw a change since the last call.
    pub fn refresh(&mut self) -> bool {
        let count = *self.changes.borrow_and_update();
        if self.refreshed_at == Some(count) {
            return false;
        }
        self.refreshed_at = Some(count);
        let mut objects = Objects {
            services: sourced(&self.origin, self.services.state()),
            endpoint_slices: sourced(&self.origin, self.slices.state()),
            ..Objects::default()
        };
        if let Some(stores) = &self.ingresses {
            objects.ingresses = sourced(&self.origin, stores.ingresses.state());
            objects.ingress_classes = sourced(&self.origin, stores.classes.state());
            if let Some(secrets) = &stores.secrets {
                objects.secrets = sourced(&self.origin, secrets.state());
            }
        }
        self.objects = objects;
        true
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// Forgets what was written to Ingresses not in `served` (deleted, or
    /// no longer ours): one recreated under the same name is written again.
    pub fn forget_ingress_reports(&self, served: &std::collections::HashSet<(&str, &str)>) {
        let mut reported = self.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        reported.retain(|(namespace, name), _| served.contains(&(namespace.as_str(), name.as_str())));
    }

    /// Writes `address` to the Ingress's `status.loadBalancer`, unless it
    /// was written over this version of the object already (the store has
    /// not seen the write yet); a failure is logged and tried again at the
    /// next call.
    pub fn report_ingress_address(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        address: &[IpAddr],
    ) {
        let key = (namespace.to_owned(), name.to_owned());
        let written = (resource_version.map(str::to_owned), address.to_vec());
        {
            let mut reported = self.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if reported.get(&key) == Some(&written) {
                return;
            }
            reported.insert(key.clone(), written.clone());
        }
        let api = Api::<Ingress>::namespaced(self.client.clone(), namespace);
        let ips: Vec<_> = address.iter().map(|ip| serde_json::json!({ "ip": ip.to_string() })).collect();
        let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": ips } } });
        let reported = Arc::clone(&self.reported);
        tokio::spawn(async move {
            match api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => info!(ingress = format!("{}/{}", key.0, key.1), ?ips, "ingress status written"),
                Err(err) => {
                    warn!("writing the status of Ingress {}/{}: {err}", key.0, key.1);
                    // Unless a later call wrote something else meanwhile.
                    let mut reported = reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if reported.get(&key) == Some(&written) {
                        reported.remove(&key);
                    }
                }
            }
        });
    }

    /// The cluster's service CIDRs (`spec.cidrs` of every ServiceCIDR),
    /// sorted; empty where the server has none.
    pub fn service_cidrs(&self) -> Vec<String> {
        let mut cidrs: Vec<String> = self
            .service_cidrs
            .state()
            .iter()
            .flat_map(|c| c.spec.iter().flat_map(|s| s.cidrs.iter().flatten()).cloned())
            .collect();
        cidrs.sort();
        cidrs.dedup();
        cidrs
    }

    /// This node's object, once listed.
    pub fn node(&self) -> Option<Arc<Node>> {
        self.node.state().into_iter().next()
    }
}

/// The store's objects in (namespace, name) order, as the model expects
/// them: the same order every time, whatever the store's.
fn sourced<K: Resource>(origin: &Arc<Path>, mut objects: Vec<Arc<K>>) -> Vec<Sourced<K>> {
    let key = |o: &Arc<K>| (o.meta().namespace.clone(), o.meta().name.clone());
    objects.sort_by_cached_key(key);
    objects.into_iter().map(|object| Sourced { file: Arc::clone(origin), object }).collect()
}

async fn client(config: &ApiConfig) -> Result<Client, ApiError> {
    let config = match config {
        ApiConfig::File(path) => {
            let bad = |reason: String| ApiError::Kubeconfig { path: path.clone(), reason };
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        ApiConfig::InCluster => kube::Config::incluster().map_err(|e| ApiError::InCluster(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ApiError::Client(e.to_string()))
}

/// A reflector store for `api`, kept by a task that drives its watcher and
/// bumps `changed` on every event.
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: &watch::Sender<u64>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(drive(stream, changed.clone(), K::kind(&K::DynamicType::default()).into_owned()));
    store
}

/// Drives one watcher: every event after a list or of a watch bumps
/// `changed`. An error is logged when it starts or changes, not at every
/// retry, and the recovery once.
async fn drive<K, S>(stream: S, changed: watch::Sender<u64>, kind: String)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut failing: Option<String> = None;
    while let Some(event) = stream.next().await {
        match event {
            // Sent before every list attempt, failing ones included.
            Ok(watcher::Event::Init) => {}
            Ok(event) => {
                if failing.take().is_some() {
                    info!(kind, "watching the API server again");
                }
                if !matches!(event, watcher::Event::InitApply(_)) {
                    changed.send_modify(|n| *n += 1);
                }
            }
            Err(err) => {
                let text = err.to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    warn!(
                        kind,
                        "watching the API server: {text} (retrying with backoff; the datapath keeps its state)"
                    );
                }
                failing = Some(text);
            }
        }
    }
}
