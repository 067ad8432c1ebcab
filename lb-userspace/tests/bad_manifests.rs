//! Broken manifests next to a good one: each broken file gets errors that
//! name it, and the good Service stays exactly as it was. Then a bounded
//! fuzz (proptest) of the source and the model: random bytes and mutated
//! manifests never panic, and every error names its file.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use lb_userspace::{
    model::{self, DesiredState, ModelOptions, ServiceName},
    source::manifests::ManifestDir,
};
use proptest::prelude::*;

/// Sorts first, so that it owns the names the broken files repeat.
const GOOD_FILE: &str = "00-good.yaml";
const GOOD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: good}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: good}
subsets: [{addresses: [{ip: 10.244.0.2}], ports: [{name: http, port: 8080}]}]
";

/// A Service named `name` with `spec` (YAML flow mapping contents).
fn service(name: &str, spec: &str) -> Vec<u8> {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{{spec}}}\n").into_bytes()
}

/// (file name, contents, whether it must get an error).
fn corpus() -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut junk = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..4096 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        junk.push((x >> 24) as u8);
    }
    let mut big = b"note: ".to_vec();
    big.resize(10 << 20, b'a');
    big.push(b'\n');
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    vec![
        ("yaml-syntax.yaml", b"apiVersion: v1\nkind: Service\nmetadata: {name: x\n".to_vec(), true),
        ("json-syntax.json", br#"{"apiVersion": "v1", "kind": "Service""#.to_vec(), true),
        ("json-array.json", b"[1, 2, 3]".to_vec(), true),
        ("a-string.yaml", b"just a string\n".to_vec(), true),
        ("no-kind.yaml", b"apiVersion: v1\nmetadata: {name: x}\n".to_vec(), true),
        ("no-name.yaml", b"apiVersion: v1\nkind: Service\nspec: {ports: [{port: 80}]}\n".to_vec(), true),
        ("list-without-items.json", br#"{"apiVersion": "v1", "kind": "List", "items": 5}"#.to_vec(), true),
        ("wrong-type.yaml", service("wrong-type", "ports: none"), true),
        ("port-too-big.yaml", service("big-port", "ports: [{port: 70000}]"), true),
        ("port-zero.yaml", service("zero-port", "ports: [{port: 0}]"), true),
        ("target-port-negative.yaml", service("bad-target", "ports: [{port: 80, targetPort: -1}]"), true),
        ("node-port-outside.yaml", service("np", "type: NodePort, ports: [{port: 80, nodePort: 80}]"), true),
        ("cluster-ip-impossible.yaml", service("bad-ip", "clusterIP: 300.1.1.1, ports: [{port: 80}]"), true),
        ("external-ip-impossible.yaml", service("bad-ext", "externalIPs: [1.2.3], ports: [{port: 80}]"), true),
        ("protocol-unknown.yaml", service("bad-proto", "ports: [{port: 80, protocol: XYZ}]"), true),
        ("type-unknown.yaml", service("bad-type", "type: Magic, ports: [{port: 80}]"), true),
        ("affinity-unknown.yaml", service("bad-affinity", "sessionAffinity: Sticky, ports: [{port: 80}]"), true),
        ("selector-a-list.yaml", service("bad-selector", "selector: [a, b], ports: [{port: 80}]"), true),
        (
            "endpoint-ip-impossible.yaml",
            [
                service("e", "ports: [{port: 80}]"),
                b"---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: e}\nsubsets: [{addresses: [{ip: 1.2.3}], ports: [{port: 1}]}]\n"
                    .to_vec(),
            ]
            .concat(),
            true,
        ),
        ("duplicate-in-file.yaml", [service("twice", "ports: [{port: 80}]"), b"---\n".to_vec(), service("twice", "ports: [{port: 81}]")].concat(), true),
        ("duplicate-of-good.yaml", service("good", "clusterIP: 10.96.0.99, ports: [{port: 81}]"), true),
        ("cluster-ip-taken.yaml", service("thief", "clusterIP: 10.96.0.20, ports: [{port: 80}]"), true),
        ("family-unknown.yaml", service("bad-family", "ipFamilies: [IPv5], ports: [{port: 80}]"), true),
        ("family-twice.yaml", service("family-twice", "ipFamilies: [IPv4, IPv4], ports: [{port: 80}]"), true),
        ("policy-unknown.yaml", service("bad-policy", "ipFamilyPolicy: Sometimes, ports: [{port: 80}]"), true),
        ("single-two-families.yaml", service("single-two", "ipFamilyPolicy: SingleStack, ipFamilies: [IPv4, IPv6], ports: [{port: 80}]"), true),
        ("require-dual.yaml", service("require-dual", "ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]"), true),
        ("ipv6-without-cidr.yaml", service("v6-only", "ipFamilies: [IPv6], ports: [{port: 80}]"), true),
        ("cluster-ips-same-family.yaml", service("same-family", "ipFamilyPolicy: PreferDualStack, clusterIPs: [10.96.0.30, 10.96.0.31], ports: [{port: 80}]"), true),
        ("cluster-ip-not-first.yaml", service("not-first", "clusterIP: 10.96.0.32, clusterIPs: [10.96.0.33], ports: [{port: 80}]"), true),
        ("cluster-ips-other-family.yaml", service("other-family", "ipFamilies: [IPv6], clusterIPs: [10.96.0.34], ports: [{port: 80}]"), true),
        ("binary.yaml", junk.clone(), true),
        ("binary.json", junk, true),
        ("ten-megabytes.yaml", big, true),
        ("seventeen-megabytes.json", vec![b' '; 17 << 20], true),
        ("alias-bomb.yaml", laughs.as_bytes().to_vec(), true),
        // Other kinds are somebody else's business: ignored, not errors.
        ("deployment.yaml", b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n".to_vec(), false),
    ]
}

/// A scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lb-bad-manifests-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(GOOD_FILE), GOOD).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        fs::write(self.0.join(name), bytes).unwrap();
    }

    /// Source errors and model errors as the agent logs them, and the model.
    fn load(&self) -> (Vec<String>, DesiredState) {
        let mut source = ManifestDir::new(self.0.clone());
        let report = source.scan();
        let (state, model_errors) = model::build(source.objects(), DesiredState::default(), &ModelOptions::default());
        let errors = report.errors.iter().map(ToString::to_string).chain(model_errors.iter().map(ToString::to_string));
        (errors.collect(), state)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The good Service, exactly as its file says.
fn assert_good_intact(state: &DesiredState, context: &str) {
    let good =
        state.services.get(&ServiceName::new("default", "good")).unwrap_or_else(|| panic!("{context}: good is gone"));
    assert_eq!(good.cluster_ips, [IpAddr::from([10, 96, 0, 20])], "{context}");
    assert_eq!(good.ports.len(), 1, "{context}");
    let endpoints: Vec<_> = good.ports[0].active_endpoints().map(|e| (e.addr, e.port)).collect();
    assert_eq!(endpoints, [(IpAddr::from([10, 244, 0, 2]), 8080)], "{context}");
}

fn names_file(error: &str, file: &Path) -> bool {
    error.contains(&*file.to_string_lossy())
}

#[test]
fn each_broken_manifest_gets_an_error_naming_its_file_and_the_good_service_stays() {
    for (name, bytes, must_err) in corpus() {
        let dir = Dir::new();
        dir.write(name, &bytes);
        let (errors, state) = dir.load();
        let file = dir.0.join(name);
        if must_err {
            assert!(!errors.is_empty(), "{name}: no error");
        } else {
            assert!(errors.is_empty(), "{name}: {errors:?}");
        }
        for error in &errors {
            // Node-port conflicts name the Services only (they span files).
            assert!(names_file(error, &file) || error.starts_with("Service "), "{name}: {error}");
            assert!(!error.contains('\n'), "{name}: an error of several lines: {error}");
        }
        assert_good_intact(&state, name);
    }
}

#[test]
fn all_broken_manifests_together_leave_the_good_service_intact() {
    let dir = Dir::new();
    let corpus = corpus();
    for (name, bytes, _) in &corpus {
        dir.write(name, bytes);
    }
    let (errors, state) = dir.load();
    for (name, _, must_err) in &corpus {
        let file = dir.0.join(name);
        assert_eq!(errors.iter().any(|e| names_file(e, &file)), *must_err, "{name}: {errors:#?}");
    }
    assert_good_intact(&state, "all together");
}

/// `bytes` changed at a few places: a byte replaced, removed or inserted.
fn mutated(bytes: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &(at, op, byte) in edits {
        let at = at % (out.len() + 1);
        match op % 3 {
            0 if at < out.len() => out[at] = byte,
            1 if at < out.len() => drop(out.remove(at)),
            _ => out.insert(at, byte),
        }
    }
    out
}

/// YAML's punctuation and digits, which break structure and values alike.
fn edit_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b':'),
        Just(b'-'),
        Just(b'{'),
        Just(b']'),
        Just(b'\n'),
        Just(b' '),
        Just(b'"'),
        b'0'..=b'9',
        any::<u8>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random bytes as YAML and as JSON: errors naming the file, no panic,
    /// the good Service untouched.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = Dir::new();
        dir.write("random.yaml", &bytes);
        dir.write("random.json", &bytes);
        let (errors, state) = dir.load();
        for error in &errors {
            prop_assert!(error.contains("random.") || error.starts_with("Service "), "{}", error);
        }
        assert_good_intact(&state, "random bytes");
    }

    /// A valid manifest with a few bytes edited: whatever it now says,
    /// the source and the model answer with errors (or a valid state),
    /// never a panic, and the good Service in another file stays.
    #[test]
    fn mutated_manifests_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), edit_byte()), 1..6),
    ) {
        let original = GOOD.replace("good", "other").replace("10.96.0.20", "10.96.0.21");
        let dir = Dir::new();
        dir.write("mutated.yaml", &mutated(original.as_bytes(), &edits));
        let (errors, state) = dir.load();
        for error in &errors {
            prop_assert!(error.contains("mutated.yaml") || error.starts_with("Service "), "{}", error);
        }
        assert_good_intact(&state, "mutated");
    }
}
