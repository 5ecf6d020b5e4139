//! Errors of repository operations, each saying what a user can do about it.

use hoard_core::Id;
use hoard_storage::{ErrorKind, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("there is no hoard repository at {0} (create one with `hoard init`)")]
    NoRepository(String),
    #[error("the password does not open any key of the repository at {0}")]
    WrongPassword(String),
    #[error("the repository at {location} has format version {found}; this build of hoard understands up to {supported}: upgrade hoard")]
    UnsupportedVersion { location: String, found: u32, supported: u32 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Index(#[from] hoard_index::IndexError),
    #[error("{context}: {source}")]
    Core { context: String, source: hoard_core::Error },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("no snapshot matches {0:?}")]
    SnapshotNotFound(String),
    #[error("{0:?} matches several snapshots; give more of the id")]
    AmbiguousSnapshot(String),
    #[error("blob {0} is not in the repository's index (run `hoard check`; `hoard repair index` rebuilds the index from the packs)")]
    BlobMissing(Id),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the source command failed ({status}); nothing was committed. Its error output:\n{stderr}")]
    SourceCommandFailed { status: String, stderr: String },
    #[error("interrupted; nothing was committed")]
    Interrupted,
    #[error("{0}")]
    Locked(String),
    #[error("{0}; nothing was committed, run the backup again")]
    Conflict(String),
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

impl RepoError {
    pub fn core(context: impl Into<String>, source: hoard_core::Error) -> RepoError {
        RepoError::Core { context: context.into(), source }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> RepoError {
        RepoError::Io { context: context.into(), source }
    }

    /// Whether the storage ran out of space (for the exit code).
    pub fn is_no_space(&self) -> bool {
        match self {
            RepoError::Storage(e) => e.kind() == ErrorKind::NoSpace,
            RepoError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }

    /// Whether the data read back failed authentication or was malformed.
    pub fn is_integrity(&self) -> bool {
        matches!(self, RepoError::Core { .. } | RepoError::BlobMissing(_))
    }
}
