//! Trees: one blob per directory listing its entries, sorted by name bytes. A directory entry
//! points at its subtree's blob, so an unchanged directory is the same blob night after night
//! and costs nothing to store again.
//!
//! ```text
//! tree = version u8 = 1 | varint count | node…
//! node = bytes name | kind u8 | varint mode | varint uid | varint gid | str user | str group
//!      | ivarint mtime_ns | ivarint ctime_ns | varint inode | varint device | varint links
//!      | varint size | varint rdev | bytes link_target | flags u8 (bit 0 sparse)
//!      | varint xattr_count (bytes name, bytes value)…
//!      | content: 0 none | 1 varint n id[32]×n (chunks) | 2 varint n id[32]×n (chunk lists)
//!      | subtree: 0 | 1 id[32]
//! list blob (a very large file's chunk ids) = id[32]…
//! ```
//! Names are raw bytes, so non-UTF-8 names survive. Content with more than
//! [`INLINE_CHUNKS`] chunks is stored as lists of chunk ids in blobs of their own, so neither a
//! tree nor memory grows with the size of one file.

use crate::codec::{Reader, Writer};
use crate::error::{malformed, Error, Result};
use crate::id::{Id, ID_LEN};

const VERSION: u8 = 1;
/// Chunk ids kept in a node before they move to list blobs.
pub const INLINE_CHUNKS: usize = 1024;
/// Chunk ids per list blob (256 KiB).
pub const LIST_CHUNKS: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NodeKind {
    File = 0,
    Dir = 1,
    Symlink = 2,
    Fifo = 3,
    Socket = 4,
    CharDevice = 5,
    BlockDevice = 6,
}

impl NodeKind {
    fn from_u8(b: u8) -> Result<NodeKind> {
        Ok(match b {
            0 => NodeKind::File,
            1 => NodeKind::Dir,
            2 => NodeKind::Symlink,
            3 => NodeKind::Fifo,
            4 => NodeKind::Socket,
            5 => NodeKind::CharDevice,
            6 => NodeKind::BlockDevice,
            _ => return Err(malformed("tree", format!("unknown node kind {b}"))),
        })
    }

    pub fn letter(self) -> char {
        match self {
            NodeKind::File => '-',
            NodeKind::Dir => 'd',
            NodeKind::Symlink => 'l',
            NodeKind::Fifo => 'p',
            NodeKind::Socket => 's',
            NodeKind::CharDevice => 'c',
            NodeKind::BlockDevice => 'b',
        }
    }
}

/// Where a file's bytes are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Content {
    #[default]
    None,
    /// The chunk ids, in order.
    Chunks(Vec<Id>),
    /// Ids of list blobs, each holding up to [`LIST_CHUNKS`] chunk ids, in order.
    Lists(Vec<Id>),
}

/// One directory entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: Vec<u8>,
    pub kind: Option<NodeKind>,
    /// Permission bits and set-id/sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub group: String,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub device: u64,
    pub links: u64,
    pub size: u64,
    pub rdev: u64,
    pub link_target: Vec<u8>,
    pub sparse: bool,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: Content,
    pub subtree: Option<Id>,
}

impl Node {
    pub fn kind(&self) -> NodeKind {
        self.kind.unwrap_or(NodeKind::File)
    }
}

/// A directory listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

fn encode_ids(w: &mut Writer, ids: &[Id]) {
    w.varint(ids.len() as u64);
    for id in ids {
        w.id(id);
    }
}

fn decode_ids(r: &mut Reader) -> Result<Vec<Id>> {
    let n = r.count(ID_LEN)?;
    (0..n).map(|_| r.id()).collect()
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION).varint(self.nodes.len() as u64);
        for n in &self.nodes {
            w.bytes(&n.name).u8(n.kind() as u8).varint(n.mode.into()).varint(n.uid.into()).varint(n.gid.into());
            w.str(&n.user).str(&n.group).ivarint(n.mtime_ns).ivarint(n.ctime_ns);
            w.varint(n.inode).varint(n.device).varint(n.links).varint(n.size).varint(n.rdev);
            w.bytes(&n.link_target).u8(n.sparse as u8).varint(n.xattrs.len() as u64);
            for (k, v) in &n.xattrs {
                w.bytes(k).bytes(v);
            }
            match &n.content {
                Content::None => {
                    w.u8(0);
                }
                Content::Chunks(ids) => {
                    w.u8(1);
                    encode_ids(&mut w, ids);
                }
                Content::Lists(ids) => {
                    w.u8(2);
                    encode_ids(&mut w, ids);
                }
            }
            match &n.subtree {
                None => w.u8(0),
                Some(id) => w.u8(1).id(id),
            };
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<Tree> {
        let mut r = Reader::new(b, "tree");
        let v = r.u8()?;
        if v != VERSION {
            return Err(Error::UnsupportedVersion { what: "tree", found: v.into(), supported: VERSION.into() });
        }
        let count = r.count(20)?;
        let mut nodes = Vec::with_capacity(count);
        let mut prev: Option<Vec<u8>> = None;
        for _ in 0..count {
            let name = r.bytes()?.to_vec();
            if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
                return Err(malformed("tree", format!("invalid entry name {:?}", String::from_utf8_lossy(&name))));
            }
            if prev.as_ref().is_some_and(|p| p >= &name) {
                return Err(malformed("tree", "entries not sorted or duplicated"));
            }
            let kind = NodeKind::from_u8(r.u8()?)?;
            let mode = r.u32_varint()?;
            let uid = r.u32_varint()?;
            let gid = r.u32_varint()?;
            let user = r.string()?;
            let group = r.string()?;
            let mtime_ns = r.ivarint()?;
            let ctime_ns = r.ivarint()?;
            let inode = r.varint()?;
            let device = r.varint()?;
            let links = r.varint()?;
            let size = r.varint()?;
            let rdev = r.varint()?;
            let link_target = r.bytes()?.to_vec();
            let flags = r.u8()?;
            if flags > 1 {
                return Err(malformed("tree", format!("unknown node flags {flags:#x}")));
            }
            let nx = r.count(2)?;
            let mut xattrs = Vec::with_capacity(nx);
            for _ in 0..nx {
                xattrs.push((r.bytes()?.to_vec(), r.bytes()?.to_vec()));
            }
            let content = match r.u8()? {
                0 => Content::None,
                1 => Content::Chunks(decode_ids(&mut r)?),
                2 => Content::Lists(decode_ids(&mut r)?),
                t => return Err(malformed("tree", format!("unknown content tag {t}"))),
            };
            let subtree = match r.u8()? {
                0 => None,
                1 => Some(r.id()?),
                t => return Err(malformed("tree", format!("unknown subtree tag {t}"))),
            };
            if (kind == NodeKind::Dir) != subtree.is_some() {
                return Err(malformed("tree", "a directory must have a subtree and nothing else may"));
            }
            if kind != NodeKind::File && content != Content::None {
                return Err(malformed("tree", "only files have content"));
            }
            prev = Some(name.clone());
            nodes.push(Node {
                name,
                kind: Some(kind),
                mode,
                uid,
                gid,
                user,
                group,
                mtime_ns,
                ctime_ns,
                inode,
                device,
                links,
                size,
                rdev,
                link_target,
                sparse: flags & 1 == 1,
                xattrs,
                content,
                subtree,
            });
        }
        r.end()?;
        Ok(Tree { nodes })
    }
}

/// Encodes a list blob.
pub fn encode_list(ids: &[Id]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ids.len() * ID_LEN);
    for id in ids {
        v.extend_from_slice(id.as_bytes());
    }
    v
}

pub fn decode_list(b: &[u8]) -> Result<Vec<Id>> {
    if !b.len().is_multiple_of(ID_LEN) || b.len() > LIST_CHUNKS * ID_LEN {
        return Err(malformed("chunk list", format!("{} bytes", b.len())));
    }
    b.chunks_exact(ID_LEN).map(Id::from_slice).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let t = Tree {
            nodes: vec![
                Node {
                    name: b"a\xffb".to_vec(),
                    kind: Some(NodeKind::File),
                    mode: 0o644,
                    size: 3,
                    content: Content::Chunks(vec![Id([1; 32])]),
                    xattrs: vec![(b"user.x".to_vec(), b"1".to_vec())],
                    mtime_ns: -5,
                    ..Default::default()
                },
                Node {
                    name: b"d".to_vec(),
                    kind: Some(NodeKind::Dir),
                    subtree: Some(Id([2; 32])),
                    ..Default::default()
                },
                Node {
                    name: b"l".to_vec(),
                    kind: Some(NodeKind::Symlink),
                    link_target: b"../x".to_vec(),
                    ..Default::default()
                },
            ],
        };
        let b = t.encode();
        assert_eq!(Tree::decode(&b).unwrap(), t);
        let mut unsorted = t.clone();
        unsorted.nodes.swap(0, 1);
        assert!(Tree::decode(&unsorted.encode()).is_err());
        let mut escape = t.clone();
        escape.nodes[0].name = b"..".to_vec();
        assert!(Tree::decode(&escape.encode()).is_err());
        for cut in 0..b.len() {
            assert!(Tree::decode(&b[..cut]).is_err());
        }
    }
}
