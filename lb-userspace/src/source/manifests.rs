//! The manifest directory control source: Kubernetes objects read from the
//! `*.yaml`, `*.yml` and `*.json` files directly in one directory, kept up to
//! date by cheap rescans and a debounced file-system watcher.
//!
//! A file that stops parsing does not take its objects down with it: objects
//! its broken version no longer provides are kept from the previous version
//! until the file parses again (or is deleted).

use std::collections::{BTreeMap, BTreeSet, HashMap, hash_map::Entry as HashEntry};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, value::RawValue};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

/// Larger files are rejected unread: no sane manifest is this big.
use super::{Kind, Object, ObjectId, Objects};

pub const MAX_FILE_SIZE: u64 = 16 << 20;

/// How long the directory must stay quiet before a burst of events becomes one tick.
const DEBOUNCE_QUIET: Duration = Duration::from_millis(10);
/// The same after an event that completes a manifest (a file renamed into
/// place, or closed after writing): most edits end there, so the tick need
/// not wait long for more.
const DEBOUNCE_COMPLETE: Duration = Duration::from_millis(1);
/// A directory that never goes quiet still ticks this often.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Error)]
pub enum SourceError {
    #[error("{dir}: cannot list the manifest directory: {source}")]
    ListDir { dir: PathBuf, source: Arc<io::Error> },
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: Arc<io::Error> },
    #[error("{file}: {size} bytes is over the {} MiB limit for a manifest file", MAX_FILE_SIZE >> 20)]
    TooLarge { file: PathBuf, size: u64 },
    #[error("{file}: {reason}")]
    Syntax { file: PathBuf, reason: String },
    #[error("{file}: {at}{}: {reason}", .object.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
    Document {
        file: PathBuf,
        at: Location,
        /// Boxed to keep every `Result<_, SourceError>` small.
        object: Option<Box<ObjectId>>,
        reason: String,
    },
    #[error("{file}: {object} is already defined in {first}; this copy is ignored")]
    Duplicate { file: PathBuf, first: PathBuf, object: ObjectId },
    #[error("{dir}: cannot watch the manifest directory: {source}")]
    Watch { dir: PathBuf, source: Arc<notify::Error> },
}

/// Where a document sits in its file: `document 2`, or `document 1 items[3]`
/// for an item of a `kind: List`. Documents count from 1 as editors show
/// them, items from 0 as in a JSON path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, " items[{item}]")?;
        }
        Ok(())
    }
}

/// What one call of [`ManifestDir::scan`] found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// A file was added, removed or rewritten since the last scan.
    pub changed: bool,
    /// When `changed`: every problem in the directory as it now stands, broken
    /// files that did not change included, so one log of them describes the
    /// state about to be applied. Otherwise only a failure to list the directory.
    pub errors: Vec<SourceError>,
}

/// A directory of manifests, and what was last read from each file.
pub struct ManifestDir {
    dir: PathBuf,
    /// The kinds read; the others are ignored like unknown ones.
    kinds: &'static [Kind],
    files: BTreeMap<PathBuf, FileState>,
    objects: Objects,
    duplicates: Vec<SourceError>,
}

struct FileState {
    /// Its path, shared by its objects' [`Sourced`] from scan to scan: the
    /// model tells an unchanged object by pointer.
    file: Arc<Path>,
    /// `None` when the file could not even be stat'ed.
    stamp: Option<Stamp>,
    /// What the file provides now: its parsed objects plus, when it has
    /// errors, the ones kept from its previous version.
    objects: Vec<Object>,
    errors: Vec<SourceError>,
    /// See [`Parsed::items`].
    items: HashMap<ItemKey, Object>,
}

/// Enough of a file's metadata to notice a rewrite, in place or by rename,
/// without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

impl ManifestDir {
    /// The model's kinds in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self::with_kinds(dir, Kind::MODEL)
    }

    pub fn with_kinds(dir: PathBuf, kinds: &'static [Kind]) -> Self {
        ManifestDir { dir, kinds, files: BTreeMap::new(), objects: Objects::default(), duplicates: Vec::new() }
    }

    /// Brings the objects up to date with the directory, re-reading only the
    /// files whose metadata changed.
    pub fn scan(&mut self) -> ScanReport {
        let listing = match list_manifests(&self.dir) {
            Ok(listing) => listing,
            // Keep everything: a directory that cannot be listed for a moment
            // must not withdraw every service.
            Err(err) => {
                return ScanReport { changed: false, errors: vec![err] };
            }
        };
        let before = self.files.len();
        self.files.retain(|path, _| listing.contains_key(path));
        let mut changed = self.files.len() != before;
        // Parsing is the slow part of a cold start: files are read on every core.
        let listing: Vec<(PathBuf, Format)> = listing.into_iter().collect();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let (files, kinds) = (&self.files, self.kinds);
        let loads: Vec<Load> = std::thread::scope(|scope| {
            let workers: Vec<_> = listing
                .chunks(listing.len().div_ceil(threads).max(1))
                .map(|chunk| {
                    scope.spawn(move || chunk.iter().map(|(p, f)| load(p, *f, files.get(p), kinds)).collect::<Vec<_>>())
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().expect("a manifest loader panicked")).collect()
        });
        for ((path, _), loaded) in listing.into_iter().zip(loads) {
            match loaded {
                Load::Unchanged => {}
                Load::Gone => changed |= self.files.remove(&path).is_some(),
                Load::Read(state) => {
                    self.files.insert(path, state);
                    changed = true;
                }
            }
        }
        if !changed {
            return ScanReport::default();
        }
        self.merge();
        let errors = self.files.values().flat_map(|f| &f.errors).chain(&self.duplicates).cloned().collect();
        ScanReport { changed, errors }
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// Rebuilds the merged view; the first file in name order wins an identity.
    fn merge(&mut self) {
        let mut objects = Objects::default();
        let mut duplicates = Vec::new();
        let mut owners: HashMap<(Kind, &str, &str), &Path> =
            HashMap::with_capacity(self.files.values().map(|f| f.objects.len()).sum());
        for (path, state) in &self.files {
            let file = &state.file;
            for object in &state.objects {
                match owners.entry(object.key()) {
                    HashEntry::Occupied(first) => duplicates.push(SourceError::Duplicate {
                        file: path.clone(),
                        first: first.get().to_path_buf(),
                        object: object.id(),
                    }),
                    HashEntry::Vacant(owner) => {
                        owner.insert(path);
                        objects.push(file, object.clone());
                    }
                }
            }
        }
        self.objects = objects;
        self.duplicates = duplicates;
    }
}

/// The manifest files directly in `dir`, with how to parse each.
fn list_manifests(dir: &Path) -> Result<BTreeMap<PathBuf, Format>, SourceError> {
    let list_err = |source| SourceError::ListDir { dir: dir.to_owned(), source: Arc::new(source) };
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        if let Some(format) = manifest_format(&entry.file_name()) {
            files.insert(entry.path(), format);
        }
    }
    Ok(files)
}

/// Hidden files (editor swap files, `..data` of a mounted ConfigMap) and
/// backups (`foo.yaml~`) are not manifests.
fn manifest_format(name: &OsStr) -> Option<Format> {
    let name = name.to_str()?;
    if name.starts_with('.') || name.ends_with('~') {
        return None;
    }
    let ext = Path::new(name).extension()?.to_str()?;
    if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") {
        Some(Format::Yaml)
    } else if ext.eq_ignore_ascii_case("json") {
        Some(Format::Json)
    } else {
        None
    }
}

enum Load {
    Unchanged,
    Gone,
    Read(FileState),
}

fn load(path: &Path, format: Format, previous: Option<&FileState>, kinds: &[Kind]) -> Load {
    // Stat before reading: a write that lands after the stat changes the
    // stamp again, so the next scan re-reads the file.
    let meta = match fs::metadata(path) {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Load::Gone,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Load::Gone,
        // Report a stat failure once, not on every scan.
        Err(_) if previous.is_some_and(|p| p.stamp.is_none()) => return Load::Unchanged,
        Err(err) => {
            let parsed = Parsed { objects: Vec::new(), errors: vec![io_error(path, err)], items: HashMap::new() };
            return Load::Read(settle(path, None, parsed, previous));
        }
    };
    let stamp = Stamp::of(&meta);
    if previous.is_some_and(|p| p.stamp == Some(stamp)) {
        return Load::Unchanged;
    }
    let parsed = match read_limited(path, meta.len()) {
        Ok(bytes) => parse(path, format, &bytes, previous.map(|p| &p.items), kinds),
        Err(err) => Parsed { objects: Vec::new(), errors: vec![err], items: HashMap::new() },
    };
    Load::Read(settle(path, Some(stamp), parsed, previous))
}

fn io_error(path: &Path, err: io::Error) -> SourceError {
    SourceError::Read { file: path.to_owned(), source: Arc::new(err) }
}

fn read_limited(path: &Path, len: u64) -> Result<Vec<u8>, SourceError> {
    if len > MAX_FILE_SIZE {
        return Err(SourceError::TooLarge { file: path.to_owned(), size: len });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    // The file may have grown since the stat.
    file.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes).map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(SourceError::TooLarge { file: path.to_owned(), size: bytes.len() as u64 });
    }
    Ok(bytes)
}

/// A file's new state. A broken (or unreadable) file might have held any
/// object it no longer provides, so those are kept from its previous version;
/// a clean file replaces it exactly.
fn settle(path: &Path, stamp: Option<Stamp>, parsed: Parsed, previous: Option<&FileState>) -> FileState {
    let Parsed { mut objects, errors, items } = parsed;
    if let Some(previous) = previous.filter(|_| !errors.is_empty()) {
        let provided: BTreeSet<ObjectId> = objects.iter().map(Object::id).collect();
        let before = objects.len();
        objects.extend(previous.objects.iter().filter(|o| !provided.contains(&o.id())).cloned());
        debug!(kept = objects.len() - before, "keeping objects of the last good version of a broken file");
    }
    let file = previous.map_or_else(|| Arc::from(path), |p| Arc::clone(&p.file));
    FileState { file, stamp, objects, errors, items }
}

/// A JSON item by its text: (hash, length).
type ItemKey = (u64, usize);

fn item_key(text: &str) -> ItemKey {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(text, &mut hasher);
    (std::hash::Hasher::finish(&hasher), text.len())
}

/// What a file provides, as read.
struct Parsed {
    objects: Vec<Object>,
    errors: Vec<SourceError>,
    /// The decoded objects of the JSON items, by their text: when the file
    /// is rewritten, an item whose text did not change is not decoded again
    /// (and stays the same `Arc`, which the model's memo relies on).
    items: HashMap<ItemKey, Object>,
}

/// The top of a JSON document, read only as far as telling a List apart.
#[derive(Deserialize)]
struct JsonTop<'a> {
    kind: Option<Value>,
    #[serde(borrow)]
    items: Option<&'a RawValue>,
}

/// One document, or one item of a List.
enum Item<'a> {
    Yaml(Value),
    Json(&'a RawValue),
}

/// Every recognised object of a file, and every problem met on the way.
/// `previous` holds the decoded JSON items of the file's last version.
fn parse(
    path: &Path,
    format: Format,
    bytes: &[u8],
    previous: Option<&HashMap<ItemKey, Object>>,
    kinds: &[Kind],
) -> Parsed {
    let mut errors = Vec::new();
    let documents: Vec<Vec<(Option<usize>, Item)>> = match format {
        Format::Json => match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(raw) => vec![json_items(path, raw, &mut errors)],
            Err(err) => {
                errors.push(SourceError::Syntax { file: path.to_owned(), reason: err.to_string() });
                Vec::new()
            }
        },
        Format::Yaml => match std::str::from_utf8(bytes) {
            Ok(text) => yaml_documents(path, text, &mut errors)
                .into_iter()
                .enumerate()
                .map(|(index, value)| yaml_items(path, index + 1, value, &mut errors))
                .collect(),
            Err(err) => {
                errors.push(SourceError::Syntax { file: path.to_owned(), reason: format!("not UTF-8: {err}") });
                Vec::new()
            }
        },
    };
    let mut parsed = Parsed { objects: Vec::new(), errors, items: HashMap::new() };
    let mut seen: BTreeMap<ObjectId, Location> = BTreeMap::new();
    for (index, items) in documents.into_iter().enumerate() {
        for (item, content) in items {
            let at = Location { document: index + 1, item };
            let document_error = |object: Option<ObjectId>, reason| SourceError::Document {
                file: path.to_owned(),
                at,
                object: object.map(Box::new),
                reason,
            };
            let decoded = match content {
                Item::Yaml(value) => decode(value, kinds),
                Item::Json(raw) => {
                    let key = item_key(raw.get());
                    match previous.and_then(|p| p.get(&key)) {
                        Some(object) => Ok(Some(object.clone())),
                        None => serde_json::from_str::<Value>(raw.get())
                            .map_err(|err| (None, err.to_string()))
                            .and_then(|value| decode(value, kinds)),
                    }
                    .inspect(|object| {
                        if let Some(object) = object {
                            parsed.items.insert(key, object.clone());
                        }
                    })
                }
            };
            match decoded {
                Ok(None) => {}
                Ok(Some(object)) => {
                    let id = object.id();
                    if let Some(first) = seen.get(&id) {
                        parsed.errors.push(document_error(Some(id), format!("defined again; {first} is used")));
                    } else {
                        seen.insert(id, at);
                        parsed.objects.push(object);
                    }
                }
                Err((object, reason)) => parsed.errors.push(document_error(object, reason)),
            }
        }
    }
    parsed
}

/// The items of a JSON document: those of a List, or the document itself.
fn json_items<'a>(path: &Path, raw: &'a RawValue, errors: &mut Vec<SourceError>) -> Vec<(Option<usize>, Item<'a>)> {
    if raw.get() == "null" {
        return Vec::new();
    }
    let top = serde_json::from_str::<JsonTop>(raw.get()).ok();
    let Some(JsonTop { items, .. }) = top.filter(|t| t.kind.as_ref().and_then(Value::as_str) == Some("List")) else {
        return vec![(None, Item::Json(raw))];
    };
    match items.map(|items| serde_json::from_str::<Option<Vec<&RawValue>>>(items.get())) {
        None | Some(Ok(None)) => Vec::new(),
        Some(Ok(Some(items))) => items.into_iter().enumerate().map(|(i, item)| (Some(i), Item::Json(item))).collect(),
        Some(Err(_)) => {
            errors.push(list_without_items(path, 1));
            Vec::new()
        }
    }
}

/// The items of a YAML document: those of a List, or the document itself.
fn yaml_items(
    path: &Path,
    document: usize,
    value: Value,
    errors: &mut Vec<SourceError>,
) -> Vec<(Option<usize>, Item<'static>)> {
    match value {
        Value::Null => Vec::new(),
        Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
            match map.remove("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => {
                    items.into_iter().enumerate().map(|(i, item)| (Some(i), Item::Yaml(item))).collect()
                }
                Some(_) => {
                    errors.push(list_without_items(path, document));
                    Vec::new()
                }
            }
        }
        value => vec![(None, Item::Yaml(value))],
    }
}

fn list_without_items(path: &Path, document: usize) -> SourceError {
    SourceError::Document {
        file: path.to_owned(),
        at: Location { document, item: None },
        object: None,
        reason: "items: a List needs a sequence of items".into(),
    }
}

/// The documents of a YAML stream up to the first one that does not parse.
fn yaml_documents(path: &Path, text: &str, errors: &mut Vec<SourceError>) -> Vec<Value> {
    let mut documents = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            Ok(value) => documents.push(value),
            Err(err) => {
                // The parser cannot resynchronise after a syntax error (and
                // would repeat it forever), so the rest of the file is lost.
                errors.push(SourceError::Document {
                    file: path.to_owned(),
                    at: Location { document: index + 1, item: None },
                    object: None,
                    reason: err.to_string(),
                });
                break;
            }
        }
    }
    documents
}

/// One document to an object: `Ok(None)` for kinds this source ignores, and
/// on error the object's identity when it could be read.
fn decode(value: Value, kinds: &[Kind]) -> Result<Option<Object>, (Option<ObjectId>, String)> {
    let Value::Object(map) = &value else {
        return Err((None, "not a mapping".into()));
    };
    let field = |name: &str| map.get(name).and_then(Value::as_str);
    let api_version = field("apiVersion").ok_or((None, "apiVersion is missing".to_owned()))?;
    let kind_name = field("kind").ok_or((None, "kind is missing".to_owned()))?;
    let Some(kind) = Kind::of(api_version, kind_name).filter(|k| kinds.contains(k)) else {
        debug!(api_version, kind = kind_name, "ignoring an object of a kind this source does not use");
        return Ok(None);
    };
    let meta = map.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err((None, format!("{kind_name} without metadata.name")));
    };
    let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).filter(|n| !n.is_empty());
    let id = ObjectId { kind, namespace: namespace.unwrap_or("default").to_owned(), name: name.to_owned() };
    let object = match kind {
        Kind::Service => typed(value).map(Object::Service),
        Kind::Pod => typed(value).map(Object::Pod),
        Kind::Endpoints => typed(value).map(Object::Endpoints),
        Kind::EndpointSlice => typed(value).map(Object::EndpointSlice),
        Kind::Ingress => typed(value).map(Object::Ingress),
        Kind::IngressClass => typed(value).map(Object::IngressClass),
        Kind::Secret => typed(value).map(Object::Secret),
    };
    object.map(Some).map_err(|reason| (Some(id), reason))
}

// A JSON item is typed through its `Value`, not straight from its text:
// JSON does not tell a list's length ahead, so lists typed from text keep
// room for up to four times their items. Measured on 10 000 Services x 10
// endpoints: 100 MiB more RSS (45 MiB after shrinking the lists) for 3 ms
// less per change.

/// Deserialises with the path of the offending field in the error, and
/// defaults the namespace so nothing downstream has to.
fn typed<T: DeserializeOwned + Metadata<Ty = ObjectMeta>>(value: Value) -> Result<Arc<T>, String> {
    let mut object: T = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        if path == "." { err.inner().to_string() } else { format!("{path}: {}", err.inner()) }
    })?;
    let namespace = &mut object.metadata_mut().namespace;
    if namespace.as_deref().is_none_or(str::is_empty) {
        *namespace = Some("default".to_owned());
    }
    Ok(Arc::new(object))
}

/// Ticks when something in a watched directory changed; see [`watch`].
/// A manifest directory as the agent's source: scanned when its watcher
/// ticks, and every [`RESCAN`] in case an event was missed.
pub struct ManifestSource {
    dir: ManifestDir,
    /// The first scan, started by [`ManifestSource::open`] on a thread of
    /// its own: a cold start reads and parses the directory while the
    /// programs are being loaded.
    first_scan: Option<thread::JoinHandle<(ManifestDir, ScanReport)>>,
    watch: Option<DirWatch>,
    rescan: tokio::time::Interval,
}

/// A full rescan besides the watcher.
pub const RESCAN: Duration = Duration::from_secs(5);

impl ManifestSource {
    /// Watches `dir` and starts reading the objects of `kinds` in it.
    pub fn open(dir: PathBuf, kinds: &'static [Kind]) -> Result<Self, SourceError> {
        let watch = watch(&dir)?;
        let mut first = ManifestDir::with_kinds(dir.clone(), kinds);
        let first_scan = thread::Builder::new()
            .name("manifest-scan".into())
            .spawn(move || {
                let report = first.scan();
                (first, report)
            })
            .ok();
        Ok(ManifestSource {
            dir: ManifestDir::with_kinds(dir, kinds),
            first_scan,
            watch: Some(watch),
            rescan: tokio::time::interval(RESCAN),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir.dir
    }

    /// Waits until the directory may have changed.
    pub async fn changed(&mut self) {
        let watch = async {
            match self.watch.as_mut() {
                Some(watch) => watch.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            tick = watch => if tick.is_none() {
                warn!(dir = %self.dir.dir.display(), "the directory watcher stopped: rescanning every {RESCAN:?} only");
                self.watch = None;
            },
            _ = self.rescan.tick() => {}
        }
    }

    /// Rescans (the first time, takes the first scan's result), logging
    /// every error; whether anything changed.
    pub fn refresh(&mut self) -> bool {
        let first = self.first_scan.take().and_then(|scan| scan.join().ok());
        let report = match first {
            Some((dir, report)) => {
                self.dir = dir;
                report
            }
            None => self.dir.scan(),
        };
        for err in &report.errors {
            error!("{err}");
        }
        report.changed
    }

    pub fn objects(&self) -> &Objects {
        self.dir.objects()
    }
}

pub struct DirWatch {
    // Dropping the watcher stops the events, and with them the debounce thread.
    _watcher: RecommendedWatcher,
    ticks: mpsc::Receiver<()>,
}

impl DirWatch {
    /// Waits for the next burst of changes to end. `None` when the watcher
    /// stopped. Cancel-safe: a tick not received stays pending.
    pub async fn recv(&mut self) -> Option<()> {
        self.ticks.recv().await
    }
}

/// Watches `dir` (not recursively) and ticks once per burst of changes, so an
/// editor's save or a `cp` of many files causes one rescan. Writes in place
/// and renames into the directory are both seen. Reads are not events, so a
/// scan does not trigger the next one.
pub fn watch(dir: &Path) -> Result<DirWatch, SourceError> {
    let watch_err = |source| SourceError::Watch { dir: dir.to_owned(), source: Arc::new(source) };
    // Each relevant event, and whether it completes a manifest.
    let (events_tx, events_rx) = std_mpsc::channel::<bool>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let is_manifest = |path: Option<&PathBuf>| path.and_then(|p| p.file_name()).and_then(manifest_format).is_some();
        let relevant = match event {
            Ok(event) => match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(is_manifest(event.paths.first())),
                EventKind::Access(_) => None,
                // A rename's destination is its last path. Only into a
                // manifest's name: an editor that moves the file away to a
                // backup writes the new one next.
                EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
                    Some(is_manifest(event.paths.last()))
                }
                _ => Some(false),
            },
            Err(err) => {
                // A lost event (queue overflow, ...) is a reason to rescan.
                warn!("manifest directory watcher: {err}");
                Some(false)
            }
        };
        if let Some(complete) = relevant {
            // Fails only once the debounce thread is gone, i.e. on shutdown.
            let _ = events_tx.send(complete);
        }
    })
    .map_err(watch_err)?;
    watcher.watch(dir, RecursiveMode::NonRecursive).map_err(watch_err)?;
    // One pending tick is enough: the scan it causes sees every change.
    let (ticks_tx, ticks) = mpsc::channel(1);
    thread::Builder::new()
        .name("manifest-watch".into())
        .spawn(move || debounce(&events_rx, &ticks_tx))
        .map_err(|e| watch_err(notify::Error::io(e)))?;
    Ok(DirWatch { _watcher: watcher, ticks })
}

fn debounce(events: &std_mpsc::Receiver<bool>, ticks: &mpsc::Sender<()>) {
    while let Ok(mut complete) = events.recv() {
        let deadline = Instant::now() + DEBOUNCE_MAX;
        loop {
            let quiet = if complete { DEBOUNCE_COMPLETE } else { DEBOUNCE_QUIET };
            let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
            match events.recv_timeout(wait) {
                Ok(last) if Instant::now() < deadline => complete = last,
                Ok(_) | Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        if let Err(mpsc::error::TrySendError::Closed(())) = ticks.try_send(()) {
            return;
        }
    }
}

/// Objects from YAML text, as the directory would provide them (for the
/// model's tests).
#[cfg(test)]
pub(crate) fn objects_from_yaml(text: &str) -> Objects {
    let file: Arc<Path> = Arc::from(Path::new("test.yaml"));
    let parsed = parse(&file, Format::Yaml, text.as_bytes(), None, Kind::ALL);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut objects = Objects::default();
    for object in parsed.objects {
        objects.push(&file, object);
    }
    objects
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    use super::*;
    use crate::source::Sourced;

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("lb-source-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn service(name: &str, port: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: {port}\n")
    }

    fn service_names(dir: &ManifestDir) -> Vec<String> {
        dir.objects().services.iter().map(|s| s.object.metadata.name.clone().unwrap()).collect()
    }

    fn messages(report: &ScanReport) -> Vec<String> {
        report.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn multi_document_yaml_with_a_broken_document() {
        let tmp = TempDir::new("multi");
        let text = format!(
            "{}---\n{}---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n---\n{}",
            service("a", "80"),
            service("kubia", "eighty"),
            service("c", "82")
        );
        let file = tmp.write("bad.yaml", &text);
        let mut dir = ManifestDir::new(tmp.0.clone());
        let report = dir.scan();
        assert!(report.changed);
        assert_eq!(service_names(&dir), ["a", "c"]);
        assert_eq!(
            messages(&report),
            [format!(
                "{}: document 2 (Service default/kubia): spec.ports[0].port: invalid type: string \"eighty\", expected i32",
                file.display()
            )]
        );
        assert_eq!(*dir.objects().services[0].file, *file);
        assert_eq!(dir.objects().services[0].object.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn broken_file_keeps_what_it_no_longer_provides() {
        let tmp = TempDir::new("keep");
        tmp.write("svc.yaml", &format!("{}---\n{}", service("a", "80"), service("b", "81")));
        let mut dir = ManifestDir::new(tmp.0.clone());
        dir.scan();
        assert_eq!(service_names(&dir), ["a", "b"]);

        // A whole-file syntax error: both kept.
        tmp.write("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n");
        let report = dir.scan();
        assert!(report.changed);
        assert_eq!(report.errors.len(), 1, "{:?}", messages(&report));
        assert!(messages(&report)[0].contains("svc.yaml: document 1: "), "{:?}", messages(&report));
        assert_eq!(service_names(&dir), ["a", "b"]);

        // Parsed objects are taken even from a broken file, the rest kept.
        tmp.write("svc.yaml", &format!("{}---\n{}", service("a", "8080"), service("b", "x")));
        dir.scan();
        let ports: Vec<i32> = dir
            .objects()
            .services
            .iter()
            .map(|s| s.object.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port)
            .collect();
        assert_eq!(service_names(&dir), ["a", "b"]);
        assert_eq!(ports, [8080, 81]);

        // A syntax error mid-file: what follows it is lost, so kept too.
        tmp.write("svc.yaml", &format!("{}---\nspec: [\n---\n{}", service("a", "9090"), service("c", "82")));
        let report = dir.scan();
        assert_eq!(report.errors.len(), 1, "{:?}", messages(&report));
        assert!(messages(&report)[0].contains("svc.yaml: document 2: "), "{:?}", messages(&report));
        assert_eq!(service_names(&dir), ["a", "b"]);
        assert_eq!(dir.objects().services[0].object.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 9090);

        // A clean file replaces its previous objects exactly.
        tmp.write("svc.yaml", &service("a", "80"));
        let report = dir.scan();
        assert!(report.errors.is_empty());
        assert_eq!(service_names(&dir), ["a"]);
    }

    #[test]
    fn deleted_file_drops_its_objects_and_unchanged_files_are_not_reread() {
        let tmp = TempDir::new("delete");
        let a = tmp.write("a.yaml", &service("a", "80"));
        tmp.write("b.yml", &service("b", "80"));
        let mut dir = ManifestDir::new(tmp.0.clone());
        assert!(dir.scan().changed);
        assert!(!dir.scan().changed);
        fs::remove_file(a).unwrap();
        assert!(dir.scan().changed);
        assert_eq!(service_names(&dir), ["b"]);
    }

    #[test]
    fn rename_over_a_file_is_seen() {
        let tmp = TempDir::new("rename");
        tmp.write("svc.yaml", &service("a", "80"));
        let mut dir = ManifestDir::new(tmp.0.clone());
        dir.scan();
        // Same size, maybe the same mtime: the inode tells them apart.
        let tmpfile = tmp.write(".svc.yaml.tmp", &service("b", "80"));
        fs::rename(tmpfile, tmp.0.join("svc.yaml")).unwrap();
        assert!(dir.scan().changed);
        assert_eq!(service_names(&dir), ["b"]);
    }

    #[test]
    fn ignores_hidden_temp_and_other_files() {
        let tmp = TempDir::new("ignore");
        tmp.write(".svc.yaml.swp", &service("swap", "80"));
        tmp.write("svc.yaml~", &service("backup", "80"));
        tmp.write("notes.txt", "not yaml: [");
        tmp.write("svc.YAML", &service("upper", "80"));
        fs::create_dir(tmp.0.join("sub.yaml")).unwrap();
        fs::write(tmp.0.join("sub.yaml").join("nested.yaml"), service("nested", "80")).unwrap();
        let mut dir = ManifestDir::new(tmp.0.clone());
        let report = dir.scan();
        assert!(report.errors.is_empty(), "{:?}", messages(&report));
        assert_eq!(service_names(&dir), ["upper"]);
    }

    #[test]
    fn json_list_and_yaml_list() {
        let tmp = TempDir::new("list");
        tmp.write(
            "list.json",
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"web"},"spec":{"ports":[{"port":80}]}},
                {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}},
                {"apiVersion":"v1","kind":"Service","metadata":{"name":"bad"},"spec":{"ports":"none"}}
            ]}"#,
        );
        tmp.write(
            "single.json",
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"a-1"},"addressType":"IPv4","endpoints":[]}"#,
        );
        tmp.write(
            "list.yaml",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Endpoints\n  metadata:\n    name: e\n",
        );
        let mut dir = ManifestDir::new(tmp.0.clone());
        let report = dir.scan();
        let objects = dir.objects();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.services[0].object.metadata.namespace.as_deref(), Some("web"));
        assert_eq!(objects.pods.len(), 1);
        assert_eq!(objects.endpoints.len(), 1);
        assert_eq!(objects.endpoint_slices.len(), 1);
        assert_eq!(
            messages(&report),
            [format!(
                "{}: document 1 items[2] (Service default/bad): spec.ports: invalid type: string \"none\", expected a sequence",
                tmp.0.join("list.json").display()
            )]
        );
    }

    #[test]
    fn rewritten_json_list_decodes_only_the_items_that_changed() {
        let tmp = TempDir::new("items");
        let list = |port: u16| {
            format!(
                r#"{{"apiVersion":"v1","kind":"List","items":[
                {{"apiVersion":"v1","kind":"Service","metadata":{{"name":"same"}},"spec":{{"ports":[{{"port":80}}]}}}},
                {{"apiVersion":"v1","kind":"Service","metadata":{{"name":"edited"}},"spec":{{"ports":[{{"port":{port}}}]}}}}
            ]}}"#
            )
        };
        tmp.write("list.json", &list(80));
        let mut dir = ManifestDir::new(tmp.0.clone());
        dir.scan();
        let before = dir.objects().services.clone();
        tmp.write("list.json", &list(81));
        assert!(dir.scan().changed);
        let after = &dir.objects().services;
        assert!(Arc::ptr_eq(&before[0].object, &after[0].object), "an unchanged item is not decoded again");
        assert!(!Arc::ptr_eq(&before[1].object, &after[1].object));
        let port = |s: &Sourced<Service>| s.object.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
        assert_eq!((port(&after[0]), port(&after[1])), (80, 81));
    }

    #[test]
    fn document_errors_name_the_reason() {
        let tmp = TempDir::new("docerr");
        tmp.write("x.yaml", "- just\n- a list\n---\nkind: Service\n---\napiVersion: v1\nkind: Pod\nmetadata: {}\n");
        tmp.write("y.json", "{ not json");
        let mut dir = ManifestDir::new(tmp.0.clone());
        let errors = messages(&dir.scan());
        let x = tmp.0.join("x.yaml");
        assert_eq!(errors[0], format!("{}: document 1: not a mapping", x.display()));
        assert_eq!(errors[1], format!("{}: document 2: apiVersion is missing", x.display()));
        assert_eq!(errors[2], format!("{}: document 3: Pod without metadata.name", x.display()));
        assert!(
            errors[3].starts_with(&format!("{}: key must be a string", tmp.0.join("y.json").display())),
            "{errors:?}"
        );
    }

    #[test]
    fn same_object_in_two_files_first_file_wins() {
        let tmp = TempDir::new("dup");
        tmp.write("a.yaml", &service("kubia", "80"));
        tmp.write("b.yaml", &service("kubia", "81"));
        let mut dir = ManifestDir::new(tmp.0.clone());
        let report = dir.scan();
        let services = &dir.objects().services;
        assert_eq!(services.len(), 1);
        assert_eq!(*services[0].file, *tmp.0.join("a.yaml"));
        assert_eq!(
            messages(&report),
            [format!(
                "{}: Service default/kubia is already defined in {}; this copy is ignored",
                tmp.0.join("b.yaml").display(),
                tmp.0.join("a.yaml").display()
            )]
        );
    }

    #[test]
    fn oversized_file_is_rejected_unread_and_keeps_its_objects() {
        let tmp = TempDir::new("big");
        let path = tmp.write("big.yaml", &service("a", "80"));
        let mut dir = ManifestDir::new(tmp.0.clone());
        dir.scan();
        File::options().write(true).open(&path).unwrap().set_len(MAX_FILE_SIZE + 1).unwrap();
        let report = dir.scan();
        assert_eq!(
            messages(&report),
            [format!("{}: 16777217 bytes is over the 16 MiB limit for a manifest file", path.display())]
        );
        assert_eq!(service_names(&dir), ["a"]);
    }

    #[test]
    fn missing_directory_is_an_error_and_keeps_objects() {
        let tmp = TempDir::new("gone");
        tmp.write("a.yaml", &service("a", "80"));
        let mut dir = ManifestDir::new(tmp.0.clone());
        dir.scan();
        fs::remove_dir_all(&tmp.0).unwrap();
        let report = dir.scan();
        assert!(!report.changed);
        assert!(messages(&report)[0].contains("cannot list the manifest directory"));
        assert_eq!(service_names(&dir), ["a"]);
    }

    #[test]
    fn watcher_ticks_once_per_burst_and_not_for_reads() {
        let tmp = TempDir::new("watch");
        let mut watch = watch(&tmp.0).unwrap();
        let wait = |watch: &mut DirWatch, ms| {
            let deadline = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < deadline {
                if watch.ticks.try_recv().is_ok() {
                    return true;
                }
                thread::sleep(Duration::from_millis(10));
            }
            false
        };
        for i in 0..5 {
            tmp.write(&format!("s{i}.yaml"), &service(&format!("s{i}"), "80"));
        }
        assert!(wait(&mut watch, 2000), "no tick for written files");
        assert!(!wait(&mut watch, 300), "a burst gave more than one tick");

        let mut dir = ManifestDir::new(tmp.0.clone());
        dir.scan();
        assert!(!wait(&mut watch, 300), "reading the files caused a tick");

        let tmpfile = tmp.write(".new.tmp", &service("n", "80"));
        fs::rename(tmpfile, tmp.0.join("n.yaml")).unwrap();
        assert!(wait(&mut watch, 2000), "no tick for a rename into the directory");
    }
}
