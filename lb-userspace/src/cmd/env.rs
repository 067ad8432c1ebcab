//! `lb-agent env`: the environment variables kubelet injects into a pod
//! for the Services that exist when it starts (the seeds' "discovering
//! services through environment variables"), following kubelet's
//! `envvars.FromServices`: for every Service of the pod's namespace with a
//! cluster IP, plus `default/kubernetes`.

use std::collections::BTreeMap;

/// A Service as the environment sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvService {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: String,
    /// (name, port, protocol) in `spec.ports` order.
    pub ports: Vec<(String, u16, String)>,
}

/// `my-svc` -> `MY_SVC`.
fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

/// The variables for a pod in `namespace`, Services sorted by name.
pub fn service_env(services: &[EnvService], namespace: &str) -> Vec<(String, String)> {
    let visible: BTreeMap<&str, &EnvService> = services
        .iter()
        .filter(|s| s.namespace == namespace || (s.namespace == "default" && s.name == "kubernetes"))
        .filter(|s| !s.ports.is_empty())
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut vars = Vec::new();
    for service in visible.values() {
        let prefix = env_name(&service.name);
        let ip = &service.cluster_ip;
        vars.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        vars.push((format!("{prefix}_SERVICE_PORT"), service.ports[0].1.to_string()));
        for (name, port, _) in service.ports.iter().filter(|(name, ..)| !name.is_empty()) {
            vars.push((format!("{prefix}_SERVICE_PORT_{}", env_name(name)), port.to_string()));
        }
        for (i, (_, port, protocol)) in service.ports.iter().enumerate() {
            let proto = protocol.to_lowercase();
            // An IPv6 host is bracketed in the URL only, as kubelet joins them.
            let url = match ip.parse::<std::net::IpAddr>() {
                Ok(addr) => format!("{proto}://{}", std::net::SocketAddr::new(addr, *port)),
                Err(_) => format!("{proto}://{ip}:{port}"),
            };
            if i == 0 {
                vars.push((format!("{prefix}_PORT"), url.clone()));
            }
            let port_prefix = format!("{prefix}_PORT_{port}_{}", protocol.to_uppercase());
            vars.push((port_prefix.clone(), url));
            vars.push((format!("{port_prefix}_PROTO"), proto));
            vars.push((format!("{port_prefix}_PORT"), port.to_string()));
            vars.push((format!("{port_prefix}_ADDR"), ip.clone()));
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(namespace: &str, name: &str, ip: &str, ports: &[(&str, u16, &str)]) -> EnvService {
        EnvService {
            namespace: namespace.into(),
            name: name.into(),
            cluster_ip: ip.into(),
            ports: ports.iter().map(|(n, p, proto)| (n.to_string(), *p, proto.to_string())).collect(),
        }
    }

    fn lookup<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_seeds_kubia_service() {
        let vars = service_env(&[svc("default", "kubia", "10.111.249.153", &[("", 80, "TCP")])], "default");
        assert_eq!(
            vars,
            [
                ("KUBIA_SERVICE_HOST", "10.111.249.153"),
                ("KUBIA_SERVICE_PORT", "80"),
                ("KUBIA_PORT", "tcp://10.111.249.153:80"),
                ("KUBIA_PORT_80_TCP", "tcp://10.111.249.153:80"),
                ("KUBIA_PORT_80_TCP_PROTO", "tcp"),
                ("KUBIA_PORT_80_TCP_PORT", "80"),
                ("KUBIA_PORT_80_TCP_ADDR", "10.111.249.153"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn named_ports_dashes_namespaces_and_the_kubernetes_service() {
        let services = [
            svc("default", "kubia", "10.96.0.10", &[("http", 80, "TCP"), ("https", 443, "TCP")]),
            svc("default", "kubernetes", "10.96.0.1", &[("https", 443, "TCP")]),
            svc("shop", "my-db", "10.96.0.20", &[("", 5432, "TCP"), ("metrics", 9187, "UDP")]),
        ];
        let vars = service_env(&services, "shop");
        assert_eq!(lookup(&vars, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"), "default/kubernetes is everywhere");
        assert_eq!(lookup(&vars, "KUBIA_SERVICE_HOST"), None, "another namespace's service");
        assert_eq!(lookup(&vars, "MY_DB_SERVICE_PORT"), Some("5432"));
        assert_eq!(lookup(&vars, "MY_DB_SERVICE_PORT_METRICS"), Some("9187"));
        assert_eq!(lookup(&vars, "MY_DB_PORT_9187_UDP_PROTO"), Some("udp"));
        let vars = service_env(&services, "default");
        assert_eq!(lookup(&vars, "KUBIA_SERVICE_PORT_HTTP"), Some("80"));
        assert_eq!(lookup(&vars, "KUBIA_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(lookup(&vars, "KUBIA_PORT"), Some("tcp://10.96.0.10:80"));
    }

    /// kubelet: the host bare, the URLs with `[addr]:port`.
    #[test]
    fn an_ipv6_cluster_ip_is_bracketed_in_urls_only() {
        let vars = service_env(&[svc("default", "web", "fd00:10:96::a", &[("", 80, "TCP")])], "default");
        assert_eq!(lookup(&vars, "WEB_SERVICE_HOST"), Some("fd00:10:96::a"));
        assert_eq!(lookup(&vars, "WEB_PORT"), Some("tcp://[fd00:10:96::a]:80"));
        assert_eq!(lookup(&vars, "WEB_PORT_80_TCP"), Some("tcp://[fd00:10:96::a]:80"));
        assert_eq!(lookup(&vars, "WEB_PORT_80_TCP_ADDR"), Some("fd00:10:96::a"));
    }
}
