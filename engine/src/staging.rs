//! Atomic file sinks: every object a statement writes lands under a hidden staging name next to
//! its target and is renamed into place only when the statement succeeds.
//!
//! A statement that writes runs against a [`StagingRegistry`], which wraps each object store of
//! the session in a [`StagingObjectStore`] bound to one [`WriteTxn`]. Reads pass straight through.
//! [`WriteTxn::commit`] renames the staged objects to their targets (atomic per file on local
//! disks, `copy`+`delete` elsewhere); [`WriteTxn::rollback`] deletes them, and directories the
//! statement created. A process killed mid-write leaves only `.<name>.flowengine-<id>.inprogress`
//! files, which no reader takes for output (listing tables filter by extension).
//!
//! A commit of several files is made durable before its first rename: [`WriteTxn::files`]
//! lists them, the runtime records that list in the state store (a
//! [`crate::state::CommitRecord`]), and only then renames. A process killed half-way through
//! the renames leaves a recorded commit that `--resume` finishes with [`roll_forward`] (the
//! statement is not run again); a process killed before the record leaves only staged files.
//! A recorded run's transaction ([`WriteTxn::owned_by`]) puts the run id in its staged names,
//! so a later run of the pipeline can [`sweep`] the leftovers of runs it proves dead.
//!
//! On a Ballista cluster the executors write. The statement's transaction id travels to them
//! in the session setting `flowengine_staging.txn` ([`StagingOptions`]); each executor stages
//! under that id with a [`WriteTxn::detached`] transaction, and the client, once the job has
//! succeeded or failed, [`WriteTxn::adopt`]s the staged objects under the statement's targets
//! and commits or rolls them back like its own.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::error::Result as DfResult;
use datafusion::execution::object_store::ObjectStoreRegistry;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use url::Url;

/// Marker in staged object names; anything containing it is an unfinished write.
pub const STAGING_MARKER: &str = ".flowengine-";

/// Session settings of staged writes (`flowengine_staging.*`), sent with every query to
/// cluster nodes. (Written out rather than with DataFusion's `extensions_options!`, whose
/// entries leave out the prefix, so Ballista would send a bare `txn` key.)
#[derive(Debug, Clone, Default)]
pub struct StagingOptions {
    /// The id of the statement's write transaction; empty outside a write.
    pub txn: String,
}

impl datafusion::common::config::ConfigExtension for StagingOptions {
    const PREFIX: &'static str = "flowengine_staging";
}

impl datafusion::common::config::ExtensionOptions for StagingOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn datafusion::common::config::ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> DfResult<()> {
        match key {
            "txn" => {
                self.txn = value.to_string();
                Ok(())
            }
            other => Err(datafusion::error::DataFusionError::Configuration(format!(
                "unknown setting flowengine_staging.{other}"
            ))),
        }
    }

    fn entries(&self) -> Vec<datafusion::common::config::ConfigEntry> {
        vec![datafusion::common::config::ConfigEntry {
            key: "flowengine_staging.txn".into(),
            value: Some(self.txn.clone()),
            description: "the write transaction of the running statement, whose files cluster \
                          executors stage until the client commits them",
        }]
    }
}

/// One staged object: where it is now and where it goes on commit.
#[derive(Debug, Clone)]
struct Staged {
    store: Arc<dyn ObjectStore>,
    /// The store's root URL (`file:///`, `s3://bucket/`), to find it again after a crash.
    root: String,
    staged: Path,
    target: Path,
    /// On the local file system (`/<staged>`).
    local: bool,
}

/// The root of the store `url` is in: `scheme://authority/`.
pub fn store_root(url: &Url) -> String {
    format!(
        "{}://{}/",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

/// Remove a local staged file and the partial-upload parts object_store keeps next to it
/// (`<name>#<n>`), which an interrupted multipart upload can leave behind.
fn remove_local_staged(staged: &Path) {
    let file = PathBuf::from(format!("/{staged}"));
    let _ = std::fs::remove_file(&file);
    let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let prefix = format!("{name}#");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[derive(Debug, Default)]
struct TxnState {
    staged: Vec<Staged>,
    /// Local directories that did not exist before this statement wrote into them.
    created_dirs: Vec<PathBuf>,
    finished: bool,
}

/// The set of objects one statement writes.
#[derive(Debug)]
pub struct WriteTxn {
    id: String,
    state: Mutex<TxnState>,
}

impl Default for WriteTxn {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteTxn {
    pub fn new() -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            state: Mutex::new(TxnState::default()),
        }
    }

    /// A transaction of the recorded run `run_id`: its staged names carry the run's id, so a
    /// later run can tell the leftovers of a dead run (see [`sweep`]).
    pub fn owned_by(run_id: &str) -> Self {
        Self {
            id: format!(
                "{run_id}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            ),
            state: Mutex::new(TxnState::default()),
        }
    }

    /// A cluster node's view of the client's transaction `id`: it stages writes under the
    /// client's id and never commits, rolls back or cleans up; the client does.
    pub fn detached(id: &str) -> Self {
        Self {
            id: id.to_string(),
            state: Mutex::new(TxnState {
                finished: true,
                ..TxnState::default()
            }),
        }
    }

    /// The id staged names carry.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Take over the objects other processes (cluster executors) staged under this
    /// transaction's id below `prefix` of `store`: directly in it, and anywhere under it when it
    /// is a directory. They are then committed or rolled back with this transaction's own.
    pub async fn adopt(
        &self,
        store: Arc<dyn ObjectStore>,
        root: &Url,
        prefix: &Path,
    ) -> object_store::Result<usize> {
        let local = root.scheme() == "file";
        let suffix = format!("{STAGING_MARKER}{}.inprogress", self.id);
        let found = list_near(store.as_ref(), prefix).await?;
        let mut adopted = 0;
        for meta in found {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let Some(target_name) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(suffix.as_str()))
            else {
                continue;
            };
            let mut parts: Vec<_> = meta.location.parts().collect();
            parts.pop();
            parts.push(target_name.into());
            self.record(Staged {
                store: Arc::clone(&store),
                root: store_root(root),
                staged: meta.location.clone(),
                target: Path::from_iter(parts),
                local,
            });
            adopted += 1;
        }
        Ok(adopted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TxnState> {
        // A poisoned lock only means another writer panicked; the list itself stays valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hidden name `target` is written under until commit.
    fn staging_path(&self, target: &Path) -> Path {
        let file = target.filename().unwrap_or("part");
        let staged_name = format!(".{file}{STAGING_MARKER}{}.inprogress", self.id);
        let mut parts: Vec<_> = target.parts().collect();
        parts.pop();
        parts.push(staged_name.as_str().into());
        Path::from_iter(parts)
    }

    fn record(&self, staged: Staged) {
        let mut state = self.lock();
        if !state.staged.iter().any(|s| s.staged == staged.staged) {
            state.staged.push(staged);
        }
    }

    /// The files a commit would move: store, staged and final path.
    pub fn files(&self) -> Vec<crate::state::CommitFile> {
        self.lock()
            .staged
            .iter()
            .map(|s| crate::state::CommitFile {
                store: s.root.clone(),
                staged: s.staged.to_string(),
                target: s.target.to_string(),
            })
            .collect()
    }

    fn record_created_dirs(&self, dirs: Vec<PathBuf>) {
        let mut state = self.lock();
        for d in dirs {
            if !state.created_dirs.contains(&d) {
                state.created_dirs.push(d);
            }
        }
    }

    /// Move every staged object to its target. On a failed rename, the rest are rolled back.
    pub async fn commit(&self) -> object_store::Result<usize> {
        let staged = {
            let mut state = self.lock();
            state.finished = true;
            std::mem::take(&mut state.staged)
        };
        let n = staged.len();
        crate::faults::point("commit.before_renames", 0);
        for (i, s) in staged.iter().enumerate() {
            if let Err(e) = s.store.rename(&s.staged, &s.target).await {
                for rest in &staged[i..] {
                    let _ = rest.store.delete(&rest.staged).await;
                }
                return Err(e);
            }
            crate::faults::point("commit.rename", i + 1);
        }
        Ok(n)
    }

    /// Delete every staged object and the directories this statement created.
    pub async fn rollback(&self) {
        let (staged, dirs) = {
            let mut state = self.lock();
            state.finished = true;
            (
                std::mem::take(&mut state.staged),
                std::mem::take(&mut state.created_dirs),
            )
        };
        for s in staged {
            if s.local {
                let path = s.staged.clone();
                let _ = tokio::task::spawn_blocking(move || remove_local_staged(&path)).await;
            } else {
                let _ = s.store.delete(&s.staged).await;
            }
        }
        // Deepest first; remove_dir only succeeds on empty directories, so data is never removed.
        let mut dirs = dirs;
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = tokio::fs::remove_dir(&d).await;
        }
    }
}

impl Drop for WriteTxn {
    fn drop(&mut self) {
        // A transaction dropped without commit or rollback (a cancelled statement) must not leave
        // staged files behind: delete them synchronously where they are local.
        let state = self.lock();
        if !state.finished {
            for s in state.staged.iter().filter(|s| s.local) {
                remove_local_staged(&s.staged);
            }
            let mut dirs = state.created_dirs.clone();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// An object store whose writes are staged in a [`WriteTxn`].
#[derive(Debug)]
pub struct StagingObjectStore {
    inner: Arc<dyn ObjectStore>,
    txn: Arc<WriteTxn>,
    /// The store's root URL.
    root: String,
    /// `file://` store: paths map to `/<path>` and directory creation is tracked.
    local: bool,
}

impl StagingObjectStore {
    /// Stage the writes to `inner`, the store of `url`, in `txn`.
    pub fn new(inner: Arc<dyn ObjectStore>, txn: Arc<WriteTxn>, url: &Url) -> Self {
        Self {
            inner,
            txn,
            root: store_root(url),
            local: url.scheme() == "file",
        }
    }

    async fn stage(&self, target: &Path) -> Path {
        let staged = self.txn.staging_path(target);
        if self.local {
            let mut created = Vec::new();
            let mut dir = PathBuf::from(format!("/{target}"));
            while dir.pop() {
                if tokio::fs::metadata(&dir).await.is_ok() {
                    break;
                }
                created.push(dir.clone());
            }
            self.txn.record_created_dirs(created);
        }
        self.txn.record(Staged {
            store: Arc::clone(&self.inner),
            root: self.root.clone(),
            staged: staged.clone(),
            target: target.clone(),
            local: self.local,
        });
        staged
    }
}

impl fmt::Display for StagingObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Staging({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for StagingObjectStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let staged = self.stage(location).await;
        self.inner.put_opts(&staged, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let staged = self.stage(location).await;
        self.inner.put_multipart_opts(&staged, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// A per-statement view of the session's object store registry that stages writes.
#[derive(Debug)]
pub struct StagingRegistry {
    inner: Arc<dyn ObjectStoreRegistry>,
    txn: Arc<WriteTxn>,
}

impl StagingRegistry {
    pub fn new(inner: Arc<dyn ObjectStoreRegistry>, txn: Arc<WriteTxn>) -> Self {
        Self { inner, txn }
    }
}

impl ObjectStoreRegistry for StagingRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let inner = self.inner.get_store(url)?;
        Ok(Arc::new(StagingObjectStore::new(
            inner,
            Arc::clone(&self.txn),
            url,
        )))
    }
}

/// The objects at `prefix` (a file or a directory) and anywhere below it: where a write to
/// `prefix` stages its files.
async fn list_near(
    store: &dyn ObjectStore,
    prefix: &Path,
) -> object_store::Result<Vec<ObjectMeta>> {
    use futures::TryStreamExt;
    let parent = {
        let mut parts: Vec<_> = prefix.parts().collect();
        parts.pop();
        Path::from_iter(parts)
    };
    let mut found: Vec<ObjectMeta> = match store.list_with_delimiter(Some(&parent)).await {
        Ok(listed) => listed.objects,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let below: Vec<ObjectMeta> = match store.list(Some(prefix)).try_collect().await {
        Ok(objects) => objects,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    found.extend(below);
    Ok(found)
}

/// The run whose transaction staged the object named `name`
/// (`.<file>.flowengine-<run>-<n>.inprogress`, or a part `...inprogress#<k>`), when a
/// recorded run staged it.
pub fn staged_by_run(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(STAGING_MARKER)?;
    let id = &rest[at + STAGING_MARKER.len()..];
    let id = match id.split_once(".inprogress") {
        Some((id, tail)) if tail.is_empty() || tail.starts_with('#') => id,
        _ => return None,
    };
    id.split_once('-').map(|(run, _)| run)
}

/// What a [`sweep`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub files: usize,
    pub bytes: u64,
}

/// Delete the staged leftovers at or below `prefix` of `store` (the store of `root`) whose run
/// `dead` says is dead (its process is gone, so the files can never be committed), except those
/// in `keep` (the staged files of recorded commits, which `--resume` finishes). On a local
/// disk the directory is walked, so the `#<n>` parts of an interrupted upload (which listing
/// hides) go too.
pub async fn sweep(
    store: &dyn ObjectStore,
    root: &Url,
    prefix: &Path,
    dead: &(dyn Fn(&str) -> bool + Sync),
    keep: &std::collections::HashSet<String>,
) -> object_store::Result<Swept> {
    let mut swept = Swept::default();
    if root.scheme() == "file" {
        let leftovers = {
            let target = PathBuf::from(format!("/{prefix}"));
            tokio::task::spawn_blocking(move || local_staged(&target))
                .await
                .unwrap_or_default()
        };
        for (path, size) in leftovers {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(run) = staged_by_run(name) else {
                continue;
            };
            let location = path.to_string_lossy().trim_start_matches('/').to_string();
            if !dead(run) || keep.contains(&location) {
                continue;
            }
            if tokio::fs::remove_file(&path).await.is_ok() {
                swept.files += 1;
                swept.bytes += size;
            }
        }
        return Ok(swept);
    }
    for meta in list_near(store, prefix).await? {
        let Some(run) = meta.location.filename().and_then(staged_by_run) else {
            continue;
        };
        if !dead(run) || keep.contains(meta.location.as_ref()) {
            continue;
        }
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                swept.files += 1;
                swept.bytes += meta.size;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(swept)
}

/// Staged files (by name) beside `target` and anywhere below it, with their sizes.
fn local_staged(target: &std::path::Path) -> Vec<(PathBuf, u64)> {
    fn walk(dir: &std::path::Path, deep: bool, out: &mut Vec<(PathBuf, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let path = e.path();
            if kind.is_dir() {
                if deep {
                    walk(&path, true, out);
                }
            } else if kind.is_file()
                && e.file_name()
                    .to_str()
                    .is_some_and(|n| n.contains(STAGING_MARKER))
            {
                out.push((path, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    let mut out = Vec::new();
    if let Some(parent) = target.parent() {
        walk(parent, false, &mut out);
    }
    if target.is_dir() {
        walk(target, true, &mut out);
    }
    out
}

/// What finishing an interrupted commit did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RolledForward {
    /// Files renamed into place now.
    pub renamed: usize,
    /// Files the interrupted commit had already renamed.
    pub already: usize,
}

/// Finish a commit a killed process recorded but did not complete: every file still under its
/// staged name is renamed into place; one already in place is left. A file found under
/// neither name is an error (something removed it), and nothing is written again.
pub async fn roll_forward(
    registry: &dyn ObjectStoreRegistry,
    files: &[crate::state::CommitFile],
) -> DfResult<RolledForward> {
    use datafusion::error::DataFusionError;
    let mut done = RolledForward::default();
    for f in files {
        let url = Url::parse(&f.store).map_err(|e| {
            DataFusionError::Execution(format!("commit record names store `{}`: {e}", f.store))
        })?;
        let store = registry.get_store(&url)?;
        let (staged, target) = (Path::from(f.staged.as_str()), Path::from(f.target.as_str()));
        match store.head(&staged).await {
            Ok(_) => {
                store.rename(&staged, &target).await.map_err(|e| {
                    DataFusionError::ObjectStore(Box::new(e))
                        .context(format!("finishing the commit of {}{}", f.store, f.target))
                })?;
                done.renamed += 1;
            }
            Err(object_store::Error::NotFound { .. }) => match store.head(&target).await {
                Ok(_) => done.already += 1,
                Err(e) => {
                    return Err(DataFusionError::Execution(format!(
                        "cannot finish the interrupted commit: {}{} is neither staged nor in place ({e})",
                        f.store, f.target
                    )));
                }
            },
            Err(e) => return Err(DataFusionError::ObjectStore(Box::new(e))),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    #[tokio::test]
    async fn commit_moves_and_rollback_removes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let fs: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let file_url = Url::parse("file:///").unwrap();
        let target = Path::from_absolute_path(root.join("a/b/out.csv")).unwrap();

        let txn = Arc::new(WriteTxn::new());
        let store = StagingObjectStore::new(Arc::clone(&fs), Arc::clone(&txn), &file_url);
        store.put(&target, "x\n".into()).await.unwrap();
        assert!(
            !root.join("a/b/out.csv").exists(),
            "not visible before commit"
        );
        txn.commit().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("a/b/out.csv")).unwrap(),
            "x\n"
        );

        let txn = Arc::new(WriteTxn::new());
        let store = StagingObjectStore::new(Arc::clone(&fs), Arc::clone(&txn), &file_url);
        let t2 = Path::from_absolute_path(root.join("c/d/out.csv")).unwrap();
        store.put(&t2, "y\n".into()).await.unwrap();
        txn.rollback().await;
        assert!(!root.join("c").exists(), "created directories removed");
        assert!(root.join("a/b/out.csv").exists(), "earlier data untouched");
    }

    #[tokio::test]
    async fn an_interrupted_commit_is_rolled_forward_once() {
        use datafusion::execution::object_store::DefaultObjectStoreRegistry;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let fs: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let file_url = Url::parse("file:///").unwrap();
        let txn = Arc::new(WriteTxn::new());
        let store = StagingObjectStore::new(Arc::clone(&fs), Arc::clone(&txn), &file_url);
        for p in 0..3 {
            let target = Path::from_absolute_path(root.join(format!("t/p={p}/data.csv"))).unwrap();
            store.put(&target, format!("{p}\n").into()).await.unwrap();
        }
        let files = txn.files();
        assert_eq!(files.len(), 3);
        assert!(files.iter().all(|f| f.store == "file:///"));
        // A crash after the first rename: one file in place, two staged.
        let first = &files[0];
        fs.rename(
            &Path::from(first.staged.as_str()),
            &Path::from(first.target.as_str()),
        )
        .await
        .unwrap();
        std::mem::forget(txn);
        let registry = DefaultObjectStoreRegistry::new();
        let done = roll_forward(&registry, &files).await.unwrap();
        assert_eq!(
            done,
            RolledForward {
                renamed: 2,
                already: 1
            }
        );
        for p in 0..3 {
            let text = std::fs::read_to_string(root.join(format!("t/p={p}/data.csv"))).unwrap();
            assert_eq!(text, format!("{p}\n"));
        }
        // Again (a crash during the roll-forward): nothing left to do, nothing written twice.
        let again = roll_forward(&registry, &files).await.unwrap();
        assert_eq!(again.already, 3);
        // A file under neither name is an error, not a silent loss.
        std::fs::remove_file(root.join("t/p=1/data.csv")).unwrap();
        let err = roll_forward(&registry, &files)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither staged nor in place"), "{err}");
    }

    #[test]
    fn staged_names_tell_their_run() {
        let txn = WriteTxn::owned_by("3fa2c1d9e0ab");
        let staged = txn.staging_path(&Path::from("out/p=1/part-0.parquet"));
        let name = staged.filename().unwrap();
        assert_eq!(staged_by_run(name), Some("3fa2c1d9e0ab"));
        assert_eq!(staged_by_run(&format!("{name}#3")), Some("3fa2c1d9e0ab"));
        // Unowned (sql, serve) transactions and ordinary files name no run.
        let plain = WriteTxn::new().staging_path(&Path::from("out/a.csv"));
        assert_eq!(staged_by_run(plain.filename().unwrap()), None);
        assert_eq!(staged_by_run("part-0.parquet"), None);
        assert_eq!(staged_by_run(".a.flowengine-x-1.inprogress.bak"), None);
    }
}
