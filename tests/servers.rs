//! Throwaway database servers from Debian's packages for the dump tests: each in its own
//! temporary directory, on a free loopback port, run as `nobody` when we are root (PostgreSQL
//! and MariaDB refuse root). They stop when dropped.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The superuser's password in every test server.
pub const DB_PASSWORD: &str = "s3cret pw";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program args` as nobody when we are root.
fn as_server_user(program: &str, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", program]).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

/// A directory the server user owns, inside a fresh temporary directory.
fn server_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    }
    dir
}

pub fn run_ok(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn wait_for(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what} not ready after {secs}s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PostgreSQL 15 cluster: superuser `bench`, password auth on 127.0.0.1:port.
pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    data: PathBuf,
    stopped: bool,
}

impl Pg {
    pub fn start() -> Result<Pg, String> {
        if !Path::new(PG_BIN).join("initdb").is_file() {
            return Err(format!("{PG_BIN}/initdb (Debian package postgresql-15)"));
        }
        for tool in ["pg_dump", "pg_dumpall", "psql", "createdb", "dropdb", "pgbench"] {
            which(tool)?;
        }
        let dir = server_dir("hoard-pg-");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        fs::write(&pwfile, DB_PASSWORD).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&pwfile, Some(65534), Some(65534)).unwrap();
        }
        let d = data.to_str().unwrap();
        let pw = format!("--pwfile={}", pwfile.display());
        run_ok(
            as_server_user(
                &format!("{PG_BIN}/initdb"),
                &[
                    "-D",
                    d,
                    "-U",
                    "bench",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    &pw,
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )
            .current_dir(dir.path()),
        );
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            dir.path().display()
        );
        let log = dir.path().join("server.log");
        run_ok(
            as_server_user(
                &format!("{PG_BIN}/pg_ctl"),
                &["-D", d, "-l", log.to_str().unwrap(), "-o", &opts, "-w", "-t", "60", "start"],
            )
            .current_dir(dir.path()),
        );
        Ok(Pg { dir, port, data, stopped: false })
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgresql://bench:s3cret%20pw@127.0.0.1:{}/{db}", self.port)
    }

    /// A client command connected as the superuser over TCP.
    pub fn client(&self, program: &str, db: &str) -> Command {
        let mut c = Command::new(program);
        c.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "bench")
            .env("PGPASSWORD", DB_PASSWORD)
            .env("PGDATABASE", db)
            .env("PGTZ", "UTC")
            .stdin(Stdio::null());
        c
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run_ok(self.client("psql", db).args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]));
        out.trim_end_matches('\n').to_string()
    }

    /// Stops the server at once (a crash, as far as clients can tell).
    pub fn kill(&mut self) {
        let d = self.data.to_str().unwrap().to_string();
        let _ = as_server_user(&format!("{PG_BIN}/pg_ctl"), &["-D", &d, "-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
        self.stopped = true;
    }

    /// Row count and an md5 over every row in key order, per table, of `tables` (name, key).
    pub fn checksums(&self, db: &str, tables: &[(&str, &str)]) -> Vec<String> {
        tables
            .iter()
            .map(|(t, key)| {
                self.psql(
                    db,
                    &format!("SELECT '{t}', count(*), md5(string_agg(x::text, '|' ORDER BY {key})) FROM {t} x"),
                )
            })
            .collect()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if !self.stopped {
            self.kill();
        }
    }
}

pub fn which(program: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("`{program}` on PATH"))
}

pub fn output_text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A Redis server with a password, its RDB and config in a temporary directory.
pub struct Redis {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Result<Redis, String> {
        which("redis-server")?;
        which("redis-cli")?;
        let dir = tempfile::Builder::new().prefix("hoard-redis-").tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        fs::write(
            dir.path().join("redis.conf"),
            format!(
                "port {port}\nbind 127.0.0.1\ndir {d}\ndbfilename dump.rdb\nsave \"\"\nappendonly no\n\
                 daemonize yes\npidfile {d}/redis.pid\nlogfile {d}/redis.log\nrequirepass \"{DB_PASSWORD}\"\n"
            ),
        )
        .unwrap();
        let r = Redis { dir, port };
        run_ok(Command::new("sh").arg("-c").arg(r.start_command()));
        wait_for("redis", 30, || r.try_cli(&["PING"]).is_some_and(|s| s.trim() == "PONG"));
        Ok(r)
    }

    pub fn start_command(&self) -> String {
        format!("redis-server {}", self.dir.path().join("redis.conf").display())
    }

    pub fn url(&self) -> String {
        format!("redis://:s3cret%20pw@127.0.0.1:{}", self.port)
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let o = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--no-auth-warning"])
            .args(args)
            .env("REDISCLI_AUTH", DB_PASSWORD)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// Every key of databases 0 and 1 but the `filler:*` ones with its type, value and whether
    /// it has a TTL, sorted.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for db in ["0", "1"] {
            let keys = self.cli(&["-n", db, "--scan"]);
            for k in keys.lines().filter(|k| !k.starts_with("filler:")) {
                let t = self.cli(&["-n", db, "TYPE", k]).trim().to_string();
                let v = match t.as_str() {
                    "string" => self.cli(&["-n", db, "GET", k]),
                    "hash" => sorted(self.cli(&["-n", db, "HGETALL", k])),
                    "list" => self.cli(&["-n", db, "LRANGE", k, "0", "-1"]),
                    "set" => sorted(self.cli(&["-n", db, "SMEMBERS", k])),
                    "zset" => self.cli(&["-n", db, "ZRANGE", k, "0", "-1", "WITHSCORES"]),
                    "stream" => self.cli(&["-n", db, "XRANGE", k, "-", "+"]),
                    other => panic!("unexpected type {other}"),
                };
                let ttl: i64 = self.cli(&["-n", db, "TTL", k]).trim().parse().unwrap();
                out.push(format!("{db}/{k} {t} ttl:{} {v}", if ttl > 0 { "yes" } else { &"no" }));
            }
        }
        out.sort();
        out
    }

    pub fn stop(&self) {
        let _ = self.try_cli(&["SHUTDOWN", "NOSAVE"]);
    }
}

fn sorted(s: String) -> String {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort();
    v.join("\n")
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A MariaDB server from Debian's package: user `bench` with a password, on 127.0.0.1:port.
pub struct Maria {
    /// Its data directory, removed after the server is stopped (fields drop after `drop`).
    _dir: tempfile::TempDir,
    pub port: u16,
    server: Option<std::process::Child>,
}

impl Maria {
    pub fn start() -> Result<Maria, String> {
        for p in ["mariadb-install-db", "mariadbd", "mariadb", "mariadb-dump"] {
            which(p).or_else(|_| {
                Path::new("/usr/sbin").join(p).is_file().then(|| PathBuf::from(p)).ok_or_else(|| format!("`{p}`"))
            })?;
        }
        let dir = server_dir("hoard-maria-");
        let d = dir.path().to_str().unwrap().to_string();
        run_ok(
            as_server_user(
                "mariadb-install-db",
                &[
                    "--no-defaults",
                    &format!("--datadir={d}/data"),
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
            )
            .current_dir(dir.path()),
        );
        let port = free_port();
        let server = as_server_user(
            "/usr/sbin/mariadbd",
            &[
                "--no-defaults",
                &format!("--datadir={d}/data"),
                &format!("--port={port}"),
                "--bind-address=127.0.0.1",
                &format!("--socket={d}/sock"),
                &format!("--pid-file={d}/pid"),
                &format!("--log-error={d}/error.log"),
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--event-scheduler=OFF",
            ],
        )
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let m = Maria { _dir: dir, port, server: Some(server) };
        let sock = format!("{d}/sock");
        wait_for("mariadb", 60, || {
            Command::new("mariadb")
                .args(["--no-defaults", "-S", &sock, "-u", "root", "-e", "SELECT 1"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        run_ok(Command::new("mariadb").args([
            "--no-defaults",
            "-S",
            &sock,
            "-u",
            "root",
            "-e",
            &format!(
                "CREATE USER bench@'%' IDENTIFIED BY '{DB_PASSWORD}'; GRANT ALL ON *.* TO bench@'%' WITH GRANT OPTION"
            ),
        ]));
        Ok(m)
    }

    pub fn url(&self, db: &str) -> String {
        format!("mysql://bench:s3cret%20pw@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL as `bench` over TCP and returns the rows, tab-separated.
    pub fn sql(&self, db: &str, statement: &str) -> String {
        let out = run_ok(
            Command::new("mariadb")
                .args(["--no-defaults", "-h", "127.0.0.1", "-P", &self.port.to_string(), "-u", "bench", "-N", "-B"])
                .arg(format!("--database={db}"))
                .arg(format!("--execute={statement}"))
                .env("MYSQL_PWD", DB_PASSWORD),
        );
        out.trim_end_matches('\n').to_string()
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            // SAFETY: the pid is our child's, not yet waited for.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// A PostgreSQL 15 container without a registry: an image of a few directories and symlinks
/// (`bin -> usr/bin`, …) run with this host's /usr bind-mounted read-only, as nobody, listening
/// on its socket in /tmp only (no network).
pub struct PgContainer {
    pub name: String,
}

/// An image of a few directories and symlinks into /usr, which containers get from the host
/// (read-only): a database server container without a registry.
const PG_IMAGE: &str = "hoard-test-host-usr:latest";

fn docker_ready() -> Result<(), String> {
    match Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("the Docker engine: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("the docker command: {e}")),
    }
}

fn host_usr_image() -> Result<(), String> {
    docker_ready()?;
    let have = Command::new("docker").args(["image", "inspect", PG_IMAGE]).output().map_err(|e| e.to_string())?;
    if have.status.success() {
        return Ok(());
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["tmp", "etc", "var/run/postgresql", "run/mysqld"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::set_permissions(r.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    for (l, t) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")] {
        std::os::unix::fs::symlink(t, r.join(l)).unwrap();
    }
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n")
        .unwrap();
    fs::write(r.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    let script = format!("tar -C {} -c . | docker import - {PG_IMAGE}", r.display());
    run_ok(Command::new("sh").arg("-c").arg(script));
    Ok(())
}

impl PgContainer {
    pub fn start() -> Result<PgContainer, String> {
        PgContainer::start_with(&[])
    }

    /// With more `docker run` options (labels, volumes).
    pub fn start_with(extra: &[&str]) -> Result<PgContainer, String> {
        if !Path::new(PG_BIN).join("postgres").is_file() {
            return Err(format!("{PG_BIN}/postgres (Debian package postgresql-15)"));
        }
        host_usr_image()?;
        let name = format!("hoard-test-pg-{}-{}", std::process::id(), free_port());
        run_ok(
            Command::new("docker")
                .args([
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--user",
                    "65534:65534",
                    "--network",
                    "none",
                    "-v",
                    "/usr:/usr:ro",
                    "-e",
                    &format!("PATH={PG_BIN}:/usr/bin"),
                    "-e",
                    "PGHOST=/tmp",
                    "-e",
                    "POSTGRES_USER=bench",
                ])
                .args(extra)
                .args([
                    PG_IMAGE,
                    "sh",
                    "-c",
                    "initdb -D /tmp/data -U bench -A trust --no-sync >/tmp/initdb.log 2>&1 && \
             exec postgres -D /tmp/data -k /tmp -c listen_addresses= -c fsync=off -c full_page_writes=off",
                ]),
        );
        let c = PgContainer { name };
        wait_for("postgres in its container", 120, || {
            Command::new("docker")
                .args(["exec", &c.name, "psql", "-U", "bench", "-d", "postgres", "-c", "SELECT 1"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        Ok(c)
    }

    pub fn exec(&self, args: &[&str]) -> String {
        run_ok(Command::new("docker").args(["exec", &self.name]).args(args))
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out =
            self.exec(&["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "bench", "-d", db, "-c", sql]);
        out.trim_end_matches('\n').to_string()
    }
}

impl Drop for PgContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).output();
    }
}

/// A MariaDB container without a registry (the host's /usr, read-only), run as root like the
/// official image's exec, root's password in `MARIADB_ROOT_PASSWORD` as the official image has it.
pub struct MariaContainer {
    pub name: String,
}

impl MariaContainer {
    pub fn start() -> Result<MariaContainer, String> {
        if !Path::new("/usr/sbin/mariadbd").is_file() {
            return Err("/usr/sbin/mariadbd (Debian package mariadb-server)".into());
        }
        host_usr_image()?;
        let name = format!("hoard-test-maria-{}-{}", std::process::id(), free_port());
        run_ok(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "-v",
            "/usr:/usr:ro",
            "-e",
            "PATH=/usr/bin:/usr/sbin",
            "-e",
            "MYSQL_UNIX_PORT=/tmp/sock",
            "-e",
            &format!("MARIADB_ROOT_PASSWORD={DB_PASSWORD}"),
            PG_IMAGE,
            "sh",
            "-c",
            "mariadb-install-db --no-defaults --user=root --datadir=/tmp/data --auth-root-authentication-method=normal \
             --skip-test-db >/tmp/install.log 2>&1 && exec mariadbd --no-defaults --user=root --datadir=/tmp/data \
             --socket=/tmp/sock --skip-networking --innodb-buffer-pool-size=32M",
        ]));
        let c = MariaContainer { name };
        wait_for("mariadb in its container", 120, || {
            Command::new("docker")
                .args(["exec", &c.name, "mariadb", "-u", "root", "-e", "SELECT 1"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        c.exec(&["mariadb", "-u", "root", "-e", &format!("ALTER USER root@localhost IDENTIFIED BY '{DB_PASSWORD}'")]);
        Ok(c)
    }

    pub fn exec(&self, args: &[&str]) -> String {
        run_ok(Command::new("docker").args(["exec", &self.name]).args(args))
    }

    pub fn sql(&self, db: &str, statement: &str) -> String {
        let out =
            run_ok(Command::new("docker").args(["exec", "-e", &format!("MYSQL_PWD={DB_PASSWORD}"), &self.name]).args(
                ["mariadb", "-u", "root", "-N", "-B", &format!("--database={db}"), &format!("--execute={statement}")],
            ));
        out.trim_end_matches('\n').to_string()
    }
}

impl Drop for MariaContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).output();
    }
}

/// A Redis container without a registry (the host's /usr, read-only), its RDB in /tmp.
pub struct RedisContainer {
    pub name: String,
}

impl RedisContainer {
    pub fn start() -> Result<RedisContainer, String> {
        RedisContainer::start_with(&[])
    }

    /// With more `docker run` options (labels, volumes).
    pub fn start_with(extra: &[&str]) -> Result<RedisContainer, String> {
        which("redis-server")?;
        host_usr_image()?;
        let name = format!("hoard-test-redis-{}-{}", std::process::id(), free_port());
        run_ok(
            Command::new("docker")
                .args([
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--user",
                    "65534:65534",
                    "--network",
                    "none",
                    "-v",
                    "/usr:/usr:ro",
                    "-e",
                    "PATH=/usr/bin",
                ])
                .args(extra)
                .args([
                    PG_IMAGE,
                    "redis-server",
                    "--dir",
                    "/tmp",
                    "--dbfilename",
                    "dump.rdb",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--bind",
                    "127.0.0.1",
                ]),
        );
        let c = RedisContainer { name };
        wait_for("redis in its container", 60, || c.try_cli(&["PING"]).is_some_and(|s| s.trim() == "PONG"));
        Ok(c)
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let o = Command::new("docker").args(["exec", &self.name, "redis-cli"]).args(args).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|| panic!("redis-cli {args:?} in {} failed", self.name))
    }
}

impl Drop for RedisContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).output();
    }
}
