//! Which network interfaces the datapath should be attached to: the ones in
//! this network namespace whose names match `--device`/`--pod-device`.

use std::{collections::BTreeMap, ffi::CStr, io, net::Ipv4Addr};

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
    /// The IPv4 addresses of each matching interface that has one, in the
    /// kernel's order (an interface's primary address first).
    pub fn ipv4_addresses(&self) -> Result<BTreeMap<String, Vec<Ipv4Addr>>, InterfaceError> {
        let mut addrs: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        // SAFETY: getifaddrs gives a list that stays valid until freeifaddrs;
        // each entry's name is a C string and an AF_INET address a sockaddr_in.
        unsafe {
            let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
            if libc::getifaddrs(&mut head) != 0 {
                return Err(InterfaceError::List(io::Error::last_os_error()));
            }
            let mut entry = head;
            while !entry.is_null() {
                let ifa = &*entry;
                let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy();
                if !ifa.ifa_addr.is_null()
                    && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
                    && self.matches(&name)
                {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let addr = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
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
        assert_eq!(p.ipv4_addresses().unwrap(), BTreeMap::from([("lo".to_owned(), vec![Ipv4Addr::LOCALHOST])]));
    }

    #[test]
    fn a_broken_pattern_is_named() {
        let err = InterfacePatterns::new(["h-[*"]).unwrap_err().to_string();
        assert!(err.contains("h-[*"), "{err}");
    }
}
