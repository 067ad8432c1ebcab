//! The route table from the Ingresses of this agent's class: which
//! Ingresses are ours (`spec.ingressClassName`, the legacy
//! `kubernetes.io/ingress.class` annotation, or none with our IngressClass
//! marked default), each checked; an invalid one is left out with one line
//! naming it, and disturbs no other.

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass, IngressServiceBackend};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::{
    routes::{Backend, BackendPort, PathRule, PathType, RouteTable},
    tls::TlsRef,
};
use crate::{
    model::ModelError,
    source::{Objects, Sourced},
};

/// The `spec.controller` of the IngressClasses this agent serves.
pub const CONTROLLER: &str = "lb.dev/ingress";
/// The annotation that marks an IngressClass the cluster's default.
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The annotation older Ingresses name their class with.
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// What the valid Ingresses of our class ask for.
#[derive(Debug, Default)]
pub struct IngressTable {
    pub routes: RouteTable,
    /// Their `spec.tls` entries, oldest Ingress first.
    pub tls: Vec<TlsRef>,
    /// Each of them, as `lb-agent get ingresses` lists it.
    pub served: Vec<ServedIngress>,
}

/// An Ingress this agent serves: a row of `lb-agent get ingresses` (as
/// `kubectl get ingress` prints it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedIngress {
    pub namespace: String,
    pub name: String,
    /// As the Ingress names it (none: ours is the default class).
    pub class: Option<String>,
    /// Its rules' hosts, `*` for a rule without one.
    pub hosts: Vec<String>,
    /// Whether it has `spec.tls` entries (served on --ingress-tls-bind).
    pub tls: bool,
    /// The ports it is served on: HTTP's, and HTTPS's when it has `tls`.
    pub ports: Vec<u16>,
    /// Where it is reachable, as its `status.loadBalancer` should say.
    pub address: Vec<IpAddr>,
    /// What its `status.loadBalancer.ingress` says now.
    pub reported: Vec<IpAddr>,
    /// The version of the object `reported` was read from.
    #[serde(skip)]
    pub resource_version: Option<String>,
}

/// The table of every valid Ingress of `class` (an IngressClass name), in
/// creation order (then namespace/name), and the errors of the invalid ones.
pub fn build(objects: &Objects, class: &str) -> (IngressTable, Vec<ModelError>) {
    // Our class exists, is this controller's, and may be the default.
    let ours_class = objects.ingress_classes.iter().map(|c| &*c.object).find(|c| {
        c.metadata.name.as_deref() == Some(class)
            && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
    });
    let mut ours: Vec<&Sourced<Ingress>> =
        objects.ingresses.iter().filter(|i| belongs(&i.object, class, ours_class)).collect();
    ours.sort_by(|a, b| {
        let key = |i: &Ingress| {
            (i.metadata.creation_timestamp.clone().map(|t| t.0), i.metadata.namespace.clone(), i.metadata.name.clone())
        };
        key(&a.object).cmp(&key(&b.object))
    });
    let mut table = IngressTable::default();
    let mut errors = Vec::new();
    for ingress in ours {
        match rules(ingress) {
            Ok(rules) => {
                // With rules, the defaultBackend takes their hosts' other
                // paths; without, every host's (as ingress-nginx does).
                for (host, paths) in &rules.hosts {
                    table.routes.add(host.as_deref(), paths.clone(), rules.default_backend.as_ref());
                }
                if let (Some(backend), true) = (&rules.default_backend, rules.hosts.is_empty()) {
                    table.routes.set_default(backend.clone());
                }
                table.served.push(served(&ingress.object, !rules.tls.is_empty()));
                table.tls.extend(rules.tls);
            }
            Err(err) => errors.push(err),
        }
    }
    (table, errors)
}

fn served(ingress: &Ingress, tls: bool) -> ServedIngress {
    let spec = ingress.spec.as_ref();
    let legacy = ingress.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION));
    let reported = ingress.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    ServedIngress {
        namespace: ingress.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: ingress.metadata.name.clone().unwrap_or_default(),
        class: spec.and_then(|s| s.ingress_class_name.clone()).or_else(|| legacy.cloned()),
        hosts: spec
            .and_then(|s| s.rules.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| "*".into()))
            .collect(),
        tls,
        ports: Vec::new(),
        address: Vec::new(),
        reported: reported.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect(),
        resource_version: ingress.metadata.resource_version.clone(),
    }
}

fn is_default(class: &IngressClass) -> bool {
    class.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).map(String::as_str)
        == Some("true")
}

/// Whether `ingress` is ours: it names our class (which must exist, with
/// our controller, as ingress-nginx requires), or names it by the legacy
/// annotation (no IngressClass needed), or names none and ours is the default.
fn belongs(ingress: &Ingress, class: &str, ours: Option<&IngressClass>) -> bool {
    let named = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
    let legacy = ingress.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION));
    match (named, legacy) {
        (Some(named), _) => named == class && ours.is_some(),
        (None, Some(legacy)) => legacy == class,
        (None, None) => ours.is_some_and(is_default),
    }
}

/// One Ingress's rules: paths by host (None: any host), its default
/// backend, its certificates.
struct Rules {
    hosts: Vec<(Option<String>, Vec<PathRule>)>,
    default_backend: Option<Backend>,
    tls: Vec<TlsRef>,
}

fn rules(ingress: &Sourced<Ingress>) -> Result<Rules, ModelError> {
    let meta: &ObjectMeta = &ingress.object.metadata;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let object = format!("Ingress {namespace}/{}", meta.name.as_deref().unwrap_or_default());
    let bad = |field: String, reason: String| ModelError::Invalid {
        file: ingress.file.to_path_buf(),
        object: object.clone(),
        field,
        reason,
    };
    let spec = ingress.object.spec.as_ref().ok_or_else(|| bad("spec".into(), "is missing".into()))?;
    let default_backend = spec
        .default_backend
        .as_ref()
        .map(|b| backend(b, &namespace).map_err(|reason| bad("spec.defaultBackend".into(), reason)))
        .transpose()?;
    let mut hosts = Vec::new();
    for (r, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.clone().filter(|h| !h.is_empty());
        if let Some(host) = &host {
            check_host(host).map_err(|reason| bad(format!("spec.rules[{r}].host"), reason))?;
        }
        let mut paths = Vec::new();
        for (p, path) in rule.http.iter().flat_map(|h| &h.paths).enumerate() {
            let field = |f: &str| format!("spec.rules[{r}].http.paths[{p}].{f}");
            let path_type = match path.path_type.as_str() {
                "Exact" => PathType::Exact,
                "Prefix" | "ImplementationSpecific" => PathType::Prefix,
                other => {
                    return Err(bad(
                        field("pathType"),
                        format!("{other:?} is not Exact, Prefix or ImplementationSpecific"),
                    ));
                }
            };
            let written = path.path.clone().unwrap_or_else(|| "/".into());
            if !written.starts_with('/') {
                return Err(bad(field("path"), format!("{written:?} does not start with /")));
            }
            let backend = backend(&path.backend, &namespace).map_err(|reason| bad(field("backend"), reason))?;
            paths.push(PathRule { path: written, path_type, backend });
        }
        hosts.push((host, paths));
    }
    if hosts.is_empty() && default_backend.is_none() {
        return Err(bad("spec".into(), "has neither rules nor a defaultBackend".into()));
    }
    let mut tls = Vec::new();
    for (t, entry) in spec.tls.iter().flatten().enumerate() {
        let field = format!("spec.tls[{t}]");
        let secret = entry.secret_name.clone().filter(|s| !s.is_empty());
        let secret = secret.ok_or_else(|| bad(format!("{field}.secretName"), "is missing".into()))?;
        let hosts = entry.hosts.clone().unwrap_or_default();
        for (h, host) in hosts.iter().enumerate() {
            check_host(host).map_err(|reason| bad(format!("{field}.hosts[{h}]"), reason))?;
        }
        tls.push(TlsRef {
            file: Arc::clone(&ingress.file),
            ingress: object.clone(),
            field,
            namespace: namespace.clone(),
            secret,
            hosts,
        });
    }
    Ok(Rules { hosts, default_backend, tls })
}

/// A host as the API server accepts it: DNS labels, `*.` only in front.
fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.split('.').all(label_ok) && name.parse::<std::net::IpAddr>().is_err() {
        Ok(())
    } else {
        Err(format!("{host:?} is not a lowercase DNS name (an IP address is not allowed; `*.` only in front)"))
    }
}

/// A path's backend: a Service by name and port (resource backends are not
/// served).
fn backend(backend: &IngressBackend, namespace: &str) -> Result<Backend, String> {
    let Some(IngressServiceBackend { name, port }) = &backend.service else {
        return Err("only Service backends are served (resource backends are not)".into());
    };
    let port = match port.as_ref().map(|p| (p.number, p.name.as_deref())) {
        Some((Some(number), None)) => BackendPort::Number(
            u16::try_from(number).ok().filter(|n| *n > 0).ok_or(format!("port {number} is not 1-65535"))?,
        ),
        Some((None, Some(name))) if !name.is_empty() => BackendPort::Name(name.to_owned()),
        _ => return Err("service.port needs a number or a name (one of them)".into()),
    };
    Ok(Backend { namespace: namespace.to_owned(), service: name.clone(), port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::objects_from_yaml;

    /// The seeds' Ingresses: kubia.example.com to kubia; foo/bar paths to
    /// two Services; two hosts.
    const SEEDS: &str = "
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: lb
  annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}
spec: {controller: lb.dev/ingress}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: kubia}
spec:
  rules:
  - host: kubia.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: kubia-nodeport, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: paths}
spec:
  ingressClassName: lb
  rules:
  - host: paths.example.com
    http:
      paths:
      - {path: /kubia, pathType: Prefix, backend: {service: {name: kubia, port: {number: 80}}}}
      - {path: /foo, pathType: Prefix, backend: {service: {name: bar, port: {name: http}}}}
  - host: foo.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: foo, port: {number: 80}}}}
";

    fn served(table: &IngressTable, host: &str, path: &str) -> Option<(String, BackendPort)> {
        table.routes.route(host, path).map(|b| (b.service.clone(), b.port.clone()))
    }

    #[test]
    fn the_seeds_ingresses_route_by_host_and_path() {
        let (table, errors) = build(&objects_from_yaml(SEEDS), "lb");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(served(&table, "kubia.example.com", "/"), Some(("kubia-nodeport".into(), BackendPort::Number(80))));
        assert_eq!(served(&table, "paths.example.com", "/kubia/x"), Some(("kubia".into(), BackendPort::Number(80))));
        assert_eq!(served(&table, "paths.example.com", "/foo"), Some(("bar".into(), BackendPort::Name("http".into()))));
        assert_eq!(served(&table, "foo.example.com", "/anything"), Some(("foo".into(), BackendPort::Number(80))));
        assert_eq!(served(&table, "paths.example.com", "/other"), None);
    }

    #[test]
    fn only_ingresses_of_the_class_count_and_without_a_class_only_if_ours_is_the_default() {
        let (table, _) = build(&objects_from_yaml(SEEDS), "other");
        assert_eq!(served(&table, "foo.example.com", "/"), None);
        let not_default = SEEDS.replace("'true'", "'false'");
        let (table, _) = build(&objects_from_yaml(&not_default), "lb");
        assert_eq!(served(&table, "kubia.example.com", "/"), None, "no class and ours is not the default");
        assert!(served(&table, "foo.example.com", "/").is_some(), "named ours");
        let legacy = not_default.replace(
            "metadata: {name: kubia}",
            "metadata: {name: kubia, annotations: {kubernetes.io/ingress.class: lb}}",
        );
        let (table, _) = build(&objects_from_yaml(&legacy), "lb");
        assert!(served(&table, "kubia.example.com", "/").is_some(), "the legacy annotation");
    }

    #[test]
    fn a_class_that_does_not_exist_or_is_another_controller_s_serves_nothing_by_name() {
        let other = SEEDS.replace("controller: lb.dev/ingress", "controller: k8s.io/ingress-nginx");
        let (table, _) = build(&objects_from_yaml(&other), "lb");
        assert_eq!(served(&table, "foo.example.com", "/"), None, "named class of another controller");
        assert_eq!(served(&table, "kubia.example.com", "/"), None, "its default is not ours either");
    }

    #[test]
    fn an_invalid_ingress_is_named_and_leaves_the_others_alone() {
        let bad = format!(
            "{SEEDS}---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: broken}}\nspec:\n  rules:\n  - host: Bad_Host\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: x, port: {{number: 80}}}}}}}}\n"
        );
        let (table, errors) = build(&objects_from_yaml(&bad), "lb");
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].starts_with("test.yaml: Ingress default/broken: spec.rules[0].host: \"Bad_Host\" is not"),
            "{messages:?}"
        );
        assert!(served(&table, "kubia.example.com", "/").is_some());
    }

    #[test]
    fn a_default_backend_takes_its_hosts_other_paths_or_without_rules_every_host_s() {
        let with_default = SEEDS.replace(
            "  ingressClassName: lb\n",
            "  ingressClassName: lb\n  defaultBackend: {service: {name: fallback, port: {number: 8080}}}\n",
        );
        let (table, _) = build(&objects_from_yaml(&with_default), "lb");
        let fallback = Some(("fallback".into(), BackendPort::Number(8080)));
        assert_eq!(served(&table, "paths.example.com", "/other"), fallback);
        assert_eq!(served(&table, "nowhere.example.com", "/"), None, "not other Ingresses' hosts");
        let catch_all = format!(
            "{SEEDS}---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: all}}\nspec:\n  ingressClassName: lb\n  defaultBackend: {{service: {{name: fallback, port: {{number: 8080}}}}}}\n"
        );
        let (table, _) = build(&objects_from_yaml(&catch_all), "lb");
        assert_eq!(served(&table, "nowhere.example.com", "/"), fallback);
        assert_eq!(served(&table, "paths.example.com", "/other"), fallback);
    }
}
