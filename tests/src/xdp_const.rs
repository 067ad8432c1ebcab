//! Tiny XDP programs written as bytecode and loaded with the raw bpf(2)
//! syscall, so that the harness needs no eBPF toolchain of its own:
//! - one action for every frame: `XDP_PASS` on the receiving end of veths
//!   that must take frames sent from XDP (a veth delivers XDP_TX and
//!   XDP_REDIRECT frames only when its peer runs XDP), `XDP_DROP` as a
//!   packet sink whose count the veth reports (`ethtool -S`:
//!   `rx_queue_N_xdp_drops`);
//! - a packet generator: BPF_PROG_TEST_RUN's live-frames mode runs a
//!   program that writes one whole frame and returns XDP_TX, many times.
//!   It writes every byte on every run because live frames keep whatever
//!   the receivers changed in them (the pages are recycled, not reset).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::Context;

use crate::netns::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Action {
    Drop = 1,
    Pass = 2,
    Tx = 3,
}

/// Attaches the program returning `action` to `ifname` in `ns`; it stays
/// attached while the returned link lives.
pub fn attach(ns: &Netns, ifname: &str, action: Action) -> anyhow::Result<OwnedFd> {
    let prog = load(action).context("loading an XDP program")?;
    let name = CString::new(ifname)?;
    ns.run_in(|| {
        let ifindex = ifindex(&name)?;
        let mut attr = [0u32; 32];
        attr[..3].copy_from_slice(&[prog.as_raw_fd() as u32, ifindex, BPF_XDP]);
        bpf_fd(BPF_LINK_CREATE, &mut attr)
    })?
    .with_context(|| format!("attaching an XDP program to {ifname} in {}", ns.name()))
}

/// What the frames of [`send_live_frames`] carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flows {
    /// `frame` as it is: one flow.
    One,
    /// A new flow (almost) every frame: random source port and low 16 bits
    /// of the source address. `frame` must be UDP with those address bits
    /// 0, and, in IPv4, without options, with IP id 0xffff (the generator
    /// writes the address bits' complement there, which keeps the header
    /// checksum right) and a UDP checksum of 0; in IPv6 (whose UDP checksum
    /// is mandatory), without extension headers, with source port 0 and at
    /// least 4 bytes of payload, the first 4 zero: the port's and the
    /// address bits' complements go there, which keeps the checksum right.
    NewEach,
}

/// Where [`Flows::NewEach`] writes in a frame: the source port, the low 16
/// bits of the source address, and the complements that keep the checksums
/// right (of the port: none in IPv4, whose UDP checksum is 0).
struct NewFlowFields {
    port: i16,
    addr: i16,
    port_complement: Option<i16>,
    addr_complement: i16,
}

impl NewFlowFields {
    fn of(frame: &[u8]) -> Self {
        if frame[12..14] == [0x86, 0xdd] {
            NewFlowFields { port: 54, addr: 36, port_complement: Some(62), addr_complement: 64 }
        } else {
            NewFlowFields { port: 34, addr: 28, port_complement: None, addr_complement: 18 }
        }
    }
}

/// Sends `frame` `count` times out of `ifname` in `ns` from XDP (live
/// frames: each is transmitted as if an XDP program had returned XDP_TX on
/// it), on the calling thread's CPU. Returns when all were handed on.
pub fn send_live_frames(ns: &Netns, ifname: &str, frame: &[u8], count: u32, flows: Flows) -> anyhow::Result<()> {
    let prog = load_program(&frame_writer(frame, flows)).context("loading the frame writer")?;
    let name = CString::new(ifname)?;
    ns.run_in(|| -> io::Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex(&name)?, 0, 0];
        let mut attr = [0u32; 32];
        attr[0] = prog.as_raw_fd() as u32;
        attr[2] = frame.len() as u32;
        attr[4..6].copy_from_slice(&split(frame.as_ptr() as u64));
        attr[8] = count;
        attr[10] = size_of_val(&ctx) as u32;
        attr[12..14].copy_from_slice(&split(ctx.as_ptr() as u64));
        attr[16] = BPF_F_TEST_XDP_LIVE_FRAMES;
        bpf(BPF_PROG_TEST_RUN, &mut attr).map(drop)
    })?
    .with_context(|| format!("sending live frames out of {ifname} in {}", ns.name()))
}

fn ifindex(name: &CString) -> io::Result<u32> {
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// One struct bpf_insn as a word: opcode, registers (src << 4 | dst),
/// offset, immediate.
const fn insn(code: u8, regs: u8, off: i16, imm: i32) -> u64 {
    code as u64 | (regs as u64) << 8 | (off as u16 as u64) << 16 | (imm as u32 as u64) << 32
}

const EXIT: u64 = insn(0x95, 0, 0, 0);

/// `r0 = action; exit`.
fn load(action: Action) -> io::Result<OwnedFd> {
    load_program(&[insn(0xb7, 0, 0, action as i32), EXIT])
}

/// Writes `frame` (at least 4 bytes) over the packet, whose length it
/// must have, 4 bytes at a time (the last word overlaps the one before when
/// the length is not a multiple of 4), varies it as `flows` says, and
/// returns XDP_TX; a shorter packet is dropped.
fn frame_writer(frame: &[u8], flows: Flows) -> Vec<u64> {
    let offsets: Vec<usize> = (0..frame.len()).step_by(4).map(|o| o.min(frame.len() - 4)).collect();
    let writes = offsets.iter().map(|&off| {
        let word = i32::from_ne_bytes(frame[off..off + 4].try_into().expect("4 bytes"));
        insn(0x62, 0x02, off as i16, word) // *(u32 *)(r2 + off) = word
    });
    let mut vary = Vec::new();
    if flows == Flows::NewEach {
        let at = NewFlowFields::of(frame);
        vary.extend([
            insn(0xbf, 0x26, 0, 0),       // r6 = r2 (kept across the call)
            insn(0x85, 0, 0, 7),          // r0 = bpf_get_prandom_u32()
            insn(0x6b, 0x06, at.port, 0), // source port = r0
        ]);
        if let Some(complement) = at.port_complement {
            vary.extend([
                insn(0xbf, 0x01, 0, 0),          // r1 = r0
                insn(0xa7, 0x01, 0, 0xffff),     // r1 ^= 0xffff
                insn(0x6b, 0x16, complement, 0), // port complement = r1
            ]);
        }
        vary.extend([
            insn(0x77, 0x00, 0, 16),                 // r0 >>= 16
            insn(0x6b, 0x06, at.addr, 0),            // source address, low 16 bits = r0
            insn(0xa7, 0x00, 0, 0xffff),             // r0 ^= 0xffff
            insn(0x6b, 0x06, at.addr_complement, 0), // address complement = r0
        ]);
    }
    let skip = (offsets.len() + vary.len() + 2) as i16;
    let mut program = vec![
        insn(0x61, 0x12, 0, 0),                  // r2 = ctx->data
        insn(0x61, 0x13, 4, 0),                  // r3 = ctx->data_end
        insn(0xbf, 0x24, 0, 0),                  // r4 = r2
        insn(0x07, 0x04, 0, frame.len() as i32), // r4 += len
        insn(0x2d, 0x34, skip, 0),               // if r4 > r3: drop
    ];
    program.extend(writes);
    program.extend(vary);
    program.extend([insn(0xb7, 0, 0, Action::Tx as i32), EXIT, insn(0xb7, 0, 0, Action::Drop as i32), EXIT]);
    program
}

fn load_program(program: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u32; 32];
    attr[0] = BPF_PROG_TYPE_XDP;
    attr[1] = program.len() as u32;
    attr[2..4].copy_from_slice(&split(program.as_ptr() as u64));
    attr[4..6].copy_from_slice(&split(license.as_ptr() as u64));
    bpf_fd(BPF_PROG_LOAD, &mut attr)
}

/// A u64 field of `union bpf_attr` as two native-order u32 words.
fn split(v: u64) -> [u32; 2] {
    let b = v.to_ne_bytes();
    [u32::from_ne_bytes([b[0], b[1], b[2], b[3]]), u32::from_ne_bytes([b[4], b[5], b[6], b[7]])]
}

fn bpf(cmd: libc::c_long, attr: &mut [u32; 32]) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-padded union bpf_attr of the given size that
    // outlives the call; pointers in it point at live data.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// A command that returns a new file descriptor.
fn bpf_fd(cmd: libc::c_long, attr: &mut [u32; 32]) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the syscall returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
