//! deploy/lb-agent.yaml as the API server reads it: every document parsed
//! into its k8s-openapi type with no field left over, and the properties a
//! cluster depends on: RBAC that only lists and watches the resources
//! the agent uses, a DaemonSet in the host network that pins into the
//! host's bpffs, runs on every node, is not privileged but has exactly the
//! capabilities the datapath needs, and whose flags and probes agree on
//! kube-proxy's health port. No root needed.

use std::collections::BTreeSet;

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, HTTPGetAction, PodSpec, Probe, ServiceAccount, Toleration},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
    serde::{Deserialize, Serialize, de::DeserializeOwned},
};
use serde_json::Value;

const MANIFEST: &str = include_str!("../../deploy/lb-agent.yaml");
const NAMESPACE: &str = "kube-system";
const HEALTH_PORT: i32 = 10256;

struct Manifest {
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    binding: ClusterRoleBinding,
    daemon_set: DaemonSet,
}

/// Parses every document; panics on a kind it does not expect, a kind
/// twice or missing, or a field the type does not know (a misspelt field
/// would otherwise be dropped without a word, here and by the API server).
fn manifest() -> Manifest {
    let mut service_account = None;
    let mut cluster_role = None;
    let mut binding = None;
    let mut daemon_set = None;
    for document in serde_yaml_ng::Deserializer::from_str(MANIFEST) {
        let value = Value::deserialize(document).expect("deploy/lb-agent.yaml is not valid YAML");
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().expect("a document without kind").to_owned();
        let slot_taken = match kind.as_str() {
            "ServiceAccount" => service_account.replace(typed(&value)).is_some(),
            "ClusterRole" => cluster_role.replace(typed(&value)).is_some(),
            "ClusterRoleBinding" => binding.replace(typed(&value)).is_some(),
            "DaemonSet" => daemon_set.replace(typed(&value)).is_some(),
            other => panic!("unexpected {other} in deploy/lb-agent.yaml"),
        };
        assert!(!slot_taken, "two {kind} documents");
    }
    Manifest {
        service_account: service_account.expect("no ServiceAccount"),
        cluster_role: cluster_role.expect("no ClusterRole"),
        binding: binding.expect("no ClusterRoleBinding"),
        daemon_set: daemon_set.expect("no DaemonSet"),
    }
}

/// Every rule of `role` as (group, resource, verb).
fn grants(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none());
        for group in rule.api_groups.as_deref().expect("a rule without apiGroups") {
            for resource in rule.resources.as_deref().expect("a rule without resources") {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

/// deploy/lb-agent-ingress.yaml, the opt-in role for the Ingress proxy's
/// HTTPS and status: Secrets listed and watched, Ingress status patched,
/// nothing else, bound to the agent's account.
#[test]
fn the_ingress_role_adds_only_secrets_and_ingress_status_for_the_agent_s_account() {
    let mut role = None;
    let mut binding = None;
    for document in serde_yaml_ng::Deserializer::from_str(include_str!("../../deploy/lb-agent-ingress.yaml")) {
        let value = Value::deserialize(document).expect("deploy/lb-agent-ingress.yaml is not valid YAML");
        match value["kind"].as_str() {
            Some("ClusterRole") => assert!(role.replace(typed::<ClusterRole>(&value)).is_none()),
            Some("ClusterRoleBinding") => assert!(binding.replace(typed::<ClusterRoleBinding>(&value)).is_none()),
            other => panic!("unexpected {other:?} in deploy/lb-agent-ingress.yaml"),
        }
    }
    let (role, binding) = (role.expect("a ClusterRole"), binding.expect("a ClusterRoleBinding"));
    let owned = |g: &str, r: &str, v: &str| (g.to_owned(), r.to_owned(), v.to_owned());
    let wanted = [owned("", "secrets", "list"), owned("", "secrets", "watch")]
        .into_iter()
        .chain([owned("networking.k8s.io", "ingresses/status", "patch")])
        .collect();
    assert_eq!(grants(&role), wanted);
    assert_eq!(Some(binding.role_ref.name.as_str()), role.metadata.name.as_deref());
    let agent = manifest().service_account;
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
        (agent.metadata.name.as_deref().unwrap(), agent.metadata.namespace.as_deref())
    );
}

/// `value` as a `T`, which must serialize back to the same JSON: anything
/// lost on the way is a field `T` does not have.
fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> T {
    let what = format!("{} {}", value["kind"], value["metadata"]["name"]);
    let object: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&object).expect("serializable");
    assert_eq!(&back, value, "{what}: a field the type does not know (misspelt or misplaced?)");
    object
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().expect("a pod template with a spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let containers = &pod_spec(ds).containers;
    assert_eq!(containers.len(), 1, "one container, the agent");
    &containers[0]
}

#[test]
fn cluster_role_only_lists_and_watches_what_the_agent_reads() {
    let m = manifest();
    let mut granted = BTreeSet::new();
    for rule in m.cluster_role.rules.as_deref().unwrap_or_default() {
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs");
        assert!(rule.resource_names.is_none(), "no resourceNames (they would narrow list/watch to nothing useful)");
        let groups = rule.api_groups.as_deref().expect("a rule without apiGroups");
        let resources = rule.resources.as_deref().expect("a rule without resources");
        for group in groups {
            for resource in resources {
                for verb in &rule.verbs {
                    granted.insert((group.as_str(), resource.as_str(), verb.as_str()));
                }
            }
        }
    }
    let wanted: BTreeSet<_> = [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "nodes"),
        ("networking.k8s.io", "servicecidrs"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "ingressclasses"),
    ]
    .into_iter()
    .flat_map(|(group, resource)| ["list", "watch"].map(|verb| (group, resource, verb)))
    .collect();
    assert_eq!(granted, wanted, "exactly list and watch on the six resources, nothing else");
    assert!(m.cluster_role.aggregation_rule.is_none(), "an aggregated role would take in other roles' rules");
}

#[test]
fn service_account_binding_and_daemon_set_name_the_same_account() {
    let m = manifest();
    let account = m.service_account.metadata.name.as_deref().expect("a named ServiceAccount");
    assert_eq!(m.service_account.metadata.namespace.as_deref(), Some(NAMESPACE));

    let role_ref = &m.binding.role_ref;
    assert_eq!(role_ref.api_group.as_deref(), Some("rbac.authorization.k8s.io"));
    assert_eq!(role_ref.kind, "ClusterRole");
    assert_eq!(Some(role_ref.name.as_str()), m.cluster_role.metadata.name.as_deref());

    let subjects = m.binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "the agent's account only");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, account);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));

    assert_eq!(m.daemon_set.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(pod_spec(&m.daemon_set).service_account_name.as_deref(), Some(account));
}

#[test]
fn daemon_set_runs_on_every_node_in_the_host_network() {
    let ds = manifest().daemon_set;
    let spec = &ds.spec;
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).expect("template labels");
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the selector must match the template's labels");

    let pod = pod_spec(&ds);
    assert_eq!(pod.host_network, Some(true), "XDP and TC attach to the node's interfaces");
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    // An empty key with Exists matches every taint, of every effect.
    let tolerate_all = Toleration { operator: Some("Exists".into()), ..Default::default() };
    assert!(pod.tolerations.as_deref().unwrap_or_default().contains(&tolerate_all), "must tolerate every taint");
    // Cluster DNS is behind a cluster IP, which the host network namespace
    // does not reach through this datapath.
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
    assert!(pod.termination_grace_period_seconds.is_some());

    let strategy = spec.update_strategy.as_ref().expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn container_has_exactly_its_capabilities_and_is_not_privileged() {
    let ds = manifest().daemon_set;
    let container = agent_container(&ds);
    let security = container.security_context.as_ref().expect("a securityContext");
    assert_ne!(security.privileged, Some(true), "capabilities instead of privileged");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    // The agent refuses to run as anyone but uid 0.
    assert_eq!(security.run_as_user, Some(0));
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]), "every other capability dropped");
    let added: BTreeSet<&str> = caps.add.as_deref().unwrap_or_default().iter().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));
    // The default AppArmor profile denies pinning under /sys/fs/bpf.
    let apparmor = security.app_armor_profile.as_ref().expect("an AppArmor profile");
    assert_eq!(apparmor.type_, "Unconfined");
}

#[test]
fn host_bpffs_and_cgroup_are_mounted() {
    let ds = manifest().daemon_set;
    let pod = pod_spec(&ds);
    let container = agent_container(&ds);
    let mount_of = |host_path: &str| {
        let volume = pod
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host_path))
            .unwrap_or_else(|| panic!("no hostPath volume for {host_path}"));
        container
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| m.name == volume.name)
            .unwrap_or_else(|| panic!("volume {} is not mounted", volume.name))
    };

    // Pins live in the host's bpffs and outlive the pod. Bidirectional would
    // be refused by the API server for a container that is not privileged.
    let bpffs = mount_of("/sys/fs/bpf");
    assert_eq!(bpffs.mount_path, "/sys/fs/bpf", "the agent pins under /sys/fs/bpf/lb");
    assert_ne!(bpffs.read_only, Some(true), "the agent pins into it");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("HostToContainer"));

    let cgroup = mount_of("/sys/fs/cgroup");
    assert_eq!(cgroup.read_only, Some(true));
}

#[test]
fn args_env_and_probes_agree_on_node_name_and_health_port() {
    let ds = manifest().daemon_set;
    let container = agent_container(&ds);
    let args = container.args.as_deref().expect("args");
    assert_eq!(args.first().map(String::as_str), Some("run"), "the image's entrypoint is lb-agent");
    let flag = |name: &str| args.iter().find_map(|a| a.strip_prefix(&format!("--{name}=")));
    assert!(flag("device").is_some() && flag("pod-device").is_some(), "devices to attach to");
    assert!(flag("service-cidr").is_some());
    assert!(!args.iter().any(|a| a.starts_with("--manifests")), "API mode reads no manifest directory");
    // A rolling update must not detach the programs.
    assert!(!args.iter().any(|a| a == "--detach-on-exit"));
    let bind = flag("health-bind-address").expect("--health-bind-address");
    assert!(bind.starts_with("0.0.0.0:"), "kubelet probes the node IP, so the bind address must include it");
    assert_eq!(bind.rsplit_once(':').map(|(_, port)| port), Some(HEALTH_PORT.to_string().as_str()));

    let env = container.env.as_deref().unwrap_or_default();
    let var = |name: &str| env.iter().find(|e| e.name == name);
    let node_name = var("NODE_NAME").and_then(|e| e.value_from.as_ref()).and_then(|v| v.field_ref.as_ref());
    assert_eq!(node_name.map(|f| f.field_path.as_str()), Some("spec.nodeName"));
    assert_eq!(flag("node-name"), Some("$(NODE_NAME)"));
    // The "kubernetes" Service's cluster IP is unreachable from the host
    // network namespace without kube-proxy: the agent needs the real address.
    for name in ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"] {
        assert!(var(name).and_then(|e| e.value.as_deref()).is_some_and(|v| !v.is_empty()), "{name} must be set");
    }

    let ports = container.ports.as_deref().unwrap_or_default();
    assert!(ports.iter().any(|p| p.container_port == HEALTH_PORT), "the health port is declared");
    let http_get = |probe: Option<&Probe>, what: &str| -> HTTPGetAction {
        probe.and_then(|p| p.http_get.clone()).unwrap_or_else(|| panic!("{what}: an httpGet probe"))
    };
    let port_number = |port: &IntOrString| match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .unwrap_or_else(|| panic!("no container port named {name}")),
    };
    for (probe, what, path) in [
        (container.readiness_probe.as_ref(), "readiness", "/healthz"),
        (container.liveness_probe.as_ref(), "liveness", "/livez"),
    ] {
        let get = http_get(probe, what);
        assert_eq!(get.path.as_deref(), Some(path), "{what} probe path");
        assert_eq!(port_number(&get.port), HEALTH_PORT, "{what} probe port");
        assert!(get.host.is_none(), "{what} probe: the pod IP is the node's, where the agent listens");
    }

    // BPF maps are charged to the pod's memory cgroup: a limit would fail them.
    let resources = container.resources.as_ref().expect("resources");
    assert!(resources.requests.as_ref().is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    assert!(!resources.limits.as_ref().is_some_and(|l| l.contains_key("memory")), "no memory limit");
}

/// Every flag the DaemonSet passes is one `lb-agent run` accepts, and every
/// flag it requires is passed: otherwise every pod crash-loops.
#[test]
fn args_are_flags_the_agent_accepts() {
    let ds = manifest().daemon_set;
    let args = agent_container(&ds).args.clone().unwrap_or_default();
    let agent = lb_tests::workspace_binary("LB_AGENT_BIN", "lb-agent").expect("the agent binary");
    let out = std::process::Command::new(&agent).args(["run", "--help"]).output().expect("lb-agent run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let flags_in = |text: &str| -> BTreeSet<String> {
        text.split(|c: char| c.is_whitespace() || "[],=".contains(c))
            .filter_map(|w| w.strip_prefix("--"))
            .map(str::to_owned)
            .collect()
    };
    let accepted = flags_in(&help);
    let passed: BTreeSet<String> =
        args.iter().filter_map(|a| a.strip_prefix("--")).map(|a| a.split('=').next().unwrap_or(a).to_owned()).collect();
    let unknown: Vec<&String> = passed.difference(&accepted).collect();
    assert!(unknown.is_empty(), "{} does not accept {unknown:?}", agent.display());
    // Required flags appear in the usage line outside of [OPTIONS].
    let usage = help.lines().find(|l| l.starts_with("Usage:")).expect("a usage line");
    let missing: Vec<String> = flags_in(usage).difference(&passed).cloned().collect();
    assert!(missing.is_empty(), "{} requires {missing:?}", agent.display());
}
