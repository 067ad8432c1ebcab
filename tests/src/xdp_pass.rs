//! A two-instruction XDP program that passes every frame, attached to the
//! receiving end of veths that must take frames sent from XDP: a veth
//! delivers XDP_TX and XDP_REDIRECT frames only when its peer runs XDP.
//! Loaded with the raw bpf(2) syscall so that the harness needs no eBPF
//! toolchain of its own.

use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd, OwnedFd},
};

use anyhow::Context;

use crate::netns::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_PASS: u64 = 2;
/// `r0 = XDP_PASS; exit` as struct bpf_insn words (code, regs, off, imm).
const PROGRAM: [u64; 2] = [0xb7 | (XDP_PASS << 32), 0x95];

/// Attaches the pass-everything program to `ifname` in `ns`; it stays
/// attached while the returned link lives.
pub fn attach(ns: &Netns, ifname: &str) -> anyhow::Result<OwnedFd> {
    let prog = load().context("loading the XDP pass program")?;
    let name = CString::new(ifname)?;
    ns.run_in(|| {
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut attr = [0u32; 32];
        attr[..3].copy_from_slice(&[std::os::fd::AsRawFd::as_raw_fd(&prog) as u32, ifindex, BPF_XDP]);
        bpf(BPF_LINK_CREATE, &mut attr)
    })?
    .with_context(|| format!("attaching the XDP pass program to {ifname} in {}", ns.name()))
}

fn load() -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u32; 32];
    attr[0] = BPF_PROG_TYPE_XDP;
    attr[1] = PROGRAM.len() as u32;
    attr[2..4].copy_from_slice(&split(PROGRAM.as_ptr() as u64));
    attr[4..6].copy_from_slice(&split(license.as_ptr() as u64));
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// A u64 field of `union bpf_attr` as two native-order u32 words.
fn split(v: u64) -> [u32; 2] {
    let b = v.to_ne_bytes();
    [u32::from_ne_bytes([b[0], b[1], b[2], b[3]]), u32::from_ne_bytes([b[4], b[5], b[6], b[7]])]
}

fn bpf(cmd: libc::c_long, attr: &mut [u32; 32]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded union bpf_attr of the given size that
    // outlives the call; pointers in it point at live data.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
