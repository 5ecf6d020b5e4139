//! Locks and condemnation markers: how backups, prunes and many hosts share one repository
//! without waiting for each other. The protocol is in docs/FORMAT.md, "Prune and concurrent
//! writers"; these are only the encodings.
//!
//! ```text
//! sealed object (kind Lock) with body:
//! version u8 = 1 | kind u8 (0 backup, 1 prune) | session[32] | varint seq | str host | varint pid
//!   | ivarint start_ns | varint seen_count | marker_id[32]… | bool seen_known
//! sealed object (kind Condemned) with body:
//! version u8 = 1 | varint pack_count | pack_id[32]…
//! ```
//!
//! A session writes a new lock object for every refresh (`seq` counts them) and then deletes the
//! previous one: nothing is modified in place. `seen` lists the condemnation markers the session
//! read when it started; `seen_known` is false until it has read them.

use crate::codec::{Reader, Writer};
use crate::error::{malformed, Error, Result};
use crate::id::Id;

const VERSION: u8 = 1;

/// What holds a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LockKind {
    /// A backup (or anything else that adds snapshots): shared, never waits.
    Backup = 0,
    /// A prune: only one at a time.
    Prune = 1,
}

/// One lock object's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub kind: LockKind,
    /// Random per process run; every refresh of one session carries the same id.
    pub session: Id,
    /// Refresh counter: 0 for the first lock object of a session.
    pub seq: u64,
    pub host: String,
    pub pid: u32,
    /// The writer's clock when the session started (for people; staleness never relies on it).
    pub start_ns: i64,
    /// The condemnation markers this session read when it started, when it has read them.
    pub seen: Option<Vec<Id>>,
}

impl Lock {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION).u8(self.kind as u8).id(&self.session).varint(self.seq).str(&self.host);
        w.varint(self.pid.into()).ivarint(self.start_ns);
        let seen = self.seen.as_deref().unwrap_or(&[]);
        w.varint(seen.len() as u64);
        for m in seen {
            w.id(m);
        }
        w.u8(self.seen.is_some() as u8);
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<Lock> {
        let mut r = Reader::new(b, "lock");
        let v = r.u8()?;
        if v != VERSION {
            return Err(Error::UnsupportedVersion { what: "lock", found: v.into(), supported: VERSION.into() });
        }
        let kind = match r.u8()? {
            0 => LockKind::Backup,
            1 => LockKind::Prune,
            k => return Err(malformed("lock", format!("unknown lock kind {k}"))),
        };
        let session = r.id()?;
        let seq = r.varint()?;
        let host = r.string()?;
        let pid = u32::try_from(r.varint()?).map_err(|_| malformed("lock", "pid out of range"))?;
        let start_ns = r.ivarint()?;
        let n = r.count(32)?;
        let mut seen = Vec::with_capacity(n);
        for _ in 0..n {
            seen.push(r.id()?);
        }
        let known = r.bool()?;
        r.end()?;
        if !known && !seen.is_empty() {
            return Err(malformed("lock", "markers listed but not marked as read"));
        }
        Ok(Lock { kind, session, seq, host, pid, start_ns, seen: known.then_some(seen) })
    }
}

/// A condemnation marker: packs a prune found unused and will delete once no running session
/// can still come to reference them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condemned {
    pub packs: Vec<Id>,
}

impl Condemned {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION).varint(self.packs.len() as u64);
        for p in &self.packs {
            w.id(p);
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<Condemned> {
        let mut r = Reader::new(b, "condemnation marker");
        let v = r.u8()?;
        if v != VERSION {
            return Err(Error::UnsupportedVersion {
                what: "condemnation marker",
                found: v.into(),
                supported: VERSION.into(),
            });
        }
        let n = r.count(32)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            packs.push(r.id()?);
        }
        r.end()?;
        Ok(Condemned { packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reject_garbage() {
        let mut l = Lock {
            kind: LockKind::Backup,
            session: Id([7; 32]),
            seq: 3,
            host: "db1".into(),
            pid: 4242,
            start_ns: -5,
            seen: None,
        };
        assert_eq!(Lock::decode(&l.encode()).unwrap(), l);
        l.seen = Some(vec![]);
        assert_eq!(Lock::decode(&l.encode()).unwrap(), l);
        l.seen = Some(vec![Id([1; 32]), Id([2; 32])]);
        l.kind = LockKind::Prune;
        let b = l.encode();
        assert_eq!(Lock::decode(&b).unwrap(), l);
        for cut in 0..b.len() {
            assert!(Lock::decode(&b[..cut]).is_err());
        }
        let c = Condemned { packs: vec![Id([9; 32])] };
        let b = c.encode();
        assert_eq!(Condemned::decode(&b).unwrap(), c);
        for cut in 0..b.len() {
            assert!(Condemned::decode(&b[..cut]).is_err());
        }
    }
}
