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
/// The command whose output was being backed up failed, or a container's `hoard.pre` command did;
/// nothing was committed (a failed `hoard.post` comes after its snapshot was committed).
pub const SOURCE_FAILED: i32 = 14;
/// The repository's storage is full; nothing was committed.
pub const NO_SPACE: i32 = 15;
/// The Docker engine is not running, not reachable at DOCKER_HOST, or its socket is not permitted.
pub const DOCKER_UNAVAILABLE: i32 = 16;
/// A Docker volume was left alone: in use without a stop label under `--require-quiet`, or not
/// empty on restore without `--force`.
pub const DOCKER_REFUSED: i32 = 17;
/// The repository's storage kept failing (network, server errors, throttling) after retries.
pub const STORAGE_UNAVAILABLE: i32 = 18;
/// The repository's storage refused access: credentials, permissions, missing bucket.
pub const STORAGE_DENIED: i32 = 19;
/// Interrupted by a signal; nothing was committed.
pub const INTERRUPTED: i32 = 130;

/// An error as one line for the terminal: its chain of causes joined by ": ", leaving out a cause
/// whose words its parent's message already ends with (an error that shows its source in its own
/// message, as `{context}: {source}` does, would otherwise print it twice).
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

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
                RepoError::Storage(e) => storage_code(e),
                _ => FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<hoard_storage::StorageError>() {
            return storage_code(e);
        }
    }
    for cause in e.chain() {
        if cause.downcast_ref::<crate::docker::Refused>().is_some() {
            return DOCKER_REFUSED;
        }
        if let Some(d) = cause.downcast_ref::<hoard_docker::DockerError>() {
            return match d {
                d if d.is_unavailable() => DOCKER_UNAVAILABLE,
                hoard_docker::DockerError::CommandFailed { .. } => SOURCE_FAILED,
                _ => FAILURE,
            };
        }
    }
    let _ = (OK, USAGE);
    FAILURE
}

fn storage_code(e: &hoard_storage::StorageError) -> i32 {
    use hoard_storage::ErrorKind as K;
    match e.kind() {
        K::NoSpace => NO_SPACE,
        K::Temporary => STORAGE_UNAVAILABLE,
        K::PermissionDenied | K::NoBucket => STORAGE_DENIED,
        _ => FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_shows_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(RepoError::io("/srv/data", io)).context("backing up");
        assert_eq!(message(&e), "backing up: /srv/data: No such file or directory");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(message(&plain), "outer: inner");
    }
}
