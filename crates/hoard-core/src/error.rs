//! The one error type of the core: every failure is either undecodable bytes or failed
//! authentication, and callers need to tell those apart from I/O errors they add themselves.

/// What went wrong while decoding or opening repository bytes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The bytes are not a valid encoding of what was expected.
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    /// Authentication failed: the bytes were altered, truncated, swapped for another object,
    /// or encrypted under another key.
    #[error("authentication failed for {what} (corrupt, tampered with, or another repository's key)")]
    Auth { what: &'static str },
    /// A password did not open a key.
    #[error("wrong password")]
    WrongPassword,
    /// The object was written by a newer format version than this build understands.
    #[error("{what} has format version {found}; this build of hoard understands up to {supported}")]
    UnsupportedVersion { what: &'static str, found: u32, supported: u32 },
    /// Content hashed to a different id than the one it is stored under.
    #[error("{what} content does not match its id {expected}")]
    IdMismatch { what: &'static str, expected: String },
    /// A parameter is outside what the format allows.
    #[error("invalid parameter: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> Error {
    Error::Malformed { what, why: why.into() }
}
