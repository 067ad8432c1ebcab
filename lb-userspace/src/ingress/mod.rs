//! Ingress (`networking.k8s.io/v1`): an HTTP(S) proxy in front of
//! Services, fed by the same sources and model: which Ingresses are ours
//! and their rules ([`table`]), how a request matches them ([`routes`]),
//! their certificates ([`tls`]), the proxy ([`proxy`]) and how its
//! connections open ([`opening`]).

pub mod opening;
pub mod proxy;
pub mod routes;
pub mod table;
pub mod tls;
