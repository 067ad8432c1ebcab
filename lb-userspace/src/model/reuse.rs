//! What a build remembers so that the next one redoes only what changed.

use super::*;

#[derive(Clone, Debug, Default)]
pub(super) struct Memo {
    pub(super) services: HashMap<ServiceName, Arc<Realised>>,
    /// Each namespace's pods, which selectors pick from.
    pub(super) pods: HashMap<String, Vec<Arc<core::Pod>>>,
    /// Every Service object (with its file) in directory order, and the
    /// options the state was built with.
    pub(super) sources: Vec<(Arc<core::Service>, Arc<Path>)>,
    pub(super) opts: Option<ModelOptions>,
    /// The errors not of one service's endpoints: those before them and
    /// those after them in the build's list.
    pub(super) errors_before: Vec<ModelError>,
    pub(super) errors_after: Vec<ModelError>,
}

impl Memo {
    /// Whether `objects` has the Services and pods the memo was made from.
    pub(super) fn same_services_and_pods(
        &self,
        objects: &Objects,
        pods: &HashMap<String, Vec<Arc<core::Pod>>>,
    ) -> bool {
        self.sources.len() == objects.services.len()
            && self
                .sources
                .iter()
                .zip(&objects.services)
                .all(|((o, f), s)| Arc::ptr_eq(o, &s.object) && same_file(f, &s.file))
            && self.pods.len() == pods.len()
            && self.pods.keys().all(|ns| self.same_pods(ns, pods))
    }

    pub(super) fn same_pods(&self, namespace: &str, pods: &HashMap<String, Vec<Arc<core::Pod>>>) -> bool {
        let (now, before) = (pods.get(namespace), self.pods.get(namespace));
        now.map_or(0, Vec::len) == before.map_or(0, Vec::len)
            && now.into_iter().flatten().zip(before.into_iter().flatten()).all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// The whole list of errors of a build, the services' in name order.
    pub(super) fn errors(&self, services: &BTreeMap<ServiceName, Arc<Service>>) -> Vec<ModelError> {
        let of_services = services.keys().filter_map(|name| self.services.get(name)).flat_map(|r| &r.errors);
        self.errors_before.iter().chain(of_services).chain(&self.errors_after).cloned().collect()
    }
}

/// A service as [`realise`] made it (node ports as written, any cluster
/// IP), and what from. Holding the objects keeps their addresses from
/// being reused, so pointer equality means "the same object".
#[derive(Clone, Debug)]
pub(super) struct Realised {
    /// Where the Service is in the directory's list.
    pub(super) at: usize,
    pub(super) service: Arc<core::Service>,
    pub(super) file: Arc<Path>,
    pub(super) endpoints: Option<Arc<core::Endpoints>>,
    pub(super) slices: Vec<Arc<EndpointSlice>>,
    pub(super) address: Address,
    pub(super) realised: Arc<Service>,
    pub(super) errors: Vec<ModelError>,
}

impl Realised {
    pub(super) fn new(at: usize, spec: Spec<'_>, index: &Index<'_>) -> Self {
        let inputs = index.inputs(&spec.name);
        let endpoints = inputs.endpoints.map(|e| Arc::clone(&e.object));
        let slices = inputs.slices.iter().map(|s| Arc::clone(&s.object)).collect();
        let (service, file, address) = (Arc::clone(spec.service), Arc::clone(spec.file), spec.address.clone());
        let mut errors = Vec::new();
        let realised = Arc::new(realise(spec, Vec::new(), index, &mut errors));
        Realised { at, service, file, endpoints, slices, address, realised, errors }
    }

    /// Whether it was made from exactly these objects.
    pub(super) fn made_from(&self, service: &Sourced<core::Service>, inputs: &Inputs<'_>) -> bool {
        Arc::ptr_eq(&self.service, &service.object)
            && same_file(&self.file, &service.file)
            && match (&self.endpoints, inputs.endpoints) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, &b.object),
                (None, None) => true,
                _ => false,
            }
            && self.slices.len() == inputs.slices.len()
            && self.slices.iter().zip(inputs.slices).all(|(a, b)| Arc::ptr_eq(a, &b.object))
    }
}

/// Whether two objects came from the same file: the same `Arc` as a rule
/// (the manifest source keeps one per file), else the same path.
fn same_file(a: &Arc<Path>, b: &Arc<Path>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Only Endpoints and EndpointSlices changed since `previous` was built (the
/// same Service objects, pods and options): cluster IPs and node ports stay,
/// and only the services whose endpoint objects changed are realised again.
pub(super) fn rebuild_endpoints(
    objects: &Objects,
    previous: DesiredState,
    opts: &ModelOptions,
) -> (DesiredState, Vec<ModelError>) {
    let mut state = previous;
    // Its errors are the pods', which did not change: they are in the memo.
    let index = Index::new(objects, opts.controllers, &mut Vec::new());
    for (name, realised) in &mut state.memo.services {
        let service = &objects.services[realised.at];
        if realised.made_from(service, &index.inputs(name)) {
            continue;
        }
        // It validated when it was realised, and it is the same object.
        let Ok((spec, _)) = validate(service, opts) else { continue };
        let fresh = Realised::new(realised.at, spec, &index);
        if let Some(service) = state.services.get_mut(name) {
            for (port, fresh) in Arc::make_mut(service).ports.iter_mut().zip(&fresh.realised.ports) {
                port.endpoints = fresh.endpoints.clone();
            }
        }
        *realised = Arc::new(fresh);
    }
    let errors = state.memo.errors(&state.services);
    (state, errors)
}
