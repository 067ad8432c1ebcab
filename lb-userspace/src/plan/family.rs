//! Addresses of either family as the plan keys frontends and backends by
//! them (`IpAddr`), and as each family's maps hold them (`u32` for IPv4,
//! `Ipv6Wire` for IPv6): the plan is written once, and the map writer puts
//! each entry into its family's map.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{Backend, FrontendKey, Ipv6Wire, wire};

/// A frontend key of either family.
pub type AnyFrontendKey = FrontendKey<IpAddr>;
/// A backend of either family.
pub type AnyBackend = Backend<IpAddr>;

/// An address as one family's maps hold it.
pub trait WireAddr: lb_common::Addr + Ord + 'static {
    /// `ip` in this form, if it is of this family.
    fn from_ip(ip: IpAddr) -> Option<Self>;
    fn ip(self) -> IpAddr;
}

impl WireAddr for u32 {
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(ip) => Some(wire::addr(ip.octets())),
            IpAddr::V6(_) => None,
        }
    }

    fn ip(self) -> IpAddr {
        Ipv4Addr::from(wire::addr_octets(self)).into()
    }
}

impl WireAddr for Ipv6Wire {
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(ip) => Some(wire::addr6(ip.octets())),
            IpAddr::V4(_) => None,
        }
    }

    fn ip(self) -> IpAddr {
        Ipv6Addr::from(wire::addr6_octets(self)).into()
    }
}

/// `key` with its address in another form.
pub fn rekey<A, B>(key: FrontendKey<A>, addr: B) -> FrontendKey<B> {
    FrontendKey { addr, port: key.port, proto: key.proto, scope: key.scope }
}

/// `backend` with its address in another form.
pub fn rebackend<A, B>(backend: Backend<A>, addr: B) -> Backend<B> {
    Backend { addr, port: backend.port, flags: backend.flags }
}

/// `backends` in family `A`'s form; `None` if one is of the other family.
pub fn in_family<A: WireAddr>(backends: &[AnyBackend]) -> Option<Vec<Backend<A>>> {
    backends.iter().map(|b| Some(rebackend(*b, A::from_ip(b.addr)?))).collect()
}

/// The service CIDR of family `A` as the datapath tests addresses against
/// it; all zero (none) when the family has none.
pub fn datapath_cidr<A: WireAddr>(cidrs: &[crate::model::IpCidr]) -> lb_common::ServiceCidr<A> {
    let of_family = |c: &crate::model::IpCidr| {
        Some(lb_common::ServiceCidr { network: A::from_ip(c.network())?, mask: A::from_ip(c.mask())? })
    };
    cidrs.iter().find_map(of_family).unwrap_or_default()
}
