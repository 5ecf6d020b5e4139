//! Sessions: how backups and prunes on many hosts share one repository without waiting for each
//! other. The protocol and the argument why it is safe are in docs/FORMAT.md, "Prune and
//! concurrent writers"; in short:
//!
//! - Every backup and prune holds a *session lock*: a lock object it replaces with a new one
//!   (`seq` + 1) every [`Session::refresh_every`] and deletes when it ends. A backup's lock says
//!   which condemnation markers it had read when it started (`seen`); until it has read them it
//!   says it has seen none.
//! - A backup never deduplicates against a pack named by a marker it has seen, and before it
//!   commits it rescues (stores again) any blob it references whose only copies are in packs
//!   named by markers that appeared while it ran ([`Session::secure`]).
//! - A prune deletes the packs of a marker only when no live session lacks that marker in its
//!   `seen`, and only packs whose blobs no snapshot needs.
//! - A session is stale when its host is this host and its process is gone, or when its newest
//!   lock object is older than the stale timeout by the storage's own clock (object times, never
//!   the hosts' clocks). Stale sessions block nothing and their locks are removed by prune.
//!
//! **Architecture Invariant:** a backup whose own refreshes fell behind so far that another
//! host could have judged it stale does not commit without checking every blob it references
//! against a fresh listing of the packs.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, RecvTimeoutError};
use hoard_core::format::lock::{Condemned, Lock, LockKind};
use hoard_core::format::tree::Content;
use hoard_core::format::{object, BlobType, ObjectKind};
use hoard_core::Id;
use hoard_storage::ErrorKind;

use crate::error::{RepoError, Result};
use crate::packer::Packer;
use crate::repo::Repository;

/// How long a session may go without a new lock object before other hosts may call it stale.
pub const DEFAULT_STALE: Duration = Duration::from_secs(30 * 60);

/// The one name of the exclusive prune lock (create-only, so only one prune can hold it).
pub const PRUNE_LOCK: Id = Id([0; 32]);

/// A condemnation marker as read from the repository.
#[derive(Clone, Debug)]
pub struct Marker {
    pub name: Id,
    pub packs: Vec<Id>,
}

/// One session as its newest lock object shows it.
#[derive(Clone, Debug)]
pub struct SessionView {
    pub lock: Lock,
    /// The newest lock object's name and its time by the storage's clock.
    pub name: String,
    pub modified_ns: i64,
    /// Every lock object of the session that is still listed.
    pub objects: Vec<String>,
    /// When the session started, by the storage's clock (its first lock object's time).
    pub started_ns: Option<i64>,
    pub stale: bool,
}

struct State {
    name: Id,
    seq: u64,
    seen: Option<Vec<Id>>,
    last_refresh: Instant,
    /// The session's first lock object, kept until it ends.
    first: Option<Id>,
    /// Some refresh came later than half the stale timeout: others may have judged this
    /// session stale in the meantime.
    lapsed: bool,
    /// Markers that appeared after the start and that [`Session::secure`] already handled.
    secured: HashSet<Id>,
}

/// A running backup or prune, holding its session lock.
pub struct Session<'r> {
    repo: &'r Repository,
    kind: LockKind,
    id: Id,
    host: String,
    start_ns: i64,
    stale: Duration,
    state: Mutex<State>,
    failed: Mutex<Option<RepoError>>,
}

impl<'r> Session<'r> {
    /// Runs `f` holding a session lock that a background thread refreshes. A backup session
    /// first reads the condemnation markers and stops deduplicating against their packs.
    pub fn run<T>(
        repo: &'r Repository,
        kind: LockKind,
        stale: Duration,
        f: impl FnOnce(&Session<'r>) -> Result<T>,
    ) -> Result<T> {
        let stale = stale.max(Duration::from_millis(300));
        let s = Session {
            repo,
            kind,
            id: Id::random(),
            host: this_host(),
            start_ns: crate::backup::now_ns(),
            stale,
            state: Mutex::new(State {
                name: Id([0; 32]),
                seq: 0,
                seen: None,
                last_refresh: Instant::now(),
                first: None,
                lapsed: false,
                secured: HashSet::new(),
            }),
            failed: Mutex::new(None),
        };
        // The first lock says "seen nothing": from here on no prune deletes anything.
        let first = s.write_lock(0, None)?;
        s.state.lock().unwrap().name = first;
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(s.refresh_every()) {
                    if let Err(e) = s.refresh() {
                        tracing::warn!("could not refresh the lock: {e}");
                        let mut f = s.failed.lock().unwrap();
                        if f.is_none() {
                            *f = Some(e);
                        }
                    }
                }
            });
            let r = (|| {
                if kind == LockKind::Backup {
                    // Markers first, then the index: a sweep that deleted packs before the
                    // markers were read also replaced their index segments before that, so
                    // the fresh index no longer names them; a sweep that had not finished
                    // still has its marker, which is then in `seen`.
                    let markers = read_markers(repo)?;
                    repo.sync_index()?;
                    let packs: HashSet<Id> = markers.iter().flat_map(|m| m.packs.iter().copied()).collect();
                    repo.set_condemned(&packs)?;
                    let mut st = s.state.lock().unwrap();
                    st.seen = Some(markers.iter().map(|m| m.name).collect());
                    drop(st);
                    s.refresh()?;
                }
                f(&s)
            })();
            drop(stop_tx);
            r
        });
        let (name, first) = {
            let st = s.state.lock().unwrap();
            (st.name, st.first)
        };
        for n in std::iter::once(name).chain(first) {
            if let Err(e) = repo.delete_object(ObjectKind::Lock, &n.to_hex()) {
                tracing::warn!("could not remove lock {n}: {e} (it goes stale and a prune removes it)");
            }
        }
        result
    }

    pub fn id(&self) -> Id {
        self.id
    }

    /// How often the lock is replaced: often enough that a live session is never half way to
    /// stale.
    pub fn refresh_every(&self) -> Duration {
        self.stale / 6
    }

    /// The markers this session read when it started.
    pub fn seen(&self) -> Vec<Id> {
        self.state.lock().unwrap().seen.clone().unwrap_or_default()
    }

    fn write_lock(&self, seq: u64, seen: Option<Vec<Id>>) -> Result<Id> {
        let lock = Lock {
            kind: self.kind,
            session: self.id,
            seq,
            host: self.host.clone(),
            pid: std::process::id(),
            start_ns: self.start_ns,
            seen,
        };
        self.repo.write_object(ObjectKind::Lock, &lock.encode())
    }

    /// Replaces the lock object with a new one (new name, seq + 1), then deletes the old one.
    pub fn refresh(&self) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        let name = self.write_lock(st.seq + 1, st.seen.clone())?;
        if st.last_refresh.elapsed() > self.stale / 2 {
            st.lapsed = true;
        }
        let old = std::mem::replace(&mut st.name, name);
        st.seq += 1;
        st.last_refresh = Instant::now();
        let first = st.seq == 1;
        drop(st);
        if first {
            // The first lock object stays until the session ends: its time, by the storage's
            // clock, says when the session started (prune leaves younger packs alone).
            self.state.lock().unwrap().first = Some(old);
            return Ok(());
        }
        self.repo.delete_object(ObjectKind::Lock, &old.to_hex()).map(drop)
    }

    /// Fails if a refresh failed; refreshes now when the last one is more than half the stale
    /// timeout ago. Returns whether others may have judged this session stale since the last
    /// call (and forgets it: the caller acts on it).
    pub fn ensure_fresh(&self) -> Result<bool> {
        if let Some(e) = self.failed.lock().unwrap().take() {
            return Err(RepoError::Conflict(format!("the backup could not keep its lock fresh ({e})")));
        }
        let due = self.state.lock().unwrap().last_refresh.elapsed() > self.stale / 2;
        if due {
            self.refresh()?;
        }
        Ok(std::mem::take(&mut self.state.lock().unwrap().lapsed))
    }

    /// Makes sure every blob the snapshot with root `tree` references stays in the repository:
    /// blobs whose only copies are in packs named by condemnation markers are stored again.
    /// Called after the backup's packs and index segments are written and before its snapshot;
    /// `full` when the session's lock lapsed since the last call, so packs may be gone.
    pub fn secure(&self, tree: &Id, full: bool) -> Result<()> {
        let lapsed = self.ensure_fresh()? || full;
        let markers = read_markers(self.repo)?;
        let mut seen: HashSet<Id> = self.seen().into_iter().collect();
        seen.extend(self.state.lock().unwrap().secured.iter().copied());
        let new_markers: Vec<Id> = markers.iter().map(|m| m.name).filter(|n| !seen.contains(n)).collect();
        let new = new_markers.len();
        if new == 0 && !lapsed {
            return Ok(());
        }
        // Packs may have been deleted and segments superseded while this session was not
        // looking: see the repository as it is now.
        let existing: Option<HashSet<Id>> = if lapsed {
            self.repo.sync_index()?;
            Some(
                self.repo
                    .storage()
                    .list(ObjectKind::Pack)?
                    .into_iter()
                    .filter_map(|o| Id::from_hex(&o.name).ok())
                    .collect(),
            )
        } else {
            None
        };
        let condemned: HashSet<Id> = markers.iter().flat_map(|m| m.packs.iter().copied()).collect();
        tracing::info!(
            "{new} condemnation marker(s) appeared during the backup{}; checking what it references",
            if lapsed { " and its lock lapsed" } else { "" }
        );
        let safe = |id: &Id| -> Result<bool> {
            let locations = self.repo.cache().locations(id)?;
            Ok(locations
                .iter()
                .any(|l| !condemned.contains(&l.pack) && existing.as_ref().is_none_or(|e| e.contains(&l.pack))))
        };
        let mut rescue: Vec<(BlobType, Id)> = Vec::new();
        let mut seen_trees: HashSet<Id> = HashSet::new();
        let mut stack = vec![*tree];
        while let Some(t) = stack.pop() {
            if !seen_trees.insert(t) {
                continue;
            }
            if !safe(&t)? {
                rescue.push((BlobType::Tree, t));
            }
            for node in self.repo.load_tree(&t)?.nodes {
                if let Some(sub) = node.subtree {
                    stack.push(sub);
                }
                match &node.content {
                    Content::None => {}
                    Content::Chunks(ids) => {
                        for id in ids {
                            if !safe(id)? {
                                rescue.push((BlobType::Data, *id));
                            }
                        }
                    }
                    Content::Lists(lists) => {
                        for l in lists {
                            if !safe(l)? {
                                rescue.push((BlobType::Tree, *l));
                            }
                        }
                        for id in self.repo.content_chunks(&node.content)? {
                            if !safe(&id)? {
                                rescue.push((BlobType::Data, id));
                            }
                        }
                    }
                }
            }
        }
        if rescue.is_empty() {
            self.state.lock().unwrap().secured.extend(new_markers);
            return Ok(());
        }
        rescue.sort();
        rescue.dedup();
        tracing::info!("storing {} blob(s) again that a concurrent prune condemned", rescue.len());
        Packer::run(self.repo, 1, |p| {
            for (t, id) in &rescue {
                let plain = self.repo.read_blob(id).map_err(|e| {
                    RepoError::Conflict(format!(
                        "blob {} this backup reuses was deleted by a prune while the backup was not refreshing \
                         its lock ({e})",
                        id.short()
                    ))
                })?;
                p.store(*t, *id, &plain)?;
            }
            Ok(())
        })?;
        self.state.lock().unwrap().secured.extend(new_markers);
        Ok(())
    }

    /// Runs `f` in a prune session holding the exclusive prune lock, which it removes when
    /// `f` returns (a removal that fails is only warned about: the next prune finds the lock
    /// stale). Prune and `repair index` run this way.
    pub fn with_prune_lock<T>(
        repo: &'r Repository,
        stale: Duration,
        f: impl FnOnce(&Session<'r>) -> Result<T>,
    ) -> Result<T> {
        Session::run(repo, LockKind::Prune, stale, |session| {
            session.take_prune_lock()?;
            let r = f(session);
            if let Err(e) = session.release_prune_lock() {
                tracing::warn!("could not remove the prune lock: {e} (the next prune will find it stale)");
            }
            r
        })
    }

    /// Takes the exclusive prune lock, replacing it when its holder's session is stale.
    pub fn take_prune_lock(&self) -> Result<()> {
        let body = Lock {
            kind: LockKind::Prune,
            session: self.id,
            seq: 0,
            host: self.host.clone(),
            pid: std::process::id(),
            start_ns: self.start_ns,
            seen: None,
        }
        .encode();
        let sealed = object::seal(self.repo.keys(), ObjectKind::Lock, &PRUNE_LOCK, &body, 0);
        for attempt in 0..2 {
            match self.repo.storage().create(ObjectKind::Lock, &PRUNE_LOCK.to_hex(), &[Bytes::from(sealed.clone())]) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt == 0 => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(RepoError::Locked("another prune took the prune lock at the same time".into()))
                }
                Err(e) => return Err(e.into()),
            }
            let holder = match read_lock(self.repo, &PRUNE_LOCK.to_hex()) {
                Ok(l) => l,
                Err(RepoError::Storage(e)) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let sessions = sessions(self.repo, Some(self), self.stale)?;
            if let Some(v) = sessions.get(&holder.session).filter(|v| !v.stale) {
                return Err(RepoError::Locked(format!(
                    "another prune is running on this repository (host {}, pid {}); try again when it has finished",
                    v.lock.host, v.lock.pid
                )));
            }
            tracing::warn!(
                "removing the stale prune lock of host {} pid {} (its session ended without releasing it)",
                holder.host,
                holder.pid
            );
            self.repo.delete_object(ObjectKind::Lock, &PRUNE_LOCK.to_hex())?;
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Fails unless this session still holds the prune lock; refreshes the session lock if due.
    pub fn ensure_prune_lock(&self) -> Result<()> {
        self.ensure_fresh()?;
        let holder = read_lock(self.repo, &PRUNE_LOCK.to_hex())
            .map_err(|e| RepoError::Locked(format!("the prune lock is gone ({e}); nothing more was deleted")))?;
        if holder.session != self.id {
            return Err(RepoError::Locked(format!(
                "another prune (host {}, pid {}) took over the prune lock; nothing more was deleted",
                holder.host, holder.pid
            )));
        }
        Ok(())
    }

    /// Removes the prune lock if this session still holds it (never another prune's).
    pub fn release_prune_lock(&self) -> Result<()> {
        match read_lock(self.repo, &PRUNE_LOCK.to_hex()) {
            Ok(l) if l.session == self.id => self.repo.delete_object(ObjectKind::Lock, &PRUNE_LOCK.to_hex()).map(drop),
            Ok(_) => Ok(()),
            Err(RepoError::Storage(e)) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The storage's clock now: the time of this session's newest lock object.
    fn storage_now(&self, listed: &[hoard_storage::ObjectInfo]) -> Option<i64> {
        let me = self.state.lock().unwrap().name.to_hex();
        listed.iter().find(|o| o.name == me).map(|o| o.modified_ns)
    }
}

fn read_lock(repo: &Repository, name: &str) -> Result<Lock> {
    let id = Id::from_hex(name).map_err(|e| RepoError::core("lock name", e))?;
    let sealed = repo.storage().read(ObjectKind::Lock, name)?;
    let body = object::open(repo.keys(), ObjectKind::Lock, &id, &sealed)
        .map_err(|e| RepoError::core(format!("lock {name}"), e))?;
    Lock::decode(&body).map_err(|e| RepoError::core(format!("lock {name}"), e))
}

/// Every condemnation marker in the repository. One that cannot be read is skipped with a
/// warning: no prune can read it either, so none will delete its packs.
pub fn read_markers(repo: &Repository) -> Result<Vec<Marker>> {
    let mut out = Vec::new();
    for o in repo.storage().list(ObjectKind::Condemned)? {
        let Ok(name) = Id::from_hex(&o.name) else { continue };
        let sealed = match repo.storage().read(ObjectKind::Condemned, &o.name) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        match object::open(repo.keys(), ObjectKind::Condemned, &name, &sealed).and_then(|b| Condemned::decode(&b)) {
            Ok(c) => out.push(Marker { name, packs: c.packs }),
            Err(e) => tracing::warn!("condemnation marker {} is unreadable and was skipped: {e}", o.name),
        }
    }
    out.sort_by_key(|m| m.name);
    Ok(out)
}

/// Writes a condemnation marker.
pub fn write_marker(repo: &Repository, packs: Vec<Id>) -> Result<Id> {
    repo.write_object(ObjectKind::Condemned, &Condemned { packs }.encode())
}

/// The sessions that hold locks, by session id, each with whether it is stale. `me` (when
/// given) supplies the storage's current time; without it, only the process check applies.
pub fn sessions(repo: &Repository, me: Option<&Session>, stale: Duration) -> Result<HashMap<Id, SessionView>> {
    let listed = repo.storage().list(ObjectKind::Lock)?;
    let now = me.and_then(|m| m.storage_now(&listed)).or_else(|| listed.iter().map(|o| o.modified_ns).max());
    let host = Some(me.map_or_else(this_host, |m| m.host.clone()));
    let mut out: HashMap<Id, SessionView> = HashMap::new();
    for o in &listed {
        if o.name == PRUNE_LOCK.to_hex() {
            continue;
        }
        let lock = match read_lock(repo, &o.name) {
            Ok(l) => l,
            // Replaced by its session's next refresh between the listing and the read.
            Err(RepoError::Storage(e)) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!("lock {} is unreadable and was ignored: {e}", o.name);
                continue;
            }
        };
        let entry = out.entry(lock.session).or_insert_with(|| SessionView {
            lock: lock.clone(),
            name: o.name.clone(),
            modified_ns: o.modified_ns,
            objects: Vec::new(),
            started_ns: None,
            stale: false,
        });
        entry.objects.push(o.name.clone());
        if lock.seq == 0 {
            entry.started_ns = Some(o.modified_ns);
        }
        if lock.seq >= entry.lock.seq {
            entry.name = o.name.clone();
            entry.modified_ns = entry.modified_ns.max(o.modified_ns);
            entry.lock = lock;
        }
    }
    for v in out.values_mut() {
        let same_host = host.as_deref() == Some(v.lock.host.as_str());
        v.stale = if same_host {
            !process_alive(v.lock.pid)
        } else {
            now.is_some_and(|n| n.saturating_sub(v.modified_ns) > stale.as_nanos() as i64)
        };
    }
    Ok(out)
}

/// Whether a process of this host is running (a stopped process is running).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the lock objects of stale sessions (prune does this; nobody runs `unlock`).
pub fn remove_stale(repo: &Repository, sessions: &HashMap<Id, SessionView>) -> Result<usize> {
    let mut n = 0;
    for v in sessions.values().filter(|v| v.stale) {
        for name in &v.objects {
            repo.delete_object(ObjectKind::Lock, name)?;
            n += 1;
        }
    }
    Ok(n)
}

/// This machine's host name, as the kernel has it (not a snapshot's `--host` label: the
/// process check is only right for the machine the process runs on).
pub fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL either way.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
