//! Prune: removes what no snapshot references, without ever making a backup that runs at the
//! same time lose data, and without making it wait.
//!
//! One run does two things (the protocol and the argument why it is safe are in
//! docs/FORMAT.md, "Prune and concurrent writers"; the session rules in [`crate::lock`]):
//!
//! 1. **Mark.** Walk every snapshot to find the blobs in use. Packs with nothing in use, packs
//!    no index segment lists (left by crashed backups), and packs whose unused share is above
//!    `max_unused` (after their used blobs are stored again in new packs) are *condemned*: a
//!    marker naming them is written. Nothing is deleted yet.
//! 2. **Sweep.** A marker is swept once every live backup session has seen it (such a backup
//!    never deduplicates against its packs). The blobs in use are found again, each condemned
//!    pack that holds a blob in use with no other copy is spared, index segments that list the
//!    rest are replaced by segments without them, and then the packs, the old segments and the
//!    marker are deleted, in that order.
//!
//! A marker that a running backup has not seen waits for the next prune. A prune killed at any
//! point leaves a repository that `check` passes; the next prune finishes the job.
//!
//! Packs younger than a grace period ([`PruneOptions::keep_recent`], by the storage's clock) are
//! never condemned: an object store may list a snapshot that was just committed late, and the
//! packs of that backup would otherwise look unused.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hoard_core::format::index::IndexPack;
use hoard_core::format::lock::LockKind;
use hoard_core::format::pack;
use hoard_core::format::tree::Content;
use hoard_core::format::ObjectKind;
use hoard_core::Id;
use hoard_storage::ErrorKind;

use crate::error::{RepoError, Result};
use crate::lock::{self, Marker, Session, DEFAULT_STALE};
use crate::packer::Packer;
use crate::repo::Repository;

/// How long after it was written a pack is left alone by default: a day, as Kopia's default
/// safety (`BlobDeleteMinAge`) does. It must outlast the longest backup plus the longest lag of
/// a listing (docs/FORMAT.md, "Prune and concurrent writers").
pub const DEFAULT_KEEP_RECENT: Duration = Duration::from_secs(24 * 3600);

/// What a prune is asked to do.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Repack a pack when more than this share (0..=1) of its blob bytes is unused.
    pub max_unused: f64,
    /// Only compute and report the plan.
    pub dry_run: bool,
    pub lock_stale: Option<Duration>,
    /// Never condemn, repack or delete a pack written less than this long ago, by the storage's
    /// clock (its modification time against the time of the prune's own lock object). Zero
    /// turns the grace period off, which is safe only when listings never lag.
    pub keep_recent: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { max_unused: 0.1, dry_run: false, lock_stale: None, keep_recent: DEFAULT_KEEP_RECENT }
    }
}

/// Requests a prune makes (or would make), by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub lists: u64,
    pub reads: u64,
    pub writes: u64,
    pub deletes: u64,
}

/// What a prune found and will do.
#[derive(Clone, Debug, Default)]
pub struct PrunePlan {
    pub snapshots: usize,
    pub packs: u64,
    pub pack_bytes: u64,
    /// Packs with nothing in use.
    pub unused_packs: u64,
    pub unused_bytes: u64,
    /// Packs that no index segment lists.
    pub unindexed_packs: u64,
    pub unindexed_bytes: u64,
    /// Packs to rewrite, their size, and the bytes of them still in use.
    pub repack_packs: u64,
    pub repack_bytes: u64,
    pub repack_used_bytes: u64,
    /// Blob bytes no snapshot uses, over all packs (what a perfect prune would free).
    pub unreferenced_bytes: u64,
    /// Packs already condemned by earlier prunes, waiting for their sweep.
    pub condemned_packs: u64,
    pub condemned_bytes: u64,
    /// Packs written since a backup that is still running started, left alone.
    pub young_packs: u64,
    /// Packs younger than the grace period ([`PruneOptions::keep_recent`]), left alone, and
    /// their size. Each such pack is counted here and not in [`Self::young_packs`].
    pub recent_packs: u64,
    pub recent_bytes: u64,
    /// Bytes the storage will hold less once this plan and every pending marker are swept.
    pub frees_bytes: u64,
    pub requests: Requests,
}

/// What a prune did.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub plan: PrunePlan,
    pub deleted_packs: u64,
    pub deleted_bytes: u64,
    pub written_bytes: u64,
    /// Condemned packs kept because a snapshot committed since they were condemned needs them.
    pub spared_packs: u64,
    pub markers_swept: usize,
    /// Markers left for a later prune, with the sessions they wait for.
    pub waiting: Vec<String>,
    pub stale_locks_removed: usize,
    pub requests: Requests,
}

/// Fills the cache's used set with every blob that the given snapshots reach.
fn mark_used(repo: &Repository, trees: &[Id]) -> Result<()> {
    for root in trees {
        let mut stack = vec![*root];
        while let Some(t) = stack.pop() {
            if !repo.cache().used_insert(&t)? {
                continue;
            }
            let tree = repo.load_tree(&t).map_err(|e| {
                RepoError::Invalid(format!(
                    "cannot read tree {} ({e}); prune stops rather than guess what is in use: run `hoard check`",
                    t.short()
                ))
            })?;
            for node in tree.nodes {
                if let Some(sub) = node.subtree {
                    stack.push(sub);
                }
                match &node.content {
                    Content::None => {}
                    Content::Chunks(ids) => {
                        let cache = repo.cache();
                        for id in ids {
                            cache.used_insert(id)?;
                        }
                    }
                    Content::Lists(lists) => {
                        let mut fresh = false;
                        for l in lists {
                            fresh |= repo.cache().used_insert(l)?;
                        }
                        if fresh {
                            for id in repo.content_chunks(&node.content)? {
                                repo.cache().used_insert(&id)?;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Starts the used set afresh from every snapshot; returns the snapshot names walked.
fn used_from_snapshots(repo: &Repository) -> Result<HashSet<Id>> {
    repo.cache().used_reset()?;
    let snaps = repo.snapshots()?;
    mark_used(repo, &snaps.iter().map(|s| s.snapshot.tree).collect::<Vec<_>>())?;
    refuse_unindexed_use(repo)?;
    Ok(snaps.into_iter().map(|s| s.id).collect())
}

/// Prune judges packs by the index. When snapshots use blobs the index does not locate (an
/// index segment was lost or damaged), packs that hold them would look unindexed and be
/// deleted: stop instead.
fn refuse_unindexed_use(repo: &Repository) -> Result<()> {
    let n = repo.cache().used_unindexed()?;
    if n > 0 {
        return Err(RepoError::Invalid(format!(
            "{n} blobs that snapshots use are not in the index, so prune cannot tell which packs hold them; \
             nothing was deleted: run `hoard repair index`, then `hoard check`, then prune again"
        )));
    }
    Ok(())
}

/// Adds snapshots committed since `walked` to the used set (it only grows: a snapshot forgotten
/// meanwhile keeps its blobs one more round, which is safe).
fn used_add_new(repo: &Repository, walked: &mut HashSet<Id>) -> Result<()> {
    let snaps = repo.snapshots()?;
    let new: Vec<Id> = snaps.iter().filter(|s| !walked.contains(&s.id)).map(|s| s.snapshot.tree).collect();
    mark_used(repo, &new)?;
    refuse_unindexed_use(repo)?;
    walked.extend(snaps.into_iter().map(|s| s.id));
    Ok(())
}

struct Planned {
    plan: PrunePlan,
    delete: Vec<Id>,
    repack: Vec<Id>,
    walked: HashSet<Id>,
    markers: Vec<Marker>,
}

/// The storage's clock, as a prune knows it.
#[derive(Clone, Copy, Debug)]
enum Now {
    /// The time of this prune's own newest lock object, if the listing showed it.
    Storage(Option<i64>),
    /// A dry run, which writes nothing to stamp: this host's clock.
    Host,
}

/// The time (storage clock) from which packs are younger than `keep_recent`, or `None` when
/// the grace period is off. Every time it is computed from is at or before the storage's true
/// now, so any error makes packs look younger, never older.
fn recent_from(now: Now, keep_recent: Duration, packs: &[hoard_storage::ObjectInfo]) -> Option<i64> {
    if keep_recent.is_zero() {
        return None;
    }
    let newest_pack = packs.iter().map(|o| o.modified_ns).max();
    let now = match now {
        // Our own lock object, or failing that (a listing that lags) the newest pack: both
        // were written before this moment.
        Now::Storage(own) => own.max(newest_pack),
        Now::Host => {
            let host = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
            Some(newest_pack.map_or(host, |p| p.max(host)))
        }
    };
    // With no time at all there is no pack either.
    Some(now?.saturating_sub(i64::try_from(keep_recent.as_nanos()).unwrap_or(i64::MAX)))
}

/// `young_from`: packs created at or after this storage time may belong to a backup that is
/// still running (its blobs are in no snapshot yet): they are left alone, not condemned, so
/// that backup does not have to store them again when it commits. Packs created after
/// `now - keep_recent` are left alone too: a snapshot that uses them may not be listed yet.
fn make_plan(
    repo: &Repository,
    max_unused: f64,
    young_from: Option<i64>,
    now: Now,
    keep_recent: Duration,
) -> Result<Planned> {
    repo.sync_index()?;
    let markers = lock::read_markers(repo)?;
    let condemned: HashSet<Id> = markers.iter().flat_map(|m| m.packs.iter().copied()).collect();
    let walked = used_from_snapshots(repo)?;
    let usage = repo.cache().pack_usage()?;
    let mut young: HashSet<Id> = HashSet::new();
    let mut recent: HashSet<Id> = HashSet::new();
    let packs = repo.storage().list(ObjectKind::Pack)?;
    let recent_from = recent_from(now, keep_recent, &packs);
    let listed: HashMap<Id, u64> = packs
        .into_iter()
        .filter_map(|o| {
            let id = Id::from_hex(&o.name).ok()?;
            if recent_from.is_some_and(|t| o.modified_ns > t) {
                recent.insert(id);
            } else if young_from.is_some_and(|t| o.modified_ns >= t) {
                young.insert(id);
            }
            Some((id, o.size))
        })
        .collect();
    let mut plan = PrunePlan { snapshots: walked.len(), ..Default::default() };
    plan.requests.lists = 4; // snapshots, index segments, condemned markers, packs
    let (mut delete, mut repack) = (Vec::new(), Vec::new());
    let indexed: HashSet<Id> = usage.iter().map(|u| u.pack).collect();
    for u in &usage {
        let Some(&size) = listed.get(&u.pack) else { continue }; // missing: `check` reports it
        plan.packs += 1;
        plan.pack_bytes += size;
        plan.unreferenced_bytes += u.blob_bytes - u.used_bytes;
        if condemned.contains(&u.pack) {
            plan.condemned_packs += 1;
            plan.condemned_bytes += size;
        } else if recent.contains(&u.pack) {
            plan.recent_packs += 1;
            plan.recent_bytes += size;
        } else if young.contains(&u.pack) {
            plan.young_packs += 1;
        } else if u.used_blobs == 0 {
            plan.unused_packs += 1;
            plan.unused_bytes += size;
            delete.push(u.pack);
        } else if u.blob_bytes > 0 && (u.blob_bytes - u.used_bytes) as f64 > max_unused * u.blob_bytes as f64 {
            plan.repack_packs += 1;
            plan.repack_bytes += size;
            plan.repack_used_bytes += u.used_bytes;
            repack.push(u.pack);
        }
    }
    for (id, size) in &listed {
        if !indexed.contains(id) {
            plan.packs += 1;
            plan.pack_bytes += size;
            if condemned.contains(id) {
                plan.condemned_packs += 1;
                plan.condemned_bytes += size;
            } else if recent.contains(id) {
                plan.recent_packs += 1;
                plan.recent_bytes += size;
            } else if young.contains(id) {
                plan.young_packs += 1;
            } else {
                plan.unindexed_packs += 1;
                plan.unindexed_bytes += size;
                delete.push(*id);
            }
        }
    }
    plan.frees_bytes = plan.unused_bytes + plan.unindexed_bytes + plan.condemned_bytes + plan.repack_bytes
        - plan.repack_used_bytes.min(plan.repack_bytes);
    let pack_size = u64::from(repo.config().pack_size).max(1);
    let new_packs = plan.repack_used_bytes.div_ceil(pack_size);
    let gone = plan.unused_packs + plan.unindexed_packs + plan.repack_packs + plan.condemned_packs;
    // Reads: the packs to repack; the index segments, once, when anything is swept. Writes: new
    // packs, their index segments, the marker, the replacement segment. Deletes: the packs, the
    // segments they were listed in (at most one each), the markers.
    let segments = repo.storage().list(ObjectKind::Index)?.len() as u64;
    let sweeping = gone > 0;
    plan.requests.reads = plan.repack_packs + if sweeping { segments } else { 0 };
    plan.requests.writes =
        new_packs + new_packs.div_ceil(16) + u64::from(!delete.is_empty() || !repack.is_empty()) + u64::from(sweeping);
    plan.requests.deletes = gone + gone.min(segments) + markers.len() as u64 + u64::from(sweeping);
    Ok(Planned { plan, delete, repack, walked, markers })
}

/// The plan only: what prune would delete and rewrite, with no lock and no writes (`prune
/// --dry-run`, `check`). Having no lock object of its own to tell the storage's time by, it
/// judges `keep_recent` by this host's clock (or the newest pack's time, if later).
pub fn plan(repo: &Repository, max_unused: f64, keep_recent: Duration) -> Result<PrunePlan> {
    let sessions = lock::sessions(repo, None, DEFAULT_STALE)?;
    Ok(make_plan(repo, max_unused, young_from(&sessions, None), Now::Host, keep_recent)?.plan)
}

/// The start (storage clock) of the oldest live session other than `me` (a backup, or a prune
/// that got past the prune lock), if any is running. A live session whose first lock object
/// is missing counts as running since forever.
fn young_from(sessions: &HashMap<Id, lock::SessionView>, me: Option<Id>) -> Option<i64> {
    sessions.values().filter(|v| !v.stale && Some(v.lock.session) != me).map(|v| v.started_ns.unwrap_or(i64::MIN)).min()
}

/// Prune needs every writer to honour condemnation markers, which version-1 builds do not.
pub fn check_version(repo: &Repository) -> Result<()> {
    if repo.config().version < 2 {
        return Err(RepoError::Invalid(format!(
            "this repository has format version {}, whose backups do not honour prune's markers; \
             prune needs a repository made by `hoard init` of format version 2 or later",
            repo.config().version
        )));
    }
    Ok(())
}

/// Prunes the repository (see the module documentation).
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    if !(0.0..=1.0).contains(&opts.max_unused) {
        return Err(RepoError::Invalid("--max-unused must be between 0% and 100%".into()));
    }
    if opts.dry_run {
        return Ok(PruneReport { plan: plan(repo, opts.max_unused, opts.keep_recent)?, ..Default::default() });
    }
    check_version(repo)?;
    let stale = opts.lock_stale.unwrap_or(DEFAULT_STALE);
    Session::with_prune_lock(repo, stale, |session| run(repo, opts, session, stale))
}

fn run(repo: &Repository, opts: &PruneOptions, session: &Session, stale: Duration) -> Result<PruneReport> {
    // Sessions before packs: a backup that wrote a pack we are about to list already had its
    // lock when we list the sessions.
    let before = lock::sessions(repo, Some(session), stale)?;
    // The storage's clock: our own newest lock object, written before this listing.
    let now = Now::Storage(before.get(&session.id()).map(|v| v.modified_ns));
    let Planned { plan, delete, repack, mut walked, mut markers } =
        make_plan(repo, opts.max_unused, young_from(&before, Some(session.id())), now, opts.keep_recent)?;
    let mut report = PruneReport { plan, ..Default::default() };
    report.requests.lists = report.plan.requests.lists;

    // Mark: rewrite what is in use of the packs to repack, then condemn.
    if !repack.is_empty() {
        let doomed: HashSet<Id> = repack.iter().chain(&delete).copied().collect();
        let ((), stats) = Packer::run(repo, repo.storage().connections(), |p| {
            for pack_id in &repack {
                let entries = repo.cache().pack_entries(pack_id)?;
                let bytes = repo.storage().read(ObjectKind::Pack, &pack_id.to_hex())?;
                for e in entries {
                    if !repo.cache().used_contains(&e.id)? {
                        continue;
                    }
                    // Another copy outside what is being condemned is enough.
                    let elsewhere = repo.cache().locations(&e.id)?.iter().any(|l| !doomed.contains(&l.pack));
                    if elsewhere {
                        continue;
                    }
                    let stored = usize::try_from(e.offset)
                        .ok()
                        .and_then(|o| bytes.get(o..)?.get(..e.length as usize))
                        .ok_or_else(|| {
                            RepoError::Invalid(format!("pack {pack_id}: blob {} out of range", e.id.short()))
                        })?;
                    let plain = pack::open_blob(repo.keys(), pack_id, &e, stored)
                        .map_err(|err| RepoError::core(format!("blob {} in pack {pack_id}", e.id.short()), err))?;
                    p.store(e.blob_type, e.id, &plain)?;
                }
            }
            Ok(())
        })?;
        report.written_bytes += stats.bytes_stored;
        report.requests.reads += repack.len() as u64;
        report.requests.writes += stats.packs + stats.segments;
    }
    if !delete.is_empty() || !repack.is_empty() {
        let packs: Vec<Id> = delete.iter().chain(&repack).copied().collect();
        let name = lock::write_marker(repo, packs.clone())?;
        report.requests.writes += 1;
        markers.push(Marker { name, packs });
    }

    // Sweep every marker that no live backup can still be relying on.
    let sessions = lock::sessions(repo, Some(session), stale)?;
    report.requests.lists += 1;
    let live: Vec<_> = sessions.values().filter(|v| !v.stale && v.lock.kind == LockKind::Backup).collect();
    // Another live prune (two took over a stale prune lock at once) may be rewriting packs
    // this one would delete: sweep nothing, and say so.
    let other_prune =
        sessions.values().find(|v| !v.stale && v.lock.kind == LockKind::Prune && v.lock.session != session.id());
    let (sweep, wait): (Vec<Marker>, Vec<Marker>) = markers.into_iter().partition(|m| {
        other_prune.is_none() && live.iter().all(|v| v.lock.seen.as_ref().is_some_and(|seen| seen.contains(&m.name)))
    });
    if let Some(p) = other_prune {
        report
            .waiting
            .push(format!("every marker waits: another prune is running on {} (pid {})", p.lock.host, p.lock.pid));
    }
    for m in &wait {
        let by: Vec<String> = live
            .iter()
            .filter(|v| !v.lock.seen.as_ref().is_some_and(|s| s.contains(&m.name)))
            .map(|v| format!("a backup on {} (pid {})", v.lock.host, v.lock.pid))
            .collect();
        report.waiting.push(format!("{} pack(s) wait for {}", m.packs.len(), by.join(", ")));
    }
    if !sweep.is_empty() {
        // Still the holder of the prune lock, with a fresh session lock, right before deleting.
        session.ensure_prune_lock()?;
        sweep_markers(repo, &sweep, &wait, &mut walked, &mut report)?;
    }
    report.stale_locks_removed = lock::remove_stale(repo, &sessions)?;
    Ok(report)
}

fn sweep_markers(
    repo: &Repository,
    sweep: &[Marker],
    wait: &[Marker],
    walked: &mut HashSet<Id>,
    report: &mut PruneReport,
) -> Result<()> {
    // Snapshots committed since the walk (by backups that have ended) count too.
    repo.sync_index()?;
    used_add_new(repo, walked)?;
    report.requests.lists += 2;
    let condemned: HashSet<Id> = sweep.iter().chain(wait).flat_map(|m| m.packs.iter().copied()).collect();
    let sizes: HashMap<Id, u64> = repo
        .storage()
        .list(ObjectKind::Pack)?
        .into_iter()
        .filter_map(|o| Id::from_hex(&o.name).ok().map(|id| (id, o.size)))
        .collect();
    let mut doomed: HashSet<Id> = HashSet::new();
    for p in sweep.iter().flat_map(|m| &m.packs) {
        let mut needed = false;
        let entries = repo.cache().pack_entries(p)?;
        for e in entries {
            if !repo.cache().used_contains(&e.id)? {
                continue;
            }
            let elsewhere = repo
                .cache()
                .locations(&e.id)?
                .iter()
                .any(|l| !condemned.contains(&l.pack) && sizes.contains_key(&l.pack));
            if !elsewhere {
                needed = true;
                break;
            }
        }
        if needed {
            report.spared_packs += 1;
        } else {
            doomed.insert(*p);
        }
    }

    // Replace every segment that lists a doomed pack; the last new segment names the old ones as
    // superseded, so readers drop them only once all of the replacement exists.
    let mut affected = Vec::new();
    let mut keep: Vec<IndexPack> = Vec::new();
    let mut kept: HashSet<Id> = HashSet::new();
    if !doomed.is_empty() {
        for o in repo.storage().list(ObjectKind::Index)? {
            let Ok(name) = Id::from_hex(&o.name) else { continue };
            let seg = match repo.read_segment(&o.name) {
                Ok(s) => s,
                Err(RepoError::Storage(e)) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            report.requests.reads += 1;
            if seg.packs.iter().any(|p| doomed.contains(&p.id)) {
                affected.push(name);
                for p in seg.packs {
                    if !doomed.contains(&p.id) && kept.insert(p.id) {
                        keep.push(p);
                    }
                }
            }
        }
    }
    if !affected.is_empty() {
        report.requests.writes += repo.replace_segments(keep, &affected)?;
        repo.sync_index()?;
    }
    for p in &doomed {
        if repo.delete_object(ObjectKind::Pack, &p.to_hex())? {
            report.deleted_packs += 1;
            report.deleted_bytes += sizes.get(p).copied().unwrap_or(0);
        }
        report.requests.deletes += 1;
    }
    for s in &affected {
        repo.delete_object(ObjectKind::Index, &s.to_hex())?;
        report.requests.deletes += 1;
    }
    for m in sweep {
        repo.delete_object(ObjectKind::Condemned, &m.name.to_hex())?;
        report.requests.deletes += 1;
        report.markers_swept += 1;
    }
    repo.sync_index()?;
    Ok(())
}
