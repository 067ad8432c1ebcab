//! The desired state: plain Rust Services with their endpoints, computed from
//! Kubernetes objects the way the API server (defaults, validation, ClusterIP
//! allocation) and the endpoints controllers would. [`build`] is a pure function.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use thiserror::Error;
use tracing::{debug, warn};

use crate::source::{Objects, Sourced};

mod allocation;
mod endpoints;
mod families;
mod pods;
mod reuse;
mod slices;
pub use slices::{LAST_CHANGE_TRIGGER_TIME, change_trigger_times};
#[cfg(test)]
mod tests;
mod types;
mod validation;

pub use types::*;

use allocation::*;
use endpoints::*;
use families::*;
use pods::*;
use reuse::*;
use slices::*;
use validation::*;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ModelError {
    /// `object` is `Kind namespace/name`, `field` a path such as `spec.ports[0].port`.
    #[error("{file}: {object}: {field}: {reason}")]
    Invalid { file: PathBuf, object: String, field: String, reason: String },
    #[error("{file}: Service {service}: spec.clusterIP: {ip} is already used by Service {holder}")]
    ClusterIpTaken { file: PathBuf, service: ServiceName, ip: IpAddr, holder: Box<ServiceName> },
    #[error("{file}: Service {service}: spec.clusterIP: {ip} is not in the service CIDR {cidr}")]
    OutsideServiceCidr { file: PathBuf, service: ServiceName, ip: IpAddr, cidr: IpCidr },
    #[error("{file}: Service {service}: spec.clusterIP: empty, and the API server allocates it")]
    NotAllocated { file: PathBuf, service: ServiceName },
    #[error("{file}: Service {service}: no free address left in the service CIDR {cidr}")]
    CidrExhausted { file: PathBuf, service: ServiceName, cidr: IpCidr },
    #[error("Service {service}: nodePort {node_port}/{protocol} is already used by Service {holder}")]
    NodePortTaken { service: ServiceName, node_port: u16, protocol: Protocol, holder: ServiceName },
    #[error("Service {service}: no free node port left in 30000-32767")]
    NodePortsExhausted { service: ServiceName },
    #[error("{value:?} is not a CIDR: {reason}")]
    BadCidr { value: String, reason: String },
    #[error("service CIDR {second}: {family} has one already ({first}); give at most one per family")]
    SameFamilyCidrs { family: Family, first: IpCidr, second: IpCidr },
}

impl ModelError {
    /// The object in error, as `Kind namespace/name`; None for an error of
    /// the agent's own options.
    pub fn object(&self) -> Option<String> {
        match self {
            ModelError::Invalid { object, .. } => Some(object.clone()),
            ModelError::ClusterIpTaken { service, .. }
            | ModelError::OutsideServiceCidr { service, .. }
            | ModelError::NotAllocated { service, .. }
            | ModelError::CidrExhausted { service, .. }
            | ModelError::NodePortTaken { service, .. }
            | ModelError::NodePortsExhausted { service } => Some(format!("Service {service}")),
            ModelError::BadCidr { .. } | ModelError::SameFamilyCidrs { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelOptions {
    /// Where services without an explicit `spec.clusterIPs` get theirs: at
    /// most one per family, the cluster's primary family first.
    pub service_cidrs: Vec<IpCidr>,
    pub controllers: Controllers,
}

/// Whether the work of the cluster's controllers is done already: the API
/// server's allocation of cluster IPs and node ports, the EndpointSlice
/// controller's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Controllers {
    /// Standalone: nobody did it, so the model does. Addresses and node
    /// ports not written are allocated (explicit ones checked against the
    /// service CIDR), and a selector's endpoints are the pods it picks.
    #[default]
    Emulated,
    /// In a cluster: what the API server holds is allocated and validated,
    /// and the EndpointSlices are the truth for every Service's endpoints.
    Cluster,
}

impl Default for ModelOptions {
    fn default() -> Self {
        // Kubernetes' (kubeadm's) default service CIDR.
        let service_cidr = IpCidr { network: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 0)), prefix_len: 12 };
        ModelOptions { service_cidrs: vec![service_cidr], controllers: Controllers::default() }
    }
}

impl ModelOptions {
    /// `cidrs` as `--service-cidr` gives them: refused when two are of one family.
    pub fn service_cidrs(cidrs: Vec<IpCidr>) -> Result<Vec<IpCidr>, ModelError> {
        for (i, second) in cidrs.iter().enumerate() {
            if let Some(first) = cidrs[..i].iter().find(|c| c.family() == second.family()) {
                return Err(ModelError::SameFamilyCidrs { family: second.family(), first: *first, second: *second });
            }
        }
        Ok(cidrs)
    }

    /// The service CIDR of `family`, if one is configured.
    pub fn service_cidr(&self, family: Family) -> Option<IpCidr> {
        self.service_cidrs.iter().copied().find(|c| c.family() == family)
    }

    /// The family of Services that ask for none: the first service CIDR's.
    pub fn primary_family(&self) -> Family {
        self.service_cidrs.first().map_or(Family::V4, |c| c.family())
    }
}

/// A Service with this label belongs to another proxy (kube-proxy's
/// `--service-proxy-name`); this agent has none, so it leaves them alone.
const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// A Service with this label is treated as headless, as kube-proxy does.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

fn service_label<'a>(service: &'a Sourced<core::Service>, label: &str) -> Option<&'a str> {
    service.object.metadata.labels.as_ref()?.get(label).map(String::as_str)
}

/// Computes the desired state. A Service that fails validation keeps its
/// model from `previous` as it was, endpoints included (if it had one), so
/// that a bad edit does not take a working service down. Everything else,
/// allocated cluster IPs and node ports included, comes from `objects` alone.
pub fn build(objects: &Objects, previous: DesiredState, opts: &ModelOptions) -> (DesiredState, Vec<ModelError>) {
    let pods = pods_by_namespace(objects);
    if previous.memo.opts.as_ref() == Some(opts) && previous.memo.same_services_and_pods(objects, &pods) {
        return rebuild_endpoints(objects, previous, opts);
    }
    let previous = &previous;
    let mut errors = Vec::new();
    let mut entries = BTreeMap::new();
    let index = Index::new(objects, opts.controllers, &mut errors);
    let mut memo = Memo {
        pods,
        sources: objects.services.iter().map(|s| (Arc::clone(&s.object), Arc::clone(&s.file))).collect(),
        opts: Some(opts.clone()),
        ..Memo::default()
    };
    for (at, service) in objects.services.iter().enumerate() {
        if let Some(proxy) = service_label(service, SERVICE_PROXY_NAME_LABEL) {
            debug!(service = %ServiceName::of(&service.object.metadata), proxy, "left to another proxy");
            continue;
        }
        let name = ServiceName::of(&service.object.metadata);
        let inputs = index.inputs(&name);
        let reusable = previous.memo.services.get(&name).filter(|r| {
            let selects = service.object.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty());
            r.made_from(service, &inputs) && (!selects || previous.memo.same_pods(&name.namespace, &memo.pods))
        });
        if let Some(realised) = reusable {
            let realised = Arc::new(Realised { at, ..Realised::clone(realised) });
            entries.insert(name, Entry::Reused(&service.file, realised));
            continue;
        }
        match validate(service, opts) {
            Ok((spec, skipped_ports)) => {
                errors.extend(skipped_ports);
                entries.insert(spec.name.clone(), Entry::New(at, spec));
            }
            Err(err) => {
                errors.push(err);
                if let Some(kept) = previous.services.get(&name) {
                    entries.insert(name, Entry::Kept(&service.file, kept.clone()));
                }
            }
        }
    }
    let seniority = Seniority::of(objects);
    let mut addresses = assign_addresses(&mut entries, previous, &seniority, opts, &mut errors);
    let services = entries
        .into_iter()
        .map(|(name, entry)| {
            let cluster_ips = addresses.remove(&name).unwrap_or_default();
            let realised = match entry {
                Entry::Kept(_, service) => return (name, service),
                Entry::Reused(_, realised) => realised,
                Entry::New(at, spec) => Arc::new(Realised::new(at, spec, &index)),
            };
            let service = Arc::new(Service { cluster_ips, ..Service::clone(&realised.realised) });
            memo.services.insert(name.clone(), realised);
            (name, service)
        })
        .collect();
    let mut state = DesiredState { services, memo: Memo::default() };
    let mut errors_after = Vec::new();
    if opts.controllers == Controllers::Emulated {
        assign_node_ports(&mut state, &seniority, &without_node_ports(objects), &mut errors_after);
        assign_health_check_ports(&mut state, &seniority);
    }
    state.memo = Memo { errors_before: errors, errors_after, ..memo };
    let errors = state.memo.errors(&state.services);
    (state, errors)
}

enum Entry<'a> {
    /// A validated Service, and where it is in the directory's list.
    New(usize, Spec<'a>),
    /// A service realised earlier from the same objects; only its cluster
    /// IP is settled again.
    Reused(&'a Path, Arc<Realised>),
    /// The previous model of a service that no longer validates.
    Kept(&'a Path, Arc<Service>),
}

impl<'a> Entry<'a> {
    fn file(&self) -> &'a Path {
        match self {
            Entry::New(_, spec) => spec.file,
            Entry::Reused(file, _) | Entry::Kept(file, _) => file,
        }
    }

    /// The cluster IPs its spec asks for; `None` for a kept model.
    fn address(&self) -> Option<&Address> {
        match self {
            Entry::New(_, spec) => Some(&spec.address),
            Entry::Reused(_, realised) => Some(&realised.address),
            Entry::Kept(..) => None,
        }
    }
}
