//! The packet itself: bounds-checked parsing, checksum arithmetic and the
//! address/port rewrites, with no BPF helper in sight.

pub mod checksum;
pub mod family;
pub mod icmp;
pub mod nat;
pub mod parse;

/// Ethernet type of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethernet type of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Reads a `T` at address `at`, unaligned.
///
/// # Safety
/// `[at, at + size_of::<T>())` must be readable packet bytes.
#[inline(always)]
pub unsafe fn read<T: Copy>(at: usize) -> T {
    unsafe { (at as *const T).read_unaligned() }
}

/// Writes `value` at address `at`, unaligned.
///
/// # Safety
/// `[at, at + size_of::<T>())` must be writable packet bytes.
#[inline(always)]
pub unsafe fn write<T: Copy>(at: usize, value: T) {
    unsafe { (at as *mut T).write_unaligned(value) }
}

/// TCP header flags and field offsets, defined once for every module.
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
    /// Offsets inside the TCP header.
    pub const SEQ: usize = 4;
    pub const ACK_SEQ: usize = 8;
    pub const DOFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECK: usize = 16;
}
