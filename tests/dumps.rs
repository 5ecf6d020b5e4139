//! Database dumps against real servers started here (tests/servers.rs): `hoard backup
//! postgres|mysql|redis` and `hoard restore postgres|mysql|redis`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::servers::*;
use crate::util::*;

/// pgbench's four tables and their keys (history has none: order by every column).
const PGBENCH_TABLES: &[(&str, &str)] = &[
    ("pgbench_accounts", "aid"),
    ("pgbench_branches", "bid"),
    ("pgbench_tellers", "tid"),
    ("pgbench_history", "tid, bid, aid, delta, mtime"),
];

/// A pgbench database of `scale`, its filler column made incompressible (base64 of md5s of
/// random numbers), so compression cannot hide what deduplication does.
fn pgbench(pg: &Pg, scale: u32) {
    run_ok(pg.client("createdb", "postgres").arg("bench"));
    run_ok(pg.client("pgbench", "bench").args(["-i", "-q", "-s", &scale.to_string()]));
    pg.psql(
        "bench",
        "UPDATE pgbench_accounts SET filler = left(replace(encode(decode(md5(random()::text) || \
         md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex'), 'base64'), E'\\n', ''), 84)",
    );
    pg.psql("bench", "VACUUM FULL pgbench_accounts");
}

/// A realistic night: rows appended to the history table and a few hundred rows updated
/// across the whole accounts table.
fn night(pg: &Pg) {
    pg.psql(
        "bench",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1 + g % 100, 1 + g % 10, \
         1 + (g * 7919) % 1000000, g % 5000 - 2500, timestamp '2026-01-02' + g * interval '1 second' \
         FROM generate_series(1, 20000) g",
    );
    let n = pg.psql("bench", "WITH u AS (UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 3331 = 17 RETURNING 1) SELECT count(*) FROM u");
    assert!(n.parse::<u32>().unwrap() >= 300, "{n} rows updated");
}

fn hoard_stdin(env: &Env, file: &std::path::Path) -> serde_json::Value {
    let f = std::fs::File::open(file).unwrap();
    let o = env.cmd(&["--json", "backup", "--stdin", "--name", "bench.sql"]).stdin(f).output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn restic(repo: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new("restic");
    c.args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", "restic test password")
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
        .stdin(Stdio::null());
    c
}

#[test]
fn postgres_pgbench_night_two_stores_less_than_restic_and_restores_identically() {
    let Some(pg) = found(Pg::start(), "PostgreSQL 15") else { return };
    let Some(_) = found(which("restic"), "restic (Debian package restic)") else { return };
    pgbench(&pg, 10);
    let env = Env::new();
    let url = pg.url("bench");
    let before = env.repo_size();
    let n1 = env.backup(&["postgres", "--url", &url]);
    let night1_repo = env.repo_size() - before;
    assert_eq!(n1["source_kind"], "postgres");
    assert_eq!(n1["source_name"], format!("127.0.0.1:{}/bench", pg.port));
    night(&pg);
    let before = env.repo_size();
    let n2 = env.backup(&["postgres", "--url", &url]);
    let night2_repo = env.repo_size() - before;
    assert_eq!(n2["parent"], n1["id"], "night 2's parent is night 1");

    // The same two dumps, byte for byte, through restic and through hoard at other chunk sizes.
    let dumps: Vec<std::path::PathBuf> = [&n1, &n2]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = env.path(&format!("night{}.sql", i + 1));
            let f = std::fs::File::create(&p).unwrap();
            let o = env.cmd(&["dump", s["id"].as_str().unwrap()]).stdout(f).output().unwrap();
            assert!(o.status.success(), "{}", output_text(&o));
            p
        })
        .collect();
    let dump_bytes = std::fs::metadata(&dumps[1]).unwrap().len();
    assert_eq!(n2["summary"]["bytes_total"].as_u64().unwrap(), dump_bytes);

    let rrepo = env.path("restic-repo");
    run_ok(&mut restic(&rrepo, &["init"]));
    let restic_night = |p: &std::path::Path| -> u64 {
        let before = dir_size(&rrepo);
        let f = std::fs::File::open(p).unwrap();
        run_ok(restic(&rrepo, &["backup", "--stdin", "--stdin-filename", "bench.sql"]).stdin(f));
        dir_size(&rrepo) - before
    };
    let _ = restic_night(&dumps[0]);
    let restic_night2 = restic_night(&dumps[1]);

    let mut by_size = Vec::new();
    for avg in ["1MiB", "256KiB", "64KiB"] {
        let e = Env::bare();
        e.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1", "--dump-chunk-size", avg]);
        hoard_stdin(&e, &dumps[0]);
        let before = e.repo_size();
        hoard_stdin(&e, &dumps[1]);
        by_size.push((avg, e.repo_size() - before));
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!("pgbench scale 10, dump {:.1} MiB; night 2 adds to the repository:", mib(dump_bytes));
    eprintln!("  hoard default (16 KiB average): {:>8.2} MiB (night 1: {:.1} MiB)", mib(night2_repo), mib(night1_repo));
    for (avg, b) in &by_size {
        eprintln!("  hoard --dump-chunk-size {avg:<7}: {:>8.2} MiB", mib(*b));
    }
    eprintln!("  restic 0.14 (defaults):         {:>8.2} MiB", mib(restic_night2));
    assert!(night2_repo < restic_night2, "hoard night 2 {night2_repo} B, restic {restic_night2} B");
    for (avg, b) in &by_size {
        assert!(night2_repo < *b, "the default stores {night2_repo} B on night 2, {avg} chunks {b} B");
    }

    // Restore into a new database: same rows, same order-independent checksums.
    let restored = env.run(&["restore", "postgres", "latest", "--url", &url, "--database", "restored"]);
    assert!(restored.status.success(), "{}", output_text(&restored));
    assert_eq!(pg.checksums("restored", PGBENCH_TABLES), pg.checksums("bench", PGBENCH_TABLES));
    // Again without --drop-existing: refused, the database is left alone.
    let again = env.run(&["restore", "postgres", "latest", "--url", &url, "--database", "restored"]);
    assert_eq!(again.status.code(), Some(1), "{}", output_text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--drop-existing"), "{}", output_text(&again));
    // Night 1 replaces it with --drop-existing, and has night 1's history.
    env.ok(&[
        "restore",
        "postgres",
        n1["id"].as_str().unwrap(),
        "--url",
        &url,
        "--database",
        "restored",
        "--drop-existing",
    ]);
    assert_eq!(pg.psql("restored", "SELECT count(*) FROM pgbench_history"), "0");
    // `hoard dump` gives the raw dump that psql loads.
    let raw = env.cmd(&["dump", "latest"]).output().unwrap();
    assert!(String::from_utf8_lossy(&raw.stdout[..4096]).contains("PostgreSQL database dump"));
}

#[test]
fn postgres_cluster_round_trip_keeps_roles_and_databases() {
    let Some(a) = found(Pg::start(), "PostgreSQL 15") else { return };
    a.psql("postgres", "CREATE ROLE alice LOGIN PASSWORD 'alice pw'");
    a.psql("postgres", "CREATE ROLE readers NOLOGIN");
    a.psql("postgres", "GRANT readers TO alice");
    for (db, rows) in [("app1", 1000), ("app2", 2000)] {
        a.psql("postgres", &format!("CREATE DATABASE {db} OWNER alice"));
        a.psql(db, &format!("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g; ALTER TABLE t OWNER TO alice; GRANT SELECT ON t TO readers"));
    }
    let env = Env::new();
    let s = env.backup(&["postgres", "--cluster", "--url", &a.url("postgres")]);
    assert_eq!(s["source_name"], format!("127.0.0.1:{}", a.port));

    let Some(b) = found(Pg::start(), "a second PostgreSQL 15 cluster") else { return };
    env.ok(&["restore", "postgres", "latest", "--url", &b.url("postgres")]);
    let roles = "SELECT string_agg(rolname || ':' || rolcanlogin, ',' ORDER BY rolname) FROM pg_roles WHERE rolname IN ('alice', 'readers')";
    assert_eq!(b.psql("postgres", roles), "alice:true,readers:false");
    assert_eq!(b.psql("postgres", "SELECT pg_has_role('alice', 'readers', 'MEMBER')"), "t");
    for db in ["app1", "app2"] {
        assert_eq!(b.checksums(db, &[("t", "id")]), a.checksums(db, &[("t", "id")]));
        assert_eq!(b.psql(db, "SELECT tableowner FROM pg_tables WHERE tablename = 't'"), "alice");
    }

    // --all-databases: one snapshot per database, each restorable on its own.
    let all = env.json(&["backup", "postgres", "--all-databases", "--url", &a.url("postgres")]);
    let names: Vec<&str> = all.as_array().unwrap().iter().map(|s| s["source_name"].as_str().unwrap()).collect();
    let inst = format!("127.0.0.1:{}", a.port);
    assert_eq!(names, [format!("{inst}/app1"), format!("{inst}/app2"), format!("{inst}/postgres")]);
    env.ok(&[
        "restore",
        "postgres",
        all[1]["id"].as_str().unwrap(),
        "--url",
        &b.url("postgres"),
        "--database",
        "copy2",
    ]);
    assert_eq!(b.checksums("copy2", &[("t", "id")]), a.checksums("app2", &[("t", "id")]));
}

fn assert_failed_cleanly(env: &Env, o: &std::process::Output, expect: &str) {
    assert_eq!(o.status.code(), Some(14), "{}", output_text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(expect), "stderr lacks {expect:?}: {}", output_text(o));
    assert!(err.contains("nothing was committed"), "{}", output_text(o));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0, "a failed dump left a snapshot");
}

#[test]
fn postgres_failed_dumps_commit_nothing() {
    let Some(mut pg) = found(Pg::start(), "PostgreSQL 15") else { return };
    let env = Env::new();
    // A database that does not exist.
    let o = env.run(&["backup", "postgres", "--url", &pg.url("nope")]);
    assert_failed_cleanly(&env, &o, "database \"nope\" does not exist");
    // A wrong password; and the password is not printed.
    let bad = format!("postgresql://bench:wrong-pw@127.0.0.1:{}/postgres", pg.port);
    let o = env.run(&["backup", "postgres", "--url", &bad]);
    assert_failed_cleanly(&env, &o, "password authentication failed");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("wrong-pw"));

    // The server dies while the dump runs. The whole dump takes a third of a second, so pg_dump
    // is frozen while the server is still sending it the first table (it then waits on a full
    // socket), the server is killed, and only then does pg_dump go on.
    pgbench(&pg, 4);
    let child = env
        .cmd(&["backup", "postgres", "--url", &pg.url("bench")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pg_dump = freeze_pg_dump_mid_copy(&pg, child.id());
    pg.kill();
    // SAFETY: kill(2) on a pid; it touches no memory.
    unsafe { libc::kill(pg_dump, libc::SIGCONT) };
    let o = child.wait_with_output().unwrap();
    assert_failed_cleanly(&env, &o, "Dumping the contents of table \"pgbench_accounts\" failed");
    // A server that is not there at all.
    let o = env.run(&["backup", "postgres", "--url", &pg.url("bench")]);
    assert_failed_cleanly(&env, &o, "Connection refused");
    env.ok(&["check"]);
}

/// Stops (SIGSTOP) the pg_dump that the process `parent` runs, at a moment when the server is
/// still sending it `pgbench_accounts`, the first of pgbench's tables: the rest of the dump then
/// needs the server, whatever the socket buffers already hold. Returns pg_dump's pid, stopped.
fn freeze_pg_dump_mid_copy(pg: &Pg, parent: u32) -> i32 {
    let copying = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' \
                   AND state = 'active' AND query LIKE 'COPY public.pgbench_accounts %'";
    let start = std::time::Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "pg_dump was never seen copying pgbench_accounts");
        if let Some(pid) = child_named(parent, "pg_dump") {
            // SAFETY: kill(2) on a pid; it touches no memory.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            if pg.psql("postgres", copying) != "0" {
                return pid;
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pid of a child of `parent` whose command name is `name`, from /proc.
fn child_named(parent: u32, name: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
        let (head, tail) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        let ppid: u32 = tail.split_whitespace().nth(1)?.parse().ok()?;
        (comm == name && ppid == parent).then_some(pid)
    })
}

#[test]
fn redis_round_trip_keeps_keys_types_and_ttls() {
    let Some(r) = found(Redis::start(), "Redis (Debian package redis-server)") else { return };
    r.cli(&["SET", "greeting", "hello"]);
    r.cli(&["SET", "session:1", "x", "EX", "3600"]);
    r.cli(&["HSET", "user:1", "name", "ann", "age", "41"]);
    r.cli(&["RPUSH", "queue", "a", "b", "c"]);
    r.cli(&["SADD", "tags", "x", "y", "z"]);
    r.cli(&["ZADD", "scores", "1", "one", "2.5", "two"]);
    r.cli(&["XADD", "events", "1-1", "kind", "login"]);
    r.cli(&["EXPIRE", "user:1", "7200"]);
    r.cli(&["-n", "1", "SET", "other-db", "kept"]);
    // Enough keys for the RDB to span several reads.
    let fill = "for i = 1, 20000 do redis.call('SET', 'filler:' .. i, string.rep('v', 100) .. i) end";
    r.cli(&["EVAL", fill, "0"]);
    let before = r.describe();
    assert_eq!(before.len(), 8, "{before:?}");
    assert_eq!(r.cli(&["DBSIZE"]).trim(), "20007");

    let env = Env::new();
    let s = env.backup(&["redis", "--url", &r.url()]);
    assert_eq!(s["source_kind"], "redis");
    assert_eq!(s["source_name"], format!("127.0.0.1:{}", r.port));
    let raw = env.cmd(&["dump", "latest"]).output().unwrap().stdout;
    assert_eq!(&raw[..5], b"REDIS");
    assert_eq!(raw[raw.len() - 9], 0xFF, "the RDB ends with its EOF opcode and CRC, no trailer");

    // The data changes, then the snapshot is put back.
    r.cli(&["FLUSHALL"]);
    r.cli(&["SET", "new-key", "should vanish"]);
    env.ok(&["restore", "redis", "latest", "--url", &r.url(), "--start-command", &r.start_command()]);
    assert_eq!(r.describe(), before);
    assert_eq!(r.cli(&["DBSIZE"]).trim(), "20007");
    assert_eq!(r.cli(&["GET", "filler:777"]).trim(), format!("{}777", "v".repeat(100)));

    // A wrong password commits nothing.
    let bad = format!("redis://:wrong@127.0.0.1:{}", r.port);
    let o = env.run(&["backup", "redis", "--url", &bad]);
    assert_eq!(o.status.code(), Some(14), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing was committed"), "{}", output_text(&o));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
}

/// Row count and md5 over every row in key order, and the routines, triggers and events.
fn maria_describe(m: &Maria, db: &str) -> Vec<String> {
    describe_shop(&|db, sql| m.sql(db, sql), db)
}

fn describe_shop(sql: &dyn Fn(&str, &str) -> String, db: &str) -> Vec<String> {
    let mut v: Vec<String> = [("customers", "id", "CONCAT_WS('|', id, name, HEX(photo))"), ("orders", "id", "CONCAT_WS('|', id, customer, total, note)")]
        .iter()
        .map(|(t, key, row)| {
            sql(db, &format!("SET SESSION group_concat_max_len = 1 << 30; SELECT COUNT(*), MD5(GROUP_CONCAT({row} ORDER BY {key} SEPARATOR ',')) FROM {t}"))
        })
        .collect();
    v.push(sql(db, &format!("SELECT GROUP_CONCAT(ROUTINE_NAME ORDER BY 1) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{db}'")));
    v.push(sql(db, &format!("SELECT GROUP_CONCAT(TRIGGER_NAME ORDER BY 1) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{db}'")));
    v.push(sql(
        db,
        &format!(
            "SELECT GROUP_CONCAT(EVENT_NAME ORDER BY 1) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = '{db}'"
        ),
    ));
    v
}

/// The `shop` database: InnoDB tables with binary and utf8mb4 data, a trigger, a procedure and
/// an event.
fn make_shop(sql: &dyn Fn(&str, &str) -> String) {
    sql("mysql", "CREATE DATABASE shop CHARACTER SET utf8mb4");
    sql(
        "shop",
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100), photo BLOB) ENGINE=InnoDB; \
         CREATE TABLE orders (id INT PRIMARY KEY AUTO_INCREMENT, customer INT, total DECIMAL(10,2), note TEXT) ENGINE=InnoDB; \
         INSERT INTO customers SELECT seq, CONCAT('zoë ☃ ', seq), UNHEX(MD5(seq)) FROM seq_1_to_5000; \
         INSERT INTO orders (customer, total, note) SELECT seq % 5000 + 1, seq * 1.25, REPEAT('n', seq % 50) FROM seq_1_to_20000; \
         CREATE TRIGGER orders_positive BEFORE INSERT ON orders FOR EACH ROW SET NEW.total = ABS(NEW.total); \
         CREATE PROCEDURE order_count(OUT n INT) SELECT COUNT(*) INTO n FROM orders; \
         CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM orders WHERE total < 0",
    );
}

#[test]
fn mariadb_round_trip_keeps_rows_routines_triggers_and_events() {
    let Some(m) = found(Maria::start(), "MariaDB (Debian packages mariadb-server, mariadb-client)") else { return };
    make_shop(&|db, sql| m.sql(db, sql));
    let source = maria_describe(&m, "shop");
    assert!(source[2..].iter().all(|s| !s.is_empty() && s != "NULL"), "{source:?}");

    let env = Env::new();
    let s = env.backup(&["mysql", "--url", &m.url("shop")]);
    assert_eq!(s["source_kind"], "mysql");
    assert_eq!(s["source_name"], format!("127.0.0.1:{}/shop", m.port));
    m.sql("shop", "DELETE FROM orders WHERE id % 7 = 0");
    env.ok(&["restore", "mysql", "latest", "--url", &m.url(""), "--database", "shop_copy"]);
    assert_eq!(maria_describe(&m, "shop_copy"), source);
    // The dump is consistent and repeatable: an unchanged database dumps to the same bytes.
    env.ok(&["restore", "mysql", "latest", "--url", &m.url(""), "--database", "shop", "--drop-existing"]);
    assert_eq!(maria_describe(&m, "shop"), source);
    let again = env.backup(&["mysql", "--url", &m.url("shop")]);
    let raw = |id: &serde_json::Value| env.cmd(&["dump", id.as_str().unwrap()]).output().unwrap().stdout;
    assert!(raw(&again["id"]) == raw(&s["id"]), "the restored database dumps differently");
    assert_eq!(again["summary"]["blobs_new"], 1, "only the new snapshot's tree is new: {again}");

    // A database that is not there: nothing committed, the tool's words in the message.
    let o = env.run(&["backup", "mysql", "--url", &m.url("nope")]);
    assert_eq!(o.status.code(), Some(14), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Unknown database"), "{}", output_text(&o));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);
}

#[test]
fn postgres_in_a_container_round_trips_through_docker_exec() {
    let Some(c) = found(PgContainer::start(), "a PostgreSQL container (Docker engine, postgresql-15)") else { return };
    c.exec(&["createdb", "-U", "bench", "bench"]);
    c.exec(&["pgbench", "-U", "bench", "-i", "-q", "-s", "10", "bench"]);
    c.psql(
        "bench",
        "UPDATE pgbench_accounts SET filler = left(replace(encode(decode(md5(random()::text) || \
         md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex'), 'base64'), E'\\n', ''), 84)",
    );
    let env = Env::new();
    let n1 = env.backup(&["postgres", "--container", &c.name, "--database", "bench"]);
    assert_eq!(n1["source_name"], format!("{}/bench", c.name));
    c.psql("bench", "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 3331 = 17");
    c.psql("bench", "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, g, g, now() FROM generate_series(1, 5000) g");
    let n2 = env.backup(&["postgres", "--container", &c.name, "--database", "bench"]);
    assert_eq!(n2["parent"], n1["id"]);
    let total = n2["summary"]["bytes_total"].as_u64().unwrap();
    let new = n2["summary"]["bytes_new"].as_u64().unwrap();
    eprintln!("container dump {total} bytes; night 2 new {new} bytes");
    assert!(new < total / 10, "night 2 stored {new} of {total} bytes");

    env.ok(&["restore", "postgres", "latest", "--container", &c.name, "--database", "restored"]);
    let sums = |db: &str| -> Vec<String> {
        PGBENCH_TABLES
            .iter()
            .map(|(t, key)| {
                c.psql(db, &format!("SELECT '{t}', count(*), md5(string_agg(x::text, '|' ORDER BY {key})) FROM {t} x"))
            })
            .collect()
    };
    assert_eq!(sums("restored"), sums("bench"));

    // A missing database inside the container: the tool's words, nothing committed.
    let o = env.run(&["backup", "postgres", "--container", &c.name, "--database", "nope"]);
    assert_eq!(o.status.code(), Some(14), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"nope\" does not exist"), "{}", output_text(&o));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);
}

/// Peak resident memory of hoard while it dumps a database. In CI a pgbench scale of 40 (a dump
/// of about 0.36 GiB: buffers that grew with the dump, as zstd's once did, would already pass
/// the bound); by hand, larger: `HOARD_MEMORY_SCALE=150` makes a 1.9 GB dump in minutes.
/// `HOARD_MEMORY_SCALE=150 cargo test --test tests postgres_dump_memory -- --nocapture`
#[test]
fn postgres_dump_memory_stays_flat() {
    let scale: u32 = std::env::var("HOARD_MEMORY_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let Some(pg) = found(Pg::start(), "PostgreSQL 15") else { return };
    run_ok(pg.client("createdb", "postgres").arg("bench"));
    run_ok(pg.client("pgbench", "bench").args(["-i", "-q", "-s", &scale.to_string()]));
    let env = Env::new();
    let mut child = env
        .cmd(&["--json", "backup", "postgres", "--url", &pg.url("bench")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(s) = std::fs::read_to_string(&status) {
            if let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:")) {
                peak_kib = peak_kib.max(l.split_whitespace().nth(1).unwrap().parse().unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let total = s["summary"]["bytes_total"].as_u64().unwrap();
    eprintln!(
        "pgbench scale {scale}: dump of {:.2} GiB in {:.1} s; hoard's peak resident memory {:.0} MiB",
        total as f64 / (1u64 << 30) as f64,
        s["summary"]["duration_ms"].as_u64().unwrap() as f64 / 1000.0,
        peak_kib as f64 / 1024.0
    );
    // Chunks in flight (32 MiB), two open packs, two being uploaded, read buffers: about 100 MiB at
    // most, whatever the size of the dump (81 MiB measured for a 2.77 GiB dump).
    assert!(peak_kib < 128 << 10, "peak {peak_kib} KiB");
}

#[test]
fn mariadb_in_a_container_round_trips_through_docker_exec() {
    let Some(c) = found(MariaContainer::start(), "a MariaDB container (Docker engine, mariadb-server)") else { return };
    let sql = |db: &str, q: &str| c.sql(db, q);
    make_shop(&sql);
    let source = describe_shop(&sql, "shop");
    let env = Env::new();
    // No --url: root, with the image's MARIADB_ROOT_PASSWORD, through the container's socket.
    let s = env.backup(&["mysql", "--container", &c.name, "--database", "shop"]);
    assert_eq!(s["source_name"], format!("{}/shop", c.name));
    env.ok(&["restore", "mysql", "latest", "--container", &c.name, "--database", "shop_copy"]);
    assert_eq!(describe_shop(&sql, "shop_copy"), source);
    // A wrong password given in --url wins over the image's, and fails cleanly.
    let o = env.run(&["backup", "mysql", "--container", &c.name, "--url", "mysql://root:wrong@/shop"]);
    assert_eq!(o.status.code(), Some(14), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Access denied"), "{}", output_text(&o));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_compose_projects_database_container_is_dumped_not_copied() {
    let project = format!("hoardtest{}", free_port());
    let (db_vol, app_vol) = (format!("{project}_pgdata"), format!("{project}_uploads"));
    let label = format!("com.docker.compose.project={project}");
    let Some(c) = found(
        // Its image is not called postgres: the label says what it is.
        PgContainer::start_with(&[
            "--label",
            &label,
            "--label",
            "hoard.dump=postgres",
            "-v",
            &format!("{db_vol}:/srv/pgdata"),
        ]),
        "a PostgreSQL container (Docker engine, postgresql-15)",
    ) else {
        return;
    };
    let Some(redis) = found(
        RedisContainer::start_with(&["--label", &label, "--label", "hoard.dump=redis"]),
        "a Redis container (Docker engine, redis-server)",
    ) else {
        return;
    };
    redis.cli(&["SET", "cached", "yes"]);
    let app = format!("{project}-app");
    // An application container of the project, created only: its volume is the project's all the same.
    run_ok(Command::new("docker").args(["create", "--name", &app, "--label", &label, "--network", "none"]).args([
        "-v",
        &format!("{app_vol}:/data"),
        "hoard-test-host-usr:latest",
        "sleep",
        "600",
    ]));
    run_ok(
        Command::new("docker").args(["run", "--rm", "-v", &format!("{app_vol}:/data"), "-v", "/usr:/usr:ro"]).args([
            "hoard-test-host-usr:latest",
            "sh",
            "-c",
            "echo uploaded > /data/file",
        ]),
    );
    let cleanup = Cleanup(vec![
        // The containers first: a volume in use cannot be removed.
        vec!["rm".into(), "-f".into(), app.clone(), c.name.clone()],
        vec!["volume".into(), "rm".into(), "-f".into(), app_vol.clone(), db_vol.clone()],
    ]);
    c.exec(&["createdb", "-U", "bench", "shop"]);
    c.psql("shop", "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g");
    c.psql("postgres", "CREATE ROLE app LOGIN");

    let env = Env::new();
    let o = env.run(&["backup", "docker", "--project", &project]);
    assert!(o.status.success(), "{}", output_text(&o));
    let snaps = env.json(&["snapshots"]);
    let mut kinds: Vec<(String, String)> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["source_kind"].as_str().unwrap().into(), s["source_name"].as_str().unwrap().into()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("docker-volume".to_string(), app_vol.clone()),
            ("postgres".to_string(), c.name.clone()),
            ("redis".to_string(), redis.name.clone())
        ]
    );
    let pg = snaps.as_array().unwrap().iter().find(|s| s["source_kind"] == "postgres").unwrap();
    assert!(pg["tags"].as_array().unwrap().iter().any(|t| t == &format!("project={project}")), "{pg}");
    let dump = env.cmd(&["dump", pg["id"].as_str().unwrap()]).output().unwrap().stdout;
    let dump = String::from_utf8_lossy(&dump);
    assert!(dump.contains("CREATE ROLE app") && dump.contains("CREATE DATABASE shop"), "not a pg_dumpall");

    // Asked otherwise, the database's volume is copied raw like the others, and nothing dumped.
    let o = env.run(&["backup", "docker", "--project", &project, "--raw-db-volumes"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let n = env.json(&["snapshots", "--filter-source", "docker-volume", "--filter-name", &db_vol]);
    assert_eq!(n.as_array().unwrap().len(), 1);
    assert_eq!(env.json(&["snapshots", "--filter-source", "postgres"]).as_array().unwrap().len(), 1);
    assert_eq!(env.json(&["snapshots", "--filter-source", "redis"]).as_array().unwrap().len(), 1);
    drop(cleanup);
}

/// Runs `docker ARGS` for each entry when dropped.
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in &self.0 {
            let _ = Command::new("docker").args(args).output();
        }
    }
}

#[test]
fn redis_in_a_container_round_trips_through_docker_exec_and_the_archive_api() {
    let Some(r) = found(RedisContainer::start(), "a Redis container (Docker engine, redis-server)") else { return };
    r.cli(&["SET", "greeting", "hello"]);
    r.cli(&["SET", "session", "x", "EX", "3600"]);
    r.cli(&["HSET", "user:1", "name", "ann"]);
    r.cli(&["RPUSH", "queue", "a", "b"]);
    let env = Env::new();
    let s = env.backup(&["redis", "--container", &r.name]);
    assert_eq!(s["source_name"], r.name.as_str());
    r.cli(&["FLUSHALL"]);
    r.cli(&["SET", "new-key", "should vanish"]);
    env.ok(&["restore", "redis", "latest", "--container", &r.name]);
    assert_eq!(r.cli(&["DBSIZE"]).trim(), "4");
    assert_eq!(r.cli(&["GET", "greeting"]).trim(), "hello");
    assert_eq!(r.cli(&["HGET", "user:1", "name"]).trim(), "ann");
    assert_eq!(r.cli(&["LRANGE", "queue", "0", "-1"]), "a\nb\n");
    assert!(r.cli(&["TTL", "session"]).trim().parse::<i64>().unwrap() > 0);
    assert_eq!(r.cli(&["EXISTS", "new-key"]).trim(), "0");
}
