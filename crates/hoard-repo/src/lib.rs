//! A hoard repository: keys and config, packs and index, snapshots; and the operations on it:
//! backup (file trees, tar streams, byte streams), restore, check, and inspection.
//!
//! **API Boundary:** every operation on a repository goes through this crate; the binary also
//! names `hoard_core` data types (nodes, snapshots, parameters) and picks a `hoard_storage`
//! backend, but never reads or writes repository objects itself. Nothing here knows about the
//! command line, the terminal or config files; progress is exposed as counters and results as
//! plain structs.

pub mod backup;
pub mod check;
pub mod copy;
pub mod error;
pub mod forget;
pub mod inspect;
pub mod lock;
pub mod meta;
pub mod packcache;
pub mod packer;
pub mod prune;
pub mod repair;
pub mod repo;
pub mod restore;

pub use error::{RepoError, Result};
pub use repo::{InitOptions, KeyInfo, Repository, SnapshotEntry};
