//! Index segments: which blobs live in which packs. A segment repeats what the packs' own
//! headers say, for many packs in one object, so a fresh machine learns the whole index by
//! reading the segments instead of every pack.
//!
//! ```text
//! sealed object (kind Index) with body:
//! version u8 = 1 | varint pack_count | pack… | varint superseded_count | segment_id[32]…
//! pack = pack_id[32] | varint pack_len | varint entry_count | entry… (as in a pack header)
//! ```
//! `superseded` names older segments whose content this one fully replaces (written by prune
//! and `repair index`); readers ignore a superseded segment.

use super::pack::{decode_entry, encode_entry, min_entry_len, PackEntry};
use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::id::Id;

const VERSION: u8 = 1;

/// The entries of one pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPack {
    pub id: Id,
    pub len: u64,
    pub entries: Vec<PackEntry>,
}

/// One index segment's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSegment {
    pub packs: Vec<IndexPack>,
    pub superseded: Vec<Id>,
}

impl IndexSegment {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION).varint(self.packs.len() as u64);
        for p in &self.packs {
            w.id(&p.id).varint(p.len).varint(p.entries.len() as u64);
            for e in &p.entries {
                encode_entry(&mut w, e);
            }
        }
        w.varint(self.superseded.len() as u64);
        for s in &self.superseded {
            w.id(s);
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<IndexSegment> {
        let mut r = Reader::new(b, "index segment");
        let v = r.u8()?;
        if v != VERSION {
            return Err(Error::UnsupportedVersion {
                what: "index segment",
                found: v.into(),
                supported: VERSION.into(),
            });
        }
        let n = r.count(34)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.id()?;
            let len = r.varint()?;
            let m = r.count(min_entry_len())?;
            let mut entries = Vec::with_capacity(m);
            for _ in 0..m {
                entries.push(decode_entry(&mut r)?);
            }
            packs.push(IndexPack { id, len, entries });
        }
        let s = r.count(32)?;
        let mut superseded = Vec::with_capacity(s);
        for _ in 0..s {
            superseded.push(r.id()?);
        }
        r.end()?;
        Ok(IndexSegment { packs, superseded })
    }
}
