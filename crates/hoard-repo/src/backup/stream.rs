//! Backing up one byte stream: standard input, or the output of a command (a database dump).
//! The snapshot's tree holds a single file named after the stream.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use hoard_core::format::snapshot::Summary;
use hoard_core::format::tree::{Node, NodeKind};
use hoard_core::Chunker;

use super::content::{chunk_stream, Flight, FLIGHT_BYTES};
use super::treebuild::store_tree;
use super::{commit, now_ns, BackupOptions, BackupResult};
use crate::error::{RepoError, Result};
use crate::packer::Packer;
use crate::repo::Repository;

/// How much of a failing command's error output is kept for the message.
const STDERR_KEEP: usize = 64 << 10;

/// Describes the stream being stored.
pub struct StreamSource<'a> {
    /// "stdin", "command", "postgres", …
    pub kind: &'a str,
    /// The snapshot's source name and the file name inside it.
    pub name: &'a str,
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(RepoError::Invalid(format!(
            "{name:?} cannot be a stream name: it must be a file name without '/'"
        )));
    }
    Ok(())
}

/// Backs up everything `input` yields. `finish` runs after the input ended and before the
/// snapshot is committed; an error from it (a dump tool that failed) aborts the backup.
pub fn backup_stream(
    repo: &Repository,
    input: &mut dyn Read,
    src: &StreamSource,
    opts: &BackupOptions,
    finish: &mut dyn FnMut() -> Result<()>,
) -> Result<BackupResult> {
    backup_stream_file(repo, input, src, src.name, opts, finish)
}

/// [`backup_stream`] with a file name of its own: a database dump's source name says where it
/// came from (`localhost:5432/shop`, with a '/'), its file is `shop.sql`.
pub fn backup_stream_file(
    repo: &Repository,
    input: &mut dyn Read,
    src: &StreamSource,
    file: &str,
    opts: &BackupOptions,
    finish: &mut dyn FnMut() -> Result<()>,
) -> Result<BackupResult> {
    check_name(file)?;
    if src.name.is_empty() {
        return Err(RepoError::Invalid("a stream's source name cannot be empty".into()));
    }
    let started = Instant::now();
    let parent =
        super::parent(repo, opts, &|s| s.source_kind == src.kind && s.source_name == src.name && s.host == opts.host)?;
    let chunker = Chunker::new(repo.config().dumps_chunker, repo.keys());
    let flight = Flight::new(FLIGHT_BYTES);
    let progress = &opts.progress;
    super::locked(repo, opts, |session| {
        let ((tree, summary), stats) = Packer::run(repo, repo.storage().connections(), |packer| {
            let chunked = chunk_stream(
                input,
                &chunker,
                packer,
                &flight,
                &opts.cancel,
                &|n| {
                    progress.bytes_read.fetch_add(n, Relaxed);
                },
                None,
            )?;
            finish()?;
            // SAFETY of the values: getuid/getgid cannot fail.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let now = now_ns();
            let node = Node {
                name: file.as_bytes().to_vec(),
                kind: Some(NodeKind::File),
                mode: 0o600,
                uid,
                gid,
                user: opts.user.clone(),
                mtime_ns: now,
                ctime_ns: now,
                links: 1,
                size: chunked.size,
                content: chunked.content,
                ..Default::default()
            };
            let tree = store_tree(packer, vec![node])?;
            let summary =
                Summary { files_new: 1, bytes_total: chunked.size, bytes_read: chunked.size, ..Default::default() };
            Ok((tree, summary))
        })?;
        commit(session, repo, opts, src.kind, src.name, vec![], parent, tree, summary, stats, started, vec![])
    })
}

/// Runs `sh -c command` and backs up its standard output. A command that exits non-zero (or is
/// killed) aborts the backup; its standard error is passed through and kept for the message.
pub fn backup_command(
    repo: &Repository,
    command: &str,
    src: &StreamSource,
    opts: &BackupOptions,
) -> Result<BackupResult> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RepoError::io(format!("starting `{command}`"), e))?;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let tail = std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::stderr().write_all(&buf[..n]);
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > STDERR_KEEP {
                kept.drain(..kept.len() - STDERR_KEEP);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    let mut child_slot = Some(child);
    let mut tail_slot = Some(tail);
    let mut finish = || -> Result<()> {
        let status =
            child_slot.take().unwrap().wait().map_err(|e| RepoError::io(format!("waiting for `{command}`"), e))?;
        let stderr = tail_slot.take().unwrap().join().unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(RepoError::SourceCommandFailed { status: status.to_string(), stderr })
        }
    };
    let r = backup_stream(repo, &mut stdout, src, opts, &mut finish);
    if let Some(mut c) = child_slot {
        // The backup failed before the command ended: stop it rather than leave it writing
        // into a closed pipe.
        let _ = c.kill();
        let _ = c.wait();
    }
    r
}
