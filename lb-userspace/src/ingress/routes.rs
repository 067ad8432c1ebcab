//! Which backend an HTTP request goes to, as the Ingress API defines it
//! (`networking.k8s.io/v1`): rules by host (exact, or `*.` matching one
//! label) and path (`Exact`; `Prefix`, element by element;
//! `ImplementationSpecific` as `Prefix`), the longest path first and
//! `Exact` before `Prefix` at equal length; a host's rules from every
//! Ingress merged; when nothing matches, the `defaultBackend` of the
//! host's Ingress, else of an Ingress without rules.

use std::collections::BTreeMap;

/// How a rule's path matches a request's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathType {
    Exact,
    Prefix,
}

/// Where matching requests go: a Service's port, by number or name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    pub port: BackendPort,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendPort {
    Number(u16),
    Name(String),
}

impl std::fmt::Display for BackendPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendPort::Number(n) => write!(f, "{n}"),
            BackendPort::Name(name) => f.write_str(name),
        }
    }
}

/// One path of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    /// As written, starting with `/`.
    pub path: String,
    pub path_type: PathType,
    pub backend: Backend,
}

impl PathRule {
    /// Whether `request` (a URL path, without the query) matches.
    pub fn matches(&self, request: &str) -> bool {
        match self.path_type {
            PathType::Exact => request == self.path,
            PathType::Prefix => {
                let mut asked = elements(request);
                elements(&self.path).all(|element| asked.next() == Some(element))
            }
        }
    }
}

/// A path's elements between slashes; empty ones (a trailing or doubled
/// slash) do not count, so `/foo/` is `/foo` and `/` has none.
fn elements(path: &str) -> impl Iterator<Item = &str> + Clone {
    path.split('/').filter(|e| !e.is_empty())
}

/// The rules of every Ingress of the class, by host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    hosts: HostMap<HostRules>,
    /// Rules without a host: any host no other rule names.
    any_host: HostRules,
    /// The first Ingress without rules' `defaultBackend`: what no host's
    /// rules take.
    default_backend: Option<Backend>,
}

/// One host's paths, and where the rest of its requests go: the
/// `defaultBackend` of the first Ingress with a rule for it that has one
/// (as ingress-nginx serves it, for that Ingress's hosts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct HostRules {
    paths: Vec<PathRule>,
    default: Option<Backend>,
}

impl RouteTable {
    /// Adds a rule's paths for `host` (None: every host), after the ones
    /// already there (earlier Ingresses win ties), and its Ingress's
    /// `defaultBackend` for the host's other paths unless one is set.
    pub fn add(&mut self, host: Option<&str>, paths: Vec<PathRule>, default: Option<&Backend>) {
        let rules = match host {
            None => &mut self.any_host,
            Some(host) => self.hosts.entry(host),
        };
        rules.paths.extend(paths);
        if rules.default.is_none() {
            rules.default = default.cloned();
        }
    }

    /// The default backend, unless one was set already (the first Ingress's).
    pub fn set_default(&mut self, backend: Backend) {
        self.default_backend.get_or_insert(backend);
    }

    /// Every backend a rule or a default names.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        let hosts = self.hosts.values().chain([&self.any_host]);
        hosts.flat_map(|h| h.paths.iter().map(|r| &r.backend).chain(&h.default)).chain(&self.default_backend)
    }

    /// The backend for a request to `host` (a `Host` header: a port after
    /// it is ignored) and `path`; None: 404.
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let rules = self.hosts.get(strip_port(host)).unwrap_or(&self.any_host);
        best(&rules.paths, path).or(rules.default.as_ref()).or(self.default_backend.as_ref())
    }
}

/// Values by host name, exact or `*.` (one label), names caseless: the
/// rules' hosts, and the certificates' names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMap<T> {
    /// Exact hosts, lowercase.
    exact: BTreeMap<String, T>,
    /// `*.example.com` as `example.com`: one label before it.
    wildcard: BTreeMap<String, T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap { exact: BTreeMap::new(), wildcard: BTreeMap::new() }
    }
}

impl<T> HostMap<T> {
    /// The value for `host` as written (`*.` for a wildcard), made if new.
    pub fn entry(&mut self, host: &str) -> &mut T
    where
        T: Default,
    {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.to_owned()).or_default(),
            None => self.exact.entry(host).or_default(),
        }
    }

    /// The value for a request's `name`: its exact host, else the wildcard
    /// over it.
    pub fn get(&self, name: &str) -> Option<&T> {
        let name = name.to_ascii_lowercase();
        self.exact.get(&name).or_else(|| name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)))
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.exact.values().chain(self.wildcard.values())
    }
}

/// A `Host` header without its port (`[v6]:port` keeps the brackets' inside).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The matching rule with the longest path; at equal length `Exact`
/// before `Prefix`; then the first.
fn best<'r>(rules: &'r [PathRule], path: &str) -> Option<&'r Backend> {
    // The path's length without empty elements, so `/foo/` ranks as `/foo`.
    let rank = |r: &PathRule| (elements(&r.path).map(|e| e.len() + 1).sum::<usize>(), r.path_type == PathType::Exact);
    let mut chosen: Option<&PathRule> = None;
    for rule in rules.iter().filter(|r| r.matches(path)) {
        if chosen.is_none_or(|c| rank(rule) > rank(c)) {
            chosen = Some(rule);
        }
    }
    chosen.map(|r| &r.backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(service: &str) -> Backend {
        Backend { namespace: "default".into(), service: service.into(), port: BackendPort::Number(80) }
    }

    fn rule(path: &str, path_type: PathType, service: &str) -> PathRule {
        PathRule { path: path.into(), path_type, backend: to(service) }
    }

    fn served(table: &RouteTable, host: &str, path: &str) -> Option<String> {
        table.route(host, path).map(|b| b.service.clone())
    }

    /// The Kubernetes documentation's table of path matches.
    #[test]
    fn paths_match_as_the_ingress_documentation_lists_them() {
        use PathType::{Exact, Prefix};
        let cases: [(PathType, &str, &str, bool); 16] = [
            (Prefix, "/", "/", true),
            (Prefix, "/", "/anything/at/all", true),
            (Exact, "/foo", "/foo", true),
            (Exact, "/foo", "/bar", false),
            (Exact, "/foo", "/foo/", false),
            (Exact, "/foo/", "/foo", false),
            (Prefix, "/foo", "/foo", true),
            (Prefix, "/foo", "/foo/", true),
            (Prefix, "/foo/", "/foo", true),
            (Prefix, "/foo/", "/foo/", true),
            (Prefix, "/aaa/bb", "/aaa/bbb", false),
            (Prefix, "/aaa/bbb", "/aaa/bbb", true),
            (Prefix, "/aaa/bbb/", "/aaa/bbb", true),
            (Prefix, "/aaa/bbb", "/aaa/bbb/", true),
            (Prefix, "/aaa/bbb", "/aaa/bbb/ccc", true),
            (Prefix, "/aaa/bbb", "/aaa/bbbxyz", false),
        ];
        for (path_type, path, request, expected) in cases {
            assert_eq!(rule(path, path_type, "s").matches(request), expected, "{path_type:?} {path} vs {request}");
        }
    }

    #[test]
    fn the_longest_path_wins_and_exact_before_prefix_at_equal_length() {
        let mut table = RouteTable::default();
        table.add(
            Some("kubia.example.com"),
            vec![
                rule("/", PathType::Prefix, "root"),
                rule("/foo", PathType::Prefix, "foo"),
                rule("/foo", PathType::Exact, "foo-exact"),
                rule("/foo/bar", PathType::Prefix, "bar"),
            ],
            None,
        );
        assert_eq!(served(&table, "kubia.example.com", "/foo").as_deref(), Some("foo-exact"));
        assert_eq!(served(&table, "kubia.example.com", "/foo/"), Some("foo".into()));
        assert_eq!(served(&table, "kubia.example.com", "/foo/bar/baz"), Some("bar".into()));
        assert_eq!(served(&table, "kubia.example.com", "/other"), Some("root".into()));
    }

    #[test]
    fn hosts_match_exactly_then_by_one_label_wildcard_then_rules_without_host() {
        let mut table = RouteTable::default();
        table.add(Some("foo.example.com"), vec![rule("/", PathType::Prefix, "foo")], None);
        table.add(Some("*.example.com"), vec![rule("/", PathType::Prefix, "wild")], None);
        table.add(None, vec![rule("/any", PathType::Prefix, "any")], None);
        assert_eq!(served(&table, "FOO.example.com:8080", "/x"), Some("foo".into()), "case and port ignored");
        assert_eq!(served(&table, "bar.example.com", "/x"), Some("wild".into()));
        assert_eq!(served(&table, "a.bar.example.com", "/any"), Some("any".into()), "a wildcard covers one label");
        assert_eq!(served(&table, "example.com", "/any"), Some("any".into()));
        assert_eq!(served(&table, "example.com", "/x"), None, "404 without a default backend");
        // A host's own rules are all it gets: no fall-through to other hosts'.
        assert_eq!(served(&table, "foo.example.com", "/any"), Some("foo".into()));
        table.set_default(to("default"));
        table.set_default(to("second"));
        assert_eq!(served(&table, "example.com", "/x"), Some("default".into()), "the first default backend");
    }

    #[test]
    fn a_host_s_other_paths_go_to_its_ingress_s_default_backend() {
        let mut table = RouteTable::default();
        table.add(Some("kubia.example.com"), vec![rule("/api", PathType::Prefix, "api")], Some(&to("kubia-default")));
        table.add(Some("kubia.example.com"), vec![rule("/web", PathType::Prefix, "web")], Some(&to("later")));
        table.set_default(to("global"));
        assert_eq!(served(&table, "kubia.example.com", "/web/x"), Some("web".into()), "a later Ingress's path");
        assert_eq!(served(&table, "kubia.example.com", "/other"), Some("kubia-default".into()), "the first one's");
        assert_eq!(served(&table, "foo.example.com", "/other"), Some("global".into()));
    }

    #[test]
    fn host_headers_lose_their_port_only() {
        assert_eq!(strip_port("kubia.example.com:80"), "kubia.example.com");
        assert_eq!(strip_port("kubia.example.com"), "kubia.example.com");
        assert_eq!(strip_port("[fd00::1]:443"), "fd00::1");
        assert_eq!(strip_port("10.0.0.1:8080"), "10.0.0.1");
    }
}
