//! The API server double (tests/src/apiserver.rs) driven by kube-rs itself,
//! the way the agent's watchers and reflectors will meet it: paged lists,
//! watch events in order, relists after compaction, label selectors, an
//! API server that goes down and comes back. It listens in the test's own
//! namespace: no root needed.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    networking::v1::ServiceCIDR,
};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{ListParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector,
        watcher::{self, Event},
    },
};
use lb_tests::{
    apiserver::{ApiServer, ExpiredWatch},
    netns::unique_name,
};
use serde_json::{Value, json};

/// How long a test waits for one watcher event or server condition.
const DEADLINE: Duration = Duration::from_secs(5);

/// The selector kube-proxy (and so the agent) watches Services with.
const PROXIED: &str = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

type Events = BoxStream<'static, watcher::Result<Event<Service>>>;

fn service(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": "default", "labels": labels },
        "spec": { "ports": [{ "port": 80, "protocol": "TCP" }] },
    })
}

/// A kube-rs client configured from the kubeconfig the server writes.
async fn client(server: &ApiServer) -> anyhow::Result<Client> {
    let path = std::env::temp_dir().join(unique_name("kubeconfig"));
    server.write_kubeconfig(&path)?;
    let kubeconfig = Kubeconfig::read_from(&path);
    std::fs::remove_file(&path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig?, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn watch(api: Api<Service>, config: watcher::Config) -> Events {
    watcher::watcher(api, config).boxed()
}

/// An event as a short line: `InitApply NAME`, `WatchError 410`, ...
fn describe(event: &watcher::Result<Event<Service>>) -> String {
    match event {
        Ok(Event::Init) => "Init".into(),
        Ok(Event::InitApply(o)) => format!("InitApply {}", o.name_any()),
        Ok(Event::InitDone) => "InitDone".into(),
        Ok(Event::Apply(o)) => format!("Apply {}", o.name_any()),
        Ok(Event::Delete(o)) => format!("Delete {}", o.name_any()),
        Err(watcher::Error::WatchError(status)) => format!("WatchError {}", status.code),
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) => format!("WatchStartFailed {}", status.code),
        Err(watcher::Error::WatchStartFailed(_)) => "WatchStartFailed".into(),
        Err(watcher::Error::WatchFailed(_)) => "WatchFailed".into(),
        Err(e) => format!("error {e}"),
    }
}

/// The next event, or an error after [`DEADLINE`].
async fn next(events: &mut Events) -> anyhow::Result<watcher::Result<Event<Service>>> {
    tokio::time::timeout(DEADLINE, events.next())
        .await
        .context("no watcher event in time")?
        .context("the watcher stream ended")
}

/// The next `n` events, described.
async fn next_n(events: &mut Events, n: usize) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    while seen.len() < n {
        seen.push(describe(&next(events).await?));
    }
    Ok(seen)
}

/// The events up to and including the first described as `last`.
async fn events_until(events: &mut Events, last: &str) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|e| e != last) {
        seen.push(describe(&next(events).await.with_context(|| format!("waiting for {last:?} after {seen:?}"))?));
    }
    Ok(seen)
}

/// Drives the watcher (so it opens its watch) until the server has
/// `count` open watches; any event meanwhile is an error.
async fn until_watching(events: &mut Events, server: &ApiServer, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while server.watch_count() != count {
        ensure!(Instant::now() < deadline, "{} open watches, not {count}", server.watch_count());
        if let Ok(event) = tokio::time::timeout(Duration::from_millis(10), events.next()).await {
            bail!("unexpected event while waiting for the watch: {:?}", event.as_ref().map(describe));
        }
    }
    Ok(())
}

fn names<K: Resource>(objects: &[K]) -> BTreeSet<String> {
    objects.iter().map(ResourceExt::name_any).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

type RawWatch = BoxStream<'static, kube::Result<WatchEvent<Service>>>;

/// The next event of a raw watch (None: it ended), or an error after [`DEADLINE`].
async fn next_event(stream: &mut RawWatch) -> anyhow::Result<Option<kube::Result<WatchEvent<Service>>>> {
    tokio::time::timeout(DEADLINE, stream.next()).await.context("no watch event in time")
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn paged_list_is_complete_and_pages_one_snapshot() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    for i in 0..5 {
        server.apply(service(&format!("svc-{i}"), json!({})))?;
    }
    let api: Api<Service> = Api::all(client(&server).await?);
    let first = api.list(&ListParams::default().limit(2)).await?;
    let first_token = first.metadata.continue_.clone().context("the first page has no continue token")?;
    // Changes between pages show in none of them: the pages are one snapshot.
    server.apply(service("svc-late", json!({})))?;
    server.delete("Service", "default", "svc-0")?;
    let (mut listed, mut pages, mut token) = (names(&first.items), 1, Some(first_token.clone()));
    while let Some(t) = token {
        let page = api.list(&ListParams::default().limit(2).continue_token(&t)).await?;
        assert_eq!(page.metadata.resource_version, first.metadata.resource_version);
        listed.extend(names(&page.items));
        pages += 1;
        token = page.metadata.continue_;
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, set(&["svc-0", "svc-1", "svc-2", "svc-3", "svc-4"]));

    server.compact();
    let expired = api.list(&ListParams::default().limit(2).continue_token(&first_token)).await.unwrap_err();
    assert_eq!(status_code(&expired), Some(410), "{expired}");

    // kube-rs's watcher pages its initial list itself.
    let mut events = watch(api, watcher::Config::default().page_size(2));
    let seen = events_until(&mut events, "InitDone").await?;
    let expected = ["Init", "InitApply svc-1", "InitApply svc-2", "InitApply svc-3", "InitApply svc-4"];
    assert_eq!(seen, [&expected[..], &["InitApply svc-late", "InitDone"]].concat());
    let list_requests = server.requests().iter().filter(|(_, target)| target.contains("limit=2")).count();
    assert_eq!(list_requests, 3 + 1 + 3, "three pages, the expired try, three pages for the watcher");
    Ok(())
}

#[tokio::test]
async fn watch_events_arrive_in_order() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    server.apply(service("a", json!({})))?;
    let api: Api<Service> = Api::all(client(&server).await?);
    let mut events = watch(api, watcher::Config::default());
    assert_eq!(next_n(&mut events, 3).await?, ["Init", "InitApply a", "InitDone"]);

    server.apply(service("b", json!({})))?;
    server.apply(service("a", json!({ "app": "kubia" })))?;
    server.apply(service("a", json!({ "app": "kubia" })))?; // no change: no event
    server.delete("Service", "default", "b")?;
    let mut seen = Vec::new();
    let mut versions = Vec::new();
    for _ in 0..3 {
        let event = next(&mut events).await?;
        if let Ok(Event::Apply(s) | Event::Delete(s)) = &event {
            versions.push(s.resource_version().context("event without resourceVersion")?.parse::<u64>()?);
        }
        seen.push(describe(&event));
    }
    assert_eq!(seen, ["Apply b", "Apply a", "Delete b"]);
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    let a = server.get("Service", "default", "a").context("a is gone")?;
    assert_eq!(a["metadata"]["labels"]["app"], "kubia");

    // What kube-rs 5 asks for, for the report and the agent's authors.
    let requests = server.requests();
    eprintln!("kube-rs watcher requests: {requests:#?}");
    let (list, watch) = (&requests[0].1, &requests[1].1);
    assert!(list.starts_with("/api/v1/services?") && list.contains("limit=500"), "{list}");
    assert!(watch.contains("watch=true") && watch.contains("allowWatchBookmarks=true"), "{watch}");
    Ok(())
}

#[tokio::test]
async fn watcher_relists_after_compaction_and_ends_with_the_right_state() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    for name in ["a", "b", "c"] {
        server.apply(service(name, json!({})))?;
    }
    let api: Api<Service> = Api::all(client(&server).await?);
    let (reader, writer) = reflector::store();
    let mut events = reflector(writer, watcher::watcher(api, watcher::Config::default())).boxed();
    let seen = next_n(&mut events, 5).await?;
    assert_eq!(seen, ["Init", "InitApply a", "InitApply b", "InitApply c", "InitDone"]);
    until_watching(&mut events, &server, 1).await?;

    // Its watch ends, then changes it cannot see and a compaction: the
    // resourceVersion it resumes from is gone.
    server.end_watches();
    server.delete("Service", "default", "b")?;
    server.apply(service("c", json!({ "app": "changed" })))?;
    server.apply(service("d", json!({})))?;
    server.compact();

    let seen = events_until(&mut events, "InitDone").await?;
    assert_eq!(seen, ["WatchError 410", "Init", "InitApply a", "InitApply c", "InitApply d", "InitDone"]);
    let state: BTreeSet<String> = reader.state().iter().map(|s| s.name_any()).collect();
    assert_eq!(state, set(&["a", "c", "d"]));
    let c = reader.find(|s| s.name_any() == "c").context("c missing")?;
    assert_eq!(c.labels().get("app").map(String::as_str), Some("changed"));
    Ok(())
}

#[tokio::test]
async fn label_selectors_filter_lists_and_watches() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    server.apply(service("plain", json!({ "app": "kubia" })))?;
    server.apply(service("headless", json!({ "service.kubernetes.io/headless": "" })))?;
    server.apply(service("proxied", json!({ "service.kubernetes.io/service-proxy-name": "other" })))?;
    let mut elsewhere = service("elsewhere", json!({ "app": "kubia" }));
    elsewhere["metadata"]["namespace"] = "kube-system".into();
    server.apply(elsewhere)?;
    let client = client(&server).await?;
    let api: Api<Service> = Api::all(client.clone());

    let list = |selector: ListParams| {
        let api = api.clone();
        async move { anyhow::Ok(names(&api.list(&selector).await?.items)) }
    };
    assert_eq!(list(ListParams::default().labels(PROXIED)).await?, set(&["plain", "elsewhere"]));
    assert_eq!(list(ListParams::default().labels("app==kubia")).await?, set(&["plain", "elsewhere"]));
    assert_eq!(list(ListParams::default().labels("app!=kubia")).await?, set(&["headless", "proxied"]));
    assert_eq!(list(ListParams::default().labels("service.kubernetes.io/headless")).await?, set(&["headless"]));
    assert_eq!(list(ListParams::default().fields("metadata.name=plain")).await?, set(&["plain"]));
    assert_eq!(list(ListParams::default().fields("metadata.namespace=kube-system")).await?, set(&["elsewhere"]));
    let in_default = Api::<Service>::namespaced(client, "default").list(&ListParams::default()).await?;
    assert_eq!(names(&in_default.items), set(&["plain", "headless", "proxied"]));
    let unsupported = api.list(&ListParams::default().fields("spec.clusterIP=None")).await.unwrap_err();
    assert_eq!(status_code(&unsupported), Some(400), "{unsupported}");

    let mut events = watch(api, watcher::Config::default().labels(PROXIED));
    let seen = events_until(&mut events, "InitDone").await?;
    assert_eq!(seen, ["Init", "InitApply plain", "InitApply elsewhere", "InitDone"], "in etcd's key order");
    // An object that stops matching is deleted for the watch, one that
    // starts matching added; changes of others are not seen.
    server.apply(service("plain", json!({ "service.kubernetes.io/headless": "" })))?;
    server.apply(service("headless", json!({})))?;
    server.apply(service("proxied", json!({ "service.kubernetes.io/service-proxy-name": "another" })))?;
    server.apply(service("marker", json!({})))?;
    assert_eq!(next_n(&mut events, 3).await?, ["Delete plain", "Apply headless", "Apply marker"]);
    Ok(())
}

#[tokio::test]
async fn watcher_errors_while_the_server_is_down_and_recovers() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    server.apply(service("a", json!({})))?;
    let api: Api<Service> = Api::all(client(&server).await?);
    let mut events = watch(api.clone(), watcher::Config::default());
    assert_eq!(next_n(&mut events, 3).await?, ["Init", "InitApply a", "InitDone"]);
    until_watching(&mut events, &server, 1).await?;

    server.stop();
    server.apply(service("b", json!({})))?;
    assert_eq!(next_n(&mut events, 1).await?, ["WatchStartFailed"]);
    assert!(api.list(&ListParams::default()).await.is_err(), "a stopped server answered");
    server.restart()?;
    // It resumes where it was: the change made while the server was down arrives.
    assert_eq!(next_n(&mut events, 1).await?, ["Apply b"]);

    // A reset connection: the watch fails, and the watcher resumes again.
    until_watching(&mut events, &server, 1).await?;
    server.drop_connections();
    server.apply(service("c", json!({})))?;
    let seen = events_until(&mut events, "Apply c").await?;
    assert_eq!(seen, ["WatchFailed", "Apply c"]);
    Ok(())
}

#[tokio::test]
async fn watch_protocol_bookmarks_timeouts_and_expiry() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    let a = server.apply(service("a", json!({})))?;
    let rv = a["metadata"]["resourceVersion"].as_str().context("no resourceVersion")?.to_owned();
    let api: Api<Service> = Api::all(client(&server).await?);

    let mut stream = api.watch(&WatchParams::default().timeout(1), &rv).await?.boxed();
    let b = server.apply(service("b", json!({})))?;
    server.apply(b.clone())?; // the same again: no MODIFIED
    match next_event(&mut stream).await? {
        Some(Ok(WatchEvent::Added(s))) => assert_eq!(s.name_any(), "b"),
        other => bail!("expected b ADDED, got {other:?}"),
    }
    // A bookmark carries the current resourceVersion (a periodic one may
    // come before the one asked for: the same).
    server.bookmark_now();
    match next_event(&mut stream).await? {
        Some(Ok(WatchEvent::Bookmark(bookmark))) => {
            assert_eq!(bookmark.metadata.resource_version, b["metadata"]["resourceVersion"].as_str().unwrap_or(""));
        }
        other => bail!("expected a bookmark, got {other:?}"),
    }
    // timeoutSeconds=1 ends the stream (periodic bookmarks may come first).
    let started = Instant::now();
    while let Some(event) = next_event(&mut stream).await? {
        ensure!(matches!(event, Ok(WatchEvent::Bookmark(_))), "unexpected {event:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "the watch outlived its timeout");

    server.compact();
    let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
    match next_event(&mut stream).await? {
        Some(Ok(WatchEvent::Error(status))) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => bail!("expected an expired ERROR event, got {other:?}"),
    }
    assert!(next_event(&mut stream).await?.is_none(), "the expired watch went on");
    server.set_expired_watch(ExpiredWatch::HttpGone);
    let refused = api.watch(&WatchParams::default(), &rv).await.err().context("an expired watch started")?;
    assert_eq!(status_code(&refused), Some(410), "{refused}");
    Ok(())
}

/// kube-rs 5's watcher relists on a 410 ERROR event (what kube-apiserver
/// sends) but not on a watch refused with HTTP 410: it retries the same
/// resourceVersion forever. Pinned here because the agent inherits it.
#[tokio::test]
async fn kube_rs_watcher_does_not_relist_on_http_410() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    server.apply(service("a", json!({})))?;
    let api: Api<Service> = Api::all(client(&server).await?);
    let mut events = watch(api, watcher::Config::default());
    assert_eq!(next_n(&mut events, 3).await?, ["Init", "InitApply a", "InitDone"]);
    until_watching(&mut events, &server, 1).await?;
    server.set_expired_watch(ExpiredWatch::HttpGone);
    server.end_watches();
    server.apply(service("b", json!({})))?;
    server.compact();
    assert_eq!(next_n(&mut events, 3).await?, ["WatchStartFailed 410"; 3]);
    Ok(())
}

#[tokio::test]
async fn streaming_list_watcher_gets_its_initial_events() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    server.apply(service("a", json!({})))?;
    server.apply(service("b", json!({})))?;
    let api: Api<Service> = Api::all(client(&server).await?);
    let mut events = watch(api, watcher::Config::default().streaming_lists());
    assert_eq!(next_n(&mut events, 4).await?, ["Init", "InitApply a", "InitApply b", "InitDone"]);
    server.apply(service("c", json!({})))?;
    assert_eq!(next_n(&mut events, 1).await?, ["Apply c"]);
    let (_, first) = &server.requests()[0];
    assert!(first.contains("sendInitialEvents=true"), "{first}");
    Ok(())
}

#[tokio::test]
async fn discovery_version_service_cidrs_nodes_pods_and_delay() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    let client = client(&server).await?;
    assert_eq!(client.apiserver_version().await?.minor, "37");
    let networking = kube::discovery::group(&client, "networking.k8s.io").await?;
    assert!(networking.recommended_kind("ServiceCIDR").is_some());
    let core = kube::discovery::group(&client, "").await?;
    assert!(core.recommended_kind("Service").is_some() && core.recommended_kind("Node").is_some());

    server.apply(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": { "name": "kubernetes" },
        "spec": { "cidrs": ["10.96.0.0/12"] },
    }))?;
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    assert_eq!(names(&cidrs.list(&ListParams::default()).await?.items), set(&["kubernetes"]));
    server.set_service_cidrs_api(false);
    let missing = cidrs.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&missing), Some(404), "{missing}");
    // As on a server before 1.33: the group's other kinds (Ingress) stay.
    let networking = kube::discovery::group(&client, "networking.k8s.io").await?;
    assert!(networking.recommended_kind("ServiceCIDR").is_none() && networking.recommended_kind("Ingress").is_some());

    server.apply(json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": "node-1" } }))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get("node-1").await?;
    assert!(node.metadata.uid.is_some() && node.metadata.creation_timestamp.is_some());
    assert_eq!(status_code(&nodes.get("node-2").await.unwrap_err()), Some(404));

    Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?;
    assert!(server.requests().iter().any(|(method, target)| method == "GET" && target.starts_with("/api/v1/pods")));

    server.set_response_delay(Duration::from_millis(300));
    let started = Instant::now();
    nodes.list(&ListParams::default()).await?;
    assert!(started.elapsed() >= Duration::from_millis(300));
    Ok(())
}
