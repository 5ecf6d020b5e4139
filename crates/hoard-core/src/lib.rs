//! hoard's pure core: ids, keys, chunking, compression, encryption and every encoding of
//! repository bytes.
//!
//! **Architecture Invariant:** this crate does no I/O (no files, no network, no clock) and
//! never sees tokio. Everything that touches storage lives in crates that depend on this one.
//! The only syscall it makes is `getrandom`, for salts and fresh keys.

pub mod chunker;
pub mod codec;
pub mod compress;
pub mod crypto;
pub mod error;
pub mod format;
pub mod id;
pub mod keys;
pub mod padding;

pub use chunker::{Chunker, ChunkerParams};
pub use error::{Error, Result};
pub use id::Id;
pub use keys::{KdfParams, Keys, MasterKey};

/// The repository format version this build writes. Bump it (and add a golden vector set)
/// whenever any encoding in [`mod@format`] changes.
///
/// Versions: 1, the first; 2 adds locks with the markers a session has seen, and condemnation
/// markers (`condemned/`), so that prune and backups can run at once. A version-1 build does
/// not honour condemnation markers, so `prune` refuses to run on a version-1 repository.
pub const FORMAT_VERSION: u32 = 2;
