//! A Kubernetes API server for the agent to list and watch: kmock's
//! emulator (PyPI `kmock`, written by others, so the tests do not check the
//! agent against our own reading of the API), run by tests/kmock/serve.py
//! from the venv `cargo xtask setup` makes. The tests write objects to it
//! with plain HTTP; serve.py lists how it differs from a real API server.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::netns::{ChildGuard, Netns};

/// How long the emulator may take to start (Python imports aiohttp), and
/// each request to it.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds serve.py registers: (kind, apiVersion, plural, namespaced).
const KINDS: &[(&str, &str, &str, bool)] = &[
    ("Service", "v1", "services", true),
    ("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", true),
    ("Node", "v1", "nodes", false),
    ("ServiceCIDR", "networking.k8s.io/v1", "servicecidrs", false),
];

/// The running emulator, killed on drop. `'ns` is the namespace it runs in,
/// which its requests enter too.
pub struct Kmock<'ns> {
    ns: Option<&'ns Netns>,
    port: u16,
    _process: ChildGuard,
}

impl Kmock<'static> {
    /// Starts the emulator in the current network namespace (no root needed).
    pub fn start() -> anyhow::Result<Self> {
        Self::spawn(None)
    }
}

impl<'ns> Kmock<'ns> {
    /// Starts the emulator inside `ns`, on 127.0.0.1 there: for an agent in
    /// the same namespace.
    pub fn start_in(ns: &'ns Netns) -> anyhow::Result<Self> {
        Self::spawn(Some(ns))
    }

    fn spawn(ns: Option<&'ns Netns>) -> anyhow::Result<Self> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = manifest_dir.join("../target/kmock-venv/bin/python");
        anyhow::ensure!(python.is_file(), "{} not found: run `cargo xtask setup`", python.display());
        let script = manifest_dir.join("kmock/serve.py");
        let mut cmd = match ns {
            Some(ns) => ns.command(&python),
            None => Command::new(&python),
        };
        cmd.arg(&script).arg("127.0.0.1:0").stdin(Stdio::null()).stdout(Stdio::piped());
        let mut process = ChildGuard(cmd.spawn().with_context(|| format!("cannot start {cmd:?}"))?);
        // serve.py prints `ready PORT` once listening, or exits (EOF) with a
        // traceback on stderr. A thread reads it so that a hang times out.
        let stdout = process.0.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .with_context(|| format!("kmock did not say `ready` within {START_TIMEOUT:?}"))?;
        let port = line.trim().strip_prefix("ready ").and_then(|p| p.parse().ok());
        let port = port.with_context(|| format!("kmock did not start (said {line:?}, see its stderr)"))?;
        Ok(Self { ns, port, _process: process })
    }

    /// The API server's URL, as seen from inside its namespace.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes a kubeconfig for [`Kmock::url`]: plain HTTP, no credentials.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url()}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            "current-context": "kmock",
        });
        // JSON is YAML: kubeconfig readers take it.
        fs::write(path, serde_json::to_string_pretty(&config)?).with_context(|| format!("write {}", path.display()))
    }

    /// Creates `object` (a namespaced one in `default` unless it names its
    /// namespace); the object as stored, with its resourceVersion.
    pub fn create(&self, object: &Value) -> anyhow::Result<Value> {
        let (collection, _) = object_paths(object)?;
        self.request("POST", &collection, Some(object))
    }

    /// Replaces the stored object named like `object` with it.
    pub fn replace(&self, object: &Value) -> anyhow::Result<Value> {
        let (_, path) = object_paths(object)?;
        self.request("PUT", &path, Some(object))
    }

    /// Deletes an object; `namespace` is `None` for cluster-scoped kinds.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> anyhow::Result<()> {
        let (_, api_version, plural, namespaced) = served(kind)?;
        let collection = match (namespaced, namespace) {
            (true, Some(ns)) => collection_path(api_version, plural, Some(ns)),
            (false, None) => collection_path(api_version, plural, None),
            (true, None) => bail!("{kind} {name} is namespaced: give its namespace"),
            (false, Some(_)) => bail!("{kind} {name} is cluster-scoped: give no namespace"),
        };
        self.request("DELETE", &format!("{collection}/{name}"), None)?;
        Ok(())
    }

    /// One HTTP/1.1 exchange with the emulator from inside its namespace;
    /// the JSON body of a 2xx answer, else an error with the Status message.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        let body = body.map(Value::to_string).unwrap_or_default();
        let exchange = || -> anyhow::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr.into(), REQUEST_TIMEOUT)?;
            stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(format!("{head}{body}").as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        };
        let response = match self.ns {
            Some(ns) => ns.run_in(exchange).and_then(|inner| inner),
            None => exchange(),
        }
        .with_context(|| format!("kmock: {method} {path} at {addr}"))?;
        let (head, body) =
            response.split_once("\r\n\r\n").with_context(|| format!("kmock: {method} {path}: no http response"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("kmock: {method} {path}: no status in {head:?}"))?;
        let json: Value = serde_json::from_str(body)
            .with_context(|| format!("kmock: {method} {path}: {status} with body {body:?}"))?;
        if !(200..300).contains(&status) {
            bail!("kmock: {method} {path}: {status} {}", json["message"].as_str().unwrap_or(body));
        }
        Ok(json)
    }
}

/// The entry of [`KINDS`] for `kind`.
fn served(kind: &str) -> anyhow::Result<(&'static str, &'static str, &'static str, bool)> {
    KINDS.iter().find(|k| k.0 == kind).copied().with_context(|| format!("kmock serves no kind {kind:?}"))
}

fn collection_path(api_version: &str, plural: &str, namespace: Option<&str>) -> String {
    let prefix = if api_version == "v1" { "/api/v1".to_owned() } else { format!("/apis/{api_version}") };
    match namespace {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}"),
        None => format!("{prefix}/{plural}"),
    }
}

/// The collection URL path of `object`'s kind and namespace, and its own.
fn object_paths(object: &Value) -> anyhow::Result<(String, String)> {
    let kind = object["kind"].as_str().context("object has no kind")?;
    let name = object["metadata"]["name"].as_str().with_context(|| format!("{kind} has no metadata.name"))?;
    let (_, api_version, plural, namespaced) = served(kind)?;
    if object["apiVersion"] != api_version {
        bail!("{kind} {name}: kmock serves apiVersion {api_version}, not {}", object["apiVersion"]);
    }
    let namespace = namespaced.then(|| object["metadata"]["namespace"].as_str().unwrap_or("default"));
    let collection = collection_path(api_version, plural, namespace);
    let path = format!("{collection}/{name}");
    Ok((collection, path))
}
