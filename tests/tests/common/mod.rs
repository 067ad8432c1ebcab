//! What the BPF_PROG_TEST_RUN tests share: the datapath loaded into this
//! kernel without an interface, programmed like an agent would.

use std::path::{Path, PathBuf};

use lb_tests::netns::unique_name;
use lb_userspace::{
    datapath::{
        loader::{Datapath, LoadOptions},
        maps::DatapathMaps,
    },
    model::{self, DesiredState, ModelOptions},
    plan::NodeInfo,
    source::manifests::ManifestDir,
};

/// The datapath loaded into this kernel, its maps pinned in a scratch
/// directory that is removed on drop.
pub struct ScratchDatapath {
    pub datapath: Datapath,
    pub maps: DatapathMaps,
    dir: PathBuf,
}

impl ScratchDatapath {
    #[allow(dead_code, reason = "the benchmarks load with options")]
    pub fn load() -> Self {
        Self::load_with(&LoadOptions::default())
    }

    /// Loaded with `options` (service CIDRs, say).
    pub fn load_with(options: &LoadOptions) -> Self {
        let dir = PathBuf::from("/sys/fs/bpf").join(unique_name("f"));
        match Datapath::load(&dir, options) {
            Ok((datapath, maps, _)) => Self { datapath, maps, dir },
            Err(e) => {
                // The maps pinned before the failure would hold their memory.
                let _ = std::fs::remove_dir_all(&dir);
                panic!("load the datapath: {e:?}")
            }
        }
    }

    /// The directory its maps are pinned in.
    #[allow(dead_code, reason = "not every test file reloads over the pins")]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Programs `desired` as the agent of node `node_name` would.
    #[allow(dead_code, reason = "not every test file programs from manifests")]
    pub fn program(&mut self, desired: &DesiredState, node_name: &str) {
        self.program_on(desired, &NodeInfo { name: node_name.to_owned(), ..NodeInfo::default() });
    }

    /// Programs `desired` as the agent of `node` (with its addresses) would.
    #[allow(dead_code, reason = "not every test file programs from manifests")]
    pub fn program_on(&mut self, desired: &DesiredState, node: &NodeInfo) {
        let mut programmed = self.maps.programmed().unwrap();
        for op in programmed.plan(desired, node) {
            self.maps.apply(&op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        }
    }
}

impl Drop for ScratchDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The model of the manifests in `yaml`, as the agent builds it.
#[allow(dead_code, reason = "not every test file programs from manifests")]
pub fn desired_state(yaml: &str) -> DesiredState {
    let dir = std::env::temp_dir().join(unique_name("m"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(Path::new(&dir).join("manifests.yaml"), yaml).unwrap();
    let mut source = ManifestDir::new(dir.clone());
    let report = source.scan();
    assert!(report.errors.is_empty(), "{:?}", report.errors.iter().map(ToString::to_string).collect::<Vec<_>>());
    let (desired, errors) = model::build(source.objects(), DesiredState::default(), &ModelOptions::default());
    assert!(errors.is_empty(), "{:?}", errors.iter().map(ToString::to_string).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
    desired
}
