//! `hoard backup postgres|mysql|redis` and `hoard restore postgres|mysql|redis`: the command
//! line of database dumps. What the tools are and how they run is `hoard_dump`'s; this module
//! reads the environment, streams each dump into a stream snapshot and feeds restores.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use hoard_core::format::tree::{Node, NodeKind};
use hoard_dump::mysql::{self, MyConn};
use hoard_dump::postgres::{self, PgConn};
use hoard_dump::redis::{self, RedisConn};
use hoard_dump::{DumpError, Host, Invocation, Remote, Runner, Running};
use hoard_repo::backup::stream::{backup_stream_file, StreamSource};
use hoard_repo::backup::{BackupOptions, BackupResult, Progress};
use hoard_repo::restore;
use hoard_repo::{RepoError, Repository, SnapshotEntry};
use serde_json::json;

use crate::{exit, find, hostname, lock_stale, out, parse_label, print_backup, username, Bar, Ctx, FilterArgs};

/// Label naming the tool that made a dump (`pg_dump`, `pg_dumpall`, …).
const LABEL_TOOL: &str = "hoard.dump";
/// Label naming the database a dump holds.
const LABEL_DATABASE: &str = "hoard.database";

#[derive(Subcommand)]
pub enum BackupDb {
    /// Dump PostgreSQL with pg_dump (one database, or each with --all-databases) or pg_dumpall
    /// (--cluster). Connection: --url, or the libpq environment (PGHOST, PGPORT, PGUSER,
    /// PGPASSWORD, …).
    Postgres(PgBackupArgs),
    /// Dump Redis: a point-in-time RDB of every database, straight from the server
    /// (`redis-cli --rdb -`). Connection: --url (default redis://127.0.0.1:6379).
    Redis(RedisBackupArgs),
    /// Dump MySQL or MariaDB with mariadb-dump (or mysqldump): --single-transaction, routines,
    /// events and triggers. Connection: --url, or the client's option files and environment.
    Mysql(MyBackupArgs),
}

#[derive(Subcommand)]
pub enum RestoreDb {
    /// Load a PostgreSQL dump into a running server: a database dump into a new database
    /// (created here), a cluster dump into the cluster.
    Postgres(PgRestoreArgs),
    /// Put a Redis RDB back: the server is stopped (SHUTDOWN NOSAVE), the RDB replaces the file
    /// it loads at start (CONFIG GET dir/dbfilename, on this host), and --start-command starts it.
    Redis(RedisRestoreArgs),
    /// Load a MySQL/MariaDB dump into a new database (created here) on a running server.
    Mysql(MyRestoreArgs),
}

/// What every dump backup shares with `hoard backup`.
#[derive(Args)]
pub struct DumpOpts {
    /// Add a tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Record this host name instead of the machine's.
    #[arg(long)]
    host: Option<String>,
    /// Attach a label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

#[derive(Args)]
pub struct PgBackupArgs {
    /// The database to dump (default: the one in --url).
    #[arg(long, conflicts_with_all = ["cluster", "all_databases"])]
    database: Option<String>,
    /// Dump the whole cluster with pg_dumpall: roles, tablespaces and every database.
    #[arg(long, conflicts_with = "all_databases")]
    cluster: bool,
    /// Dump every database (except template0 and template1), each as its own snapshot.
    #[arg(long)]
    all_databases: bool,
    /// postgresql://[user[:password]@][host][:port][/database][?sslmode=…]; the password is
    /// passed to the tools in their environment, never on their command line.
    #[arg(long)]
    url: Option<String>,
    /// Run pg_dump inside this running container (docker exec), connecting as $POSTGRES_USER
    /// (or postgres) through its socket unless --url says otherwise.
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    #[command(flatten)]
    opts: DumpOpts,
}

#[derive(Args)]
pub struct PgRestoreArgs {
    /// The snapshot: an id, a unique id prefix or `latest` (the newest PostgreSQL snapshot
    /// that matches the filters).
    snapshot: String,
    /// postgresql://… of the server to restore into; default: the libpq environment.
    #[arg(long)]
    url: Option<String>,
    /// Run psql and createdb inside this running container (docker exec).
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    /// Restore a database dump into this database (default: the dumped database's name).
    #[arg(long)]
    database: Option<String>,
    /// Drop the database first if it exists (its connections are ended).
    #[arg(long)]
    drop_existing: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Args)]
pub struct MyBackupArgs {
    /// The database to dump (default: the one in --url).
    #[arg(long, conflicts_with = "all_databases")]
    database: Option<String>,
    /// Dump every database but the server's own (information_schema, performance_schema, sys,
    /// mysql), each as its own snapshot.
    #[arg(long)]
    all_databases: bool,
    /// mysql://[user[:password]@][host][:port][/database][?socket=PATH]; the password reaches
    /// the tools in a private 0600 option file, never on their command line.
    #[arg(long)]
    url: Option<String>,
    /// Run mariadb-dump (or mysqldump) inside this running container (docker exec), as root
    /// with $MARIADB_ROOT_PASSWORD (or $MYSQL_ROOT_PASSWORD) unless --url says otherwise.
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    #[command(flatten)]
    opts: DumpOpts,
}

#[derive(Args)]
pub struct MyRestoreArgs {
    /// The snapshot: an id, a unique id prefix or `latest` (the newest MySQL snapshot).
    snapshot: String,
    /// mysql://… of the server to restore into; default: the client's option files.
    #[arg(long)]
    url: Option<String>,
    /// Run the client inside this running container (docker exec).
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    /// Restore into this database (default: the dumped database's name).
    #[arg(long)]
    database: Option<String>,
    /// Drop the database first if it exists.
    #[arg(long)]
    drop_existing: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Args)]
pub struct RedisBackupArgs {
    /// redis://[user[:password]@]host[:port]; the password reaches redis-cli in its environment.
    #[arg(long)]
    url: Option<String>,
    /// Run redis-cli inside this running container (docker exec).
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    #[command(flatten)]
    opts: DumpOpts,
}

#[derive(Args)]
pub struct RedisRestoreArgs {
    /// The snapshot: an id, a unique id prefix or `latest` (the newest Redis snapshot).
    snapshot: String,
    /// redis://… of the server to restore (default redis://127.0.0.1:6379). It must be running,
    /// with appendonly off: it is asked where its RDB lives, then stopped.
    #[arg(long)]
    url: Option<String>,
    /// Restore the Redis of this container: asked where its RDB lives, stopped, the RDB written
    /// there through the Docker archive API (owner and mode of the file it replaces), started.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["rdb_path", "start_command"])]
    container: Option<String>,
    /// Write the RDB here instead of where the server says it loads it from.
    #[arg(long, value_name = "PATH")]
    rdb_path: Option<std::path::PathBuf>,
    /// Run this shell command to start the server once its RDB is in place, then wait until it
    /// answers (e.g. "systemctl start redis-server"). Without it, start the server yourself.
    #[arg(long, value_name = "CMD")]
    start_command: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
}

pub fn backup(ctx: &Ctx, cmd: BackupDb) -> Result<i32> {
    match cmd {
        BackupDb::Postgres(a) => backup_postgres(ctx, a),
        BackupDb::Redis(a) => backup_redis(ctx, a),
        BackupDb::Mysql(a) => backup_mysql(ctx, a),
    }
}

pub fn restore(ctx: &Ctx, cmd: RestoreDb) -> Result<i32> {
    match cmd {
        RestoreDb::Postgres(a) => restore_postgres(ctx, a),
        RestoreDb::Redis(a) => restore_redis(ctx, a),
        RestoreDb::Mysql(a) => restore_mysql(ctx, a),
    }
}

/// The connection from `--url`, or what the clients' environment says (`MYSQL_HOST`,
/// `MYSQL_TCP_PORT`; option files such as ~/.my.cnf are read by the clients themselves).
fn my_conn(url: Option<&str>, container: Option<&str>) -> Result<MyConn> {
    match url {
        Some(u) => Ok(MyConn::from_url(u)?),
        None if container.is_some() => Ok(MyConn::default()),
        None => {
            let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let port = var("MYSQL_TCP_PORT")
                .map(|p| p.parse().map_err(|_| anyhow!("MYSQL_TCP_PORT={p:?} is not a port")))
                .transpose()?;
            Ok(MyConn { host: var("MYSQL_HOST"), port, ..MyConn::default() })
        }
    }
}

fn backup_mysql(ctx: &Ctx, a: MyBackupArgs) -> Result<i32> {
    let conn = my_conn(a.url.as_deref(), a.container.as_deref())?;
    let run = my_runner(a.container.as_deref())?;
    let run = &*run;
    let repo = ctx.open()?;
    let instance = a.container.clone().unwrap_or_else(|| conn.instance());
    let databases =
        if a.all_databases {
            let dbs = mysql::list_databases(&conn, run).map_err(source_failed)?;
            if dbs.is_empty() {
                bail!("{instance} has no database to dump");
            }
            dbs
        } else {
            vec![a.database.clone().or_else(|| conn.dbname.clone()).ok_or_else(|| {
                anyhow!("say what to dump: --database NAME (or a database in --url), or --all-databases")
            })?]
        };
    backup_each(ctx, &repo, "mysql", "mysqldump", &instance, &databases, &a.opts, &|db| {
        mysql::dump_database(&conn, run, db)
    })
}

fn restore_mysql(ctx: &Ctx, a: MyRestoreArgs) -> Result<i32> {
    let conn = my_conn(a.url.as_deref(), a.container.as_deref())?;
    let run = my_runner(a.container.as_deref())?;
    let run = &*run;
    let instance = a.container.clone().unwrap_or_else(|| conn.instance());
    let repo = ctx.open()?;
    let snap = find_dump(&repo, &a.snapshot, &a.filter, "mysql")?;
    let node = stream_file(&repo, &snap)?;
    let target = a.database.clone().or_else(|| label(&snap, LABEL_DATABASE).map(String::from)).ok_or_else(|| {
        anyhow!("snapshot {} does not say which database it holds: give --database NAME", snap.id.short())
    })?;
    if !ctx.quiet && !ctx.json {
        eprintln!("restoring {} ({}) into database {target} on {instance}", snap.id.short(), snap.snapshot.source_name,);
    }
    mysql::create_database(&conn, run, &target, a.drop_existing)?;
    let loaded =
        mysql::load_database(&conn, run, &target).map_err(anyhow::Error::from).and_then(|l| feed(&repo, &node, l));
    match loaded {
        Ok(bytes) => done(ctx, &snap, &instance, Some(&target), bytes),
        Err(e) => {
            if let Err(d) = mysql::drop_database(&conn, run, &target) {
                eprintln!("hoard: could not drop the half-restored database {target}: {d}");
            }
            Err(e.context(format!("restoring into database {target} (dropped again)")))
        }
    }
}

fn redis_conn(url: Option<&str>) -> Result<RedisConn> {
    Ok(url.map(RedisConn::from_url).transpose()?.unwrap_or_default())
}

fn redis_runner(container: Option<&str>) -> Result<Box<dyn Runner>> {
    Ok(match container {
        None => Box::new(Host),
        Some(c) => {
            Box::new(InContainer { engine: hoard_docker::Engine::connect()?, container: c.to_string(), prelude: None })
        }
    })
}

fn backup_redis(ctx: &Ctx, a: RedisBackupArgs) -> Result<i32> {
    let conn = redis_conn(a.url.as_deref())?;
    let run = redis_runner(a.container.as_deref())?;
    let repo = ctx.open()?;
    let opts = backup_options(ctx, &a.opts, Arc::new(Progress::default()), &[(LABEL_TOOL, "redis-cli --rdb")])?;
    let dump = redis::dump(&conn, &*run).map_err(source_failed)?;
    let instance = a.container.clone().unwrap_or_else(|| conn.instance());
    let r = store_dump(ctx, &repo, dump, "redis", &instance, "dump.rdb", &opts)?;
    report(ctx, &[r])?;
    Ok(exit::OK)
}

fn restore_redis(ctx: &Ctx, a: RedisRestoreArgs) -> Result<i32> {
    let conn = redis_conn(a.url.as_deref())?;
    let repo = ctx.open()?;
    let snap = find_dump(&repo, &a.snapshot, &a.filter, "redis")?;
    let node = stream_file(&repo, &snap)?;
    if let Some(c) = &a.container {
        let bytes = restore_redis_container(ctx, &repo, &conn, c, &node)?;
        return done(ctx, &snap, c, None, bytes);
    }
    let mut staged = redis::stage(&conn, a.rdb_path.as_deref())?;
    let bytes = restore::dump_file(&repo, &node, staged.writer())?;
    let path = staged.path().to_path_buf();
    if !ctx.quiet && !ctx.json {
        eprintln!("stopping {} (SHUTDOWN NOSAVE) and putting the RDB in place at {}", conn.instance(), path.display());
    }
    staged.install(&conn, a.start_command.as_deref())?;
    if a.start_command.is_none() && !ctx.json {
        eprintln!("{} is stopped and its RDB is in place: start it now", conn.instance());
    }
    done(ctx, &snap, &conn.instance(), None, bytes)
}

/// The connection from `--url`, or from the libpq environment (which the tools also inherit);
/// inside a container, this host's environment means nothing and is not used.
fn pg_conn(url: Option<&str>, container: Option<&str>) -> Result<PgConn> {
    match url {
        Some(u) => Ok(PgConn::from_url(u)?),
        None if container.is_some() => Ok(PgConn::default()),
        None => {
            let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            Ok(PgConn { host: var("PGHOST"), port: var("PGPORT"), user: var("PGUSER"), ..PgConn::default() })
        }
    }
}

fn backup_options(ctx: &Ctx, o: &DumpOpts, progress: Arc<Progress>, extra: &[(&str, &str)]) -> Result<BackupOptions> {
    let mut labels = o.labels.clone();
    labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Ok(BackupOptions {
        host: o.host.clone().unwrap_or_else(hostname),
        user: username(),
        tags: o.tags.clone(),
        labels,
        readers: 1,
        cancel: ctx.cancel.clone(),
        progress,
        lock_stale: lock_stale()?,
        ..BackupOptions::default()
    })
}

/// A dump tool's failure, as the backup error that says nothing was committed (exit 14).
fn source_failed(e: DumpError) -> RepoError {
    match e {
        DumpError::Failed { tool, status, stderr } => {
            RepoError::SourceCommandFailed { status: format!("{tool}: {status}"), stderr }
        }
        other => RepoError::SourceCommandFailed { status: other.to_string(), stderr: String::new() },
    }
}

/// Streams a running dump into a stream snapshot. The tool's verdict is taken after its last
/// byte and before the commit, so a failed or partial dump commits nothing.
fn store_dump(
    ctx: &Ctx,
    repo: &Repository,
    mut dump: Running,
    kind: &str,
    name: &str,
    file: &str,
    opts: &BackupOptions,
) -> Result<BackupResult> {
    let bar = Bar::start(ctx.progress, opts.progress.clone());
    let mut reader = dump.take_reader();
    let src = StreamSource { kind, name };
    let mut finish = || dump.finish().map_err(source_failed);
    let r = backup_stream_file(repo, &mut reader, &src, file, opts, &mut finish);
    drop(bar);
    match r {
        // The dump's bytes could not be read, or were not a whole dump (an RDB cut short): the
        // tool's own verdict says more, if it has one.
        Err(RepoError::Io { context, source }) if !dump.finished() => {
            drop(reader);
            Err(match dump.finish() {
                Err(e) => source_failed(e).into(),
                Ok(()) => RepoError::SourceCommandFailed {
                    status: format!("{} {context}: {source}", dump.tool()),
                    stderr: String::new(),
                }
                .into(),
            })
        }
        r => Ok(r?),
    }
}

fn report(ctx: &Ctx, results: &[BackupResult]) -> Result<()> {
    if ctx.json && results.len() != 1 {
        let all: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                let e = SnapshotEntry { id: r.id, snapshot: r.snapshot.clone() };
                crate::snapshot_json(&e)
            })
            .collect();
        return ctx.print_json(&json!(all));
    }
    for r in results {
        if !ctx.json && !ctx.quiet {
            out(&format!("{} {}:\n", r.snapshot.source_kind, r.snapshot.source_name))?;
        }
        print_backup(ctx, r)?;
    }
    Ok(())
}

fn backup_postgres(ctx: &Ctx, a: PgBackupArgs) -> Result<i32> {
    let conn = pg_conn(a.url.as_deref(), a.container.as_deref())?;
    let run = pg_runner(a.container.as_deref())?;
    let run = &*run;
    let repo = ctx.open()?;
    // In a container, the container is the instance: its socket is nobody else's.
    let instance = a.container.clone().unwrap_or_else(|| conn.instance());
    if a.cluster {
        let opts = backup_options(ctx, &a.opts, Arc::new(Progress::default()), &[(LABEL_TOOL, "pg_dumpall")])?;
        let dump = postgres::dump_cluster(&conn, run).map_err(source_failed)?;
        let r = store_dump(ctx, &repo, dump, "postgres", &instance, "cluster.sql", &opts)?;
        report(ctx, &[r])?;
        return Ok(exit::OK);
    }
    let databases = if a.all_databases {
        let dbs = postgres::list_databases(&conn, run).map_err(source_failed)?;
        if dbs.is_empty() {
            bail!("{instance} has no database to dump");
        }
        dbs
    } else {
        vec![a.database.clone().or_else(|| conn.dbname.clone()).ok_or_else(|| {
            anyhow!("say what to dump: --database NAME (or a database in --url), --all-databases or --cluster")
        })?]
    };
    backup_each(ctx, &repo, "postgres", "pg_dump", &instance, &databases, &a.opts, &|db| {
        postgres::dump_database(&conn, run, db)
    })
}

/// Dumps each database into its own snapshot (source name `instance/database`, file
/// `database.sql`). A failed database does not stop the others; an interruption, a conflict with
/// a prune or a full disk ends the run.
#[allow(clippy::too_many_arguments)]
fn backup_each(
    ctx: &Ctx,
    repo: &Repository,
    kind: &str,
    tool: &str,
    instance: &str,
    databases: &[String],
    o: &DumpOpts,
    dump: &dyn Fn(&str) -> hoard_dump::Result<Running>,
) -> Result<i32> {
    let progress = Arc::new(Progress::default());
    let mut done = Vec::new();
    let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
    for db in databases {
        let opts = backup_options(ctx, o, progress.clone(), &[(LABEL_TOOL, tool), (LABEL_DATABASE, db)])?;
        let r = dump(db).map_err(source_failed).and_then(|d| {
            store_dump(ctx, repo, d, kind, &format!("{instance}/{db}"), &format!("{db}.sql"), &opts).map_err(
                |e| match e.downcast::<RepoError>() {
                    Ok(r) => r,
                    Err(e) => RepoError::Invalid(format!("{e:#}")),
                },
            )
        });
        match r {
            Ok(r) => done.push(r),
            Err(e @ (RepoError::Interrupted | RepoError::Conflict(_))) => return Err(e.into()),
            Err(e) if e.is_no_space() => return Err(e.into()),
            Err(e) => failed.push((db.clone(), e.into())),
        }
    }
    report(ctx, &done)?;
    match failed.len() {
        0 => Ok(exit::OK),
        1 if databases.len() == 1 => Err(failed.pop().expect("one failure").1),
        n => {
            for (db, e) in &failed {
                eprintln!("hoard: database {db}: {e:#}");
            }
            eprintln!("hoard: {n} of {} databases were not backed up; nothing was committed for them", databases.len());
            Ok(exit::SOURCE_FAILED)
        }
    }
}

/// The one file a stream snapshot holds.
fn stream_file(repo: &Repository, snap: &SnapshotEntry) -> Result<Node> {
    let root = repo.load_tree(&snap.snapshot.tree)?;
    match root.nodes.as_slice() {
        [only] if only.kind() == NodeKind::File => Ok(only.clone()),
        _ => bail!("snapshot {} is not a database dump (it does not hold exactly one file)", snap.id.short()),
    }
}

fn label<'a>(snap: &'a SnapshotEntry, key: &str) -> Option<&'a str> {
    snap.snapshot.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Finds the snapshot to restore: `latest` is the newest of `kind`; an id must be of `kind`.
fn find_dump(repo: &Repository, reference: &str, filter: &FilterArgs, kind: &str) -> Result<SnapshotEntry> {
    let mut f = filter.clone();
    if reference == "latest" {
        f.source = Some(kind.to_string());
    }
    let snap = find(repo, reference, &f)?;
    if snap.snapshot.source_kind != kind {
        bail!(
            "snapshot {} is a {} snapshot ({}), not a {kind} dump",
            snap.id.short(),
            snap.snapshot.source_kind,
            snap.snapshot.source_name
        );
    }
    Ok(snap)
}

/// Feeds a dump into a loading tool and waits for its verdict. If the repository cannot give
/// every byte, the tool is stopped before it sees the end, so it never takes a cut-off dump for
/// a whole one (psql's single transaction is rolled back).
fn feed(repo: &Repository, node: &Node, mut load: Running) -> Result<u64> {
    let written = restore::dump_file(repo, node, load.writer());
    match written {
        Ok(n) => {
            load.finish()?;
            Ok(n)
        }
        Err(RepoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            // The tool stopped reading: its own error says why.
            load.finish()?;
            bail!("{} stopped reading the dump early", load.tool())
        }
        Err(e) => {
            load.kill();
            Err(e).context("reading the dump from the repository; the load was stopped")
        }
    }
}

fn restore_postgres(ctx: &Ctx, a: PgRestoreArgs) -> Result<i32> {
    let conn = pg_conn(a.url.as_deref(), a.container.as_deref())?;
    let run = pg_runner(a.container.as_deref())?;
    let run = &*run;
    let instance = a.container.clone().unwrap_or_else(|| conn.instance());
    let repo = ctx.open()?;
    let snap = find_dump(&repo, &a.snapshot, &a.filter, "postgres")?;
    let node = stream_file(&repo, &snap)?;
    let cluster = label(&snap, LABEL_TOOL) == Some("pg_dumpall");
    let say = |s: String| {
        if !ctx.quiet && !ctx.json {
            eprintln!("{s}")
        }
    };
    if cluster {
        if a.database.is_some() || a.drop_existing {
            bail!(
                "snapshot {} is a whole-cluster dump (pg_dumpall): it restores its databases under their own \
                 names, into a cluster that does not have them; --database and --drop-existing apply to \
                 single-database dumps",
                snap.id.short()
            );
        }
        say(format!("restoring cluster dump {} ({}) into {instance}", snap.id.short(), snap.snapshot.source_name));
        let bytes = feed(&repo, &node, postgres::load_cluster(&conn, run)?)?;
        return done(ctx, &snap, &instance, None, bytes);
    }
    let target = a.database.clone().or_else(|| label(&snap, LABEL_DATABASE).map(String::from)).ok_or_else(|| {
        anyhow!("snapshot {} does not say which database it holds: give --database NAME", snap.id.short())
    })?;
    say(format!("restoring {} ({}) into database {target} on {instance}", snap.id.short(), snap.snapshot.source_name));
    postgres::create_database(&conn, run, &target, a.drop_existing)?;
    let loaded =
        postgres::load_database(&conn, run, &target).map_err(anyhow::Error::from).and_then(|l| feed(&repo, &node, l));
    match loaded {
        Ok(bytes) => done(ctx, &snap, &instance, Some(&target), bytes),
        Err(e) => {
            // The database is ours, made a moment ago: leave nothing half-loaded behind.
            if let Err(d) = postgres::drop_database(&conn, run, &target) {
                eprintln!("hoard: could not drop the half-restored database {target}: {d}");
            }
            Err(e.context(format!("restoring into database {target} (dropped again)")))
        }
    }
}

fn done(ctx: &Ctx, snap: &SnapshotEntry, instance: &str, database: Option<&str>, bytes: u64) -> Result<i32> {
    if ctx.json {
        ctx.print_json(
            &json!({"snapshot": snap.id.to_hex(), "instance": instance, "database": database, "bytes": bytes}),
        )?;
    } else if !ctx.quiet {
        out(&format!(
            "restored {} of {} into {}{}\n",
            crate::output::bytes(bytes),
            snap.snapshot.source_name,
            instance,
            database.map(|d| format!("/{d}")).unwrap_or_default()
        ))?;
    }
    Ok(exit::OK)
}

/// Where the PostgreSQL tools run: here, or in a container.
fn pg_runner(container: Option<&str>) -> Result<Box<dyn Runner>> {
    Ok(match container {
        None => Box::new(Host),
        Some(c) => Box::new(InContainer {
            engine: hoard_docker::Engine::connect()?,
            container: c.to_string(),
            // Images such as the official one run exec as root, a role that does not exist:
            // connect as the image's superuser unless told otherwise.
            prelude: Some(r#"PGUSER="${PGUSER:-${POSTGRES_USER:-postgres}}"; export PGUSER; exec "$0" "$@""#),
        }),
    })
}

/// Where the MySQL/MariaDB tools run: here, or in a container.
fn my_runner(container: Option<&str>) -> Result<Box<dyn Runner>> {
    Ok(match container {
        None => Box::new(Host),
        Some(c) => Box::new(InContainer {
            engine: hoard_docker::Engine::connect()?,
            container: c.to_string(),
            // The official images keep the root password in their environment, and older ones
            // have only mysqldump and mysql.
            prelude: Some(
                r#"MYSQL_PWD="${MYSQL_PWD:-${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}}"
if [ -n "$MYSQL_PWD" ]; then export MYSQL_PWD; else unset MYSQL_PWD; fi
p="$0"
if ! command -v "$p" >/dev/null 2>&1; then
  case "$p" in mariadb-dump) p=mysqldump ;; mariadb) p=mysql ;; esac
fi
exec "$p" "$@""#,
            ),
        }),
    })
}

/// Runs dump tools inside a running container through the Docker engine's exec API. Secrets
/// travel in the exec's environment, not its command line.
struct InContainer {
    engine: hoard_docker::Engine,
    container: String,
    /// A `sh -c` script run first, which ends in `exec "$0" "$@"`.
    prelude: Option<&'static str>,
}

type SharedExec = Arc<Mutex<Option<hoard_docker::ExecReader>>>;

/// The output of an exec, readable while the exec itself stays reachable for its exit code.
struct ExecOut(SharedExec);

impl std::io::Read for ExecOut {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.lock().expect("exec lock").as_mut() {
            Some(r) => r.read(buf),
            None => Ok(0),
        }
    }
}

struct ExecEnd(SharedExec);

fn exec_verdict(
    r: hoard_docker::Result<hoard_docker::ExecStatus>,
) -> std::result::Result<(bool, String, String), String> {
    match r {
        Ok(st) => {
            if !st.stderr.is_empty() {
                eprint!("{}", st.stderr);
            }
            Ok((st.code == 0, format!("exit code {}", st.code), st.stderr))
        }
        Err(e) => Err(e.to_string()),
    }
}

impl Remote for ExecEnd {
    fn wait(self: Box<Self>) -> std::result::Result<(bool, String, String), String> {
        let r = self.0.lock().expect("exec lock").take().ok_or("the exec was already finished")?;
        exec_verdict(r.finish())
    }
}

struct FedExec(std::thread::JoinHandle<hoard_docker::Result<hoard_docker::ExecStatus>>);

impl Remote for FedExec {
    fn wait(self: Box<Self>) -> std::result::Result<(bool, String, String), String> {
        exec_verdict(self.0.join().map_err(|_| "the thread waiting for the exec panicked".to_string())?)
    }
}

impl Runner for InContainer {
    fn shares_files(&self) -> bool {
        false
    }

    fn spawn(&self, inv: Invocation, input: bool) -> hoard_dump::Result<Running> {
        let mut argv: Vec<String> = Vec::new();
        if let Some(p) = self.prelude {
            argv.extend(["sh".to_string(), "-c".to_string(), p.to_string()]);
        }
        argv.push(inv.program.clone());
        argv.extend(inv.args.iter().map(|a| a.to_string_lossy().into_owned()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let env: Vec<String> = inv.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        let failed = |e: hoard_docker::DockerError| DumpError::Failed {
            tool: inv.program.clone(),
            status: format!("could not run it in container {}", self.container),
            stderr: e.to_string(),
        };
        if input {
            let (from, to) = pipe().map_err(|e| DumpError::Io { context: "making a pipe".into(), source: e })?;
            let exec = self.engine.exec_with_stdin(&self.container, &argv, &env, from).map_err(failed)?;
            // Its output is drained as it comes, so it never stops reading its input.
            let waiter = std::thread::spawn(move || exec.finish());
            Ok(Running::remote(&inv, None, Some(Box::new(to)), Box::new(FedExec(waiter))))
        } else {
            let exec = self.engine.exec(&self.container, &argv, &env).map_err(failed)?;
            let shared: SharedExec = Arc::new(Mutex::new(Some(exec)));
            Ok(Running::remote(&inv, Some(Box::new(ExecOut(shared.clone()))), None, Box::new(ExecEnd(shared))))
        }
    }
}

/// A pipe: (read end, write end), both closed on exec.
fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) })
}

/// A database server a compose project's container runs, which `backup docker --project`
/// dumps instead of copying its volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    Mysql,
    Redis,
}

impl DbKind {
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Postgres => "postgres",
            DbKind::Mysql => "mysql",
            DbKind::Redis => "redis",
        }
    }
}

/// The label that says what a container is: `hoard.dump=postgres|mysql`, or `none` to have its
/// volumes copied like any other.
pub const LABEL_DUMP: &str = "hoard.dump";

/// Whether a container is a database hoard dumps: by its `hoard.dump` label, else by its
/// image's name (postgres, postgresql, postgis, timescaledb; mysql, mariadb, percona; redis,
/// valkey; with any registry, path and tag, so `bitnami/postgresql:16` counts and
/// `redis-commander` does not). Only a running container can be dumped.
pub fn recognise(c: &hoard_docker::ContainerInfo) -> Option<DbKind> {
    if !c.running {
        return None;
    }
    let kind = |name: &str| match name {
        "postgres" | "postgresql" | "postgis" | "timescaledb" | "timescaledb-ha" => Some(DbKind::Postgres),
        "mysql" | "mariadb" | "percona" | "percona-server" => Some(DbKind::Mysql),
        "redis" | "valkey" => Some(DbKind::Redis),
        _ => None,
    };
    if let Some((_, v)) = c.labels.iter().find(|(k, _)| k == LABEL_DUMP) {
        return kind(&v.to_ascii_lowercase());
    }
    let name = c.image.rsplit('/').next().unwrap_or("");
    kind(name.split([':', '@']).next().unwrap_or(""))
}

/// Dumps a compose project's database container through docker exec: PostgreSQL as one
/// `pg_dumpall` (roles included; source name = the container), MySQL one snapshot per database,
/// Redis one RDB.
pub fn backup_container(
    ctx: &Ctx,
    repo: &Repository,
    container: &str,
    kind: DbKind,
    tags: &[String],
    host: Option<&str>,
) -> Result<Vec<BackupResult>> {
    let o = DumpOpts { tags: tags.to_vec(), host: host.map(String::from), labels: Vec::new() };
    match kind {
        DbKind::Postgres => {
            let run = pg_runner(Some(container))?;
            let opts = backup_options(ctx, &o, Arc::new(Progress::default()), &[(LABEL_TOOL, "pg_dumpall")])?;
            let dump = postgres::dump_cluster(&PgConn::default(), &*run).map_err(source_failed)?;
            Ok(vec![store_dump(ctx, repo, dump, "postgres", container, "cluster.sql", &opts)?])
        }
        DbKind::Redis => {
            let run = redis_runner(Some(container))?;
            let opts = backup_options(ctx, &o, Arc::new(Progress::default()), &[(LABEL_TOOL, "redis-cli --rdb")])?;
            let dump = redis::dump(&RedisConn::default(), &*run).map_err(source_failed)?;
            Ok(vec![store_dump(ctx, repo, dump, "redis", container, "dump.rdb", &opts)?])
        }
        DbKind::Mysql => {
            let run = my_runner(Some(container))?;
            let conn = MyConn::default();
            let mut out = Vec::new();
            for db in mysql::list_databases(&conn, &*run).map_err(source_failed)? {
                let opts = backup_options(
                    ctx,
                    &o,
                    Arc::new(Progress::default()),
                    &[(LABEL_TOOL, "mysqldump"), (LABEL_DATABASE, &db)],
                )?;
                let dump = mysql::dump_database(&conn, &*run, &db).map_err(source_failed)?;
                out.push(store_dump(
                    ctx,
                    repo,
                    dump,
                    "mysql",
                    &format!("{container}/{db}"),
                    &format!("{db}.sql"),
                    &opts,
                )?);
            }
            Ok(out)
        }
    }
}

/// Redis in a container: stop the container, write the RDB where the server loads it from
/// through the archive API, start it again and wait until it answers.
fn restore_redis_container(
    ctx: &Ctx,
    repo: &Repository,
    conn: &RedisConn,
    container: &str,
    node: &Node,
) -> Result<u64> {
    let engine = hoard_docker::Engine::connect()?;
    let run = InContainer { engine: engine.clone(), container: container.to_string(), prelude: None };
    let (dir, file) = redis::locate(conn, &run)?;
    // Owner and mode of the file replaced (else of its directory), so the server can read it.
    let (uid, gid, mode) = owner_of(&engine, container, &format!("{dir}/{file}"))
        .or_else(|| owner_of(&engine, container, &dir).map(|(u, g, m)| (u, g, m & 0o666)))
        .unwrap_or((0, 0, 0o644));
    if !ctx.quiet && !ctx.json {
        eprintln!("stopping container {container} and putting the RDB in place at {dir}/{file}");
    }
    engine.stop_container(container)?;
    let (data_r, mut data_w) = pipe()?;
    let (tar_r, tar_w) = pipe()?;
    let size = node.size;
    let written = std::thread::scope(|s| -> Result<u64> {
        let producer = s.spawn(move || restore::dump_file(repo, node, &mut data_w));
        let file = file.clone();
        let archiver = s.spawn(move || -> std::io::Result<()> {
            let mut b = tar::Builder::new(tar_w);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            );
            b.append_data(&mut h, &file, data_r)?;
            b.finish()
        });
        let up = engine.write_archive(container, &dir, tar_r);
        let n = producer.join().map_err(|_| anyhow!("the thread reading the RDB panicked"))??;
        archiver.join().map_err(|_| anyhow!("the thread writing the archive panicked"))??;
        up?;
        Ok(n)
    });
    // Started again whatever happened: a stopped database is worse than an unrestored one.
    engine.start_container(container)?;
    let n = written?;
    let t = std::time::Instant::now();
    while !conn.alive_on(&run) {
        if t.elapsed() > std::time::Duration::from_secs(60) {
            bail!("{container} does not answer 60 s after it was started with the restored RDB");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(n)
}

/// Owner and mode of `path` in a container, from the first entry of its archive.
fn owner_of(engine: &hoard_docker::Engine, container: &str, path: &str) -> Option<(u64, u64, u32)> {
    let mut ar = tar::Archive::new(engine.read_archive(container, path).ok()?);
    let entry = ar.entries().ok()?.next()?.ok()?;
    let h = entry.header();
    Some((h.uid().ok()?, h.gid().ok()?, h.mode().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(image: &str, labels: &[(&str, &str)]) -> hoard_docker::ContainerInfo {
        hoard_docker::ContainerInfo {
            id: "id".into(),
            name: "c".into(),
            running: true,
            image: image.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            project: Some("p".into()),
            volumes: Vec::new(),
            binds: Vec::new(),
        }
    }

    #[test]
    fn databases_are_recognised_by_label_or_image() {
        assert_eq!(recognise(&container("postgres:16-alpine", &[])), Some(DbKind::Postgres));
        assert_eq!(recognise(&container("docker.io/bitnami/postgresql:16", &[])), Some(DbKind::Postgres));
        assert_eq!(recognise(&container("mariadb:11", &[])), Some(DbKind::Mysql));
        assert_eq!(recognise(&container("redis@sha256:abc", &[])), Some(DbKind::Redis));
        assert_eq!(recognise(&container("rediscommander/redis-commander", &[])), None);
        assert_eq!(recognise(&container("prometheuscommunity/postgres-exporter", &[])), None);
        assert_eq!(recognise(&container("myorg/db:1", &[(LABEL_DUMP, "postgres")])), Some(DbKind::Postgres));
        assert_eq!(recognise(&container("postgres:16", &[(LABEL_DUMP, "none")])), None);
        let mut stopped = container("postgres:16", &[]);
        stopped.running = false;
        assert_eq!(recognise(&stopped), None);
    }
}
