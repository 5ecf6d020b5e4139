//! Every encoding of bytes that hoard writes to a repository. docs/FORMAT.md describes each one
//! byte by byte; `tests/golden.rs` pins them with committed vectors.

pub mod config;
pub mod index;
pub mod keyfile;
pub mod lock;
pub mod object;
pub mod pack;
pub mod snapshot;
pub mod tree;

use crate::error::{malformed, Result};

/// The kinds of object a repository stores. Index segments and snapshots bind their kind and
/// name into their encryption ([`object`]), packs bind their name into the header and each
/// blob's type and id into the blob, the config is MACed and key files are sealed with their
/// own header as associated data, so storage cannot pass one object off as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ObjectKind {
    Config = 0,
    Key = 1,
    Pack = 2,
    Index = 3,
    Snapshot = 4,
    Lock = 5,
    Condemned = 6,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::Config,
        ObjectKind::Key,
        ObjectKind::Pack,
        ObjectKind::Index,
        ObjectKind::Snapshot,
        ObjectKind::Lock,
        ObjectKind::Condemned,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Key => "key",
            ObjectKind::Pack => "pack",
            ObjectKind::Index => "index segment",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Lock => "lock",
            ObjectKind::Condemned => "condemnation marker",
        }
    }
}

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BlobType {
    /// A chunk of file or stream content.
    Data = 0,
    /// A directory listing, or a list of chunk ids of a very large file.
    Tree = 1,
}

impl BlobType {
    pub fn from_u8(b: u8) -> Result<BlobType> {
        match b {
            0 => Ok(BlobType::Data),
            1 => Ok(BlobType::Tree),
            _ => Err(malformed("blob type", format!("unknown blob type {b}"))),
        }
    }
}

/// Largest plaintext blob any encoder produces or any decoder accepts: chunks are at most
/// 16 MiB, directory listings are capped well below this.
pub const MAX_BLOB: usize = 64 << 20;
