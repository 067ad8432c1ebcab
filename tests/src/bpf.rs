//! The datapath loaded for BPF_PROG_TEST_RUN: real programs and maps in
//! this kernel, pinned in a scratch directory removed on drop.

use std::path::PathBuf;

use lb_userspace::datapath::{
    loader::{Datapath, XdpAttachMode},
    maps::DatapathMaps,
};

pub struct ScratchDatapath {
    pub datapath: Datapath,
    pub maps: DatapathMaps,
    dir: PathBuf,
}

impl ScratchDatapath {
    pub fn load() -> Self {
        let dir = PathBuf::from("/sys/fs/bpf").join(crate::netns::unique_name("f"));
        let (datapath, maps) = Datapath::load(&dir, XdpAttachMode::Auto).expect("load the datapath");
        Self { datapath, maps, dir }
    }
}

impl Drop for ScratchDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
