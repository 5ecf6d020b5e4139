//! A storage wrapper for tests that misbehaves on purpose: fails chosen operations, simulates a
//! crash (as SQLite's crash VFS does), damages what reads return, serves stale listings and
//! answers slowly. Tests steer it at runtime through a shared [`Faults`] handle.
//!
//! A crash at operation N models the process dying while operation N was in flight: calls
//! before N took full effect (with this crate's contract a `create` that returned `Ok` is
//! durable), call N and every later one fail without touching the wrapped storage, so a
//! `create` in progress leaves nothing visible. [`FaultStorage::surviving`] then hands the
//! durable state to a fresh [`MemoryStorage`] for the "after the reboot" half of a test.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::{ErrorKind, MemoryStorage, ObjectInfo, ObjectKind, RequestCounts, Result, Storage, StorageError};

/// A kind of trait call, for counting and for aiming a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Read,
    ReadRange,
    Size,
    List,
    Delete,
}

impl Op {
    pub const ALL: [Op; 6] = [Op::Create, Op::Read, Op::ReadRange, Op::Size, Op::List, Op::Delete];

    fn index(self) -> usize {
        self as usize
    }
}

/// What a damaged object looks like to its readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// This bit (counted from the object's first byte, taken modulo its length in bits) is
    /// flipped.
    FlipBit(u64),
    /// Only the first this-many bytes are there.
    Truncate(u64),
}

impl Damage {
    /// Applies the damage to a whole object's bytes.
    pub fn apply(self, mut bytes: Vec<u8>) -> Vec<u8> {
        match self {
            Damage::FlipBit(bit) => {
                if !bytes.is_empty() {
                    let bit = bit % (bytes.len() as u64 * 8);
                    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                }
            }
            Damage::Truncate(len) => bytes.truncate(len.min(bytes.len() as u64) as usize),
        }
        bytes
    }
}

#[derive(Default)]
struct Plan {
    /// Calls so far: all of them, and by [`Op`].
    ops: u64,
    by_op: [u64; 6],
    /// One-shot failures: (which count, the number it must reach, how it fails).
    fail: Vec<(Option<Op>, u64, ErrorKind)>,
    crash_at: Option<u64>,
    crashed: bool,
    damage: Vec<(ObjectKind, String, Damage)>,
    /// Objects listings leave out.
    hidden: Vec<(ObjectKind, String)>,
    recent: VecDeque<(ObjectKind, String)>,
    delay: Duration,
}

/// The handle a test keeps to steer a [`FaultStorage`]. Clones share one plan.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Plan>>);

impl Faults {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Trait calls made so far (every kind, including failed ones).
    pub fn ops(&self) -> u64 {
        self.plan().ops
    }

    /// Calls of one kind made so far.
    pub fn count(&self, op: Op) -> u64 {
        self.plan().by_op[op.index()]
    }

    /// Makes the `n`th call (1-based, counted since the wrapper was made) fail once with
    /// `kind`: the `n`th of all calls when `op` is `None`, else the `n`th call of that kind.
    /// The failed call does not reach the wrapped storage.
    pub fn fail_nth(&self, op: Option<Op>, n: u64, kind: ErrorKind) {
        self.plan().fail.push((op, n, kind));
    }

    /// Simulates a crash while call `n` (1-based, all kinds) is in flight: it and every later
    /// call fail and have no effect.
    pub fn crash_at(&self, n: u64) {
        self.plan().crash_at = Some(n);
    }

    /// Whether the simulated crash has happened.
    pub fn crashed(&self) -> bool {
        self.plan().crashed
    }

    /// Reads of this object see it damaged.
    pub fn damage(&self, kind: ObjectKind, name: &str, damage: Damage) {
        self.plan().damage.push((kind, name.to_owned(), damage));
    }

    /// From now on, listings leave out the objects of the last `k` creates made so far, as an
    /// eventually consistent store that has not caught up with them would. Later creates are
    /// listed, so the operation under test sees its own objects.
    pub fn stale_listings(&self, k: usize) {
        let mut p = self.plan();
        p.hidden = p.recent.iter().rev().take(k).cloned().collect();
    }

    /// Every call first sleeps this long.
    pub fn delay(&self, d: Duration) {
        self.plan().delay = d;
    }

    /// Drops every fault (failures, the crash, damage, staleness, delay) but keeps the counts:
    /// the wrapper behaves like the storage it wraps again.
    pub fn clear(&self) {
        let mut p = self.plan();
        p.fail.clear();
        p.crash_at = None;
        p.crashed = false;
        p.damage.clear();
        p.hidden.clear();
        p.delay = Duration::ZERO;
    }

    /// Counts the call and decides whether it fails.
    fn enter(&self, op: Op, kind: ObjectKind, name: &str) -> Result<()> {
        let delay = {
            let mut p = self.plan();
            p.ops += 1;
            p.by_op[op.index()] += 1;
            let (total, mine) = (p.ops, p.by_op[op.index()]);
            if p.crash_at.is_some_and(|n| total >= n) {
                p.crashed = true;
            }
            if p.crashed {
                return Err(StorageError::new(
                    ErrorKind::Other,
                    format!("simulated crash (call {total}, {op:?} {} {name})", kind.name()),
                ));
            }
            let hit = p.fail.iter().position(|&(o, n, _)| match o {
                None => n == total,
                Some(o) => o == op && n == mine,
            });
            if let Some(i) = hit {
                let (_, _, k) = p.fail.remove(i);
                return Err(StorageError::new(
                    k,
                    format!("injected failure (call {total}, {op:?} {} {name})", kind.name()),
                ));
            }
            p.delay
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        Ok(())
    }

    fn damage_of(&self, kind: ObjectKind, name: &str) -> Option<Damage> {
        self.plan().damage.iter().find(|(k, n, _)| *k == kind && n == name).map(|&(_, _, d)| d)
    }
}

/// A [`Storage`] that passes every call to `S` unless its [`Faults`] say otherwise.
pub struct FaultStorage<S: Storage> {
    inner: S,
    faults: Faults,
}

impl<S: Storage> FaultStorage<S> {
    pub fn new(inner: S) -> FaultStorage<S> {
        FaultStorage { inner, faults: Faults::default() }
    }

    /// The handle that steers this wrapper.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// The wrapped storage, unaffected by any fault.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// What survived: every object of the wrapped storage (read past any fault) in a fresh
    /// [`MemoryStorage`], to reopen as after a reboot. Objects keep their modification times,
    /// and the new storage's clock starts no earlier than the newest of them.
    pub fn surviving(&self) -> Result<MemoryStorage> {
        let out = MemoryStorage::new();
        for kind in ObjectKind::ALL {
            for o in self.inner.list(kind)? {
                let bytes = self.inner.read(kind, &o.name)?;
                out.create_at(kind, &o.name, Bytes::from(bytes), o.modified_ns)?;
            }
        }
        Ok(out)
    }

    /// One object of the given kinds chosen by `seed` (the same seed and contents give the same
    /// choice), with its size; `None` when there are none.
    pub fn pick(&self, seed: u64, kinds: &[ObjectKind]) -> Result<Option<(ObjectKind, String, u64)>> {
        let mut all = Vec::new();
        for &kind in kinds {
            let mut l = self.inner.list(kind)?;
            l.sort();
            all.extend(l.into_iter().map(|o| (kind, o.name, o.size)));
        }
        if all.is_empty() {
            return Ok(None);
        }
        let i = SplitMix(seed).below(all.len() as u64) as usize;
        Ok(Some(all.swap_remove(i)))
    }
}

impl<S: Storage> Storage for FaultStorage<S> {
    fn location(&self) -> String {
        format!("faulty {}", self.inner.location())
    }

    fn create(&self, kind: ObjectKind, name: &str, pieces: &[Bytes]) -> Result<()> {
        self.create_owned(kind, name, pieces.to_vec())
    }

    fn create_owned(&self, kind: ObjectKind, name: &str, pieces: Vec<Bytes>) -> Result<()> {
        self.faults.enter(Op::Create, kind, name)?;
        self.inner.create_owned(kind, name, pieces)?;
        let mut p = self.faults.plan();
        p.recent.push_back((kind, name.to_owned()));
        // Only as many as a staleness setting could ask for are worth keeping.
        while p.recent.len() > 1024 {
            p.recent.pop_front();
        }
        Ok(())
    }

    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        self.faults.enter(Op::Read, kind, name)?;
        let bytes = self.inner.read(kind, name)?;
        Ok(match self.faults.damage_of(kind, name) {
            Some(d) => d.apply(bytes),
            None => bytes,
        })
    }

    fn read_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.faults.enter(Op::ReadRange, kind, name)?;
        let Some(d) = self.faults.damage_of(kind, name) else {
            return self.inner.read_range(kind, name, offset, len);
        };
        // Damage the whole object, then cut the range out of it, so a truncation also shows
        // as a range that runs past the end.
        let bytes = d.apply(self.inner.read(kind, name)?);
        let end = offset.checked_add(len).filter(|&e| e <= bytes.len() as u64).ok_or_else(|| {
            StorageError::new(
                ErrorKind::Other,
                format!("{} {name}: range {offset}+{len} beyond its {} bytes", kind.name(), bytes.len()),
            )
        })?;
        Ok(bytes[offset as usize..end as usize].to_vec())
    }

    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64> {
        self.faults.enter(Op::Size, kind, name)?;
        self.inner.size(kind, name)
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>> {
        self.faults.enter(Op::List, kind, "")?;
        let mut l = self.inner.list(kind)?;
        let p = self.faults.plan();
        l.retain(|o| !p.hidden.iter().any(|(k, n)| *k == kind && *n == o.name));
        Ok(l)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        self.faults.enter(Op::Delete, kind, name)?;
        self.inner.delete(kind, name)
    }

    fn counts(&self) -> RequestCounts {
        self.inner.counts()
    }

    fn connections(&self) -> usize {
        self.inner.connections()
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
}

/// A small seeded generator (SplitMix64) so fault-injection tests are deterministic without a
/// dependency.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static [u8]) -> [Bytes; 1] {
        [Bytes::from_static(s)]
    }

    #[test]
    fn without_faults_it_keeps_the_contract() {
        crate::contract::run(&FaultStorage::new(MemoryStorage::new()));
    }

    #[test]
    fn fails_the_nth_call_once_overall_or_of_one_kind() {
        let s = FaultStorage::new(MemoryStorage::new());
        let f = s.faults();
        f.fail_nth(None, 2, ErrorKind::NoSpace);
        f.fail_nth(Some(Op::Read), 2, ErrorKind::Temporary);
        s.create(ObjectKind::Snapshot, "aa11", &b(b"x")).unwrap();
        let e = s.create(ObjectKind::Snapshot, "bb22", &b(b"y")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        // The failed create never reached the storage underneath.
        assert_eq!(s.inner().read(ObjectKind::Snapshot, "bb22").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(s.read(ObjectKind::Snapshot, "aa11").unwrap(), b"x");
        assert_eq!(s.read(ObjectKind::Snapshot, "aa11").unwrap_err().kind(), ErrorKind::Temporary);
        // One-shot: the third read works again.
        assert_eq!(s.read(ObjectKind::Snapshot, "aa11").unwrap(), b"x");
        assert_eq!((f.ops(), f.count(Op::Read), f.count(Op::Create)), (5, 3, 2));
    }

    #[test]
    fn a_crash_keeps_what_returned_and_loses_the_create_in_flight() {
        let s = FaultStorage::new(MemoryStorage::new());
        let f = s.faults();
        f.crash_at(3);
        s.create(ObjectKind::Pack, "aa11", &b(b"first")).unwrap();
        s.delete(ObjectKind::Pack, "aa11").unwrap();
        assert!(!f.crashed());
        assert!(s.create(ObjectKind::Pack, "bb22", &b(b"in flight")).is_err());
        assert!(f.crashed());
        // After the crash nothing works, not even reads of what exists.
        assert!(s.list(ObjectKind::Pack).is_err());
        assert!(s.create(ObjectKind::Pack, "cc33", &b(b"later")).is_err());
        let after = s.surviving().unwrap();
        assert!(after.list(ObjectKind::Pack).unwrap().is_empty(), "the delete before the crash holds");
        // A crash one call later: the create had returned, so it is durable.
        let s = FaultStorage::new(MemoryStorage::new());
        s.faults().crash_at(2);
        s.create(ObjectKind::Pack, "aa11", &b(b"kept")).unwrap();
        assert!(s.delete(ObjectKind::Pack, "aa11").is_err());
        let after = s.surviving().unwrap();
        assert_eq!(after.read(ObjectKind::Pack, "aa11").unwrap(), b"kept");
        // Clearing the faults reopens the same wrapper.
        s.faults().clear();
        assert_eq!(s.read(ObjectKind::Pack, "aa11").unwrap(), b"kept");
    }

    #[test]
    fn damage_shows_in_reads_and_ranges_only_of_that_object() {
        let s = FaultStorage::new(MemoryStorage::new());
        let f = s.faults();
        s.create(ObjectKind::Pack, "aa11", &b(b"abcdef")).unwrap();
        s.create(ObjectKind::Pack, "bb22", &b(b"abcdef")).unwrap();
        f.damage(ObjectKind::Pack, "aa11", Damage::FlipBit(8 * 2));
        assert_eq!(s.read(ObjectKind::Pack, "aa11").unwrap(), b"abbdef");
        assert_eq!(s.read_range(ObjectKind::Pack, "aa11", 1, 2).unwrap(), b"bb");
        assert_eq!(s.read(ObjectKind::Pack, "bb22").unwrap(), b"abcdef");
        f.clear();
        f.damage(ObjectKind::Pack, "aa11", Damage::Truncate(4));
        assert_eq!(s.read(ObjectKind::Pack, "aa11").unwrap(), b"abcd");
        assert_eq!(s.read_range(ObjectKind::Pack, "aa11", 2, 2).unwrap(), b"cd");
        assert!(s.read_range(ObjectKind::Pack, "aa11", 2, 3).is_err(), "a range past the cut fails");
        // The bytes at rest are untouched.
        assert_eq!(s.inner().read(ObjectKind::Pack, "aa11").unwrap(), b"abcdef");
        // A bit beyond the end wraps around instead of being lost.
        assert_eq!(Damage::FlipBit(6 * 8).apply(b"abcdef".to_vec()), b"`bcdef");
    }

    #[test]
    fn pick_is_deterministic_and_covers_the_kinds_asked_for() {
        let s = FaultStorage::new(MemoryStorage::new());
        for n in ["aa11", "bb22", "cc33"] {
            s.create(ObjectKind::Pack, n, &b(b"p")).unwrap();
            s.create(ObjectKind::Index, n, &b(b"ix")).unwrap();
        }
        let picks: Vec<_> = (0..64).map(|seed| s.pick(seed, &[ObjectKind::Index]).unwrap().unwrap()).collect();
        assert!(picks.iter().all(|(k, _, size)| *k == ObjectKind::Index && *size == 2));
        let names: std::collections::BTreeSet<_> = picks.iter().map(|p| p.1.clone()).collect();
        assert_eq!(names.len(), 3, "every object can be picked");
        assert_eq!(s.pick(7, &[ObjectKind::Index]).unwrap(), s.pick(7, &[ObjectKind::Index]).unwrap());
        assert_eq!(s.pick(7, &[ObjectKind::Snapshot]).unwrap(), None);
    }

    #[test]
    fn stale_listings_hide_the_newest_creates() {
        let s = FaultStorage::new(MemoryStorage::new());
        for n in ["aa11", "bb22", "cc33"] {
            s.create(ObjectKind::Index, n, &b(b"ix")).unwrap();
        }
        s.create(ObjectKind::Pack, "dd44", &b(b"p")).unwrap();
        s.faults().stale_listings(2);
        let mut l: Vec<String> = s.list(ObjectKind::Index).unwrap().into_iter().map(|o| o.name).collect();
        l.sort();
        assert_eq!(l, ["aa11", "bb22"], "cc33 and the pack are the last two creates");
        assert!(s.list(ObjectKind::Pack).unwrap().is_empty());
        // The objects themselves are there: only listings lag.
        assert_eq!(s.read(ObjectKind::Index, "cc33").unwrap(), b"ix");
        // What is created afterwards is listed; the hidden ones stay hidden.
        s.create(ObjectKind::Index, "ee55", &b(b"ix")).unwrap();
        assert_eq!(s.list(ObjectKind::Index).unwrap().len(), 3);
        s.faults().clear();
        assert_eq!(s.list(ObjectKind::Index).unwrap().len(), 4);
    }

    #[test]
    fn slow_answers_take_at_least_the_delay() {
        let s = FaultStorage::new(MemoryStorage::new());
        s.faults().delay(Duration::from_millis(30));
        let t = std::time::Instant::now();
        s.list(ObjectKind::Pack).unwrap();
        s.list(ObjectKind::Pack).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(60), "{:?}", t.elapsed());
    }

    #[test]
    fn every_op_is_counted_by_kind() {
        let s = FaultStorage::new(MemoryStorage::new());
        s.create(ObjectKind::Pack, "aa11", &b(b"abc")).unwrap();
        s.read(ObjectKind::Pack, "aa11").unwrap();
        s.read_range(ObjectKind::Pack, "aa11", 0, 1).unwrap();
        s.size(ObjectKind::Pack, "aa11").unwrap();
        s.list(ObjectKind::Pack).unwrap();
        s.delete(ObjectKind::Pack, "aa11").unwrap();
        let f = s.faults();
        assert_eq!(Op::ALL.map(|o| f.count(o)), [1; 6]);
        assert_eq!(f.ops(), 6);
    }
}
