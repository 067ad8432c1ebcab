//! kmock's Kubernetes API emulator (tests/src/kmock.rs) as kube-rs sees it:
//! lists of what the harness wrote, and a watcher's initial list, change and
//! deletion. The emulator runs in the test's own namespace: no root needed.

use std::{collections::BTreeSet, time::Duration};

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher::{self, Event},
};
use lb_tests::{kmock::Kmock, netns::unique_name};
use serde_json::{Value, json};

/// How long one watch event may take to arrive.
const TIMEOUT: Duration = Duration::from_secs(10);

fn service(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": port, "protocol": "TCP"}]},
    })
}

fn endpoint_slice(service: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-1"),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

/// The watcher's next event, failing on an error or after [`TIMEOUT`].
async fn next(events: &mut BoxStream<'_, Result<Event<Service>, watcher::Error>>) -> anyhow::Result<Event<Service>> {
    let event = tokio::time::timeout(TIMEOUT, events.try_next()).await;
    Ok(event.map_err(|_| anyhow::anyhow!("no watch event within {TIMEOUT:?}"))??.expect("a watcher never ends"))
}

fn names<K: ResourceExt>(objects: impl IntoIterator<Item = K>) -> BTreeSet<String> {
    objects.into_iter().map(|o| o.name_any()).collect()
}

#[tokio::test]
async fn kube_rs_lists_and_watches_kmock() -> anyhow::Result<()> {
    let kmock = Kmock::start()?;
    kmock.create(&service("a", 80))?;
    kmock.create(&service("b", 80))?;
    kmock.create(&endpoint_slice("a"))?;
    kmock.create(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}))?;

    let dir = std::env::temp_dir().join(unique_name("kmock"));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    kmock.write_kubeconfig(&kubeconfig)?;
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig)?, &KubeConfigOptions::default()).await?;
    std::fs::remove_dir_all(&dir)?;
    let client = Client::try_from(config)?;

    let services = Api::<Service>::all(client.clone()).list(&ListParams::default()).await?;
    assert_eq!(names(services), BTreeSet::from(["a".into(), "b".into()]));
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default").list(&ListParams::default()).await?;
    let [slice] = &slices.items[..] else { panic!("one endpointslice expected, got {:?}", slices.items) };
    assert_eq!(slice.labels()["kubernetes.io/service-name"], "a");
    assert_eq!(slice.endpoints.as_ref().expect("endpoints")[0].addresses, ["10.0.0.1"]);
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?;
    assert_eq!(names(nodes), BTreeSet::from(["node-1".into()]));

    let mut events = watcher::watcher(Api::<Service>::all(client), watcher::Config::default()).boxed();
    assert!(matches!(next(&mut events).await?, Event::Init));
    let mut initial = BTreeSet::new();
    loop {
        match next(&mut events).await? {
            Event::InitApply(svc) => initial.insert(svc.name_any()),
            Event::InitDone => break,
            other => panic!("unexpected event in the initial list: {other:?}"),
        };
    }
    assert_eq!(initial, BTreeSet::from(["a".into(), "b".into()]));

    let replaced = kmock.replace(&service("a", 8080))?;
    match next(&mut events).await? {
        Event::Apply(svc) => {
            assert_eq!(svc.name_any(), "a");
            assert_eq!(svc.spec.expect("a spec").ports.expect("ports")[0].port, 8080);
            assert_eq!(svc.metadata.resource_version.as_deref(), replaced["metadata"]["resourceVersion"].as_str());
        }
        other => panic!("expected service a modified, got {other:?}"),
    }

    kmock.delete("Service", Some("default"), "b")?;
    match next(&mut events).await? {
        Event::Delete(svc) => assert_eq!(svc.name_any(), "b"),
        other => panic!("expected service b deleted, got {other:?}"),
    }
    Ok(())
}
