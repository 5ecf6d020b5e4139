//! Storage errors, sorted by what a caller can do about them.

use std::fmt;

/// What kind of failure, so callers can decide to retry, report or ignore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    PermissionDenied,
    /// The bucket the repository is in does not exist (object storage).
    NoBucket,
    /// The disk or quota is full.
    NoSpace,
    /// Worth retrying: timeouts, 5xx, throttling, connection resets.
    Temporary,
    /// Anything else that will not go away by retrying.
    Other,
}

/// A failed storage operation: what was attempted, on which object, and why.
#[derive(Debug)]
pub struct StorageError {
    kind: ErrorKind,
    what: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StorageError {
    pub fn new(kind: ErrorKind, what: impl Into<String>) -> StorageError {
        StorageError { kind, what: what.into(), source: None }
    }

    pub fn with_source(
        kind: ErrorKind,
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StorageError {
        StorageError { kind, what: what.into(), source: Some(Box::new(source)) }
    }

    /// Classifies an I/O error from the local filesystem.
    pub fn io(what: impl Into<String>, e: std::io::Error) -> StorageError {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::PermissionDenied | K::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
            K::StorageFull | K::QuotaExceeded => ErrorKind::NoSpace,
            K::Interrupted | K::TimedOut | K::WouldBlock => ErrorKind::Temporary,
            _ if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) => ErrorKind::NoSpace,
            _ => ErrorKind::Other,
        };
        StorageError::with_source(kind, what, e)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_temporary(&self) -> bool {
        self.kind == ErrorKind::Temporary
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.kind {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::NoBucket => "no such bucket",
            ErrorKind::NoSpace => "no space left on the repository's storage",
            ErrorKind::Temporary => "temporary failure",
            ErrorKind::Other => "failed",
        };
        write!(f, "{}: {why}", self.what)?;
        if let Some(s) = &self.source {
            write!(f, " ({s})")?;
        }
        Ok(())
    }
}

impl std::error::Error for StorageError {}
