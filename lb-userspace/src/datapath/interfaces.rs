//! Which network interfaces the datapath should be attached to: the ones in
//! this network namespace whose names match `--device`/`--pod-device`, and
//! the kernel's notifications of new ones ([`LinkEvents`]).

use std::{
    collections::BTreeMap,
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("invalid interface pattern {pattern:?}: {source}")]
    Pattern { pattern: String, source: glob::PatternError },
    #[error("cannot list network interfaces: {0}")]
    List(io::Error),
}

/// Interface name patterns: exact names or shell wildcards such as `h-*`.
#[derive(Clone, Debug)]
pub struct InterfacePatterns(Vec<glob::Pattern>);

impl InterfacePatterns {
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, InterfaceError> {
        patterns
            .into_iter()
            .map(|p| glob::Pattern::new(p).map_err(|source| InterfaceError::Pattern { pattern: p.to_owned(), source }))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, ifname: &str) -> bool {
        self.0.iter().any(|p| p.matches(ifname))
    }

    /// The interfaces present now that match, by name, with their ifindex.
    pub fn present(&self) -> Result<BTreeMap<String, u32>, InterfaceError> {
        Ok(list().map_err(InterfaceError::List)?.into_iter().filter(|(name, _)| self.matches(name)).collect())
    }
}

impl InterfacePatterns {
    /// The IPv4 and global IPv6 addresses of each matching interface that
    /// has one, in the kernel's order (an interface's primary address
    /// first). IPv6 link-local addresses are left out: they name no node
    /// beyond the link.
    pub fn addresses(&self) -> Result<BTreeMap<String, Vec<IpAddr>>, InterfaceError> {
        let mut addrs: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        // SAFETY: getifaddrs gives a list that stays valid until freeifaddrs;
        // each entry's name is a C string, an AF_INET address a sockaddr_in
        // and an AF_INET6 one a sockaddr_in6.
        unsafe {
            let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
            if libc::getifaddrs(&mut head) != 0 {
                return Err(InterfaceError::List(io::Error::last_os_error()));
            }
            let mut entry = head;
            while !entry.is_null() {
                let ifa = &*entry;
                let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy();
                let addr = match ifa.ifa_addr.as_ref().map(|a| i32::from(a.sa_family)) {
                    Some(libc::AF_INET) => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())))
                    }
                    Some(libc::AF_INET6) => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                            .filter(|a| !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()))
                    }
                    _ => None,
                };
                if let Some(addr) = addr.filter(|_| self.matches(&name)) {
                    addrs.entry(name.into_owned()).or_default().push(addr);
                }
                entry = ifa.ifa_next;
            }
            libc::freeifaddrs(head);
        }
        Ok(addrs)
    }
}

/// All interfaces of the current network namespace. Asks the kernel
/// (if_nameindex) rather than /sys, which may belong to another namespace.
fn list() -> io::Result<Vec<(String, u32)>> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry that
    // stays valid until if_freenameindex.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut entry = head;
        while (*entry).if_index != 0 {
            out.push((CStr::from_ptr((*entry).if_name).to_string_lossy().into_owned(), (*entry).if_index));
            entry = entry.add(1);
        }
        libc::if_freenameindex(head);
        Ok(out)
    }
}

/// rtnetlink's notifications of links and addresses coming and going in
/// this network namespace: a new pod veth is attached when the kernel
/// announces it, before the pod can configure its side and send, not at the
/// next poll.
pub struct LinkEvents(tokio::io::unix::AsyncFd<netlink_sys::Socket>);

impl LinkEvents {
    /// Subscribes to link, IPv4 address and IPv6 address notifications.
    pub fn open() -> io::Result<Self> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for group in [libc::RTNLGRP_LINK, libc::RTNLGRP_IPV4_IFADDR, libc::RTNLGRP_IPV6_IFADDR] {
            socket.add_membership(group)?;
        }
        socket.set_non_blocking(true)?;
        // SAFETY: the AsyncFd owns the socket, so the fd lives as long as it.
        let events = unsafe { tokio::io::unix::AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) };
        Ok(LinkEvents(events.map_err(|e| e.into_parts().1)?))
    }

    /// Waits for notifications and reads every one there is. What they say
    /// does not matter: the caller lists the interfaces and addresses anew,
    /// which also covers notifications the kernel dropped (ENOBUFS).
    pub async fn changed(&self) -> io::Result<()> {
        let mut guard = self.0.readable().await?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match guard.get_inner().recv(&mut &mut buf[..], 0) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_wildcards_match() {
        let p = InterfacePatterns::new(["eth0", "h-*"]).unwrap();
        assert!(p.matches("eth0"));
        assert!(p.matches("h-kubia-1"));
        assert!(!p.matches("eth1"));
        assert!(!p.matches("xh-1"));
    }

    #[test]
    fn loopback_is_listed() {
        let p = InterfacePatterns::new(["lo"]).unwrap();
        assert_eq!(p.present().unwrap().get("lo"), Some(&1));
    }

    #[test]
    fn loopback_has_its_address() {
        let p = InterfacePatterns::new(["lo"]).unwrap();
        let addrs = p.addresses().unwrap();
        assert_eq!(addrs["lo"][0], IpAddr::from(Ipv4Addr::LOCALHOST));
        assert!(addrs["lo"].iter().all(|a| a.is_loopback()), "{addrs:?}");
    }

    #[test]
    fn a_broken_pattern_is_named() {
        let err = InterfacePatterns::new(["h-[*"]).unwrap_err().to_string();
        assert!(err.contains("h-[*"), "{err}");
    }
}
