//! `hoard`: the command line. The only place that knows clap, the terminal, environment
//! variables, exit codes and `anyhow`; everything else lives in the libraries under `crates/`.

// Doc comments here are clap's help text ("SNAPSHOT[:PATH]"), not intra-doc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod alloc;
mod db;
mod docker;
mod exit;
mod output;
mod password;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hoard_core::format::keyfile::KeyMeta;
use hoard_core::format::snapshot::Snapshot;
use hoard_core::format::tree::{Node, NodeKind};
use hoard_core::format::ObjectKind;
use hoard_core::{ChunkerParams, KdfParams};
use hoard_repo::backup::{self, BackupOptions, BackupResult, Progress};
use hoard_repo::check::Subset;
use hoard_repo::forget;
use hoard_repo::inspect;
use hoard_repo::prune;
use hoard_repo::restore::{self, RestoreOptions};
use hoard_repo::{InitOptions, Repository, SnapshotEntry};
use hoard_storage::{LocalStorage, RequestCounts, S3Options, S3Storage, S3Url, Storage};
use jiff::tz::TimeZone;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "hoard",
    version,
    about = "Deduplicating, encrypted backups of file trees, Docker volumes and database dumps"
)]
struct Cli {
    /// Repository location: a directory, s3://BUCKET/PREFIX (AWS), s3:https://HOST/BUCKET/PREFIX
    /// (any S3-compatible endpoint) or spaces://REGION/BUCKET/PREFIX (DigitalOcean Spaces).
    /// Default: $XDG_DATA_HOME/hoard/repository.
    #[arg(short = 'r', long, env = "HOARD_REPOSITORY", global = true)]
    repo: Option<String>,
    /// Uploads to keep in flight at once (object storage; default 4, a local directory 2).
    #[arg(long, env = "HOARD_CONNECTIONS", global = true, value_parser = clap::value_parser!(u16).range(1..=64))]
    connections: Option<u16>,
    /// Read the password from this file (or set HOARD_PASSWORD / HOARD_PASSWORD_FILE).
    #[arg(long, global = true)]
    password_file: Option<String>,
    /// Run this command and use what it prints as the password.
    #[arg(long, global = true)]
    password_command: Option<String>,
    /// Where the local index cache lives. Default: $XDG_CACHE_HOME/hoard.
    #[arg(long, env = "HOARD_CACHE_DIR", global = true)]
    cache_dir: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Print less.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log more (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Never show progress bars.
    #[arg(long, global = true)]
    no_progress: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up paths, standard input, or a command's output; or dump a database.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(FilterArgs),
    /// Copy snapshots from another repository into this one (--to), only what it lacks.
    Copy(CopyArgs),
    /// Remove snapshots by a retention policy (--keep-*), or the ones named.
    Forget(ForgetArgs),
    /// Delete data no snapshot uses; safe while backups run.
    Prune(PruneArgs),
    /// List the files in a snapshot.
    Ls {
        /// SNAPSHOT[:PATH]
        snapshot: String,
        /// Show mode, owner, size and time.
        #[arg(short, long)]
        long: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Show what changed between two snapshots.
    Diff {
        a: String,
        b: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Restore a snapshot (or a path in it) to a directory; or load a dump into a database.
    Restore(RestoreArgs),
    /// Write a file (or a stream snapshot's data) to standard output; a directory as tar.
    Dump {
        /// SNAPSHOT (or SNAPSHOT:PATH)
        snapshot: String,
        /// The file in the snapshot (a stream snapshot's name). Default: the only file.
        path: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Sizes: logical, unique and stored bytes, dedup and compression ratios.
    Stats {
        /// Snapshots to count (default: all that match the filters).
        snapshots: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Verify the repository: structure, and with --read-data every byte.
    Check {
        /// Read and verify all data.
        #[arg(long)]
        read_data: bool,
        /// Read and verify a subset: N% or n/t.
        #[arg(long, value_name = "N%|n/t")]
        read_data_subset: Option<String>,
    },
    /// Manage the passwords that open the repository.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Rebuild parts of the repository.
    #[command(subcommand)]
    Repair(RepairCmd),
    /// Look at the Docker engine's volumes and mounts.
    #[command(subcommand)]
    Docker(docker::DockerCmd),
}

#[derive(Args)]
struct InitArgs {
    /// Average chunk size for file trees, e.g. 1MiB (a power of two from 1KiB to 4MiB).
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// Average chunk size for streams and database dumps.
    #[arg(long, value_parser = parse_size)]
    dump_chunk_size: Option<u64>,
    /// Target pack size, e.g. 16MiB.
    #[arg(long, value_parser = parse_size)]
    pack_size: Option<u64>,
    /// zstd level, 0 (none) to 22.
    #[arg(long)]
    compression: Option<i32>,
    /// argon2id memory in KiB.
    #[arg(long)]
    kdf_memory: Option<u32>,
    /// argon2id passes.
    #[arg(long)]
    kdf_iterations: Option<u32>,
    /// Read the new password from this file.
    #[arg(long)]
    new_password_file: Option<String>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BackupArgs {
    /// Back up something other than paths.
    #[command(subcommand)]
    source: Option<BackupSource>,
    /// Files and directories to back up.
    paths: Vec<PathBuf>,
    /// Back up standard input as one stream (needs --name).
    #[arg(long, conflicts_with = "from_command")]
    stdin: bool,
    /// Back up what this shell command prints (needs --name); if it fails, nothing is committed.
    #[arg(long, value_name = "CMD")]
    from_command: Option<String>,
    /// Name of the stream (its file name in the snapshot).
    #[arg(long)]
    name: Option<String>,
    /// Add a tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Record this host name instead of the machine's.
    #[arg(long)]
    host: Option<String>,
    /// Exclude paths matching a glob (repeatable); without '/', matches names anywhere.
    #[arg(short = 'e', long = "exclude")]
    excludes: Vec<String>,
    /// Read exclude globs from a file, one per line (repeatable).
    #[arg(long = "exclude-file")]
    exclude_files: Vec<PathBuf>,
    /// Skip directories that hold a valid CACHEDIR.TAG.
    #[arg(long)]
    exclude_caches: bool,
    /// Do not cross into other filesystems.
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Compare against this snapshot instead of the latest of the same paths.
    #[arg(long)]
    parent: Option<String>,
    /// Read every file, even those whose metadata is unchanged.
    #[arg(long)]
    force: bool,
    /// Attach a label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Threads reading files (more overlap waiting on the disk).
    #[arg(long, default_value_t = 4)]
    read_concurrency: usize,
    /// Record this as the snapshot's time instead of now: RFC 3339 (2024-03-31T02:30:00Z) or
    /// a local date and time (2024-03-31 02:30:00).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    time: Option<i64>,
}

#[derive(Args, Clone, Default)]
struct FilterArgs {
    /// Only snapshots of this host.
    #[arg(long = "filter-host")]
    host: Option<String>,
    /// Only snapshots with this tag.
    #[arg(long = "filter-tag")]
    tag: Option<String>,
    /// Only snapshots of this source kind (path, stdin, command, …).
    #[arg(long = "filter-source")]
    source: Option<String>,
    /// Only snapshots of this source name (a stream's name, the paths).
    #[arg(long = "filter-name")]
    name: Option<String>,
}

impl FilterArgs {
    fn matches(&self, s: &Snapshot) -> bool {
        self.host.as_ref().is_none_or(|h| &s.host == h)
            && self.tag.as_ref().is_none_or(|t| s.tags.contains(t))
            && self.source.as_ref().is_none_or(|k| &s.source_kind == k)
            && self.name.as_ref().is_none_or(|n| &s.source_name == n)
    }
}

/// What `hoard backup` takes besides paths: Docker volumes, database dumps.
#[derive(Subcommand)]
enum BackupSource {
    #[command(flatten)]
    Docker(docker::BackupSource),
    #[command(flatten)]
    Db(db::BackupDb),
}

/// What `hoard restore` restores into besides a directory: Docker volumes, databases.
#[derive(Subcommand)]
enum RestoreSource {
    #[command(flatten)]
    Docker(docker::RestoreSource),
    #[command(flatten)]
    Db(db::RestoreDb),
}

#[derive(Args)]
struct CopyArgs {
    /// The repository to copy from.
    #[arg(long, value_name = "REPO")]
    from: String,
    /// The repository to copy into. Default: the repository (-r / HOARD_REPOSITORY).
    #[arg(long, value_name = "REPO")]
    to: Option<String>,
    /// The source repository's password file (else HOARD_FROM_PASSWORD, else the target's).
    #[arg(long)]
    from_password_file: Option<String>,
    /// A command that prints the source repository's password.
    #[arg(long)]
    from_password_command: Option<String>,
    /// Snapshots to copy (ids, prefixes or `latest`); default: every one that matches the filters.
    snapshots: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct RestoreArgs {
    /// Restore into something other than a directory.
    #[command(subcommand)]
    source: Option<RestoreSource>,
    /// SNAPSHOT[:PATH]: an id, unique id prefix or `latest`, and optionally a path in it.
    #[arg(required = true)]
    snapshot: Option<String>,
    /// Directory to restore into.
    #[arg(short, long, required = true)]
    target: Option<PathBuf>,
    /// Restore only paths matching a glob (repeatable).
    #[arg(short, long = "include")]
    includes: Vec<String>,
    /// Leave out paths matching a glob (repeatable).
    #[arg(short, long = "exclude")]
    excludes: Vec<String>,
    /// Do not restore owners even when running as root.
    #[arg(long)]
    no_owners: bool,
    /// Write zero chunks of sparse files as data instead of holes.
    #[arg(long)]
    no_sparse: bool,
    /// Files restored at once (default 4; on object storage, twice --connections, since each
    /// waits on the network).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// List keys.
    List,
    /// Add a password.
    Add {
        #[arg(long)]
        new_password_file: Option<String>,
    },
    /// Remove a key by id (prefix).
    Remove { id: String },
    /// Change the password: add a new key, remove the current one.
    Passwd {
        #[arg(long)]
        new_password_file: Option<String>,
    },
}

#[derive(Subcommand)]
enum RepairCmd {
    /// Rebuild the index from the packs alone.
    Index,
    /// Write new snapshots that leave out what is lost: a directory whose tree cannot be read
    /// becomes empty, a file whose data is missing is left out.
    Snapshots {
        /// Snapshots to repair (ids, prefixes or `latest`); default: every one that matches the
        /// filters.
        snapshots: Vec<String>,
        /// Remove each original snapshot once its repaired copy is committed.
        #[arg(long)]
        forget: bool,
        /// Only say what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also read every data chunk, so that damaged ones count as lost (as slow as
        /// `check --read-data`); without it, a chunk counts as there when it is indexed in a
        /// pack that exists.
        #[arg(long)]
        read_data: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 1MiB"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        u => return Err(format!("unknown unit {u:?} in {s:?}")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("{s:?} is too large"))
}

/// A time for `backup --time`, as Unix nanoseconds.
fn parse_time(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a time like 2024-03-31T02:30:00Z or 2024-03-31 02:30:00");
    let t = match s.parse::<jiff::Timestamp>() {
        Ok(t) => t,
        Err(_) => s
            .parse::<jiff::civil::DateTime>()
            .and_then(|dt| dt.to_zoned_datetime(TimeZone::system()))
            .map_err(|_| bad())?
            .timestamp(),
    };
    i64::try_from(t.as_nanosecond()).map_err(|_| bad())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// Everything commands share.
struct Ctx {
    cli_repo: Option<String>,
    connections: Option<u16>,
    /// The repository's storage once opened: its request counts go into summaries.
    storage: std::sync::OnceLock<Arc<dyn Storage>>,
    pw: password::Source,
    cache_dir: PathBuf,
    json: bool,
    quiet: bool,
    progress: bool,
    cancel: Arc<AtomicBool>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}

fn default_repo() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"))
        .join("hoard/repository")
}

fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home().join(".cache")).join("hoard")
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        return String::from_utf8_lossy(&buf[..end]).into_owned();
    }
    "unknown".into()
}

fn username() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| {
        // SAFETY: getuid cannot fail.
        hoard_repo::meta::Names::default().user(unsafe { libc::getuid() })
    })
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl Ctx {
    fn location(&self) -> String {
        self.cli_repo.clone().unwrap_or_else(|| default_repo().display().to_string())
    }

    fn storage(&self) -> Result<Arc<dyn Storage>> {
        if let Some(s) = self.storage.get() {
            return Ok(s.clone());
        }
        let s = open_storage(&self.location(), self.connections)?;
        Ok(self.storage.get_or_init(|| s).clone())
    }

    /// What the repository's storage was asked to do so far in this run.
    fn requests(&self) -> RequestCounts {
        self.storage.get().map(|s| s.counts()).unwrap_or_default()
    }

    fn open(&self) -> Result<Repository> {
        let storage = self.storage()?;
        self.open_with(storage, &|label| password::get(&self.pw, label))
    }

    /// Opens the repository in `storage`, asking `password` for its password.
    fn open_with(&self, storage: Arc<dyn Storage>, password: &dyn Fn(&str) -> Result<String>) -> Result<Repository> {
        // Refuse unknown versions and missing repositories before asking for a password.
        let v = Repository::peek_version(&*storage)?;
        if v > hoard_core::FORMAT_VERSION || v == 0 {
            return Err(hoard_repo::RepoError::UnsupportedVersion {
                location: storage.location(),
                found: v,
                supported: hoard_core::FORMAT_VERSION,
            }
            .into());
        }
        let pw = password(&format!("password for {}: ", storage.location()))?;
        Ok(Repository::open(storage, pw.as_bytes(), &self.cache_dir)?)
    }

    fn print_json(&self, v: &Value) -> Result<()> {
        out(&format!("{}\n", serde_json::to_string_pretty(v)?))
    }
}

/// The storage a repository URL or path names.
fn open_storage(loc: &str, connections: Option<u16>) -> Result<Arc<dyn Storage>> {
    if let Some(url) = S3Url::parse(loc).map_err(|e| anyhow!(e))? {
        let mut opts = S3Options::from_env().map_err(|e| anyhow!(e))?;
        if let Some(c) = connections {
            opts.connections = c.into();
        }
        return Ok(Arc::new(S3Storage::open(url, opts)?));
    }
    if loc.contains("://") {
        bail!("{loc}: unknown kind of repository URL (use a directory, s3://, s3:https:// or spaces://)");
    }
    let p = Path::new(loc);
    if p.exists() && !p.is_dir() {
        bail!("{loc} is a file, not a repository directory");
    }
    Ok(Arc::new(LocalStorage::open(p)))
}

/// Writes to stdout; a closed pipe ends the program quietly, as `head` users expect.
fn out(s: &str) -> Result<()> {
    let mut o = io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

fn snapshot_json(e: &SnapshotEntry) -> Value {
    let s = &e.snapshot;
    let m = &s.summary;
    json!({
        "id": e.id.to_hex(),
        "short_id": e.id.short(),
        "time": output::rfc3339(s.time_ns),
        "host": s.host,
        "username": s.user,
        "source_kind": s.source_kind,
        "source_name": s.source_name,
        "paths": s.paths,
        "tags": s.tags,
        "labels": s.labels.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "parent": s.parent.map(|p| p.to_hex()),
        "tree": s.tree.to_hex(),
        "partial": s.partial,
        "program": s.program,
        "summary": {
            "files_new": m.files_new, "files_changed": m.files_changed, "files_unmodified": m.files_unmodified,
            "dirs": m.dirs, "other_entries": m.other_entries, "bytes_total": m.bytes_total, "bytes_read": m.bytes_read,
            "bytes_new": m.bytes_new, "bytes_stored": m.bytes_stored, "blobs_new": m.blobs_new,
            "packs_written": m.packs_written, "duration_ms": m.duration_ms, "errors": m.errors,
            "changed_during_read": m.changed_during_read,
        }
    })
}

fn requests_json(c: &RequestCounts) -> Value {
    json!({
        "total": c.total(), "put": c.put, "get": c.get, "head": c.head, "list": c.list, "delete": c.delete,
        "multipart_create": c.multipart_create, "multipart_part": c.multipart_part,
        "multipart_complete": c.multipart_complete, "multipart_abort": c.multipart_abort,
        "retries": c.retries, "bytes_up": c.bytes_up, "bytes_down": c.bytes_down,
    })
}

/// "57 (12 PUT, 30 GET, 9 LIST, …), 48.0 MiB up, 1.2 MiB down, 3 retried".
fn requests_line(c: &RequestCounts) -> String {
    let kinds = [
        (c.put, "PUT"),
        (c.get, "GET"),
        (c.head, "HEAD"),
        (c.list, "LIST"),
        (c.delete, "DELETE"),
        (c.multipart_create + c.multipart_complete + c.multipart_abort, "multipart"),
        (c.multipart_part, "parts"),
    ];
    let parts: Vec<String> = kinds.iter().filter(|(n, _)| *n > 0).map(|(n, k)| format!("{n} {k}")).collect();
    format!(
        "{} ({}), {} up, {} down, {} retried",
        c.total(),
        parts.join(", "),
        output::bytes(c.bytes_up),
        output::bytes(c.bytes_down),
        c.retries
    )
}

fn node_json(path: &str, n: &Node) -> Value {
    json!({
        "path": path,
        "type": match n.kind() { NodeKind::File => "file", NodeKind::Dir => "dir", NodeKind::Symlink => "symlink",
                 NodeKind::Fifo => "fifo", NodeKind::Socket => "socket", NodeKind::CharDevice => "chardev", NodeKind::BlockDevice => "blockdev" },
        "mode": n.mode, "uid": n.uid, "gid": n.gid, "user": n.user, "group": n.group,
        "size": n.size, "mtime": output::rfc3339(n.mtime_ns),
        "link_target": (n.kind() == NodeKind::Symlink).then(|| String::from_utf8_lossy(&n.link_target).into_owned()),
    })
}

/// A spinner on stderr, only on a terminal, fed from the backup's counters.
struct Bar {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    fn start(enabled: bool, progress: Arc<Progress>) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled {
            return Bar { stop, handle: None };
        }
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}").unwrap());
            while !s.load(Ordering::Relaxed) {
                let read = progress.bytes_read.load(Ordering::Relaxed);
                let secs = pb.elapsed().as_secs_f64().max(0.001);
                pb.set_message(format!(
                    "{} files, {} read ({}/s), {} seen",
                    progress.files.load(Ordering::Relaxed),
                    output::bytes(read),
                    output::bytes((read as f64 / secs) as u64),
                    output::bytes(progress.bytes_seen.load(Ordering::Relaxed)),
                ));
                pb.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
            pb.finish_and_clear();
        });
        Bar { stop, handle: Some(handle) }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn split_ref(s: &str) -> (&str, Option<&str>) {
    match s.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

fn find(repo: &Repository, reference: &str, filter: &FilterArgs) -> Result<SnapshotEntry> {
    Ok(repo.find_snapshot(reference, &|s| filter.matches(s))?)
}

fn cmd_init(ctx: &Ctx, a: InitArgs) -> Result<i32> {
    let loc = ctx.location();
    let path = PathBuf::from(&loc);
    let mut opts = InitOptions::default();
    if let Some(avg) = a.chunk_size {
        opts.files_chunker = ChunkerParams::with_avg(u32::try_from(avg).unwrap_or(u32::MAX))?;
    }
    if let Some(avg) = a.dump_chunk_size {
        opts.dumps_chunker = ChunkerParams::with_avg(u32::try_from(avg).unwrap_or(u32::MAX))?;
    }
    if let Some(p) = a.pack_size {
        opts.pack_size = u32::try_from(p).map_err(|_| anyhow!("pack size too large"))?;
    }
    if let Some(c) = a.compression {
        opts.compression = c;
    }
    let memory_kib = a.kdf_memory.unwrap_or(KdfParams::default().memory_kib);
    opts.kdf = KdfParams {
        memory_kib,
        iterations: a.kdf_iterations.unwrap_or(KdfParams::default().iterations),
        // argon2 needs 8 KiB per lane: fewer lanes for a tiny test setting than refuse it.
        parallelism: (memory_kib / 8).clamp(1, KdfParams::default().parallelism),
    };
    opts.meta = KeyMeta { created_ns: now_ns(), host: hostname(), user: username() };
    // Refuse an existing repository before asking for a password.
    let remote: Option<Arc<dyn Storage>> = if S3Url::parse(&loc).map_err(|e| anyhow!(e))?.is_some() {
        // An object store has no directories to make; the bucket must exist.
        let s = ctx.storage()?;
        if !s.list(ObjectKind::Config)?.is_empty() {
            bail!("a repository already exists at {loc}");
        }
        Some(s)
    } else {
        if path.join("config").exists() {
            bail!("a repository already exists at {loc}");
        }
        None
    };
    let pw = password::get_new(a.new_password_file.as_deref(), true, &ctx.pw)?;
    let storage = match remote {
        Some(s) => s,
        None => Arc::new(LocalStorage::create_layout(&path)?),
    };
    let repo = Repository::init(storage, pw.as_bytes(), opts, &ctx.cache_dir)?;
    if ctx.json {
        ctx.print_json(&json!({"id": repo.config().id.to_hex(), "repository": loc}))?;
    } else if !ctx.quiet {
        out(&format!(
            "created hoard repository {} at {loc}\n\nKeep the password safe: without it the data cannot be read back.\n",
            repo.config().id.short()
        ))?;
    }
    Ok(exit::OK)
}

fn print_backup(ctx: &Ctx, r: &BackupResult) -> Result<()> {
    let e = SnapshotEntry { id: r.id, snapshot: r.snapshot.clone() };
    let requests = ctx.requests();
    if ctx.json {
        let mut v = snapshot_json(&e);
        v["warnings"] = json!(r.warnings);
        v["requests"] = requests_json(&requests);
        return ctx.print_json(&v);
    }
    if ctx.quiet {
        return Ok(());
    }
    let m = &r.snapshot.summary;
    let secs = m.duration_ms as f64 / 1000.0;
    out(&format!(
        "Files:       {} new, {} changed, {} unmodified\n\
         Dirs:        {}\n\
         Read:        {} of {} in {:.2}s\n\
         Added:       {} new data, {} stored in {} packs\n\
         Requests:    {}\n\
         {}{}snapshot {} saved\n",
        m.files_new,
        m.files_changed,
        m.files_unmodified,
        m.dirs,
        output::bytes(m.bytes_read),
        output::bytes(m.bytes_total),
        secs,
        output::bytes(m.bytes_new),
        output::bytes(m.bytes_stored),
        m.packs_written,
        requests_line(&requests),
        if m.errors > 0 {
            format!("Errors:      {} entries could not be read (see above)\n", m.errors)
        } else {
            String::new()
        },
        if m.changed_during_read > 0 {
            format!("Changed:     {} files changed while being read\n", m.changed_during_read)
        } else {
            String::new()
        },
        r.id.short()
    ))
}

fn cmd_backup(ctx: &Ctx, a: BackupArgs) -> Result<i32> {
    match a.source {
        Some(BackupSource::Docker(docker::BackupSource::Docker(d))) => return docker::cmd_backup(ctx, d),
        Some(BackupSource::Db(d)) => return db::backup(ctx, d),
        None => {}
    }
    let mut excludes = a.excludes.clone();
    for f in &a.exclude_files {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading exclude file {}", f.display()))?;
        excludes.extend(s.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
    }
    let progress = Arc::new(Progress::default());
    let mut opts = BackupOptions {
        host: a.host.clone().unwrap_or_else(hostname),
        user: username(),
        tags: a.tags.clone(),
        labels: a.labels.clone(),
        parent: None,
        force: a.force,
        excludes,
        exclude_caches: a.exclude_caches,
        one_file_system: a.one_file_system,
        readers: a.read_concurrency.max(1),
        time_ns: a.time,
        cancel: ctx.cancel.clone(),
        progress: progress.clone(),
        lock_stale: lock_stale()?,
        ..BackupOptions::default()
    };
    let streamed = a.stdin || a.from_command.is_some();
    // What was asked for is checked before the password is.
    if streamed && !a.paths.is_empty() {
        bail!("give either paths or --stdin/--from-command, not both");
    }
    if !streamed && a.paths.is_empty() {
        bail!("nothing to back up: give paths, --stdin or --from-command");
    }
    let stream_name = match (streamed, a.name.as_deref()) {
        (true, None) => bail!("--stdin and --from-command need --name NAME"),
        (_, name) => name.unwrap_or_default(),
    };
    // The walk's listing needs no key: it starts now and runs while the password's key is
    // derived and the repository opened.
    let lookahead = if streamed { None } else { Some(backup::listing::Lookahead::start(&a.paths, &opts)?) };
    let repo = ctx.open()?;
    if let Some(p) = &a.parent {
        opts.parent = Some(repo.find_snapshot(p, &|_| true)?.id);
    }
    let bar = Bar::start(ctx.progress, progress);
    let result = match lookahead {
        Some(lookahead) => backup::fs::backup_listed(&repo, lookahead, &opts),
        None => {
            if let Some(cmd) = &a.from_command {
                let src = backup::stream::StreamSource { kind: "command", name: stream_name };
                backup::stream::backup_command(&repo, cmd, &src, &opts)
            } else {
                let src = backup::stream::StreamSource { kind: "stdin", name: stream_name };
                let mut stdin = io::stdin().lock();
                backup::stream::backup_stream(&repo, &mut stdin, &src, &opts, &mut || Ok(()))
            }
        }
    };
    drop(bar);
    let r = result?;
    for w in &r.warnings {
        if !ctx.json {
            eprintln!("warning: {w}");
        }
    }
    print_backup(ctx, &r)?;
    Ok(if r.snapshot.partial { exit::PARTIAL } else { exit::OK })
}

fn cmd_copy(ctx: &Ctx, a: CopyArgs) -> Result<i32> {
    let to_loc = a.to.clone().unwrap_or_else(|| ctx.location());
    let dst_storage = open_storage(&to_loc, ctx.connections)?;
    let _ = ctx.storage.set(dst_storage.clone());
    let src_storage = open_storage(&a.from, ctx.connections)?;
    let from_pw = password::Source { file: a.from_password_file.clone(), command: a.from_password_command.clone() };
    let src = ctx.open_with(src_storage.clone(), &|label| password::get_from(&from_pw, &ctx.pw, label))?;
    let dst = ctx.open_with(dst_storage.clone(), &|label| password::get(&ctx.pw, label))?;
    let which: Vec<SnapshotEntry> = if a.snapshots.is_empty() {
        src.snapshots()?.into_iter().filter(|e| a.filter.matches(&e.snapshot)).collect()
    } else {
        a.snapshots.iter().map(|r| find(&src, r, &a.filter)).collect::<Result<_>>()?
    };
    let opts = hoard_repo::copy::CopyOptions { cancel: ctx.cancel.clone(), lock_stale: lock_stale()? };
    let report = hoard_repo::copy::copy_snapshots(&src, &dst, &which, &opts)?;
    let (up, down) = (dst_storage.counts(), src_storage.counts());
    if ctx.json {
        return ctx
            .print_json(&json!({
                "copied": report.copied.iter().map(|c| json!({
                    "source": c.source.to_hex(),
                    "snapshot": snapshot_json(&SnapshotEntry { id: c.result.id, snapshot: c.result.snapshot.clone() }),
                })).collect::<Vec<_>>(),
                "skipped": report.skipped.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
                "requests_target": requests_json(&up),
                "requests_source": requests_json(&down),
            }))
            .map(|()| exit::OK);
    }
    if !ctx.quiet {
        for c in &report.copied {
            let m = &c.result.snapshot.summary;
            out(&format!(
                "snapshot {} copied as {}: {} new data, {} stored in {} packs\n",
                c.source.short(),
                c.result.id.short(),
                output::bytes(m.bytes_new),
                output::bytes(m.bytes_stored),
                m.packs_written
            ))?;
        }
        out(&format!(
            "{} copied, {} already in {}\nRequests to the target: {}\nRequests to the source: {}\n",
            report.copied.len(),
            report.skipped.len(),
            dst_storage.location(),
            requests_line(&up),
            requests_line(&down)
        ))?;
    }
    Ok(exit::OK)
}

fn cmd_snapshots(ctx: &Ctx, f: FilterArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let snaps: Vec<SnapshotEntry> = repo.snapshots()?.into_iter().filter(|e| f.matches(&e.snapshot)).collect();
    if ctx.json {
        return ctx.print_json(&Value::Array(snaps.iter().map(snapshot_json).collect())).map(|()| exit::OK);
    }
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|e| {
            let s = &e.snapshot;
            vec![
                e.id.short(),
                output::time(s.time_ns),
                s.host.clone(),
                s.source_kind.clone(),
                s.tags.join(","),
                output::bytes(s.summary.bytes_total),
                format!("{}{}", s.source_name, if s.partial { " (partial)" } else { "" }),
            ]
        })
        .collect();
    out(&output::table(&["ID", "Time", "Host", "Kind", "Tags", "Size", "Source"], &rows))?;
    out(&format!("{} snapshots\n", snaps.len()))?;
    Ok(exit::OK)
}

#[derive(Args)]
struct ForgetArgs {
    /// Forget exactly these snapshots (ids or unique prefixes) instead of applying a policy.
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Keep every snapshot within DURATION of the newest in its group: e.g. 1y2m3w4d5h (m: months).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<forget::Duration>,
    /// Keep the newest snapshot of each hour within DURATION of the newest in its group.
    #[arg(long, value_name = "DURATION")]
    keep_within_hourly: Option<forget::Duration>,
    /// Keep the newest snapshot of each day within DURATION of the newest in its group.
    #[arg(long, value_name = "DURATION")]
    keep_within_daily: Option<forget::Duration>,
    /// Keep the newest snapshot of each ISO week within DURATION of the newest in its group.
    #[arg(long, value_name = "DURATION")]
    keep_within_weekly: Option<forget::Duration>,
    /// Keep the newest snapshot of each month within DURATION of the newest in its group.
    #[arg(long, value_name = "DURATION")]
    keep_within_monthly: Option<forget::Duration>,
    /// Keep the newest snapshot of each year within DURATION of the newest in its group.
    #[arg(long, value_name = "DURATION")]
    keep_within_yearly: Option<forget::Duration>,
    /// Keep every snapshot that has this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
    /// Apply the policy to each group of snapshots that share these fields: a comma list of
    /// host, source, paths, tags ("" for one group).
    #[arg(long, value_name = "FIELDS", default_value = "host,source")]
    group_by: forget::GroupBy,
    /// Print what would be kept and removed, and why; remove nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Then prune: delete the data that no remaining snapshot uses.
    #[arg(long)]
    prune: bool,
    /// With --prune: as `prune --max-unused`.
    #[arg(long, value_name = "PERCENT", default_value = "10%", value_parser = parse_percent, requires = "prune")]
    max_unused: f64,
    /// With --prune: as `prune --keep-recent-packs`.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_grace, requires = "prune")]
    keep_recent_packs: Duration,
    #[command(flatten)]
    filter: FilterArgs,
}

impl ForgetArgs {
    fn policy(&self) -> forget::Policy {
        let d = |d: Option<forget::Duration>| d.unwrap_or_default();
        forget::Policy {
            last: self.keep_last.unwrap_or(0),
            hourly: self.keep_hourly.unwrap_or(0),
            daily: self.keep_daily.unwrap_or(0),
            weekly: self.keep_weekly.unwrap_or(0),
            monthly: self.keep_monthly.unwrap_or(0),
            yearly: self.keep_yearly.unwrap_or(0),
            within: d(self.keep_within),
            within_hourly: d(self.keep_within_hourly),
            within_daily: d(self.keep_within_daily),
            within_weekly: d(self.keep_within_weekly),
            within_monthly: d(self.keep_within_monthly),
            within_yearly: d(self.keep_within_yearly),
            tags: self.keep_tags.clone(),
        }
    }
}

/// What `forget --prune` runs after removing snapshots: the `prune` subcommand's logic, told
/// whether this is a dry run. This is the one place that joins the two commands. `cmd_forget`
/// asks for it before it removes anything, so that a build that cannot prune forgets nothing.
type Pruner<'a> = Box<dyn FnOnce(&Repository, bool) -> Result<Value> + 'a>;

fn forget_pruner(ctx: &Ctx, max_unused: f64, keep_recent_packs: Duration) -> Result<Pruner<'_>> {
    Ok(Box::new(move |repo: &Repository, dry_run: bool| {
        run_prune(ctx, repo, &PruneArgs { dry_run, max_unused, keep_recent_packs })
    }))
}

#[derive(clap::Args, Clone, Debug)]
struct PruneArgs {
    /// Rewrite a pack when more than this share of it is unused (0%: rewrite every pack with any
    /// unused data; 100%: only delete packs that are wholly unused).
    #[arg(long, value_name = "PERCENT", default_value = "10%", value_parser = parse_percent)]
    max_unused: f64,
    /// Show what would be deleted and rewritten, how much that frees and how many requests it
    /// takes; change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Leave alone packs written less than this long ago by the storage's clock, e.g. 24h, 90min,
    /// 2d, 0 (units d, h, min, s). A snapshot just committed may be listed late by object
    /// storage; its packs are then safe for this long. 0 turns this off: only when listings
    /// never lag.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_grace)]
    keep_recent_packs: Duration,
}

impl Default for PruneArgs {
    fn default() -> Self {
        PruneArgs { max_unused: 0.1, dry_run: false, keep_recent_packs: prune::DEFAULT_KEEP_RECENT }
    }
}

/// A grace period: `0`, or numbers each followed by d, h, min or s (`1d12h`, `90min`).
fn parse_grace(s: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 24h, 90min, 2d or 0 (units d, h, min, s)");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut secs: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = [("min", 60), ("d", 86_400), ("h", 3_600), ("s", 1)]
            .into_iter()
            .find(|(u, _)| rest.starts_with(u))
            .map(|(u, m)| (m, u.len()))
            .ok_or_else(bad)?;
        secs = n.checked_mul(unit).and_then(|v| v.checked_add(secs)).ok_or_else(bad)?;
        rest = &rest[len..];
    }
    Ok(Duration::from_secs(secs))
}

fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    let n: f64 = s.trim().trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a percentage like 10%"))?;
    if !(0.0..=100.0).contains(&n) {
        return Err(format!("{s:?} is not between 0% and 100%"));
    }
    Ok(n / 100.0)
}

fn cmd_prune(ctx: &Ctx, a: PruneArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let report = run_prune(ctx, &repo, &a)?;
    if ctx.json {
        ctx.print_json(&report)?;
    }
    Ok(exit::OK)
}

/// Runs a prune, prints its report as text (unless --json or -q), and returns it as JSON.
fn run_prune(ctx: &Ctx, repo: &Repository, a: &PruneArgs) -> Result<Value> {
    let opts = prune::PruneOptions {
        max_unused: a.max_unused,
        dry_run: a.dry_run,
        lock_stale: lock_stale()?,
        keep_recent: a.keep_recent_packs,
    };
    let r = prune::prune(repo, &opts)?;
    let p = &r.plan;
    let req = |q: &prune::Requests| json!({"list": q.lists, "read": q.reads, "write": q.writes, "delete": q.deletes});
    let report = json!({
            "dry_run": a.dry_run,
            "snapshots": p.snapshots,
            "packs": p.packs,
            "pack_bytes": p.pack_bytes,
            "unreferenced_bytes": p.unreferenced_bytes,
            "unused_packs": p.unused_packs, "unused_bytes": p.unused_bytes,
            "unindexed_packs": p.unindexed_packs, "unindexed_bytes": p.unindexed_bytes,
            "repack_packs": p.repack_packs, "repack_bytes": p.repack_bytes, "repack_used_bytes": p.repack_used_bytes,
            "condemned_packs": p.condemned_packs, "condemned_bytes": p.condemned_bytes,
            "young_packs": p.young_packs,
            "recent_packs": p.recent_packs, "recent_bytes": p.recent_bytes,
            "keep_recent_packs_secs": a.keep_recent_packs.as_secs(),
            "frees_bytes": p.frees_bytes,
            "planned_requests": req(&p.requests),
            "deleted_packs": r.deleted_packs,
            "deleted_bytes": r.deleted_bytes,
            "written_bytes": r.written_bytes,
            "freed_bytes": r.deleted_bytes.saturating_sub(r.written_bytes),
            "spared_packs": r.spared_packs,
            "markers_swept": r.markers_swept,
            "waiting": r.waiting,
            "stale_locks_removed": r.stale_locks_removed,
            "requests": req(&r.requests),
    });
    if !ctx.json && !ctx.quiet {
        let b = output::bytes;
        let mut t = format!(
            "{} snapshots use {} of {} in {} packs\n",
            p.snapshots,
            b(p.pack_bytes.saturating_sub(p.unreferenced_bytes)),
            b(p.pack_bytes),
            p.packs
        );
        t += &format!("  unused packs to delete:     {:>6}  {}\n", p.unused_packs, b(p.unused_bytes));
        t += &format!("  unindexed packs to delete:  {:>6}  {}\n", p.unindexed_packs, b(p.unindexed_bytes));
        t += &format!(
            "  packs to rewrite:           {:>6}  {} ({} of it still in use)\n",
            p.repack_packs,
            b(p.repack_bytes),
            b(p.repack_used_bytes)
        );
        t += &format!("  condemned by earlier prunes:{:>6}  {}\n", p.condemned_packs, b(p.condemned_bytes));
        if p.young_packs > 0 {
            t += &format!("  left alone: {} packs written since a running backup started\n", p.young_packs);
        }
        if p.recent_packs > 0 {
            t += &format!(
                "  left alone: {} packs ({}) younger than --keep-recent-packs {}\n",
                p.recent_packs,
                b(p.recent_bytes),
                output::duration(a.keep_recent_packs)
            );
        }
        t += &format!(
            "{} {}; requests: {} list, {} read, {} write, {} delete\n",
            if a.dry_run { "would free" } else { "frees up to" },
            b(p.frees_bytes),
            p.requests.lists,
            p.requests.reads,
            p.requests.writes,
            p.requests.deletes
        );
        if !a.dry_run {
            t += &format!(
                "deleted {} packs ({}), wrote {}: freed {}\n",
                r.deleted_packs,
                b(r.deleted_bytes),
                b(r.written_bytes),
                b(r.deleted_bytes.saturating_sub(r.written_bytes))
            );
            if r.spared_packs > 0 {
                t += &format!("kept {} condemned packs that new snapshots use\n", r.spared_packs);
            }
            for w in &r.waiting {
                t += &format!("left for the next prune: {w}\n");
            }
            if r.stale_locks_removed > 0 {
                t += &format!("removed {} stale lock objects\n", r.stale_locks_removed);
            }
        } else {
            t += "dry run: nothing changed\n";
        }
        out(&t)?;
    }
    Ok(report)
}

fn cmd_forget(ctx: &Ctx, a: ForgetArgs) -> Result<i32> {
    let policy = a.policy();
    if a.ids.is_empty() == policy.is_empty() {
        eprintln!(
            "hoard: {}",
            if a.ids.is_empty() {
                "no retention policy given, and forgetting every snapshot is refused: \
                 give --keep-* options, or the ids of the snapshots to forget"
            } else {
                "give either snapshot ids or --keep-* options, not both"
            }
        );
        return Ok(exit::USAGE);
    }
    let prune = if a.prune { Some(forget_pruner(ctx, a.max_unused, a.keep_recent_packs)?) } else { None };
    let repo = ctx.open()?;
    if prune.is_some() && !a.dry_run {
        // Refuse before removing anything, not after.
        prune::check_version(&repo)?;
    }
    let groups = if a.ids.is_empty() {
        let snaps: Vec<SnapshotEntry> =
            repo.snapshots()?.into_iter().filter(|e| a.filter.matches(&e.snapshot)).collect();
        forget::apply(&snaps, &policy, a.group_by, &TimeZone::system())
    } else {
        let named = a.ids.iter().map(|id| find(&repo, id, &a.filter)).collect::<Result<Vec<_>>>()?;
        forget::named(named, a.group_by)
    };
    let reasons = |k: &forget::Kept| k.reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let (kept, to_remove) = groups.iter().fold((0, 0), |(k, r), g| (k + g.keep.len(), r + g.remove.len()));
    if !ctx.json && !ctx.quiet {
        let mut text = String::new();
        for g in &groups {
            let mut rows: Vec<(&SnapshotEntry, &str, String)> = g
                .keep
                .iter()
                .map(|k| (&k.entry, "keep", reasons(k)))
                .chain(g.remove.iter().map(|e| (e, "remove", String::new())))
                .collect();
            rows.sort_by_key(|(e, ..)| std::cmp::Reverse(e.snapshot.time_ns));
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|(e, action, why)| vec![e.id.short(), output::time(e.snapshot.time_ns), action.into(), why])
                .collect();
            text.push_str(&format!("{}: keep {}, remove {}\n", g.key, g.keep.len(), g.remove.len()));
            text.push_str(&output::table(&["ID", "Time", "Action", "Reasons"], &rows));
            text.push('\n');
        }
        out(&text)?;
    }
    let removed = if a.dry_run { Vec::new() } else { forget::remove(&repo, &groups)? };
    if !ctx.json && !ctx.quiet {
        out(&if a.dry_run {
            format!("would remove {to_remove} snapshots and keep {kept} (dry run: nothing removed)\n")
        } else {
            format!("removed {} snapshots, kept {kept}\n", removed.len())
        })?;
    }
    // With --json, prune's report goes into forget's one JSON document.
    let pruned = match prune {
        Some(prune) if to_remove > 0 => Some(prune(&repo, a.dry_run)?),
        _ => None,
    };
    if ctx.json {
        let group_json = |g: &forget::GroupDecision| {
            let keep: Vec<Value> = g
                .keep
                .iter()
                .map(|k| {
                    let mut v = snapshot_json(&k.entry);
                    v["reasons"] = json!(k.reasons.iter().map(ToString::to_string).collect::<Vec<_>>());
                    v
                })
                .collect();
            json!({
                "key": {
                    "host": g.key.host,
                    "source": g.key.source.as_ref().map(|(kind, name)| json!({"kind": kind, "name": name})),
                    "paths": g.key.paths,
                    "tags": g.key.tags,
                },
                "keep": keep,
                "remove": g.remove.iter().map(snapshot_json).collect::<Vec<_>>(),
            })
        };
        ctx.print_json(&json!({
            "dry_run": a.dry_run,
            "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
            "removed": removed.iter().map(|id| id.to_hex()).collect::<Vec<_>>(),
            "prune": pruned,
        }))?;
    }
    Ok(exit::OK)
}

fn locate(repo: &Repository, snap: &SnapshotEntry, path: Option<&str>) -> Result<(Node, String)> {
    let comps = restore::split_path(path.unwrap_or(""))?;
    let node = restore::resolve(repo, &snap.snapshot.tree, &comps)?
        .ok_or_else(|| anyhow!("{} is not in snapshot {}", path.unwrap_or("/"), snap.id.short()))?;
    let shown = if comps.is_empty() {
        "/".to_string()
    } else {
        format!("/{}", comps.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("/"))
    };
    Ok((node, shown))
}

fn cmd_ls(ctx: &Ctx, reference: &str, long: bool, f: FilterArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (r, path) = split_ref(reference);
    let snap = find(&repo, r, &f)?;
    let (node, shown) = locate(&repo, &snap, path)?;
    let mut items = Vec::new();
    let mut text = String::new();
    inspect::walk(&repo, &node, &shown, true, &mut |p, n| {
        if ctx.json {
            items.push(node_json(p, n));
        } else if long {
            text.push_str(&format!(
                "{} {:>8} {:>8} {:>12} {} {}{}\n",
                output::mode(n.kind().letter(), n.mode),
                if n.user.is_empty() { n.uid.to_string() } else { n.user.clone() },
                if n.group.is_empty() { n.gid.to_string() } else { n.group.clone() },
                n.size,
                output::time(n.mtime_ns),
                p,
                if n.kind() == NodeKind::Symlink {
                    format!(" -> {}", String::from_utf8_lossy(&n.link_target))
                } else {
                    String::new()
                }
            ));
        } else {
            text.push_str(p);
            text.push('\n');
        }
        if text.len() > 1 << 16 {
            out(&std::mem::take(&mut text)).map_err(|e| hoard_repo::RepoError::Invalid(e.to_string()))?;
        }
        Ok(())
    })?;
    if ctx.json {
        ctx.print_json(&Value::Array(items))?;
    } else {
        out(&text)?;
    }
    Ok(exit::OK)
}

fn cmd_diff(ctx: &Ctx, a: &str, b: &str, f: FilterArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let sa = find(&repo, a, &f)?;
    let sb = find(&repo, b, &f)?;
    let (ra, rb) = (restore::root_node(sa.snapshot.tree), restore::root_node(sb.snapshot.tree));
    let mut items = Vec::new();
    let (mut added, mut removed, mut modified, mut meta) = (0u64, 0u64, 0u64, 0u64);
    let mut text = String::new();
    inspect::diff(&repo, Some(&ra), Some(&rb), "/", &mut |p, c, x, y| {
        match c {
            inspect::Change::Added => added += 1,
            inspect::Change::Removed => removed += 1,
            inspect::Change::Modified | inspect::Change::TypeChanged => modified += 1,
            inspect::Change::Metadata => meta += 1,
        }
        let dir = x.or(y).is_some_and(|n| n.kind() == NodeKind::Dir);
        if ctx.json {
            items.push(json!({"path": p, "change": c.symbol().to_string()}));
        } else {
            text.push_str(&format!("{}    {}{}\n", c.symbol(), p, if dir { "/" } else { "" }));
        }
    })?;
    if ctx.json {
        ctx.print_json(&json!({"a": sa.id.to_hex(), "b": sb.id.to_hex(), "changes": items,
            "added": added, "removed": removed, "modified": modified, "metadata": meta}))?;
    } else {
        out(&text)?;
        out(&format!("\n{added} added, {removed} removed, {modified} modified, {meta} metadata only\n"))?;
    }
    Ok(exit::OK)
}

fn cmd_restore(ctx: &Ctx, a: RestoreArgs) -> Result<i32> {
    match a.source {
        Some(RestoreSource::Docker(docker::RestoreSource::Docker(d))) => return docker::cmd_restore(ctx, d),
        Some(RestoreSource::Db(d)) => return db::restore(ctx, d),
        None => {}
    }
    let (Some(reference), Some(target)) = (a.snapshot, a.target) else {
        bail!("give a snapshot and --target DIR");
    };
    let repo = ctx.open()?;
    let (r, path) = split_ref(&reference);
    let snap = find(&repo, r, &a.filter)?;
    let (node, shown) = locate(&repo, &snap, path)?;
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let opts = RestoreOptions {
        target: target.clone(),
        includes: a.includes,
        excludes: a.excludes,
        owners: root && !a.no_owners,
        sparse: !a.no_sparse,
        threads: a
            .threads
            .unwrap_or_else(|| if repo.storage().is_remote() { 2 * repo.storage().connections() } else { 4 })
            .max(1),
        cancel: ctx.cancel.clone(),
    };
    if !ctx.quiet && !ctx.json {
        eprintln!("restoring snapshot {} {} to {}", snap.id.short(), shown, target.display());
    }
    let s = restore::restore(&repo, &node, &opts)?;
    for e in &s.errors {
        eprintln!("error: {e}");
    }
    if ctx.json {
        ctx.print_json(&json!({"snapshot": snap.id.to_hex(), "files": s.files, "dirs": s.dirs, "other": s.other,
            "bytes": s.bytes, "errors": s.errors}))?;
    } else if !ctx.quiet {
        out(&format!(
            "restored {} files, {} dirs, {} other entries, {}\n",
            s.files,
            s.dirs,
            s.other,
            output::bytes(s.bytes)
        ))?;
    }
    if !s.errors.is_empty() {
        eprintln!("{} entries were not restored", s.errors.len());
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}

fn cmd_dump(ctx: &Ctx, reference: &str, path: Option<String>, f: FilterArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (r, inner) = split_ref(reference);
    let snap = find(&repo, r, &f)?;
    let path = path.or_else(|| inner.map(String::from));
    let node = match path.as_deref() {
        Some(p) => locate(&repo, &snap, Some(p))?.0,
        None => {
            let root = repo.load_tree(&snap.snapshot.tree)?;
            match root.nodes.as_slice() {
                [only] if only.kind() == NodeKind::File => only.clone(),
                _ => restore::root_node(snap.snapshot.tree),
            }
        }
    };
    let stdout = io::stdout();
    let mut lock = stdout.lock();
    let r = if node.kind() == NodeKind::File {
        restore::dump_file(&repo, &node, &mut lock).map(|_| ())
    } else {
        restore::dump_tar(&repo, &node, &mut lock)
    };
    match r {
        Err(hoard_repo::RepoError::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => Ok(exit::OK),
        r => {
            r?;
            lock.flush()?;
            Ok(exit::OK)
        }
    }
}

fn cmd_stats(ctx: &Ctx, ids: Vec<String>, f: FilterArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let snaps: Vec<SnapshotEntry> = if ids.is_empty() {
        repo.snapshots()?.into_iter().filter(|e| f.matches(&e.snapshot)).collect()
    } else {
        ids.iter().map(|i| find(&repo, i, &f)).collect::<Result<_>>()?
    };
    let st = inspect::stats(&repo, &snaps)?;
    let (blobs, raw, stored) = repo.cache().totals()?;
    let repo_size: u64 = repo.cache().packs()?.iter().map(|(_, l)| l).sum();
    let dedup = if st.unique_bytes > 0 { st.logical_bytes as f64 / st.unique_bytes as f64 } else { 0.0 };
    let compression = if st.stored_bytes > 0 { st.unique_bytes as f64 / st.stored_bytes as f64 } else { 0.0 };
    if ctx.json {
        return ctx
            .print_json(&json!({
                "snapshots": st.snapshots, "files": st.files, "logical_bytes": st.logical_bytes,
                "unique_bytes": st.unique_bytes, "stored_bytes": st.stored_bytes, "blobs": st.blobs,
                "dedup_ratio": dedup, "compression_ratio": compression,
                "repository": {"blobs": blobs, "raw_bytes": raw, "stored_bytes": stored, "pack_bytes": repo_size},
            }))
            .map(|()| exit::OK);
    }
    out(&format!(
        "Snapshots:          {}\nFiles:              {}\nLogical size:       {}\nUnique data:        {} ({} blobs)\n\
         Stored:             {}\nDedup ratio:        {:.2}x\nCompression ratio:  {:.2}x\nRepository packs:   {}\n",
        st.snapshots,
        st.files,
        output::bytes(st.logical_bytes),
        output::bytes(st.unique_bytes),
        st.blobs,
        output::bytes(st.stored_bytes),
        dedup,
        compression,
        output::bytes(repo_size),
    ))?;
    Ok(exit::OK)
}

fn cmd_check(ctx: &Ctx, read_data: bool, subset: Option<String>) -> Result<i32> {
    let repo = ctx.open()?;
    let subset = match (read_data, subset) {
        (_, Some(s)) => Some(Subset::parse(&s).map_err(|e| anyhow!("--read-data-subset {e}"))?),
        (true, None) => Some(Subset::All),
        (false, None) => None,
    };
    let r = hoard_repo::check::check(&repo, subset)?;
    if ctx.json {
        ctx.print_json(&json!({
            "ok": r.ok(), "errors": r.errors, "warnings": r.warnings, "snapshots": r.snapshots, "trees": r.trees,
            "packs": r.packs, "packs_read": r.packs_read, "bytes_read": r.bytes_read,
            "damaged_packs": r.damaged_packs, "affected_snapshots": r.affected_snapshots,
            "unindexed_packs": r.unindexed_packs, "unindexed_bytes": r.unindexed_bytes,
            "unused_packs": r.unused_packs, "condemned_packs": r.condemned_packs,
            "unreferenced_bytes": r.unreferenced_bytes, "reclaimable_bytes": r.reclaimable_bytes,
        }))?;
    } else {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        for e in &r.errors {
            eprintln!("error: {e}");
        }
        if !r.damaged_packs.is_empty() {
            eprintln!("damaged packs:");
            for (p, why) in &r.damaged_packs {
                eprintln!("  {p}: {why}");
            }
        }
        if !r.affected_snapshots.is_empty() {
            eprintln!("snapshots affected: {}", r.affected_snapshots.join(" "));
        }
        if !ctx.quiet {
            out(&format!(
                "checked {} snapshots, {} trees, {} packs{}: {}\n",
                r.snapshots,
                r.trees,
                r.packs,
                if subset.is_some() {
                    format!(" ({} read, {})", r.packs_read, output::bytes(r.bytes_read))
                } else {
                    String::new()
                },
                if r.ok() { "no errors" } else { "ERRORS FOUND" }
            ))?;
        }
    }
    Ok(if r.ok() { exit::OK } else { exit::CHECK_FAILED })
}

fn cmd_key(ctx: &Ctx, k: KeyCmd) -> Result<i32> {
    let repo = ctx.open()?;
    let meta = || KeyMeta { created_ns: now_ns(), host: hostname(), user: username() };
    match k {
        KeyCmd::List => {
            let keys = repo.list_keys()?;
            if ctx.json {
                ctx.print_json(&Value::Array(
                    keys.iter()
                        .map(|k| {
                            json!({"id": k.name, "current": k.current, "user": k.meta.user, "host": k.meta.host,
                                         "created": output::rfc3339(k.meta.created_ns), "error": k.problem})
                        })
                        .collect(),
                ))?;
            } else {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| {
                        vec![
                            format!("{}{}", if k.current { "*" } else { " " }, &k.name[..8]),
                            k.meta.user.clone(),
                            k.meta.host.clone(),
                            match &k.problem {
                                None => output::time(k.meta.created_ns),
                                Some(p) => format!("unreadable: {p}"),
                            },
                        ]
                    })
                    .collect();
                out(&output::table(&[" ID", "User", "Host", "Created"], &rows))?;
            }
        }
        KeyCmd::Add { new_password_file } => {
            let pw = password::get_new(new_password_file.as_deref(), false, &ctx.pw)?;
            let name = repo.add_key(pw.as_bytes(), KdfParams::default(), meta())?;
            out(&format!("added key {}\n", &name[..8]))?;
        }
        KeyCmd::Remove { id } => {
            let name = repo.remove_key(&id)?;
            out(&format!("removed key {}\n", &name[..8]))?;
        }
        KeyCmd::Passwd { new_password_file } => {
            let pw = password::get_new(new_password_file.as_deref(), false, &ctx.pw)?;
            let (new, old) = repo.change_password(pw.as_bytes(), KdfParams::default(), meta())?;
            out(&format!("password changed: new key {}, removed key {}\n", &new[..8], &old[..8]))?;
        }
    }
    Ok(exit::OK)
}

fn cmd_repair(ctx: &Ctx, r: RepairCmd) -> Result<i32> {
    let repo = ctx.open()?;
    match r {
        RepairCmd::Index => {
            let rep = inspect::repair_index(&repo, lock_stale()?)?;
            for u in &rep.unreadable {
                eprintln!("warning: {u} (the pack is left out of the index)");
            }
            if ctx.json {
                ctx.print_json(&json!({"packs": rep.packs, "blobs": rep.blobs, "unreadable": rep.unreadable, "salvaged": rep.salvaged, "old_segments": rep.old_segments}))?;
            } else {
                out(&format!(
                    "index rebuilt from {} packs ({} blobs), replacing {} index segments\n",
                    rep.packs, rep.blobs, rep.old_segments
                ))?;
            }
            Ok(if rep.unreadable.is_empty() { exit::OK } else { exit::PARTIAL })
        }
        RepairCmd::Snapshots { snapshots, forget, dry_run, read_data, filter } => {
            let which: Vec<SnapshotEntry> = if snapshots.is_empty() {
                repo.snapshots()?.into_iter().filter(|e| filter.matches(&e.snapshot)).collect()
            } else {
                snapshots.iter().map(|r| find(&repo, r, &filter)).collect::<Result<_>>()?
            };
            let opts = hoard_repo::repair::RepairOptions {
                dry_run,
                forget_original: forget,
                read_data,
                cancel: ctx.cancel.clone(),
                lock_stale: lock_stale()?,
            };
            let rep = hoard_repo::repair::repair_snapshots(&repo, &which, &opts)?;
            if ctx.json {
                ctx.print_json(&json!({
                    "dry_run": dry_run,
                    "intact": rep.intact.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
                    "already_repaired": rep.already.iter().map(|a| json!({
                        "original": a.original.to_hex(),
                        "repaired": a.repaired.to_hex(),
                        "forgotten": a.forgotten,
                    })).collect::<Vec<_>>(),
                    "repaired": rep.repaired.iter().map(|r| json!({
                        "original": r.original.to_hex(),
                        "new": r.new.map(|i| i.to_hex()),
                        "forgotten": r.forgotten,
                        "dropped": r.dropped.iter().map(|d| json!({"path": d.path, "type": d.what, "reason": d.why})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                let mut text = String::new();
                for r in &rep.repaired {
                    text.push_str(&match r.new {
                        Some(new) => format!(
                            "snapshot {} repaired as {}{}:\n",
                            r.original.short(),
                            new.short(),
                            if r.forgotten { " (original removed)" } else { "" }
                        ),
                        None => format!("snapshot {} would be repaired:\n", r.original.short()),
                    });
                    for d in &r.dropped {
                        let what = if d.what == "dir" { "emptied directory" } else { "dropped file" };
                        text.push_str(&format!("  {what} {}: {}\n", d.path, d.why));
                    }
                }
                for a in &rep.already {
                    text.push_str(&if a.forgotten {
                        format!(
                            "snapshot {} was repaired before, as {}: original removed\n",
                            a.original.short(),
                            a.repaired.short()
                        )
                    } else {
                        format!(
                            "snapshot {} was repaired before, as {}: left alone (remove it with `hoard forget {}`)\n",
                            a.original.short(),
                            a.repaired.short(),
                            a.original.short()
                        )
                    });
                }
                text.push_str(&format!(
                    "{} snapshots intact, {} {}\n",
                    rep.intact.len(),
                    rep.repaired.len(),
                    if dry_run { "would be repaired (dry run: nothing written)" } else { "repaired" }
                ));
                if !ctx.quiet {
                    out(&text)?;
                }
            }
            Ok(exit::OK)
        }
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if SIGNALLED.swap(true, Ordering::SeqCst) {
        // Second signal: the user insists.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(exit::INTERRUPTED) };
    }
}

fn install_signals(cancel: Arc<AtomicBool>) {
    // SAFETY: the handler only touches an atomic and calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    std::thread::spawn(move || loop {
        if SIGNALLED.load(Ordering::Relaxed) {
            cancel.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
}

fn run(cli: Cli) -> Result<i32> {
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(io::stderr)
        .without_time()
        .init();
    let cancel = Arc::new(AtomicBool::new(false));
    install_signals(cancel.clone());
    let ctx = Ctx {
        cli_repo: cli.repo,
        connections: cli.connections,
        storage: std::sync::OnceLock::new(),
        pw: password::Source { file: cli.password_file, command: cli.password_command },
        cache_dir: cli.cache_dir.unwrap_or_else(default_cache),
        json: cli.json,
        quiet: cli.quiet,
        progress: !cli.no_progress && !cli.quiet && !cli.json && io::IsTerminal::is_terminal(&io::stderr()),
        cancel,
    };
    match cli.command {
        Cmd::Init(a) => cmd_init(&ctx, a),
        Cmd::Backup(a) => cmd_backup(&ctx, a),
        Cmd::Snapshots(f) => cmd_snapshots(&ctx, f),
        Cmd::Copy(a) => cmd_copy(&ctx, a),
        Cmd::Forget(a) => cmd_forget(&ctx, a),
        Cmd::Prune(a) => cmd_prune(&ctx, a),
        Cmd::Ls { snapshot, long, filter } => cmd_ls(&ctx, &snapshot, long, filter),
        Cmd::Diff { a, b, filter } => cmd_diff(&ctx, &a, &b, filter),
        Cmd::Restore(a) => cmd_restore(&ctx, a),
        Cmd::Docker(docker::DockerCmd::Ls) => docker::cmd_ls(&ctx),
        Cmd::Dump { snapshot, path, filter } => cmd_dump(&ctx, &snapshot, path, filter),
        Cmd::Stats { snapshots, filter } => cmd_stats(&ctx, snapshots, filter),
        Cmd::Check { read_data, read_data_subset } => cmd_check(&ctx, read_data, read_data_subset),
        Cmd::Key(k) => cmd_key(&ctx, k),
        Cmd::Repair(r) => cmd_repair(&ctx, r),
    }
}

#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

fn main() {
    alloc::tune_malloc();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(c) => c,
        Err(e) => {
            let code = exit::code(&e);
            eprintln!("hoard: {}", exit::message(&e));
            code
        }
    };
    std::process::exit(code);
}

/// `HOARD_LOCK_STALE_SECS`: after how many seconds without a refresh a lock of another host
/// counts as stale (default 1800). Tests shorten it; every host of a repository should agree.
fn lock_stale() -> Result<Option<Duration>> {
    match std::env::var("HOARD_LOCK_STALE_SECS") {
        Ok(v) => {
            let secs: f64 =
                v.trim().parse().map_err(|_| anyhow!("HOARD_LOCK_STALE_SECS={v:?} is not a number of seconds"))?;
            if !(secs > 0.0 && secs.is_finite()) {
                bail!("HOARD_LOCK_STALE_SECS must be a positive number of seconds");
            }
            Ok(Some(Duration::from_secs_f64(secs)))
        }
        Err(_) => Ok(None),
    }
}
