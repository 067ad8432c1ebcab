//! The two filesystems the datapath needs mounted: bpffs for the pins,
//! the cgroup v2 hierarchy for the socket hooks.

use std::{
    ffi::{CStr, CString},
    fs, io,
    path::Path,
};

/// A filesystem by its `statfs` magic number.
#[derive(Clone, Copy)]
pub(super) enum Filesystem {
    Bpf,
    Cgroup2,
}

impl Filesystem {
    fn magic(self) -> i64 {
        match self {
            Filesystem::Bpf => 0xcafe_4a11,
            Filesystem::Cgroup2 => 0x6367_7270,
        }
    }

    /// `mount(2)`'s source, type and data for it.
    fn mount_args(self) -> (&'static CStr, &'static CStr, &'static CStr) {
        match self {
            Filesystem::Bpf => (c"bpf", c"bpf", c"mode=0700"),
            Filesystem::Cgroup2 => (c"none", c"cgroup2", c""),
        }
    }

    /// Whether `path` lies on this filesystem.
    pub(super) fn holds(self, path: &Path) -> bool {
        let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
        // SAFETY: statfs writes into the zeroed struct we own.
        unsafe {
            let mut stat: libc::statfs = std::mem::zeroed();
            libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == self.magic()
        }
    }

    /// Mounts it on `target`, created first if need be.
    pub(super) fn mount(self, target: &Path) -> io::Result<()> {
        fs::create_dir_all(target)?;
        let c_target = CString::new(target.as_os_str().as_encoded_bytes())?;
        let (source, fstype, data) = self.mount_args();
        // SAFETY: plain mount(2) with NUL-terminated strings.
        let rc = unsafe { libc::mount(source.as_ptr(), c_target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}
