//! Control sources: where the Kubernetes objects come from. A source hands
//! the model [`Objects`]; nothing below it knows which source that was.
//! [`manifests`] reads a directory of manifests (the standalone default),
//! [`api`] watches a Kubernetes API server.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::{Metadata, Resource};

pub mod api;
pub mod manifests;

/// The agent's source of objects.
pub enum Source {
    Manifests(manifests::ManifestSource),
    Api(api::ApiSource),
}

impl Source {
    /// Waits until the objects may have changed. A source that has not
    /// got its first complete picture yet (an API server not listed yet)
    /// waits for that: planning before would delete what is not in yet.
    pub async fn changed(&mut self) {
        match self {
            Source::Manifests(source) => source.changed().await,
            Source::Api(source) => source.changed().await,
        }
    }

    /// Brings [`Source::objects`] up to date; whether they changed.
    pub fn refresh(&mut self) -> bool {
        match self {
            Source::Manifests(source) => source.refresh(),
            Source::Api(source) => source.refresh(),
        }
    }

    pub fn objects(&self) -> &Objects {
        match self {
            Source::Manifests(source) => source.objects(),
            Source::Api(source) => source.objects(),
        }
    }

    /// The cluster's service CIDRs, where the source knows them (the API).
    pub fn service_cidrs(&self) -> Vec<String> {
        match self {
            Source::Manifests(_) => Vec::new(),
            Source::Api(source) => source.service_cidrs(),
        }
    }

    /// This node's Node object, where the source has one (the API).
    pub fn node(&self) -> Option<Arc<k8s_openapi::api::core::v1::Node>> {
        match self {
            Source::Manifests(_) => None,
            Source::Api(source) => source.node(),
        }
    }
}

#[cfg(test)]
pub(crate) use manifests::objects_from_yaml;

/// The kinds this source understands; everything else is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    Pod,
    Endpoints,
    EndpointSlice,
    Ingress,
    IngressClass,
    /// `kubernetes.io/tls` Secrets, for the Ingress proxy's certificates.
    Secret,
}

impl Kind {
    /// What the model is built from.
    pub const MODEL: &[Kind] = &[Kind::Service, Kind::Pod, Kind::Endpoints, Kind::EndpointSlice];
    /// The model's and the Ingress proxy's, for HTTP.
    pub const INGRESS: &[Kind] =
        &[Kind::Service, Kind::Pod, Kind::Endpoints, Kind::EndpointSlice, Kind::Ingress, Kind::IngressClass];
    /// All of them: the Ingress proxy's certificates too.
    pub const ALL: &[Kind] = &[
        Kind::Service,
        Kind::Pod,
        Kind::Endpoints,
        Kind::EndpointSlice,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Secret,
    ];

    pub(super) fn of(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.type_meta() == (api_version, kind))
    }

    /// `(apiVersion, kind)` as written in manifests.
    pub(super) fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Kind::Service => (Service::API_VERSION, Service::KIND),
            Kind::Pod => (Pod::API_VERSION, Pod::KIND),
            Kind::Endpoints => (Endpoints::API_VERSION, Endpoints::KIND),
            Kind::EndpointSlice => (EndpointSlice::API_VERSION, EndpointSlice::KIND),
            Kind::Ingress => (Ingress::API_VERSION, Ingress::KIND),
            Kind::IngressClass => (IngressClass::API_VERSION, IngressClass::KIND),
            Kind::Secret => (Secret::API_VERSION, Secret::KIND),
        }
    }
}

/// Identity of an object: two objects with the same id are the same object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.type_meta().1, self.namespace, self.name)
    }
}

/// An object and the file it came from, for error messages further down.
/// Shared, not copied: every scan hands the model the whole directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced<T> {
    pub file: Arc<Path>,
    pub object: Arc<T>,
}

/// Every object the directory provides. Each has `metadata.name` and
/// `metadata.namespace` set (the namespace defaults to `default`), each
/// identity appears once, in file-name then document order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub services: Vec<Sourced<Service>>,
    pub pods: Vec<Sourced<Pod>>,
    pub endpoints: Vec<Sourced<Endpoints>>,
    pub endpoint_slices: Vec<Sourced<EndpointSlice>>,
    pub ingresses: Vec<Sourced<Ingress>>,
    pub ingress_classes: Vec<Sourced<IngressClass>>,
    pub secrets: Vec<Sourced<Secret>>,
}

impl Objects {
    pub(super) fn push(&mut self, file: &Arc<Path>, object: Object) {
        let file = Arc::clone(file);
        match object {
            Object::Service(object) => self.services.push(Sourced { file, object }),
            Object::Pod(object) => self.pods.push(Sourced { file, object }),
            Object::Endpoints(object) => self.endpoints.push(Sourced { file, object }),
            Object::EndpointSlice(object) => self.endpoint_slices.push(Sourced { file, object }),
            Object::Ingress(object) => self.ingresses.push(Sourced { file, object }),
            Object::IngressClass(object) => self.ingress_classes.push(Sourced { file, object }),
            Object::Secret(object) => self.secrets.push(Sourced { file, object }),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Object {
    Service(Arc<Service>),
    Pod(Arc<Pod>),
    Endpoints(Arc<Endpoints>),
    EndpointSlice(Arc<EndpointSlice>),
    Ingress(Arc<Ingress>),
    IngressClass(Arc<IngressClass>),
    Secret(Arc<Secret>),
}

impl Object {
    pub(super) fn id(&self) -> ObjectId {
        let (kind, namespace, name) = self.key();
        ObjectId { kind, namespace: namespace.to_owned(), name: name.to_owned() }
    }

    /// The identity, borrowed.
    pub(super) fn key(&self) -> (Kind, &str, &str) {
        let (kind, meta) = match self {
            Object::Service(o) => (Kind::Service, o.metadata()),
            Object::Pod(o) => (Kind::Pod, o.metadata()),
            Object::Endpoints(o) => (Kind::Endpoints, o.metadata()),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, o.metadata()),
            Object::Ingress(o) => (Kind::Ingress, o.metadata()),
            Object::IngressClass(o) => (Kind::IngressClass, o.metadata()),
            Object::Secret(o) => (Kind::Secret, o.metadata()),
        };
        (kind, meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default())
    }
}
