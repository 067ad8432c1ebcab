//! The kubia example of the seeds as test fixtures: one node, kubia pods
//! running lb-testserver, a client pod, and the Service in front of them.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use crate::{
    agent::pod_manifest_ips,
    client::{http_get, served_by},
    topology::{Node, Pod},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The seeds' kubia Service with a UDP port beside the HTTP one.
pub const KUBIA_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: kubia
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: echo
    port: 53
    protocol: UDP
    targetPort: 5353
  selector:
    app: kubia
";

pub struct Cluster {
    pub node: Node,
    pub backends: Vec<Pod>,
    pub client: Pod,
}

/// A node with `n` kubia pods (10.244.0.2, .3, ...) serving HTTP on 8080
/// and UDP on 5353, and a client pod 10.244.0.100.
pub fn cluster(n: u8) -> Cluster {
    let node = Node::new().unwrap();
    let backends = (0..n)
        .map(|i| {
            let mut pod = node.add_pod(&format!("kubia-{i}"), Ipv4Addr::new(10, 244, 0, 2 + i)).unwrap();
            pod.serve(8080, 5353).unwrap();
            pod
        })
        .collect();
    let client = node.add_pod("client", Ipv4Addr::new(10, 244, 0, 100)).unwrap();
    Cluster { node, backends, client }
}

/// The pods' manifests with all their addresses (IPv4 first).
pub fn pods_manifest(pods: &[&Pod], ready: impl Fn(&Pod) -> bool) -> String {
    pods.iter().map(|p| pod_manifest_ips(&p.name, &p.ips(), ready(p))).collect::<Vec<_>>().join("---\n")
}

/// Like [`pods_manifest`], the pods placed on node `node` (`spec.nodeName`,
/// as the scheduler sets it): without it, an endpoint is outside the cluster.
pub fn pods_manifest_on(pods: &[&Pod], node: &str, ready: impl Fn(&Pod) -> bool) -> String {
    pods_manifest(pods, ready).replace("spec:\n", &format!("spec:\n  nodeName: {node}\n"))
}

/// Which pods answered `requests` HTTP requests to the VIP.
pub fn http_spread(client: &Pod, requests: usize) -> BTreeSet<String> {
    (0..requests)
        .map(|_| served_by(&http_get(&client.ns, SocketAddrV4::new(VIP, 80), TIMEOUT).unwrap()).to_owned())
        .collect()
}

pub fn names(pods: &[&Pod]) -> BTreeSet<String> {
    pods.iter().map(|p| p.name.clone()).collect()
}

/// How many :8080 endpoints the first service row of `get services` lists.
pub fn endpoint_count(services: &str) -> usize {
    services.lines().nth(1).map_or(0, |row| row.matches(":8080").count())
}
