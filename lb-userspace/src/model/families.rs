//! A Service's address families and cluster IPs (`spec.ipFamilyPolicy`,
//! `spec.ipFamilies`, `spec.clusterIPs`), defaulted and checked as the API
//! server does against the service CIDRs the agent has.

use super::*;

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Single,
    PreferDual,
    RequireDual,
}

/// The cluster IPs a validated Service asks for.
#[derive(Clone, Debug)]
pub(super) enum Address {
    /// Headless, or ExternalName.
    None,
    /// One per family, the primary first: as written, or to allocate.
    Families(Vec<(Family, Option<IpAddr>)>),
}

/// The cluster IPs of a Service that has them (not ExternalName, not
/// headless). Families come from `ipFamilies`, else from the written
/// `clusterIPs`, else the primary family; a dual-stack policy adds the
/// other family where the agent has its service CIDR (standalone: in a
/// cluster the API server has written every address already).
pub(super) fn cluster_ips(
    spec: &core::ServiceSpec,
    service_type: ServiceType,
    opts: &ModelOptions,
    bad: &dyn Fn(&str, String) -> ModelError,
) -> Result<Address, ModelError> {
    let policy = match spec.ip_family_policy.as_deref() {
        None => None,
        Some("SingleStack") => Some(Policy::Single),
        Some("PreferDualStack") => Some(Policy::PreferDual),
        Some("RequireDualStack") => Some(Policy::RequireDual),
        Some(other) => {
            let reason = format!("unknown value {other:?} (SingleStack, PreferDualStack or RequireDualStack)");
            return Err(bad("spec.ipFamilyPolicy", reason));
        }
    };
    let written_families = spec.ip_families.as_deref().unwrap_or_default();
    if written_families.len() > 2 {
        return Err(bad("spec.ipFamilies", format!("{} families given, at most 2", written_families.len())));
    }
    let mut families = Vec::with_capacity(2);
    for (i, text) in written_families.iter().enumerate() {
        let family = Family::parse(text).map_err(|reason| bad(&format!("spec.ipFamilies[{i}]"), reason))?;
        if families.contains(&family) {
            return Err(bad(&format!("spec.ipFamilies[{i}]"), format!("{family} is listed twice")));
        }
        families.push(family);
    }

    // `clusterIP` is `clusterIPs[0]`; either may be written alone.
    let written_ips: Vec<(String, &str)> = match (spec.cluster_ip.as_deref(), spec.cluster_ips.as_deref()) {
        (first, Some(ips)) if !ips.is_empty() => {
            if let Some(first) = first.filter(|f| !f.is_empty() && *f != ips[0]) {
                let reason = format!("{first} is not spec.clusterIPs[0] ({})", ips[0]);
                return Err(bad("spec.clusterIP", reason));
            }
            ips.iter().enumerate().map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str())).collect()
        }
        (Some(ip), _) if !ip.is_empty() => vec![("spec.clusterIP".to_owned(), ip)],
        _ => Vec::new(),
    };
    if let Some((field, _)) = written_ips.iter().find(|(_, ip)| *ip == "None") {
        return match service_type {
            ServiceType::ClusterIp if written_ips.len() == 1 => Ok(Address::None),
            ServiceType::ClusterIp => Err(bad(field, "None (headless) must be the only address".into())),
            _ => Err(bad(field, "None (headless) is only allowed for type ClusterIP".into())),
        };
    }
    if written_ips.len() > 2 {
        return Err(bad("spec.clusterIPs", format!("{} addresses given, at most 2", written_ips.len())));
    }
    let mut ips = Vec::with_capacity(2);
    for (i, (field, text)) in written_ips.iter().enumerate() {
        let ip: IpAddr = text.parse().map_err(|_| bad(field, format!("{text:?} is not an IP address")))?;
        let family = Family::of(ip);
        if ips.iter().any(|other| Family::of(*other) == family) {
            return Err(bad(field, format!("{ip} is {family} like spec.clusterIPs[0]: one address per family")));
        }
        match families.get(i) {
            Some(written) if *written != family => {
                return Err(bad(field, format!("{ip} is not of spec.ipFamilies[{i}] ({written})")));
            }
            Some(_) => {}
            None => families.push(family),
        }
        ips.push(ip);
    }

    let policy = policy.unwrap_or(if families.len() == 2 { Policy::RequireDual } else { Policy::Single });
    if policy == Policy::Single && families.len() == 2 {
        return Err(bad("spec.ipFamilyPolicy", "SingleStack takes one family, two are given".into()));
    }
    // In a cluster the API server checked the families against its own
    // service CIDRs, and allocated every address.
    if opts.controllers == Controllers::Emulated {
        let configured = |family| opts.service_cidr(family).is_some();
        if policy == Policy::RequireDual && !(configured(Family::V4) && configured(Family::V6)) {
            let reason = "RequireDualStack needs a service CIDR of each family (--service-cidr)".to_owned();
            return Err(bad("spec.ipFamilyPolicy", reason));
        }
        if let Some(family) = families.iter().find(|f| !configured(**f)) {
            return Err(bad("spec.ipFamilies", format!("{family} has no service CIDR here (--service-cidr)")));
        }
        if families.is_empty() {
            families.push(opts.primary_family());
        }
        if policy != Policy::Single && families.len() == 1 && configured(families[0].other()) {
            families.push(families[0].other());
        }
    } else if families.is_empty() {
        families.push(opts.primary_family());
    }
    Ok(Address::Families(families.into_iter().enumerate().map(|(i, family)| (family, ips.get(i).copied())).collect()))
}
