//! Ingress (`networking.k8s.io/v1`): an L7 proxy in front of Services, fed
//! by the same model. Work in progress (issue 21): the routing rules.

pub mod proxy;
pub mod routes;
pub mod table;
