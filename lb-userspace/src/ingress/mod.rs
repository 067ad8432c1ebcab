//! Ingress (`networking.k8s.io/v1`): an HTTP proxy in front of Services,
//! fed by the same sources and model: which Ingresses are ours and their
//! rules ([`table`]), how a request matches them ([`routes`]), the proxy
//! ([`proxy`]). TLS, HTTP/2 and upgrades are not served yet.

pub mod proxy;
pub mod routes;
pub mod table;
