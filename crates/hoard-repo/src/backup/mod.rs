//! Backups: file trees from the filesystem or from a tar stream, and single byte streams. Every
//! kind ends the same way: packs and index segments are durable, then one snapshot object is
//! written. That object is the commit point.

pub mod content;
pub mod fs;
pub mod listing;
pub mod stream;
pub mod tar;
pub mod treebuild;
pub mod volume;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hoard_core::format::snapshot::{Snapshot, Summary};
use hoard_core::Id;

use hoard_core::format::lock::LockKind;

use crate::error::Result;
use crate::lock::{Session, DEFAULT_STALE};
use crate::packer::PackerStats;
use crate::repo::Repository;

/// Counters a progress display can poll while a backup runs.
#[derive(Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_seen: AtomicU64,
}

/// What every backup is told.
#[derive(Clone, Default)]
pub struct BackupOptions {
    pub host: String,
    pub user: String,
    pub tags: Vec<String>,
    pub labels: Vec<(String, String)>,
    /// Compare against this snapshot instead of the latest matching one.
    pub parent: Option<Id>,
    /// Read every file even when its metadata says it is unchanged.
    pub force: bool,
    pub excludes: Vec<String>,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    /// Threads that read and chunk files (besides the sealing pool).
    pub readers: usize,
    /// The snapshot's time, Unix nanoseconds, instead of the moment it is committed
    /// (`backup --time`: importing old backups, tests of retention policies).
    pub time_ns: Option<i64>,
    pub cancel: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
    /// After how long without a refresh another host may call this backup's lock stale
    /// (default [`crate::lock::DEFAULT_STALE`]).
    pub lock_stale: Option<std::time::Duration>,
    /// Hold the live blob ids in memory when the parent snapshot has at least this many files
    /// (default [`crate::repo::LIVE_IDS_MIN_FILES`]; see [`crate::repo::LiveIds`]).
    pub live_ids_from: Option<u64>,
}

impl BackupOptions {
    /// Options that write `snapshot` again as a new snapshot (copy, repair): its host, user,
    /// tags, labels and time, with the provenance label `label` set to `original`.
    pub(crate) fn recommit(
        snapshot: &Snapshot,
        original: &Id,
        label: &str,
        cancel: Arc<AtomicBool>,
        lock_stale: Option<std::time::Duration>,
    ) -> BackupOptions {
        let mut labels = snapshot.labels.clone();
        labels.retain(|(k, _)| k != label);
        labels.push((label.to_owned(), original.to_hex()));
        BackupOptions {
            host: snapshot.host.clone(),
            user: snapshot.user.clone(),
            tags: snapshot.tags.clone(),
            labels,
            time_ns: Some(snapshot.time_ns),
            cancel,
            lock_stale,
            ..BackupOptions::default()
        }
    }
}

/// A committed backup.
#[derive(Clone, Debug)]
pub struct BackupResult {
    pub id: Id,
    pub snapshot: Snapshot,
    /// Entries that could not be read, and files that changed while read.
    pub warnings: Vec<String>,
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The snapshot a backup compares against: the one asked for, else the newest that `same`
/// accepts (same host and source).
pub(crate) fn parent(repo: &Repository, opts: &BackupOptions, same: &dyn Fn(&Snapshot) -> bool) -> Result<Option<Id>> {
    if let Some(p) = opts.parent {
        return Ok(Some(p));
    }
    Ok(repo.snapshots()?.into_iter().rev().find(|e| same(&e.snapshot)).map(|e| e.id))
}

/// Runs one backup under a session lock (see [`crate::lock`]).
pub(crate) fn locked<T>(repo: &Repository, opts: &BackupOptions, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
    Session::run(repo, LockKind::Backup, opts.lock_stale.unwrap_or(DEFAULT_STALE), f)
}

/// Fills in the summary's storage figures and commits the snapshot: the last write of a backup,
/// after its session has made sure nothing it references is being pruned.
#[allow(clippy::too_many_arguments)]
pub(crate) fn commit(
    session: &Session,
    repo: &Repository,
    opts: &BackupOptions,
    source_kind: &str,
    source_name: &str,
    paths: Vec<String>,
    parent: Option<Id>,
    tree: Id,
    mut summary: Summary,
    stats: PackerStats,
    started: Instant,
    warnings: Vec<String>,
) -> Result<BackupResult> {
    summary.bytes_new = stats.bytes_new;
    summary.bytes_stored = stats.bytes_stored;
    summary.blobs_new = stats.blobs_new;
    summary.packs_written = stats.packs;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    let snapshot = Snapshot {
        time_ns: opts.time_ns.unwrap_or_else(now_ns),
        host: opts.host.clone(),
        user: opts.user.clone(),
        source_kind: source_kind.into(),
        source_name: source_name.into(),
        paths,
        tags: opts.tags.clone(),
        labels: opts.labels.clone(),
        parent,
        tree,
        partial: summary.errors > 0,
        program: concat!("hoard ", env!("CARGO_PKG_VERSION")).into(),
        summary,
    };
    if opts.cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(crate::error::RepoError::Interrupted);
    }
    session.secure(&snapshot.tree, false)?;
    if session.ensure_fresh()? {
        // The lock lapsed after `secure` looked: look again rather than trust a stale view.
        session.secure(&snapshot.tree, true)?;
    }
    let id = repo.save_snapshot(&snapshot)?;
    Ok(BackupResult { id, snapshot, warnings })
}
