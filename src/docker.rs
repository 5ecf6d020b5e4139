//! `hoard docker ls`, `hoard backup docker …` and `hoard restore docker …`: Docker volumes (and a
//! compose project's bind mounts) as snapshots, through the Docker Engine API (crate hoard-docker).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use globset::Glob;
use hoard_docker::{ContainerInfo, DockerError, Engine, StopGuard, VolumeInfo};
use hoard_repo::backup::volume::{self as vol, ROOT_LABEL};
use hoard_repo::backup::{BackupOptions, BackupResult, Progress};
use hoard_repo::restore::{self, RestoreOptions};
use hoard_repo::{Repository, SnapshotEntry};
use serde_json::{json, Value};

use crate::{exit, out, output, Ctx};

/// The source kind of a compose project's bind mounts (a host directory, read like a volume).
pub const BIND_KIND: &str = "docker-bind";

/// Where the helper container mounts the volume it reads or fills.
const MOUNT: &str = "/v";

#[derive(Subcommand)]
pub enum DockerCmd {
    /// List volumes (driver, compose project, size, who mounts them) and containers' bind mounts.
    Ls,
}

#[derive(Subcommand)]
pub enum BackupSource {
    /// Back up Docker volumes, each as its own snapshot (kind docker-volume).
    Docker(DockerBackupArgs),
}

#[derive(Args)]
pub struct DockerBackupArgs {
    /// Volumes to back up, by name.
    pub volumes: Vec<String>,
    /// Every volume.
    #[arg(long)]
    pub all: bool,
    /// Volumes whose name matches a glob, e.g. 'code-buddy_*' (repeatable).
    #[arg(long = "match", value_name = "GLOB")]
    pub matches: Vec<String>,
    /// Volumes carrying this label KEY=VALUE (repeatable; all must match).
    #[arg(long = "label", value_parser = crate::parse_label)]
    pub labels: Vec<(String, String)>,
    /// A compose project: all its named volumes and bind mounts, tagged project=NAME. Its
    /// running database containers (label hoard.dump=postgres|mysql|redis, or a postgres,
    /// mysql, mariadb or redis image) are dumped instead of having their volumes copied raw.
    #[arg(long)]
    pub project: Option<String>,
    /// With --project: copy database containers' volumes raw too, and dump nothing.
    #[arg(long, requires = "project")]
    pub raw_db_volumes: bool,
    /// Refuse a volume that a running container without `hoard.stop=true` uses (default: warn).
    #[arg(long)]
    pub require_quiet: bool,
    /// Read through a helper container and the archive API even when the mountpoint is readable.
    #[arg(long, env = "HOARD_DOCKER_VIA_CONTAINER")]
    pub via_container: bool,
    /// Add a tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Record this host name instead of the machine's.
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Subcommand)]
pub enum RestoreSource {
    /// Restore Docker volumes: one snapshot into --volume, or a whole --project.
    Docker(DockerRestoreArgs),
}

#[derive(Args)]
pub struct DockerRestoreArgs {
    /// The snapshot (id, unique prefix, or `latest` of --volume's snapshots).
    pub snapshot: Option<String>,
    /// The volume to fill; created with the snapshot's labels if absent.
    #[arg(long)]
    pub volume: Option<String>,
    /// Restore every volume (and bind mount) of this compose project.
    #[arg(long, conflicts_with_all = ["snapshot", "volume"])]
    pub project: Option<String>,
    /// With --project: the newest snapshots taken at or before this time.
    #[arg(long, value_name = "TIME", value_parser = crate::parse_time, requires = "project")]
    pub snapshot_time: Option<i64>,
    /// Replace what a non-empty volume holds.
    #[arg(long)]
    pub force: bool,
    /// Fill the volume through a helper container even when the mountpoint is writable here.
    #[arg(long, env = "HOARD_DOCKER_VIA_CONTAINER")]
    pub via_container: bool,
}

/// A volume in use and `--require-quiet`, or a non-empty volume without `--force`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

fn connect() -> Result<Engine> {
    Ok(Engine::connect()?)
}

pub fn cmd_ls(ctx: &Ctx) -> Result<i32> {
    let engine = connect()?;
    let vols = engine.volumes()?;
    let containers = engine.containers()?;
    if ctx.json {
        let v: Vec<Value> = vols
            .iter()
            .map(|v| {
                json!({"name": v.name, "driver": v.driver, "mountpoint": v.mountpoint, "project": v.project,
                    "size": v.size, "labels": v.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                    "mounts": v.mounts.iter().map(|m| json!({"container": m.container.name, "running": m.container.running,
                        "destination": m.destination, "rw": m.rw, "stop": m.container.stop_label()})).collect::<Vec<_>>()})
            })
            .collect();
        let b: Vec<Value> = containers
            .iter()
            .flat_map(|c| {
                c.binds.iter().map(move |b| {
                    json!({"container": c.name, "project": c.project, "source": b.source, "destination": b.destination, "rw": b.rw})
                })
            })
            .collect();
        ctx.print_json(&json!({"volumes": v, "binds": b}))?;
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            let used: Vec<String> = v
                .mounts
                .iter()
                .map(|m| {
                    format!(
                        "{}:{}{}{}",
                        m.container.name,
                        if m.rw { "rw" } else { "ro" },
                        if m.container.running { "" } else { " (stopped)" },
                        if m.container.stop_label() { " [stop]" } else { "" }
                    )
                })
                .collect();
            let labels: Vec<String> = v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                v.name.clone(),
                v.driver.clone(),
                v.project.clone().unwrap_or_default(),
                v.size.map(|s| output::bytes(s as u64)).unwrap_or_default(),
                used.join(", "),
                labels.join(","),
            ]
        })
        .collect();
    out(&output::table(&["Volume", "Driver", "Project", "Size", "Used by", "Labels"], &rows))?;
    out(&format!("{} volumes\n", vols.len()))?;
    let binds: Vec<Vec<String>> = containers
        .iter()
        .flat_map(|c| {
            c.binds.iter().map(move |b| {
                vec![
                    c.name.clone(),
                    c.project.clone().unwrap_or_default(),
                    b.source.clone(),
                    b.destination.clone(),
                    if b.rw { "rw" } else { "ro" }.into(),
                ]
            })
        })
        .collect();
    if !binds.is_empty() {
        out("\n")?;
        out(&output::table(&["Container", "Project", "Bind source", "Destination", "Mode"], &binds))?;
    }
    Ok(exit::OK)
}

/// One thing to back up.
enum Item {
    Volume(String),
    /// A bind mount's host directory (compose projects).
    Bind(String),
    /// A compose project's database container, dumped (`crate::db`).
    Dump(String, crate::db::DbKind),
}

impl Item {
    fn name(&self) -> &str {
        match self {
            Item::Volume(n) | Item::Bind(n) | Item::Dump(n, _) => n,
        }
    }
}

fn select(engine: &Engine, a: &DockerBackupArgs) -> Result<Vec<Item>> {
    if a.volumes.is_empty() && !a.all && a.matches.is_empty() && a.labels.is_empty() && a.project.is_none() {
        bail!("nothing to back up: name volumes, or use --all, --match GLOB, --label KEY=VALUE or --project NAME");
    }
    let all = engine.volumes()?;
    let mut names = std::collections::BTreeSet::new();
    for v in &a.volumes {
        if !all.iter().any(|x| &x.name == v) {
            return Err(DockerError::NotFound(format!("volume {v}")).into());
        }
        names.insert(v.clone());
    }
    let globs = a
        .matches
        .iter()
        .map(|g| Glob::new(g).map(|g| g.compile_matcher()).with_context(|| format!("--match {g:?}")))
        .collect::<Result<Vec<_>>>()?;
    let has = |v: &VolumeInfo, k: &str, val: &str| v.labels.iter().any(|(a, b)| a == k && b == val);
    let mut binds = Vec::new();
    for v in &all {
        let selected = a.all
            || globs.iter().any(|g| g.is_match(&v.name))
            || (!a.labels.is_empty() && a.labels.iter().all(|(k, val)| has(v, k, val)))
            || a.project.as_ref().is_some_and(|p| {
                v.project.as_deref() == Some(p) || v.mounts.iter().any(|m| m.container.project.as_deref() == Some(p))
            });
        // --label narrows the other selectors when given with them.
        let narrowed = a.labels.is_empty() || a.labels.iter().all(|(k, val)| has(v, k, val));
        if selected && narrowed {
            names.insert(v.name.clone());
        }
    }
    let mut dumps = Vec::new();
    if let Some(p) = &a.project {
        for c in engine.containers()?.iter().filter(|c| c.project.as_deref() == Some(p)) {
            let db = if a.raw_db_volumes { None } else { crate::db::recognise(c) };
            if let Some(kind) = db {
                // Its data is dumped; a raw copy of a live database's files would be torn.
                dumps.push(Item::Dump(c.name.clone(), kind));
                for (v, _, _) in &c.volumes {
                    names.remove(v);
                }
                continue;
            }
            for b in &c.binds {
                if binds.contains(&b.source) {
                    continue;
                }
                match skip_bind(&b.source) {
                    Some(why) => eprintln!("warning: {why}"),
                    None => binds.push(b.source.clone()),
                }
            }
        }
        if !dumps.is_empty() {
            // A volume that another container also mounts is still copied.
            for c in engine.containers()?.iter().filter(|c| c.project.as_deref() == Some(p)) {
                if crate::db::recognise(c).is_none() {
                    names.extend(c.volumes.iter().map(|(v, _, _)| v.clone()));
                }
            }
        }
        if names.is_empty() && binds.is_empty() && dumps.is_empty() {
            return Err(DockerError::NotFound(format!("compose project {p} (no volumes or bind mounts)")).into());
        }
    }
    if names.is_empty() && binds.is_empty() && dumps.is_empty() {
        bail!("no volume matches the selection");
    }
    Ok(dumps.into_iter().chain(names.into_iter().map(Item::Volume)).chain(binds.into_iter().map(Item::Bind)).collect())
}

/// Containers the stop guard must start again if the process is interrupted: shared with a
/// watcher thread that starts them at the first SIGINT/SIGTERM, before a second one can end the
/// process.
fn watch_interrupt(engine: &Engine, pending: Arc<Mutex<Vec<String>>>, cancel: Arc<std::sync::atomic::AtomicBool>) {
    let engine = engine.clone();
    std::thread::spawn(move || loop {
        if cancel.load(Ordering::Relaxed) {
            for e in hoard_docker::restart(&engine, &pending) {
                eprintln!("error: {e}");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
}

pub fn cmd_backup(ctx: &Ctx, a: DockerBackupArgs) -> Result<i32> {
    let engine = connect()?;
    let items = select(&engine, &a)?;
    let repo = ctx.open()?;
    let pending = Arc::new(Mutex::new(Vec::new()));
    watch_interrupt(&engine, pending.clone(), ctx.cancel.clone());
    let started = Instant::now();
    let mut tags = a.tags.clone();
    if let Some(p) = &a.project {
        tags.push(format!("project={p}"));
    }
    let mut done: Vec<(String, BackupResult)> = Vec::new();
    let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
    for item in &items {
        if ctx.cancel.load(Ordering::Relaxed) {
            failed.push((item.name().into(), hoard_repo::RepoError::Interrupted.into()));
            break;
        }
        let r = match item {
            Item::Volume(name) => backup_volume(ctx, &engine, &repo, name, &a, &tags, &pending).map(|r| vec![r]),
            Item::Bind(path) => backup_bind(ctx, &engine, &repo, path, &a, &tags).map(|r| vec![r]),
            // A database container may give several snapshots (one per MySQL database).
            Item::Dump(container, kind) => {
                crate::db::backup_container(ctx, &repo, container, *kind, &tags, a.host.as_deref())
            }
        };
        match r {
            Ok(rs) => rs.into_iter().for_each(|r| {
                if !ctx.quiet && !ctx.json {
                    let s = &r.snapshot.summary;
                    eprintln!(
                        "{} {}: snapshot {} ({} files, read {} of {} in {:.2}s, {} new)",
                        match item {
                            Item::Volume(_) => "volume",
                            Item::Bind(_) => "bind",
                            Item::Dump(_, kind) => kind.name(),
                        },
                        item.name(),
                        r.id.short(),
                        s.files_new + s.files_changed + s.files_unmodified,
                        output::bytes(s.bytes_read),
                        output::bytes(s.bytes_total),
                        s.duration_ms as f64 / 1000.0,
                        output::bytes(s.bytes_new),
                    );
                }
                for w in &r.warnings {
                    if !ctx.json {
                        eprintln!("warning: {}: {w}", item.name());
                    }
                }
                done.push((item.name().into(), r));
            }),
            Err(e) => {
                if !ctx.json {
                    eprintln!("error: {}: {e:#}", item.name());
                }
                let interrupted = exit::code(&e) == exit::INTERRUPTED;
                failed.push((item.name().into(), e));
                if interrupted {
                    break;
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let sum = |f: fn(&hoard_core::format::snapshot::Summary) -> u64| {
        done.iter().map(|(_, r)| f(&r.snapshot.summary)).sum::<u64>()
    };
    let (read, total, new) = (sum(|s| s.bytes_read), sum(|s| s.bytes_total), sum(|s| s.bytes_new));
    if ctx.json {
        ctx.print_json(&json!({
            "snapshots": done.iter().map(|(n, r)| json!({"source": n, "id": r.id.to_hex(), "kind": r.snapshot.source_kind,
                "bytes_read": r.snapshot.summary.bytes_read, "bytes_total": r.snapshot.summary.bytes_total,
                "bytes_new": r.snapshot.summary.bytes_new, "tree": r.snapshot.tree.to_hex(),
                "warnings": r.warnings})).collect::<Vec<_>>(),
            "failed": failed.iter().map(|(n, e)| json!({"source": n, "error": format!("{e:#}")})).collect::<Vec<_>>(),
            "seconds": secs, "bytes_read": read, "bytes_total": total, "bytes_new": new,
        }))?;
    } else if !ctx.quiet {
        out(&format!(
            "{} of {} sources backed up in {:.2}s: read {} of {}, {} new\n",
            done.len(),
            items.len(),
            secs,
            output::bytes(read),
            output::bytes(total),
            output::bytes(new)
        ))?;
    }
    match failed.into_iter().next() {
        Some((name, e)) => Err(e.context(format!("backing up {name}"))),
        None if done.iter().any(|(_, r)| r.snapshot.partial) => Ok(exit::PARTIAL),
        None => Ok(exit::OK),
    }
}

fn options(ctx: &Ctx, a: &DockerBackupArgs, tags: &[String], labels: Vec<(String, String)>) -> Result<BackupOptions> {
    Ok(BackupOptions {
        host: a.host.clone().unwrap_or_else(crate::hostname),
        user: crate::username(),
        tags: tags.to_vec(),
        labels,
        readers: 4,
        cancel: ctx.cancel.clone(),
        progress: Arc::new(Progress::default()),
        lock_stale: crate::lock_stale()?,
        ..Default::default()
    })
}

/// Runs a labelled command in a container with `sh -c`; a non-zero exit fails the volume.
fn run_hook(engine: &Engine, c: &ContainerInfo, which: &str, cmd: &str) -> Result<()> {
    let mut r = engine.exec(&c.id, &["sh", "-c", cmd], &[])?;
    let mut outp = Vec::new();
    (&mut r).take(64 * 1024).read_to_end(&mut outp).context("reading the hook's output")?;
    let st = r.finish()?;
    if !outp.is_empty() {
        tracing::info!("{which} in {}: {}", c.name, String::from_utf8_lossy(&outp).trim());
    }
    st.check().with_context(|| format!("the {which} command (label hoard.{which}) of container {}", c.name))?;
    Ok(())
}

fn readable_dir(p: &str) -> bool {
    !p.is_empty() && std::fs::read_dir(p).is_ok()
}

fn backup_volume(
    ctx: &Ctx,
    engine: &Engine,
    repo: &Repository,
    name: &str,
    a: &DockerBackupArgs,
    tags: &[String],
    pending: &Arc<Mutex<Vec<String>>>,
) -> Result<BackupResult> {
    let info = engine.volume(name)?;
    let mut running: Vec<&ContainerInfo> = info.mounts.iter().map(|m| &m.container).filter(|c| c.running).collect();
    running.sort_by(|x, y| x.id.cmp(&y.id));
    running.dedup_by(|x, y| x.id == y.id);
    let (to_stop, busy): (Vec<&ContainerInfo>, Vec<&ContainerInfo>) = running.iter().partition(|c| c.stop_label());
    if !busy.is_empty() {
        let names: Vec<&str> = busy.iter().map(|c| c.name.as_str()).collect();
        let msg = format!(
            "volume {name} is in use by running container(s) {} without the label hoard.stop=true; its files may change while read",
            names.join(", ")
        );
        if a.require_quiet {
            return Err(Refused(format!("{msg} (refused: --require-quiet)")).into());
        }
        eprintln!("warning: {msg}");
    }
    for c in &running {
        if let Some(cmd) = c.pre() {
            run_hook(engine, c, "pre", cmd)?;
        }
    }
    let guard = StopGuard::new(engine, pending.clone());
    for c in &to_stop {
        if !ctx.quiet && !ctx.json {
            eprintln!("stopping container {} while volume {name} is read", c.name);
        }
        guard.stop(&c.id)?;
    }
    let opts = options(ctx, a, tags, info.labels.clone())?;
    let r = if engine.is_local() && !a.via_container && readable_dir(&info.mountpoint) {
        tracing::info!("reading volume {name} from its mountpoint {}", info.mountpoint);
        vol::backup_volume_dir(repo, Path::new(&info.mountpoint), name, &opts).map_err(anyhow::Error::from)
    } else {
        tracing::info!("reading volume {name} through a helper container");
        read_via_helper(engine, repo, name, &opts)
    };
    let restart = guard.restart_all();
    drop(guard);
    let r = r?;
    if let Some(e) = restart.into_iter().next() {
        bail!("{e}");
    }
    for c in &running {
        if let Some(cmd) = c.post() {
            run_hook(engine, c, "post", cmd).with_context(|| format!("snapshot {} was saved", r.id.short()))?;
        }
    }
    Ok(r)
}

fn read_via_helper(engine: &Engine, repo: &Repository, name: &str, opts: &BackupOptions) -> Result<BackupResult> {
    let helper = engine.helper(&[(name, MOUNT, true)])?;
    let mut tar = engine.read_archive(&helper.id, &format!("{MOUNT}/"))?;
    Ok(vol::backup_volume_tar(repo, &mut tar, name, opts)?)
}

fn backup_bind(
    ctx: &Ctx,
    engine: &Engine,
    repo: &Repository,
    path: &str,
    a: &DockerBackupArgs,
    tags: &[String],
) -> Result<BackupResult> {
    if !engine.is_local() {
        bail!("bind mount {path} is on the engine's host, not here; back it up there");
    }
    let opts = options(ctx, a, tags, vec![])?;
    let meta = std::fs::metadata(path).with_context(|| format!("bind mount {path}"))?;
    if meta.is_dir() {
        Ok(vol::backup_dir(repo, Path::new(path), BIND_KIND, path, &opts)?)
    } else {
        // A single file (a config file mounted into a container): a path snapshot of it.
        Ok(hoard_repo::backup::fs::backup_paths(repo, &[PathBuf::from(path)], &opts)?)
    }
}

/// Why a project's bind mount is left out, if it is: sockets and devices (the Docker socket),
/// and the host's system trees (/proc, /sys, …) that monitoring containers mount.
fn skip_bind(path: &str) -> Option<String> {
    const SYSTEM: &[&str] = &["/proc", "/sys", "/dev", "/run", "/var/run", "/var/lib/docker"];
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() || m.is_file() => {}
        Ok(_) => return Some(format!("bind mount {path} is not a file or directory (a socket or device); left out")),
        Err(e) => return Some(format!("bind mount {path}: {e}; left out")),
    }
    if path == "/" || SYSTEM.iter().any(|s| path == *s || path.starts_with(&format!("{s}/"))) {
        return Some(format!("bind mount {path} is part of the host system; left out"));
    }
    None
}

pub fn cmd_restore(ctx: &Ctx, a: DockerRestoreArgs) -> Result<i32> {
    let engine = connect()?;
    let repo = ctx.open()?;
    if let Some(project) = &a.project {
        return restore_project(ctx, &engine, &repo, project, &a);
    }
    let volume = a.volume.as_deref().ok_or_else(|| anyhow!("give --volume NAME (or --project NAME)"))?;
    let reference = a.snapshot.as_deref().ok_or_else(|| anyhow!("give the snapshot to restore (an id or `latest`)"))?;
    let snap = if reference == "latest" {
        repo.find_snapshot("latest", &|s| s.source_kind == vol::SOURCE_KIND && s.source_name == volume)?
    } else {
        repo.find_snapshot(reference, &|_| true)?
    };
    restore_volume(ctx, &engine, &repo, &snap, volume, &a)?;
    Ok(exit::OK)
}

fn restore_project(ctx: &Ctx, engine: &Engine, repo: &Repository, project: &str, a: &DockerRestoreArgs) -> Result<i32> {
    let tag = format!("project={project}");
    let mut latest: BTreeMap<(String, String), SnapshotEntry> = BTreeMap::new();
    for e in repo.snapshots()? {
        let s = &e.snapshot;
        let kinds = [vol::SOURCE_KIND, BIND_KIND, hoard_repo::backup::fs::SOURCE_KIND];
        if !s.tags.contains(&tag) || !kinds.contains(&s.source_kind.as_str()) {
            continue;
        }
        if a.snapshot_time.is_some_and(|t| s.time_ns > t) {
            continue;
        }
        let key = (s.source_kind.clone(), s.source_name.clone());
        if latest.get(&key).is_none_or(|old| old.snapshot.time_ns <= s.time_ns) {
            latest.insert(key, e);
        }
    }
    if latest.is_empty() {
        bail!(
            "no snapshots tagged {tag}{}",
            if a.snapshot_time.is_some() { " at or before --snapshot-time" } else { "" }
        );
    }
    for ((kind, name), snap) in &latest {
        if kind == vol::SOURCE_KIND {
            restore_volume(ctx, engine, repo, snap, name, a)?;
        } else if kind == BIND_KIND {
            restore_bind(ctx, engine, repo, snap, name, a)?;
        } else {
            restore_bind_files(ctx, engine, repo, snap, a)?;
        }
    }
    if !ctx.quiet && !ctx.json {
        out(&format!("restored {} sources of project {project}\n", latest.len()))?;
    }
    Ok(exit::OK)
}

fn root_meta(snap: &SnapshotEntry) -> Option<(u32, u32, u32, i64)> {
    snap.snapshot.labels.iter().find(|(k, _)| k == ROOT_LABEL).and_then(|(_, v)| vol::parse_root_label(v))
}

fn restore_opts(ctx: &Ctx, target: &Path) -> RestoreOptions {
    RestoreOptions {
        target: target.to_path_buf(),
        includes: vec![],
        excludes: vec![],
        // SAFETY: geteuid cannot fail.
        owners: unsafe { libc::geteuid() } == 0,
        sparse: true,
        threads: 4,
        cancel: ctx.cancel.clone(),
    }
}

/// Sets a directory's owner, mode and mtime.
fn set_root(dir: &Path, (mode, uid, gid, mtime): (u32, u32, u32, i64)) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).with_context(|| format!("chown {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", dir.display()))?;
    let t = std::time::UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64);
    File::open(dir)
        .and_then(|f| f.set_modified(t))
        .with_context(|| format!("setting the mtime of {}", dir.display()))?;
    Ok(())
}

/// Removes everything inside `dir`.
fn empty_dir(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        let r = if p.symlink_metadata()?.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

fn restore_volume(
    ctx: &Ctx,
    engine: &Engine,
    repo: &Repository,
    snap: &SnapshotEntry,
    volume: &str,
    a: &DockerRestoreArgs,
) -> Result<()> {
    let info = match engine.volume(volume) {
        Ok(v) => v,
        Err(DockerError::NotFound(_)) => {
            let labels: Vec<(String, String)> =
                snap.snapshot.labels.iter().filter(|(k, _)| !k.starts_with("hoard.volume.")).cloned().collect();
            if !ctx.quiet && !ctx.json {
                eprintln!("creating volume {volume}");
            }
            engine.create_volume(volume, &labels)?
        }
        Err(e) => return Err(e.into()),
    };
    let running: Vec<&str> =
        info.mounts.iter().filter(|m| m.container.running).map(|m| m.container.name.as_str()).collect();
    if !running.is_empty() {
        return Err(Refused(format!(
            "volume {volume} is in use by running container(s) {}; stop them before restoring into it",
            running.join(", ")
        ))
        .into());
    }
    let node = restore::root_node(snap.snapshot.tree);
    let root = root_meta(snap);
    if !ctx.quiet && !ctx.json {
        eprintln!("restoring snapshot {} into volume {volume}", snap.id.short());
    }
    // SAFETY: geteuid cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if engine.is_local() && !a.via_container && is_root && readable_dir(&info.mountpoint) {
        let dir = Path::new(&info.mountpoint);
        if std::fs::read_dir(dir)?.next().is_some() {
            if !a.force {
                return Err(Refused(format!("volume {volume} is not empty; use --force to replace its content")).into());
            }
            empty_dir(dir)?;
        }
        let s = restore::restore(repo, &node, &restore_opts(ctx, dir))?;
        if let Some(e) = s.errors.first() {
            bail!("{} entries of volume {volume} were not restored, the first: {e}", s.errors.len());
        }
        if let Some(m) = root {
            set_root(dir, m)?;
        }
        return Ok(());
    }
    let helper = engine.helper(&[(volume, MOUNT, false)])?;
    let listing = engine.exec_output(&helper.id, &["sh", "-c", &format!("ls -A {MOUNT} | head -n 1")], 4096)?;
    if !listing.is_empty() {
        if !a.force {
            return Err(Refused(format!("volume {volume} is not empty; use --force to replace its content")).into());
        }
        engine.exec_output(
            &helper.id,
            &["sh", "-c", &format!("find {MOUNT} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +")],
            4096,
        )?;
    }
    // The tar is written by a thread into a pipe and read by the upload as the engine takes it.
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("making a pipe");
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (reader, mut writer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    std::thread::scope(|s| -> Result<()> {
        let producer = s.spawn(move || restore::dump_tar(repo, &node, &mut writer));
        let up = engine.write_archive(&helper.id, MOUNT, reader);
        let dumped = producer.join().map_err(|_| anyhow!("the tar writer panicked"))?;
        dumped.with_context(|| format!("reading snapshot {}", snap.id.short()))?;
        up?;
        Ok(())
    })?;
    if let Some((mode, uid, gid, mtime)) = root {
        let cmd = format!("chown {uid}:{gid} {MOUNT} && chmod {mode:o} {MOUNT} && touch -d @{mtime} {MOUNT}");
        engine.exec_output(&helper.id, &["sh", "-c", &cmd], 4096)?;
    }
    Ok(())
}

fn restore_bind(
    ctx: &Ctx,
    engine: &Engine,
    repo: &Repository,
    snap: &SnapshotEntry,
    path: &str,
    a: &DockerRestoreArgs,
) -> Result<()> {
    if !engine.is_local() {
        bail!("bind mount {path} is on the engine's host, not here; restore it there");
    }
    let dir = PathBuf::from(path);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {path}"))?;
    if std::fs::read_dir(&dir)?.next().is_some() {
        if !a.force {
            return Err(Refused(format!(
                "bind mount directory {path} is not empty; use --force to replace its content"
            ))
            .into());
        }
        empty_dir(&dir)?;
    }
    if !ctx.quiet && !ctx.json {
        eprintln!("restoring snapshot {} into {path}", snap.id.short());
    }
    let s = restore::restore(repo, &restore::root_node(snap.snapshot.tree), &restore_opts(ctx, &dir))?;
    if let Some(e) = s.errors.first() {
        bail!("{} entries of {path} were not restored, the first: {e}", s.errors.len());
    }
    if let Some(m) = root_meta(snap) {
        set_root(&dir, m)?;
    }
    Ok(())
}

/// Puts the files of a path snapshot (a project's single-file bind mounts) back where they were.
fn restore_bind_files(
    ctx: &Ctx,
    engine: &Engine,
    repo: &Repository,
    snap: &SnapshotEntry,
    a: &DockerRestoreArgs,
) -> Result<()> {
    if !engine.is_local() {
        bail!("bind mounts {} are on the engine's host, not here; restore them there", snap.snapshot.paths.join(" "));
    }
    for path in &snap.snapshot.paths {
        let comps = restore::split_path(path)?;
        let node = restore::resolve(repo, &snap.snapshot.tree, &comps)?
            .ok_or_else(|| anyhow!("{path} is not in snapshot {}", snap.id.short()))?;
        let p = Path::new(path);
        let parent = p.parent().ok_or_else(|| anyhow!("{path} has no parent directory"))?;
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        if p.symlink_metadata().is_ok() {
            if !a.force {
                return Err(Refused(format!("{path} exists; use --force to replace it")).into());
            }
            std::fs::remove_file(p).with_context(|| format!("removing {path}"))?;
        }
        if !ctx.quiet && !ctx.json {
            eprintln!("restoring {path} from snapshot {}", snap.id.short());
        }
        let s = restore::restore(repo, &node, &restore_opts(ctx, parent))?;
        if let Some(e) = s.errors.first() {
            bail!("{path} was not restored: {e}");
        }
    }
    Ok(())
}
