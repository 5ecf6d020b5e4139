//! Exit codes. Scripts depend on these; README.md lists them. They follow restic's where
//! restic has one (3, 10, 11, 12, 130).

use hoard_repo::RepoError;

pub const OK: i32 = 0;
/// Any error not listed below.
pub const FAILURE: i32 = 1;
/// The command line was wrong (clap's own code).
pub const USAGE: i32 = 2;
/// A backup was committed, but some files could not be read; or a restore left some entries out.
pub const PARTIAL: i32 = 3;
/// `check` found missing or damaged data.
pub const CHECK_FAILED: i32 = 4;
/// There is no repository at the given location.
pub const NO_REPOSITORY: i32 = 10;
/// Another prune holds the repository's prune lock (backups never wait or fail for locks).
pub const LOCKED: i32 = 11;
/// The password does not open any key.
pub const WRONG_PASSWORD: i32 = 12;
/// The repository was written by a newer, unknown format version.
pub const UNSUPPORTED_VERSION: i32 = 13;
/// The command whose output was being backed up failed; nothing was committed.
pub const SOURCE_FAILED: i32 = 14;
/// The repository's storage is full; nothing was committed.
pub const NO_SPACE: i32 = 15;
/// Interrupted by a signal; nothing was committed.
pub const INTERRUPTED: i32 = 130;

/// The exit code for an error.
pub fn code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<RepoError>() {
            return match r {
                RepoError::NoRepository(_) => NO_REPOSITORY,
                RepoError::WrongPassword(_) => WRONG_PASSWORD,
                RepoError::UnsupportedVersion { .. } => UNSUPPORTED_VERSION,
                RepoError::SourceCommandFailed { .. } => SOURCE_FAILED,
                RepoError::Interrupted => INTERRUPTED,
                RepoError::Locked(_) => LOCKED,
                r if r.is_no_space() => NO_SPACE,
                _ => FAILURE,
            };
        }
    }
    let _ = (OK, USAGE);
    FAILURE
}
