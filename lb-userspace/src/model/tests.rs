//! The model's tests: Kubernetes objects in, Services out.

use super::*;
use crate::source::objects_from_yaml;

const KUBIA: &str = "
apiVersion: v1
kind: Service
metadata:
  name: kubia
spec:
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: kubia
";

fn pod(name: &str, ip: &str, ready: bool, labels: &str, extra: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {labels}
{extra}status:
  phase: Running
  podIP: {ip}
  conditions:
  - type: Ready
    status: \"{}\"
",
        if ready { "True" } else { "False" }
    )
}

fn build_yaml(yaml: &str) -> (DesiredState, Vec<ModelError>) {
    build(&objects_from_yaml(yaml), DesiredState::default(), &ModelOptions::default())
}

fn service<'a>(state: &'a DesiredState, name: &str) -> &'a Service {
    &state.services[&ServiceName::new("default", name)]
}

fn active(port: &ServicePort) -> Vec<String> {
    port.active_endpoints().map(|e| format!("{}:{}", e.addr, e.port)).collect()
}

fn messages(errors: &[ModelError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn kubia_selector_endpoints_only_ready_pods_are_active() {
    let yaml = [
        KUBIA.to_owned(),
        pod("kubia-7nogl", "10.108.2.6", true, "{app: kubia}", "spec:\n  nodeName: node-2\n  containers: []\n"),
        pod("kubia-3inly", "10.108.1.4", true, "{app: kubia}", ""),
        pod("kubia-xk2q1", "10.108.2.5", false, "{app: kubia}", ""),
        pod("other", "10.108.2.9", true, "{app: other}", ""),
    ]
    .concat();
    let (state, errors) = build_yaml(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let kubia = service(&state, "kubia");
    assert_eq!(kubia.service_type, ServiceType::ClusterIp);
    assert!(kubia.programs_datapath());
    let [ip] = kubia.cluster_ips[..] else { panic!("not one cluster IP") };
    assert!(ModelOptions::default().service_cidrs[0].contains_host(ip));
    let port = &kubia.ports[0];
    assert_eq!((port.name.as_str(), port.port, port.protocol), ("", 80, Protocol::Tcp));
    assert_eq!(port.endpoints.len(), 3);
    assert_eq!(active(port), ["10.108.1.4:8080", "10.108.2.6:8080"]);
    let ep = &port.endpoints[2];
    assert_eq!(
        (ep.target.as_deref(), ep.node_name.as_deref(), ep.serving),
        (Some("kubia-7nogl"), Some("node-2"), true)
    );
}

#[test]
fn named_target_port_resolves_per_pod() {
    let containers = |http: u16| {
        format!(
            "spec:\n  containers:\n  - name: kubia\n    ports:\n    - name: http\n      containerPort: {http}\n    - name: dns\n      containerPort: 53\n      protocol: UDP\n"
        )
    };
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  selector: {app: kubia}\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n  - name: dns\n    port: 53\n    protocol: UDP\n    targetPort: dns\n  - name: dns-tcp\n    port: 53\n    targetPort: dns\n";
    let yaml = [
        svc.to_owned(),
        pod("a", "10.0.0.1", true, "{app: kubia}", &containers(8080)),
        pod("b", "10.0.0.2", true, "{app: kubia}", &containers(9090)),
        pod("c", "10.0.0.3", true, "{app: kubia}", "spec:\n  containers: []\n"),
    ]
    .concat();
    let (state, errors) = build_yaml(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let ports = &service(&state, "kubia").ports;
    assert_eq!(active(&ports[0]), ["10.0.0.1:8080", "10.0.0.2:9090"]);
    assert_eq!(active(&ports[1]), ["10.0.0.1:53", "10.0.0.2:53"]);
    // "dns" is a UDP port in the pods, so it does not serve TCP.
    assert_eq!(active(&ports[2]), Vec::<String>::new());
}

#[test]
fn terminating_and_finished_pods() {
    let yaml = [
        KUBIA.to_owned(),
        pod("going", "10.0.0.1", true, "{app: kubia}", "  deletionTimestamp: \"2024-01-01T00:00:00Z\"\n"),
        pod("done", "10.0.0.2", true, "{app: kubia}", "").replace("phase: Running", "phase: Succeeded"),
        pod("v6", "fd00::1", true, "{app: kubia}", ""),
    ]
    .concat();
    let (state, errors) = build_yaml(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let port = &service(&state, "kubia").ports[0];
    assert_eq!(port.endpoints.len(), 2, "the terminating pod and the IPv6 one");
    let ep = &port.endpoints[0];
    assert_eq!((ep.ready, ep.serving, ep.terminating), (false, true, true));
    assert_eq!(port.endpoints[1].addr, "fd00::1".parse::<IpAddr>().unwrap());
}

/// The model is rebuilt from objects of which only some changed (the
/// source keeps the others' `Arc`s): the changed ones take effect, the
/// others are reused, not realised again.
#[test]
fn rebuild_reuses_services_whose_objects_did_not_change() {
    let yaml = |manual_ip: &str, pod_ip: &str| {
        format!(
            "{KUBIA}{}---
apiVersion: v1
kind: Service
metadata: {{name: manual}}
spec:
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: manual}}
subsets: [{{addresses: [{{ip: {manual_ip}}}], ports: [{{port: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: other}}
spec:
  ports: [{{port: 80}}]
",
            pod("kubia-1", pod_ip, true, "{app: kubia}", "")
        )
    };
    let first = objects_from_yaml(&yaml("1.1.1.1", "10.0.0.1"));
    let (state, _) = build(&first, DesiredState::default(), &ModelOptions::default());
    let realised = |state: &DesiredState, name: &str| {
        Arc::clone(&state.memo.services[&ServiceName::new("default", name)].realised)
    };

    // The Endpoints object changes; the Services and the pod stay.
    let changed = objects_from_yaml(&yaml("2.2.2.2", "10.0.0.1"));
    let mut second = first.clone();
    second.endpoints = changed.endpoints.clone();
    let (next, errors) = build(&second, state.clone(), &ModelOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(active(&service(&next, "manual").ports[0]), ["2.2.2.2:8080"]);
    assert_eq!(active(&service(&next, "kubia").ports[0]), ["10.0.0.1:8080"]);
    assert!(Arc::ptr_eq(&realised(&state, "other"), &realised(&next, "other")));
    assert!(Arc::ptr_eq(&realised(&state, "kubia"), &realised(&next, "kubia")));
    assert!(!Arc::ptr_eq(&realised(&state, "manual"), &realised(&next, "manual")));
    assert_eq!(service(&next, "other"), service(&state, "other"));
    assert_eq!(next, build(&second, DesiredState::default(), &ModelOptions::default()).0);

    // A pod changes: the Service selecting it is realised again.
    let mut third = second.clone();
    third.pods = objects_from_yaml(&yaml("2.2.2.2", "10.0.0.9")).pods;
    let (last, _) = build(&third, next.clone(), &ModelOptions::default());
    assert_eq!(active(&service(&last, "kubia").ports[0]), ["10.0.0.9:8080"]);
    assert!(Arc::ptr_eq(&realised(&next, "manual"), &realised(&last, "manual")));
    // Every reuse gives what a build from scratch gives.
    assert_eq!(last, build(&third, DesiredState::default(), &ModelOptions::default()).0);
}

#[test]
fn endpoints_without_selector() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: external-service}
spec:
  ports:
  - name: web
    port: 80
---
apiVersion: v1
kind: Endpoints
metadata: {name: external-service}
subsets:
- addresses: [{ip: 22.22.22.22}, {ip: 11.11.11.11, nodeName: n1}]
  notReadyAddresses: [{ip: 33.33.33.33}]
  ports: [{port: 8080}]
- addresses: [{ip: '11. 11. 11. 11'}, {ip: 'fd00::1'}]
  ports: [{port: 9090, name: other}]
---
apiVersion: v1
kind: Service
metadata: {name: multi}
spec:
  ports: [{name: a, port: 80}, {name: b, port: 81}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: multi}
subsets:
- addresses: [{ip: 1.1.1.1}]
  ports: [{name: a, port: 8080}, {name: b, port: 8081}, {port: 9999}]
";
    let (state, errors) = build_yaml(yaml);
    assert_eq!(
        messages(&errors),
        [
            "test.yaml: Endpoints default/external-service: subsets[1].addresses[0].ip: \"11. 11. 11. 11\" is not an IP address"
        ]
    );
    let port = &service(&state, "external-service").ports[0];
    assert_eq!(active(port), ["11.11.11.11:8080", "22.22.22.22:8080"]);
    assert_eq!(port.endpoints.len(), 3);
    assert_eq!(port.endpoints[0].node_name.as_deref(), Some("n1"));
    let multi = &service(&state, "multi").ports;
    assert_eq!(active(&multi[0]), ["1.1.1.1:8080"]);
    assert_eq!(active(&multi[1]), ["1.1.1.1:8081"]);
}

#[test]
fn endpoint_slice_conditions_and_union_with_endpoints() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: s-abc
  labels: {kubernetes.io/service-name: s}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.1]
  nodeName: n1
  targetRef: {kind: Pod, name: s-1}
- addresses: [10.0.0.2]
  conditions: {ready: false}
- addresses: [10.0.0.3]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.4]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: s-v6
  labels: {kubernetes.io/service-name: s}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ['fd00::1']}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other
  labels: {kubernetes.io/service-name: t}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.9.9.9]}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: s}
subsets:
- addresses: [{ip: 10.0.0.4}, {ip: 10.0.0.5}]
  ports: [{name: http, port: 8080}]
";
    let (state, errors) = build_yaml(yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let port = &service(&state, "s").ports[0];
    let conditions: Vec<_> =
        port.endpoints.iter().map(|e| (e.addr.to_string(), e.ready, e.serving, e.terminating)).collect();
    assert_eq!(
        conditions,
        [
            ("10.0.0.1".to_owned(), true, true, false),
            ("10.0.0.2".to_owned(), false, false, false),
            ("10.0.0.3".to_owned(), false, true, true),
            ("10.0.0.4".to_owned(), true, true, false),
            ("10.0.0.5".to_owned(), true, true, false),
            // From the IPv6 slice: its family's frontends take it.
            ("fd00::1".to_owned(), true, true, false),
        ]
    );
    assert_eq!(port.endpoints[0].target.as_deref(), Some("s-1"));
    assert_eq!(active(port), ["10.0.0.1:8080", "10.0.0.4:8080", "10.0.0.5:8080", "fd00::1:8080"]);
}

fn named(names: &[&str], extra: &str) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\nspec:\n  ports: [{{port: 80}}]\n{extra}"
            )
        })
        .collect()
}

fn ips(state: &DesiredState) -> Vec<(String, Vec<IpAddr>)> {
    state.services.values().map(|s| (s.name.name.clone(), s.cluster_ips.clone())).collect()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn cluster_ip_allocation_is_deterministic_stable_and_avoids_explicit_ones() {
    let names = ["a", "b", "c", "kubia"];
    let (first, errors) = build_yaml(&named(&names, ""));
    assert!(errors.is_empty(), "{errors:?}");
    let mut reversed = objects_from_yaml(&named(&names, ""));
    reversed.services.reverse();
    let (again, _) = build(&reversed, DesiredState::default(), &ModelOptions::default());
    assert_eq!(ips(&first), ips(&again));

    // An explicit address on the slot kubia would hash to: kubia moves on.
    let cidr = ModelOptions::default().service_cidrs[0];
    let slot = cidr.free_host(&ServiceName::new("default", "kubia"), &BTreeMap::new()).unwrap();
    assert_eq!(service(&first, "kubia").cluster_ips, [slot]);
    let explicit = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: z}}\nspec:\n  clusterIP: {slot}\n  ports: [{{port: 80}}]\n",
        named(&["kubia"], "")
    );
    let (state, _) = build_yaml(&explicit);
    assert_eq!(service(&state, "z").cluster_ips, [slot]);
    let (IpAddr::V4(moved), IpAddr::V4(slot)) = (service(&state, "kubia").cluster_ips[0], slot) else { panic!() };
    assert_eq!(u32::from(moved), u32::from(slot) + 1, "probing goes on to the next address");

    // History plays no part: a node that saw other addresses before
    // computes what a fresh node does.
    let mut previous = first.clone();
    Arc::make_mut(previous.services.get_mut(&ServiceName::new("default", "kubia")).unwrap()).cluster_ips =
        vec![v4(10, 96, 0, 77)];
    let (state, _) = build(&objects_from_yaml(&named(&names, "")), previous, &ModelOptions::default());
    assert_eq!(ips(&state), ips(&first));
}

/// A Service named `name`, created at `created` (RFC 3339) when given.
fn aged(name: &str, created: Option<&str>, spec: &str) -> String {
    let created = created.map_or(String::new(), |c| format!(", creationTimestamp: \"{c}\""));
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}{created}}}\nspec:\n{spec}  ports: [{{port: 80}}]\n"
    )
}

#[test]
fn a_newer_service_never_takes_the_allocated_address_of_an_older_one() {
    // Two names hashing to the same address of a small CIDR.
    let opts = ModelOptions { service_cidrs: vec!["10.0.0.0/28".parse().unwrap()], ..ModelOptions::default() };
    let slot = |name: &str| opts.service_cidrs[0].free_host(&ServiceName::new("default", name), &BTreeMap::new());
    let (young, old) = (1..100)
        .map(|i| format!("s{i}"))
        .find_map(|y| (1..100).map(|i| format!("t{i}")).find(|o| slot(o) == slot(&y)).map(|o| (y, o)))
        .expect("a hash collision among 200 names in 14 addresses");
    assert!(young < old, "the younger one sorts first by name");
    let build_with = |yaml: &str| build(&objects_from_yaml(yaml), DesiredState::default(), &opts).0;
    let older_alone = build_with(&aged(&old, Some("2026-01-01T00:00:00Z"), ""));
    let both = build_with(&format!(
        "{}{}",
        aged(&young, Some("2026-06-01T00:00:00Z"), ""),
        aged(&old, Some("2026-01-01T00:00:00Z"), "")
    ));
    assert_eq!(service(&both, &old).cluster_ips, service(&older_alone, &old).cluster_ips);
    assert_ne!(service(&both, &young).cluster_ips, service(&both, &old).cluster_ips);
    // Without timestamps the name decides, the same way on every node.
    let unaged = build_with(&format!("{}{}", aged(&young, None, ""), aged(&old, None, "")));
    assert_eq!(service(&unaged, &young).cluster_ips, service(&older_alone, &old).cluster_ips);
}

#[test]
fn duplicate_explicit_cluster_ip_the_older_service_keeps_it() {
    let yaml = named(&["a", "b"], "  clusterIP: 10.96.0.10\n");
    let (state, errors) = build_yaml(&yaml);
    assert_eq!(
        messages(&errors),
        ["test.yaml: Service default/b: spec.clusterIP: 10.96.0.10 is already used by Service default/a"]
    );
    assert_eq!(ips(&state), [("a".to_owned(), vec![v4(10, 96, 0, 10)])]);

    // The older one keeps it, even when later in name order; the
    // newcomer is refused as the API server would refuse it.
    let yaml = format!(
        "{}{}",
        aged("a", Some("2026-06-01T00:00:00Z"), "  clusterIP: 10.96.0.10\n"),
        aged("b", Some("2026-01-01T00:00:00Z"), "  clusterIP: 10.96.0.10\n")
    );
    let (state, errors) = build_yaml(&yaml);
    assert_eq!(
        messages(&errors),
        ["test.yaml: Service default/a: spec.clusterIP: 10.96.0.10 is already used by Service default/b"]
    );
    assert_eq!(ips(&state), [("b".to_owned(), vec![v4(10, 96, 0, 10)])]);

    let (state, errors) = build_yaml(&named(&["c"], "  clusterIP: 192.168.0.10\n"));
    assert_eq!(
        messages(&errors),
        ["test.yaml: Service default/c: spec.clusterIP: 192.168.0.10 is not in the service CIDR 10.96.0.0/12"]
    );
    assert!(state.services.is_empty());
}

#[test]
fn exhausted_cidr_is_an_error() {
    let opts = ModelOptions { service_cidrs: vec!["192.168.0.0/30".parse().unwrap()], ..ModelOptions::default() };
    let (state, errors) = build(&objects_from_yaml(&named(&["a", "b", "c"], "")), DesiredState::default(), &opts);
    assert_eq!(state.services.len(), 2);
    let addrs: BTreeSet<_> = state.services.values().map(|s| format!("{:?}", s.cluster_ips)).collect();
    assert_eq!(addrs.len(), 2);
    assert_eq!(
        messages(&errors),
        ["test.yaml: Service default/c: no free address left in the service CIDR 192.168.0.0/30"]
    );
}

#[test]
fn invalid_service_keeps_its_previous_model() {
    let (good, _) = build_yaml(KUBIA);
    let broken = KUBIA.replace("port: 80", "port: 0");
    let (state, errors) = build(&objects_from_yaml(&broken), good.clone(), &ModelOptions::default());
    assert_eq!(messages(&errors), ["test.yaml: Service default/kubia: spec.ports[0].port: 0 is not in 1-65535"]);
    assert_eq!(state, good);
    // Without a previous model there is nothing to keep.
    let (state, _) = build_yaml(&broken);
    assert!(state.services.is_empty());
}

#[test]
fn validation_errors_name_the_field() {
    let cases = [
        ("  type: Weird\n  ports: [{port: 80}]\n", "spec.type: unknown type \"Weird\""),
        (
            "  ports: [{port: 80, protocol: SCTP}]\n",
            "spec.ports[0].protocol: SCTP is not supported: this port is not served, the Service's others are",
        ),
        (
            "  clusterIP: fd00::10\n  ports: [{port: 80}]\n",
            "spec.ipFamilies: IPv6 has no service CIDR here (--service-cidr)",
        ),
        ("  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n", "spec.clusterIP: \"10.96.0.300\" is not an IP address"),
        ("  ports: [{port: 80, targetPort: 70000}]\n", "spec.ports[0].targetPort: 70000 is not in 1-65535"),
        (
            "  ports: [{port: 80, targetPort: ''}]\n",
            "spec.ports[0].targetPort: \"\" is neither a port number nor a port name",
        ),
        ("  ports: [{port: 80}, {port: 81}]\n", "spec.ports[0].name: required when a service has more than one port"),
        ("  ports: [{name: a, port: 80}, {name: b, port: 80}]\n", "spec.ports[1].port: 80/TCP is listed twice"),
        ("  type: ExternalName\n", "spec.externalName: required for type ExternalName"),
        (
            "  type: NodePort\n  clusterIP: None\n  ports: [{port: 80}]\n",
            "spec.clusterIP: None (headless) is only allowed for type ClusterIP",
        ),
        ("  ports: []\n", "spec.ports: a service with a cluster IP needs at least one port"),
        (
            "  sessionAffinity: Sticky\n  ports: [{port: 80}]\n",
            "spec.sessionAffinity: unknown value \"Sticky\" (None or ClientIP)",
        ),
        (
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n  ports: [{port: 80}]\n",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not in 1-86400",
        ),
    ];
    for (spec, reason) in cases {
        let (_, errors) = build_yaml(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n{spec}"));
        assert_eq!(messages(&errors), [format!("test.yaml: Service default/s: {reason}")], "{spec}");
    }
}

/// kube-proxy serves a Service's TCP and UDP ports whatever its others.
#[test]
fn an_sctp_port_is_reported_and_the_other_ports_are_served() {
    let yaml = KUBIA.replace(
        "  ports:\n  - port: 80\n",
        "  ports:\n  - name: sctp\n    port: 9\n    protocol: SCTP\n  - name: http\n    port: 80\n",
    );
    assert_ne!(yaml, KUBIA, "the test edits the kubia Service's ports");
    let (state, errors) = build_yaml(&yaml);
    assert_eq!(
        messages(&errors),
        [
            "test.yaml: Service default/kubia: spec.ports[0].protocol: SCTP is not supported: this port is not served, the Service's others are"
        ]
    );
    let kubia = service(&state, "kubia");
    assert_eq!(kubia.ports.iter().map(|p| (p.port, p.protocol)).collect::<Vec<_>>(), [(80, Protocol::Tcp)]);
    assert!(kubia.programs_datapath());
}

#[test]
fn headless_and_external_name_are_listed_but_not_programmed() {
    let yaml = format!(
        "{KUBIA}---\napiVersion: v1\nkind: Service\nmetadata: {{name: headless}}\nspec:\n  clusterIP: None\n  selector: {{app: kubia}}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: external-service}}\nspec:\n  type: ExternalName\n  externalName: someapi.somecompany.com\n  ports: [{{port: 80}}]\n{}",
        pod("kubia-1", "10.0.0.1", true, "{app: kubia}", "")
    );
    let (state, errors) = build_yaml(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let headless = service(&state, "headless");
    assert!(headless.cluster_ips.is_empty());
    assert!(!headless.programs_datapath());
    assert_eq!(active(&headless.ports[0]), ["10.0.0.1:8080"]);
    let external = service(&state, "external-service");
    assert_eq!(external.service_type, ServiceType::ExternalName);
    assert_eq!(external.external_name.as_deref(), Some("someapi.somecompany.com"));
    assert!(external.cluster_ips.is_empty());
    assert!(!external.programs_datapath());
    assert!(service(&state, "kubia").programs_datapath());
}

#[test]
fn cidr_parsing() {
    let cidr: IpCidr = "10.96.0.0/12".parse().unwrap();
    assert_eq!(cidr, ModelOptions::default().service_cidrs[0]);
    assert_eq!(cidr.to_string(), "10.96.0.0/12");
    assert!(cidr.contains_host(v4(10, 111, 255, 254)));
    assert!(!cidr.contains_host(v4(10, 111, 255, 255)));
    assert!(!cidr.contains_host(v4(10, 96, 0, 0)));
    assert_eq!(
        "10.96.0.1/12".parse::<IpCidr>().unwrap_err().to_string(),
        "\"10.96.0.1/12\" is not a CIDR: host bits are set"
    );
    assert!("10.96.0.0".parse::<IpCidr>().is_err());
    assert!("10.96.0.0/33".parse::<IpCidr>().is_err());
    assert!("0.0.0.0/0".parse::<IpCidr>().is_ok());
    // IPv6: no broadcast, so only the network address is reserved; a /0
    // counts without overflow.
    let cidr6: IpCidr = "fd00:10:96::/112".parse().unwrap();
    assert!(cidr6.contains_host("fd00:10:96::ffff".parse().unwrap()));
    assert!(!cidr6.contains_host("fd00:10:96::".parse().unwrap()));
    assert!(!cidr6.contains_host(v4(10, 96, 0, 1)), "never the other family");
    assert_eq!(cidr6.mask(), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:0".parse::<IpAddr>().unwrap());
    assert!("fd00::/129".parse::<IpCidr>().is_err());
    let all: IpCidr = "::/0".parse().unwrap();
    assert!(all.free_host(&ServiceName::new("default", "x"), &BTreeMap::new()).is_some());
    assert_eq!(IpCidr::masked("2001:db8::5/64").unwrap().to_string(), "2001:db8::/64");
}

#[test]
fn with_no_ready_endpoint_the_serving_terminating_ones_take_new_connections() {
    let terminating = "  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n";
    let yaml = format!(
        "{KUBIA}{}{}",
        pod("a", "10.244.0.2", true, "{app: kubia}", terminating),
        pod("b", "10.244.0.3", false, "{app: kubia}", "")
    );
    let (state, errors) = build_yaml(&yaml);
    assert_eq!(messages(&errors), Vec::<String>::new());
    assert_eq!(active(&service(&state, "kubia").ports[0]), ["10.244.0.2:8080"]);
    // A ready pod beside it wins again.
    let yaml = format!("{yaml}{}", pod("c", "10.244.0.4", true, "{app: kubia}", ""));
    let (state, _) = build_yaml(&yaml);
    assert_eq!(active(&service(&state, "kubia").ports[0]), ["10.244.0.4:8080"]);
}

#[test]
fn proxy_labels_leave_a_service_to_another_proxy_or_make_it_headless() {
    let labelled = |label: &str| KUBIA.replace("  name: kubia\n", &format!("  name: kubia\n  labels: {{{label}}}\n"));
    let pods = pod("a", "10.244.0.2", true, "{app: kubia}", "");
    let (state, _) = build_yaml(&format!("{}{pods}", labelled("service.kubernetes.io/service-proxy-name: other")));
    assert!(state.services.is_empty(), "a service of another proxy is ignored");
    let (state, _) = build_yaml(&format!("{}{pods}", labelled("service.kubernetes.io/headless: ''")));
    let kubia = service(&state, "kubia");
    assert!(kubia.cluster_ips.is_empty());
    assert!(!kubia.programs_datapath());
}

#[test]
fn an_endpoints_object_beside_a_selector_is_ignored_with_an_error_naming_both() {
    let endpoints = "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: kubia}\nsubsets: [{addresses: [{ip: 1.2.3.4}], ports: [{port: 80}]}]\n";
    let yaml = format!("{KUBIA}{}{endpoints}", pod("a", "10.244.0.2", true, "{app: kubia}", ""));
    let (state, errors) = build_yaml(&yaml);
    assert_eq!(active(&service(&state, "kubia").ports[0]), ["10.244.0.2:8080"]);
    let errors = messages(&errors);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("Endpoints default/kubia") && errors[0].contains("Service default/kubia has a selector")
    );
}

#[test]
fn publish_not_ready_addresses_serves_unready_manual_endpoints_too() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  publishNotReadyAddresses: true\n  ports: [{port: 80}]\n";
    let endpoints = "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: db}\nsubsets: [{notReadyAddresses: [{ip: 1.2.3.4}], ports: [{port: 80}]}]\n";
    let (state, _) = build_yaml(&format!("{svc}{endpoints}"));
    assert_eq!(active(&service(&state, "db").ports[0]), ["1.2.3.4:80"]);
}

#[test]
fn node_ports_are_kept_when_written_allocated_in_range_otherwise_and_never_shared() {
    let svc = |name: &str, node_port: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: NodePort\n  ports: [{{port: 80{node_port}}}]\n"
        )
    };
    let yaml = format!(
        "{}{}{}",
        svc("kubia-nodeport", ", nodePort: 30123"),
        svc("auto", ""),
        svc("thief", ", nodePort: 30123")
    );
    let (state, errors) = build_yaml(&yaml);
    assert_eq!(service(&state, "kubia-nodeport").ports[0].node_port, Some(30123));
    let auto = service(&state, "auto").ports[0].node_port.unwrap();
    assert!(NODE_PORT_RANGE.contains(&auto) && auto != 30123);
    assert_eq!(
        messages(&errors),
        ["Service default/thief: nodePort 30123/TCP is already used by Service default/kubia-nodeport"]
    );
    // The same answer on every node, and across rescans.
    let (again, _) = build(&objects_from_yaml(&yaml), state.clone(), &ModelOptions::default());
    assert_eq!(service(&again, "auto").ports[0].node_port, Some(auto));
    let (fresh, _) = build_yaml(&yaml);
    assert_eq!(service(&fresh, "auto").ports[0].node_port, Some(auto));

    // The older writer holds the port, whatever the names.
    let yaml = format!(
        "{}{}",
        svc("kubia-nodeport", ", nodePort: 30123")
            .replace("{name: kubia-nodeport}", "{name: kubia-nodeport, creationTimestamp: \"2026-06-01T00:00:00Z\"}"),
        svc("thief", ", nodePort: 30123")
            .replace("{name: thief}", "{name: thief, creationTimestamp: \"2026-01-01T00:00:00Z\"}"),
    );
    let (state, errors) = build_yaml(&yaml);
    assert_eq!(service(&state, "thief").ports[0].node_port, Some(30123));
    assert_eq!(
        messages(&errors),
        ["Service default/kubia-nodeport: nodePort 30123/TCP is already used by Service default/thief"]
    );
}

#[test]
fn node_ports_outside_the_range_or_on_a_cluster_ip_service_are_refused() {
    let (_, errors) = build_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 8080}]\n",
    );
    assert_eq!(messages(&errors), ["test.yaml: Service default/a: spec.ports[0].nodePort: 8080 is not in 30000-32767"]);
    let (_, errors) = build_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80, nodePort: 30080}]\n",
    );
    assert!(messages(&errors)[0].contains("only NodePort and LoadBalancer have node ports"), "{errors:?}");
}

#[test]
fn external_and_load_balancer_ips_are_service_addresses() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec:\n  type: LoadBalancer\n  externalIPs: [203.0.113.20]\n  ports: [{port: 80}]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.10}, {hostname: lb.example}]\n";
    let (state, errors) = build_yaml(yaml);
    assert_eq!(messages(&errors), Vec::<String>::new());
    let lb = service(&state, "lb");
    assert_eq!(lb.external_ips, [v4(203, 0, 113, 20), v4(203, 0, 113, 10)]);
    assert!(lb.ports[0].node_port.is_some(), "a LoadBalancer is a NodePort too");
    let ranged = yaml.replace("  ports:", "  loadBalancerSourceRanges: [192.0.2.0/24]\n  ports:");
    let (state, _) = build_yaml(&ranged);
    assert_eq!(service(&state, "lb").source_ranges, ["192.0.2.0/24".parse().unwrap()]);
    let (_, errors) = build_yaml(&ranged.replace("192.0.2.0/24", "192.0.2.1/24"));
    assert!(
        messages(&errors)[0].contains("spec.loadBalancerSourceRanges: \"192.0.2.1/24\" is not a CIDR"),
        "{errors:?}"
    );
    let (_, errors) = build_yaml(&yaml.replace("203.0.113.20", "not-an-ip"));
    assert!(messages(&errors)[0].contains("spec.externalIPs: \"not-an-ip\" is not an IP address"), "{errors:?}");
}

#[test]
fn traffic_policies_are_read_and_local_keeps_this_nodes_endpoints() {
    let yaml = format!(
        "{}  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n{}{}",
        KUBIA,
        pod("a", "10.244.0.2", true, "{app: kubia}", "spec: {nodeName: node-a}\n"),
        pod("b", "10.244.0.3", true, "{app: kubia}", "spec: {nodeName: node-b}\n"),
    );
    let (state, errors) = build_yaml(&yaml);
    assert_eq!(messages(&errors), Vec::<String>::new());
    let kubia = service(&state, "kubia");
    assert_eq!(
        (kubia.external_traffic_policy, kubia.internal_traffic_policy),
        (TrafficPolicy::Local, TrafficPolicy::Local)
    );
    let on = |node| kubia.ports[0].active_endpoints_on(node).map(|e| e.addr.to_string()).collect::<Vec<_>>();
    assert_eq!(on(Some("node-a")), ["10.244.0.2"]);
    assert_eq!(on(Some("node-c")), Vec::<String>::new());
    assert_eq!(on(None).len(), 2);
    let (_, errors) = build_yaml(&format!("{KUBIA}  externalTrafficPolicy: Sometimes\n"));
    assert!(messages(&errors)[0].contains("spec.externalTrafficPolicy: unknown value \"Sometimes\""), "{errors:?}");
}

#[test]
fn a_local_load_balancer_gets_a_health_check_node_port() {
    let lb = |extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: lb}}\nspec:\n  type: LoadBalancer\n{extra}  ports: [{{port: 80}}]\n"
        )
    };
    let (state, _) = build_yaml(&lb("  externalTrafficPolicy: Local\n"));
    let port = service(&state, "lb").health_check_node_port.unwrap();
    assert!(NODE_PORT_RANGE.contains(&port) && Some(port) != service(&state, "lb").ports[0].node_port);
    let (state, _) = build_yaml(&lb("  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n"));
    assert_eq!(service(&state, "lb").health_check_node_port, Some(32000));
    let (state, _) = build_yaml(&lb(""));
    assert_eq!(service(&state, "lb").health_check_node_port, None);
    let (_, errors) = build_yaml(&lb("  healthCheckNodePort: 32000\n"));
    assert!(messages(&errors)[0].contains("spec.healthCheckNodePort"), "{errors:?}");
}

/// A cluster-mode build (the API source's objects).
fn build_cluster(yaml: &str) -> (DesiredState, Vec<ModelError>) {
    let opts = ModelOptions { controllers: Controllers::Cluster, ..ModelOptions::default() };
    build(&objects_from_yaml(yaml), DesiredState::default(), &opts)
}

const HINTED: &str = "
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  clusterIP: 10.96.0.20
  selector: {app: s}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: s-abc
  labels: {kubernetes.io/service-name: s}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.0.0.1]
  nodeName: a
  zone: z1
  hints: {forNodes: [{name: a}], forZones: [{name: z1}]}
- addresses: [10.0.0.2]
  nodeName: b
  zone: z1
  hints: {forNodes: [{name: b}], forZones: [{name: z1}]}
- addresses: [10.0.0.3]
  nodeName: c
  zone: z2
  hints: {forNodes: [{name: c}], forZones: [{name: z2}]}
";

#[test]
fn in_a_cluster_a_selectors_endpoints_come_from_its_slices_and_hints_narrow_them_as_kube_proxy_does() {
    let (state, errors) = build_cluster(HINTED);
    assert!(errors.is_empty(), "{errors:?}");
    let port = &service(&state, "s").ports[0];
    let chosen = |node, zone| port.cluster_endpoints(node, zone).iter().map(|e| e.addr.to_string()).collect::<Vec<_>>();
    // Node hints first (PreferSameNode), then zone hints (PreferClose).
    assert_eq!(chosen("a", Some("z1")), ["10.0.0.1"]);
    assert_eq!(chosen("d", Some("z1")), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(chosen("d", Some("z3")), ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "no hint for here: all");
    assert_eq!(chosen("d", None), ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "a node without zone label: all");
    // One ready endpoint without hints (a slice being rewritten): hints are ignored.
    let (state, _) = build_cluster(&HINTED.replace("  hints: {forNodes: [{name: c}], forZones: [{name: z2}]}\n", ""));
    let all = service(&state, "s").ports[0].cluster_endpoints("a", Some("z1")).len();
    assert_eq!(all, 3);
    // Standalone, the same selector picks pods (there are none here).
    let (state, _) = build_yaml(HINTED);
    assert!(service(&state, "s").ports[0].endpoints.is_empty());
}

#[test]
fn in_a_cluster_nothing_is_allocated_and_the_api_servers_addresses_are_trusted() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: outside}
spec:
  clusterIP: 172.20.0.10
  type: NodePort
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: unallocated}
spec:
  ports: [{port: 80}]
";
    let (state, errors) = build_cluster(yaml);
    assert_eq!(
        messages(&errors),
        ["test.yaml: Service default/unallocated: spec.clusterIP: empty, and the API server allocates it"]
    );
    let outside = service(&state, "outside");
    assert_eq!(outside.cluster_ips, [v4(172, 20, 0, 10)], "another ServiceCIDR's address");
    assert_eq!(outside.ports[0].node_port, None, "no node port is invented");
    assert!(!state.services.contains_key(&ServiceName::new("default", "unallocated")));
}

#[test]
fn a_proxy_mode_load_balancer_ip_is_not_captured_and_node_ports_can_be_declined() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 30081}]
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.10, ipMode: Proxy}, {ip: 203.0.113.11, ipMode: VIP}]
";
    let (state, errors) = build_yaml(yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let lb = service(&state, "lb");
    assert_eq!(lb.external_ips, [v4(203, 0, 113, 11)]);
    assert_eq!(lb.ports.iter().map(|p| p.node_port).collect::<Vec<_>>(), [None, Some(30081)]);
}

#[test]
fn in_a_cluster_what_the_api_server_accepted_is_taken_as_it_is() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  clusterIP: fd00::10
  clusterIPs: [fd00::10, 10.96.0.11]
  externalTrafficPolicy: Local
  healthCheckNodePort: 40001
  loadBalancerSourceRanges: [192.168.1.5/24, 'fd00::/8']
  ports: [{port: 80, nodePort: 40000}]
";
    let (state, errors) = build_cluster(yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let lb = service(&state, "lb");
    assert_eq!(lb.cluster_ips, ["fd00::10".parse::<IpAddr>().unwrap(), v4(10, 96, 0, 11)], "a dual-stack pair");
    assert_eq!((lb.ports[0].node_port, lb.health_check_node_port), (Some(40000), Some(40001)), "the server's range");
    assert_eq!(lb.source_ranges, ["192.168.1.0/24".parse().unwrap(), "fd00::/8".parse().unwrap()]);
    // Standalone, the same manifest is refused: this agent has no IPv6 service CIDR.
    let (_, errors) = build_yaml(yaml);
    assert_eq!(
        messages(&errors),
        [
            "test.yaml: Service default/lb: spec.ipFamilyPolicy: RequireDualStack needs a service CIDR of each family (--service-cidr)"
        ]
    );
}

fn with_cidrs(cidrs: &[&str]) -> ModelOptions {
    ModelOptions { service_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(), ..ModelOptions::default() }
}

/// The API server's defaulting: each policy, written or unwritten
/// clusterIPs, against service CIDRs of both families, IPv4 only, IPv6 only.
#[test]
fn ip_family_policies_follow_the_service_cidrs_of_the_agent() {
    use Family::{V4, V6};
    const BOTH: &[&str] = &["10.96.0.0/12", "fd00:10:96::/112"];
    const ONLY4: &[&str] = &["10.96.0.0/12"];
    const ONLY6: &[&str] = &["fd00:10:96::/112"];
    /// (service CIDRs, policy, written clusterIP, the families or an error).
    type Case<'a> = (&'a [&'a str], &'a str, &'a str, Result<&'a [Family], &'a str>);
    let cases: &[Case] = &[
        (BOTH, "SingleStack", "", Ok(&[V4])),
        (BOTH, "PreferDualStack", "", Ok(&[V4, V6])),
        (BOTH, "RequireDualStack", "", Ok(&[V4, V6])),
        (BOTH, "SingleStack", "fd00:10:96::5", Ok(&[V6])),
        (BOTH, "PreferDualStack", "fd00:10:96::5", Ok(&[V6, V4])),
        (BOTH, "RequireDualStack", "10.96.0.5", Ok(&[V4, V6])),
        (ONLY4, "SingleStack", "", Ok(&[V4])),
        (ONLY4, "PreferDualStack", "", Ok(&[V4])),
        (ONLY4, "RequireDualStack", "", Err("RequireDualStack needs a service CIDR of each family")),
        (ONLY4, "PreferDualStack", "10.96.0.5", Ok(&[V4])),
        (ONLY4, "SingleStack", "fd00:10:96::5", Err("spec.ipFamilies: IPv6 has no service CIDR here")),
        (ONLY6, "SingleStack", "", Ok(&[V6])),
        (ONLY6, "PreferDualStack", "", Ok(&[V6])),
        (ONLY6, "RequireDualStack", "", Err("RequireDualStack needs a service CIDR of each family")),
        (ONLY6, "PreferDualStack", "fd00:10:96::5", Ok(&[V6])),
        (ONLY6, "SingleStack", "10.96.0.5", Err("spec.ipFamilies: IPv4 has no service CIDR here")),
    ];
    for (cidrs, policy, written, want) in cases {
        let cluster_ip = if written.is_empty() { String::new() } else { format!("  clusterIP: {written}\n") };
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  ipFamilyPolicy: {policy}\n{cluster_ip}  ports: [{{port: 80}}]\n"
        );
        let opts = with_cidrs(cidrs);
        let (state, errors) = build(&objects_from_yaml(&yaml), DesiredState::default(), &opts);
        let case = format!("{cidrs:?} {policy} {written:?}");
        match want {
            Ok(families) => {
                assert!(errors.is_empty(), "{case}: {errors:?}");
                let ips = &service(&state, "s").cluster_ips;
                assert_eq!(ips.iter().map(|ip| Family::of(*ip)).collect::<Vec<_>>(), *families, "{case}");
                assert!(ips.iter().all(|ip| opts.service_cidr(Family::of(*ip)).unwrap().contains_host(*ip)), "{case}");
                if !written.is_empty() {
                    assert_eq!(ips[0].to_string(), *written, "{case}: the written address stays first");
                }
            }
            Err(reason) => {
                assert!(state.services.is_empty(), "{case}");
                assert!(messages(&errors)[0].contains(reason), "{case}: {errors:?}");
            }
        }
    }
}

#[test]
fn family_fields_that_contradict_each_other_are_refused_naming_the_field() {
    let cases = [
        ("ipFamilyPolicy: Sometimes", "spec.ipFamilyPolicy: unknown value \"Sometimes\""),
        ("ipFamilies: [IPv5]", "spec.ipFamilies[0]: unknown family \"IPv5\" (IPv4 or IPv6)"),
        ("ipFamilies: [IPv4, IPv4]", "spec.ipFamilies[1]: IPv4 is listed twice"),
        ("ipFamilies: [IPv4, IPv6, IPv4]", "spec.ipFamilies: 3 families given, at most 2"),
        ("ipFamilyPolicy: SingleStack, ipFamilies: [IPv4, IPv6]", "spec.ipFamilyPolicy: SingleStack takes one family"),
        (
            "clusterIPs: [10.96.0.30, 10.96.0.31]",
            "spec.clusterIPs[1]: 10.96.0.31 is IPv4 like spec.clusterIPs[0]: one address per family",
        ),
        ("clusterIP: 10.96.0.32, clusterIPs: [10.96.0.33]", "spec.clusterIP: 10.96.0.32 is not spec.clusterIPs[0]"),
        (
            "ipFamilies: [IPv6, IPv4], clusterIPs: [10.96.0.34]",
            "spec.clusterIPs[0]: 10.96.0.34 is not of spec.ipFamilies[0] (IPv6)",
        ),
        ("clusterIPs: ['fd00:99::1']", "spec.clusterIP: fd00:99::1 is not in the service CIDR fd00:10:96::/112"),
    ];
    let opts = with_cidrs(&["10.96.0.0/12", "fd00:10:96::/112"]);
    for (spec, reason) in cases {
        let yaml =
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {{{spec}, ports: [{{port: 80}}]}}\n");
        let (state, errors) = build(&objects_from_yaml(&yaml), DesiredState::default(), &opts);
        assert!(state.services.is_empty(), "{spec}");
        assert_eq!(messages(&errors).len(), 1, "{spec}: {errors:?}");
        assert!(messages(&errors)[0].contains(reason), "{spec}: {errors:?}");
    }
    let two_of_a_family =
        ModelOptions::service_cidrs(vec!["10.96.0.0/12".parse().unwrap(), "10.0.0.0/16".parse().unwrap()]);
    assert_eq!(
        two_of_a_family.unwrap_err().to_string(),
        "service CIDR 10.0.0.0/16: IPv4 has one already (10.96.0.0/12); give at most one per family"
    );
}

#[test]
fn dual_stack_pods_and_ipv6_slices_give_endpoints_of_both_families() {
    let yaml = format!(
        "{}{}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: m-v6\n  labels: {{kubernetes.io/service-name: manual}}\naddressType: IPv6\nports: [{{port: 8080}}]\nendpoints:\n- addresses: ['fd00:244::7']\n- addresses: [10.0.0.9]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: manual}}\nspec: {{ipFamilyPolicy: PreferDualStack, ports: [{{port: 80}}]}}\n",
        KUBIA.replace("spec:\n", "spec:\n  ipFamilyPolicy: PreferDualStack\n"),
        pod("kubia-1", "10.0.0.1", true, "{app: kubia}", "")
            .replace("  podIP: 10.0.0.1\n", "  podIP: 10.0.0.1\n  podIPs: [{ip: 10.0.0.1}, {ip: 'fd00:244::1'}]\n"),
    );
    let (state, errors) =
        build(&objects_from_yaml(&yaml), DesiredState::default(), &with_cidrs(&["10.96.0.0/12", "fd00:10:96::/112"]));
    assert_eq!(messages(&errors).len(), 1, "{errors:?}");
    assert!(messages(&errors)[0].contains("endpoints[1].addresses[0]: 10.0.0.9 is not IPv6 like its slice"));
    assert_eq!(active(&service(&state, "kubia").ports[0]), ["10.0.0.1:8080", "fd00:244::1:8080"]);
    assert_eq!(active(&service(&state, "manual").ports[0]), ["fd00:244::7:8080"]);
    assert_eq!(service(&state, "kubia").cluster_ips.len(), 2);
}
