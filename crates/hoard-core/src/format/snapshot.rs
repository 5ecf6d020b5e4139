//! Snapshots: the commit point of a backup. A snapshot object is written last, after every pack
//! and index segment it references is durable; its existence is what makes a backup count.
//!
//! ```text
//! sealed object (kind Snapshot), body:
//! version u8 = 1 | ivarint time_ns (UTC) | str host | str user | str source_kind | str source_name
//! | varint n str path… | varint n str tag… | varint n (str key, str value)…
//! | parent: 0 | 1 id[32] | tree id[32] | flags u8 (bit 0 partial) | str program
//! | summary: varint × 14 (see Summary, in field order)
//! ```

use crate::codec::{Reader, Writer};
use crate::error::{malformed, Error, Result};
use crate::id::Id;

const VERSION: u8 = 1;

/// What a backup did, kept with its snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    pub other_entries: u64,
    /// Logical bytes of every file in the snapshot.
    pub bytes_total: u64,
    /// Bytes actually read from the source.
    pub bytes_read: u64,
    /// Plaintext bytes of blobs that were new to the repository.
    pub bytes_new: u64,
    /// Bytes those new blobs take in the repository (compressed and encrypted).
    pub bytes_stored: u64,
    pub blobs_new: u64,
    pub packs_written: u64,
    pub duration_ms: u64,
    /// Entries that could not be read and were left out.
    pub errors: u64,
    /// Files that changed while they were being read.
    pub changed_during_read: u64,
}

/// A snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub time_ns: i64,
    pub host: String,
    pub user: String,
    /// What was backed up: "path", "stdin", "command", "docker-volume", "postgres", …
    pub source_kind: String,
    pub source_name: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub parent: Option<Id>,
    pub tree: Id,
    /// Some entries could not be read.
    pub partial: bool,
    pub program: String,
    pub summary: Summary,
}

impl Summary {
    fn fields(&self) -> [u64; 14] {
        [
            self.files_new,
            self.files_changed,
            self.files_unmodified,
            self.dirs,
            self.other_entries,
            self.bytes_total,
            self.bytes_read,
            self.bytes_new,
            self.bytes_stored,
            self.blobs_new,
            self.packs_written,
            self.duration_ms,
            self.errors,
            self.changed_during_read,
        ]
    }

    fn from_fields(f: [u64; 14]) -> Summary {
        Summary {
            files_new: f[0],
            files_changed: f[1],
            files_unmodified: f[2],
            dirs: f[3],
            other_entries: f[4],
            bytes_total: f[5],
            bytes_read: f[6],
            bytes_new: f[7],
            bytes_stored: f[8],
            blobs_new: f[9],
            packs_written: f[10],
            duration_ms: f[11],
            errors: f[12],
            changed_during_read: f[13],
        }
    }
}

fn strings(w: &mut Writer, v: &[String]) {
    w.varint(v.len() as u64);
    for s in v {
        w.str(s);
    }
}

fn read_strings(r: &mut Reader) -> Result<Vec<String>> {
    let n = r.count(1)?;
    (0..n).map(|_| r.string()).collect()
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION).ivarint(self.time_ns).str(&self.host).str(&self.user);
        w.str(&self.source_kind).str(&self.source_name);
        strings(&mut w, &self.paths);
        strings(&mut w, &self.tags);
        w.varint(self.labels.len() as u64);
        for (k, v) in &self.labels {
            w.str(k).str(v);
        }
        match &self.parent {
            None => w.u8(0),
            Some(p) => w.u8(1).id(p),
        };
        w.id(&self.tree).u8(self.partial as u8).str(&self.program);
        for f in self.summary.fields() {
            w.varint(f);
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<Snapshot> {
        let mut r = Reader::new(b, "snapshot");
        let v = r.u8()?;
        if v != VERSION {
            return Err(Error::UnsupportedVersion { what: "snapshot", found: v.into(), supported: VERSION.into() });
        }
        let time_ns = r.ivarint()?;
        let host = r.string()?;
        let user = r.string()?;
        let source_kind = r.string()?;
        let source_name = r.string()?;
        let paths = read_strings(&mut r)?;
        let tags = read_strings(&mut r)?;
        let n = r.count(2)?;
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            labels.push((r.string()?, r.string()?));
        }
        let parent = match r.u8()? {
            0 => None,
            1 => Some(r.id()?),
            t => return Err(malformed("snapshot", format!("parent tag {t}"))),
        };
        let tree = r.id()?;
        let flags = r.u8()?;
        if flags > 1 {
            return Err(malformed("snapshot", format!("unknown flags {flags:#x}")));
        }
        let program = r.string()?;
        let mut f = [0u64; 14];
        for x in &mut f {
            *x = r.varint()?;
        }
        r.end()?;
        Ok(Snapshot {
            time_ns,
            host,
            user,
            source_kind,
            source_name,
            paths,
            tags,
            labels,
            parent,
            tree,
            partial: flags & 1 == 1,
            program,
            summary: Summary::from_fields(f),
        })
    }
}
