//! The HTTPS listener's certificates (`--ingress-tls-bind`): each Ingress's
//! `spec.tls` entries name a `kubernetes.io/tls` Secret of its namespace
//! and the hosts it serves; the handshake picks by SNI (exact host, then
//! `*.` wildcard, then an entry without hosts). A Secret that is missing or
//! does not hold a matching certificate and key is one line naming the
//! Ingress; the other entries serve on.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, RwLock},
};

use k8s_openapi::api::core::v1::Secret;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::routes::HostMap;
use crate::{model::ModelError, source::Sourced};

/// The Secret type the certificates come from.
const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// One `spec.tls` entry of a valid Ingress of our class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRef {
    pub file: Arc<Path>,
    /// `Ingress NAMESPACE/NAME`, for messages.
    pub ingress: String,
    /// Its place, `spec.tls[N]`.
    pub field: String,
    pub namespace: String,
    pub secret: String,
    /// As written; none: every name no other entry has.
    pub hosts: Vec<String>,
}

/// The certificate for each server name.
#[derive(Debug, Default)]
pub struct Certificates {
    /// None until an entry names the host (the first one's wins).
    by_host: HostMap<Option<Arc<CertifiedKey>>>,
    /// The first entry's without hosts.
    fallback: Option<Arc<CertifiedKey>>,
}

impl Certificates {
    /// The certificate for `name` (from SNI; None without).
    fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        name.and_then(|n| self.by_host.get(n)).cloned().flatten().or_else(|| self.fallback.clone())
    }
}

/// The parsed certificates by Secret, reparsed only when the Secret object
/// changes (a pass runs on every change in the cluster).
#[derive(Default)]
pub struct SecretCache(HashMap<(String, String), (Arc<Secret>, Parsed)>);

/// A Secret's certificate, or why it has none.
type Parsed = Result<Arc<CertifiedKey>, String>;

/// The certificates `refs` name, first entry first for a host (the
/// Ingresses come oldest first); the errors of those that cannot serve.
pub fn build(
    refs: &[TlsRef],
    secrets: &[Sourced<Secret>],
    cache: &mut SecretCache,
    provider: &CryptoProvider,
) -> (Certificates, Vec<ModelError>) {
    let by_name: HashMap<(&str, &str), &Arc<Secret>> = secrets
        .iter()
        .map(|s| {
            let meta = &s.object.metadata;
            ((meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or_default()), &s.object)
        })
        .collect();
    let mut fresh = SecretCache::default();
    let mut certificates = Certificates::default();
    let mut errors = Vec::new();
    for tls in refs {
        let key = (tls.namespace.clone(), tls.secret.clone());
        let loaded = match by_name.get(&(tls.namespace.as_str(), tls.secret.as_str())) {
            None => Err(format!("Secret {}/{} does not exist", tls.namespace, tls.secret)),
            Some(secret) => {
                let parsed = match (cache.0.remove(&key), fresh.0.get(&key)) {
                    (_, Some((_, parsed))) => parsed.clone(),
                    (Some((cached, parsed)), None) if Arc::ptr_eq(&cached, secret) => parsed,
                    _ => certified_key(secret, provider)
                        .map(Arc::new)
                        .map_err(|reason| format!("Secret {}/{}: {reason}", tls.namespace, tls.secret)),
                };
                fresh.0.insert(key, (Arc::clone(secret), parsed.clone()));
                parsed
            }
        };
        let certified = match loaded {
            Ok(certified) => certified,
            Err(reason) => {
                errors.push(ModelError::Invalid {
                    file: tls.file.to_path_buf(),
                    object: tls.ingress.clone(),
                    field: format!("{}.secretName", tls.field),
                    reason,
                });
                continue;
            }
        };
        if tls.hosts.is_empty() {
            certificates.fallback.get_or_insert(certified);
            continue;
        }
        for host in &tls.hosts {
            certificates.by_host.entry(host).get_or_insert_with(|| Arc::clone(&certified));
        }
    }
    *cache = fresh;
    (certificates, errors)
}

/// A Secret's `tls.crt` chain and `tls.key`, checked to belong together.
fn certified_key(secret: &Secret, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != TLS_SECRET_TYPE {
        return Err(format!("is of type {kind}, not {TLS_SECRET_TYPE}"));
    }
    // stringData (manifests written by hand) wins over data, as the API
    // server merges them.
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let text = secret.string_data.as_ref().and_then(|d| d.get(name)).map(|s| s.as_bytes().to_vec());
        text.or_else(|| secret.data.as_ref().and_then(|d| d.get(name)).map(|b| b.0.clone()))
            .ok_or_else(|| format!("{name} is missing"))
    };
    let chain = CertificateDer::pem_slice_iter(&field("tls.crt")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("tls.crt: {err}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&field("tls.key")?).map_err(|err| format!("tls.key: {err}"))?;
    let signer = provider.key_provider.load_private_key(key).map_err(|err| format!("tls.key: {err}"))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| "tls.key does not belong to tls.crt".to_owned())?;
    Ok(certified)
}

/// What the TLS handshake asks for its certificate; swapped on every pass.
#[derive(Debug, Default)]
pub struct Resolver(RwLock<Arc<Certificates>>);

impl Resolver {
    pub fn replace(&self, certificates: Certificates) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certificates);
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certificates = Arc::clone(&self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner));
        certificates.for_name(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::objects_from_yaml;

    const KUBIA_CRT: &str = include_str!("testdata/kubia.example.com.crt");
    const KUBIA_KEY: &str = include_str!("testdata/kubia.example.com.key");
    const WILDCARD_CRT: &str = include_str!("testdata/wildcard.example.com.crt");
    const WILDCARD_KEY: &str = include_str!("testdata/wildcard.example.com.key");

    /// A Secret with `stringData`, indented into YAML.
    fn secret(name: &str, kind: &str, crt: &str, key: &str) -> String {
        let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: {kind}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n",
            indent(crt),
            indent(key)
        )
    }

    fn tls_ref(secret: &str, hosts: &[&str]) -> TlsRef {
        TlsRef {
            file: Arc::from(Path::new("ingress.yaml")),
            ingress: "Ingress default/web".into(),
            field: "spec.tls[0]".into(),
            namespace: "default".into(),
            secret: secret.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    /// The certificate's subject as served for `name`.
    fn served(certificates: &Certificates, name: Option<&str>) -> Option<Vec<u8>> {
        certificates.for_name(name).map(|c| c.cert[0].to_vec())
    }

    #[test]
    fn sni_picks_the_exact_host_then_the_wildcard_then_the_entry_without_hosts() {
        let yaml = secret("kubia", TLS_SECRET_TYPE, KUBIA_CRT, KUBIA_KEY)
            + &secret("wild", TLS_SECRET_TYPE, WILDCARD_CRT, WILDCARD_KEY);
        let objects = objects_from_yaml(&yaml);
        let refs = [tls_ref("kubia", &["kubia.example.com"]), tls_ref("wild", &["*.example.com"])];
        let (certificates, errors) = build(&refs, &objects.secrets, &mut SecretCache::default(), &provider());
        assert!(errors.is_empty(), "{errors:?}");
        let kubia = CertificateDer::from_pem_slice(KUBIA_CRT.as_bytes()).unwrap().to_vec();
        let wildcard = CertificateDer::from_pem_slice(WILDCARD_CRT.as_bytes()).unwrap().to_vec();
        assert_eq!(served(&certificates, Some("kubia.example.com")), Some(kubia.clone()));
        assert_eq!(served(&certificates, Some("KUBIA.example.com")), Some(kubia.clone()), "names are caseless");
        assert_eq!(served(&certificates, Some("foo.example.com")), Some(wildcard.clone()));
        assert_eq!(served(&certificates, Some("a.b.example.com")), None, "`*.` covers one label");
        assert_eq!(served(&certificates, None), None, "no SNI and no entry without hosts");
        let refs = [tls_ref("kubia", &[]), tls_ref("wild", &["*.example.com"])];
        let (certificates, _) = build(&refs, &objects.secrets, &mut SecretCache::default(), &provider());
        assert_eq!(served(&certificates, None), Some(kubia.clone()));
        assert_eq!(served(&certificates, Some("other.org")), Some(kubia));
        assert_eq!(served(&certificates, Some("foo.example.com")), Some(wildcard));
    }

    #[test]
    fn a_secret_that_cannot_serve_is_named_with_its_ingress_and_the_others_serve_on() {
        let yaml = secret("kubia", TLS_SECRET_TYPE, KUBIA_CRT, KUBIA_KEY)
            + &secret("opaque", "Opaque", KUBIA_CRT, KUBIA_KEY)
            + &secret("mismatched", TLS_SECRET_TYPE, KUBIA_CRT, WILDCARD_KEY)
            + &secret("garbage", TLS_SECRET_TYPE, "not a certificate", KUBIA_KEY);
        let objects = objects_from_yaml(&yaml);
        let refs = [
            tls_ref("nosuch", &["a.example.com"]),
            tls_ref("opaque", &["b.example.com"]),
            tls_ref("mismatched", &["c.example.com"]),
            tls_ref("garbage", &["d.example.com"]),
            tls_ref("kubia", &["kubia.example.com"]),
        ];
        let (certificates, errors) = build(&refs, &objects.secrets, &mut SecretCache::default(), &provider());
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let prefix = "ingress.yaml: Ingress default/web: spec.tls[0].secretName: Secret default/";
        assert_eq!(
            errors,
            [
                format!("{prefix}nosuch does not exist"),
                format!("{prefix}opaque: is of type Opaque, not kubernetes.io/tls"),
                format!("{prefix}mismatched: tls.key does not belong to tls.crt"),
                format!("{prefix}garbage: tls.crt holds no PEM certificate"),
            ]
        );
        assert!(served(&certificates, Some("kubia.example.com")).is_some());
        assert!(served(&certificates, Some("c.example.com")).is_none());
    }

    #[test]
    fn an_unchanged_secret_is_not_parsed_again() {
        let objects = objects_from_yaml(&secret("kubia", TLS_SECRET_TYPE, KUBIA_CRT, KUBIA_KEY));
        let refs = [tls_ref("kubia", &["kubia.example.com"]), tls_ref("kubia", &["www.example.com"])];
        let mut cache = SecretCache::default();
        let (first, _) = build(&refs, &objects.secrets, &mut cache, &provider());
        let (second, _) = build(&refs, &objects.secrets, &mut cache, &provider());
        let key = |c: &Certificates, name| c.for_name(Some(name)).unwrap();
        assert!(Arc::ptr_eq(&key(&first, "kubia.example.com"), &key(&second, "kubia.example.com")));
        assert!(Arc::ptr_eq(&key(&second, "kubia.example.com"), &key(&second, "www.example.com")), "parsed once");
        // A new Secret object (an update) is parsed again.
        let updated = objects_from_yaml(&secret("kubia", TLS_SECRET_TYPE, KUBIA_CRT, KUBIA_KEY));
        let (third, _) = build(&refs, &updated.secrets, &mut cache, &provider());
        assert!(!Arc::ptr_eq(&key(&second, "kubia.example.com"), &key(&third, "kubia.example.com")));
    }
}
