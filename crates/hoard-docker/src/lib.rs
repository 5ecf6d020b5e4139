//! The Docker Engine as a source and a target of backups, through its API (bollard): connecting and
//! classifying errors, discovery of volumes and mounts, the helper image hoard builds itself, reading
//! a volume as a tar stream, filling a volume, stopping and starting labelled containers, and exec.
//!
//! **API Boundary:** the rest of hoard is synchronous; this crate owns a small tokio runtime and
//! exposes blocking calls only. Streams (a volume's tar, an exec's stdout) are handed out as
//! [`std::io::Read`] that pull from the engine on demand, so memory stays bounded whatever the size.

mod discover;
mod exec;
mod helper;
mod stop;

use std::collections::HashMap;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

pub use discover::{BindMount, ContainerInfo, Mount, VolumeInfo};
pub use exec::{ExecReader, ExecStatus};
pub use helper::{HelperContainer, HELPER_IMAGE};
pub use stop::{restart, StopGuard};

/// The compose label that names a container's or a volume's project.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
/// Containers with this label set to `true` are stopped while their volumes are read.
pub const LABEL_STOP: &str = "hoard.stop";
/// A command run with `sh -c` in a container before its volumes are read.
pub const LABEL_PRE: &str = "hoard.pre";
/// A command run with `sh -c` in a container after its volumes are read.
pub const LABEL_POST: &str = "hoard.post";

/// What went wrong talking to the engine, sorted by what a user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No engine answers at the address (not running, wrong DOCKER_HOST, socket missing).
    #[error("the Docker engine at {host} is not reachable ({detail}); is it running, and is DOCKER_HOST right?")]
    Unavailable { host: String, detail: String },
    /// The socket exists but this user may not use it.
    #[error("permission denied on the Docker socket {host}; run as root or as a member of the docker group")]
    PermissionDenied { host: String },
    /// A volume, container or image that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The engine refused because of the object's state (in use, already exists, …).
    #[error("{what}: {detail}")]
    Conflict { what: String, detail: String },
    /// A command run in a container exited with a non-zero code.
    #[error("`{command}` in container {container} exited with code {code}{}", stderr_suffix(.stderr))]
    CommandFailed { container: String, command: String, code: i64, stderr: String },
    /// Anything else the engine said.
    #[error("{context}: {detail}")]
    Engine { context: String, detail: String },
    /// Local I/O while streaming to or from the engine.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn stderr_suffix(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

pub type Result<T, E = DockerError> = std::result::Result<T, E>;

impl DockerError {
    /// True when the engine could not be reached at all (or not used for lack of permission).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DockerError::Unavailable { .. } | DockerError::PermissionDenied { .. })
    }
}

/// A connection to the Docker Engine, with the runtime that drives it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    host: String,
}

impl Engine {
    /// Connects to `DOCKER_HOST`, or the local socket when it is unset, and agrees on an API
    /// version the engine supports (Docker 20.10 speaks 1.41). Fails with
    /// [`DockerError::Unavailable`] or [`DockerError::PermissionDenied`] when the engine cannot be
    /// used, so callers learn that before they start any work.
    pub fn connect() -> Result<Engine> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hoard-docker")
            .enable_all()
            .build()
            .map_err(|e| DockerError::Io { context: "starting the Docker client runtime".into(), source: e })?;
        if let Some(path) = host.strip_prefix("unix://") {
            match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(DockerError::Unavailable { host, detail: "no socket at that path".into() })
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(DockerError::PermissionDenied { host })
                }
                _ => {}
            }
        }
        let docker = {
            let _g = rt.enter();
            Docker::connect_with_defaults()
                .map_err(|e| DockerError::Unavailable { host: host.clone(), detail: e.to_string() })?
        };
        let docker = rt.block_on(docker.negotiate_version()).map_err(|e| classify_connect(&host, e))?;
        Ok(Engine { inner: Arc::new(Inner { rt, docker, host }) })
    }

    /// Where the engine is (`DOCKER_HOST` or the default socket).
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// True when the engine runs on this machine, so its volume mountpoints are paths here.
    pub fn is_local(&self) -> bool {
        self.inner.host.starts_with("unix://")
    }

    pub(crate) fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.inner.rt.block_on(f)
    }

    /// Classifies an error of a call about `what` (e.g. "volume pgdata").
    pub(crate) fn err(&self, what: &str, e: bollard::errors::Error) -> DockerError {
        classify(&self.inner.host, what, e)
    }
}

fn io_in_chain(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = c.source();
    }
    None
}

fn classify_connect(host: &str, e: bollard::errors::Error) -> DockerError {
    match classify(host, "the engine", e) {
        DockerError::Engine { detail, .. } => DockerError::Unavailable { host: host.into(), detail },
        other => other,
    }
}

fn classify(host: &str, what: &str, e: bollard::errors::Error) -> DockerError {
    use bollard::errors::Error as B;
    match &e {
        B::DockerResponseServerError { status_code: 404, message } => {
            DockerError::NotFound(if message.is_empty() { what.to_string() } else { format!("{what}: {message}") })
        }
        B::DockerResponseServerError { status_code: 409, message } => {
            DockerError::Conflict { what: what.into(), detail: message.clone() }
        }
        _ => match io_in_chain(&e) {
            Some(std::io::ErrorKind::PermissionDenied) => DockerError::PermissionDenied { host: host.into() },
            Some(
                std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted,
            ) => DockerError::Unavailable { host: host.into(), detail: e.to_string() },
            _ => DockerError::Engine { context: what.into(), detail: e.to_string() },
        },
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, bollard::errors::Error>> + Send>>;

/// A blocking [`Read`] over a byte stream from the engine. Each `read` pulls at most one more
/// piece from the connection, so only one piece is ever held.
pub struct BodyReader {
    engine: Engine,
    what: String,
    stream: ByteStream,
    buf: Bytes,
    done: bool,
}

impl BodyReader {
    pub(crate) fn new(engine: &Engine, what: String, stream: ByteStream) -> BodyReader {
        BodyReader { engine: engine.clone(), what, stream, buf: Bytes::new(), done: false }
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.engine.block_on(self.stream.next()) {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(std::io::Error::other(self.engine.err(&self.what, e)));
                }
                None => self.done = true,
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

/// Labels as sorted pairs (snapshots keep them in this order).
pub fn sorted_labels(m: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort();
    v
}
