//! PostgreSQL: `pg_dump` (one database, plain SQL: its COPY blocks keep row order from night to
//! night, so unchanged rows cut into the same chunks), `pg_dumpall` (the whole cluster: roles,
//! tablespaces and every database), and the restore side (`createdb`, `dropdb`, `psql`).
//!
//! Connection settings reach the tools as libpq environment variables (`PGHOST`, `PGPORT`,
//! `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, …), so neither a password nor a
//! conninfo string ever appears in argv.

use crate::{plain_name, DumpError, Invocation, Result, Runner, Running, Url};

/// Where a PostgreSQL server is and who we are to it. Unset parts are left to libpq's own
/// defaults and to the environment the tools inherit.
#[derive(Clone, Debug, Default)]
pub struct PgConn {
    pub host: Option<String>,
    pub port: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The database named by the URL, if any.
    pub dbname: Option<String>,
    /// Further libpq settings, as environment variables (`PGSSLMODE`, …).
    pub env: Vec<(String, String)>,
}

/// URL query parameters we pass on, and the libpq variable each becomes.
const PARAMS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("dbname", "PGDATABASE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("application_name", "PGAPPNAME"),
    ("options", "PGOPTIONS"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
];

impl PgConn {
    /// `postgres[ql]://[user[:password]@][host][:port][/dbname][?param=value&…]`.
    pub fn from_url(s: &str) -> Result<PgConn> {
        let u = Url::parse(s, &["postgresql", "postgres"])?;
        let mut c = PgConn {
            host: u.host,
            port: u.port.map(|p| p.to_string()),
            user: u.user,
            password: u.password,
            dbname: u.path,
            env: Vec::new(),
        };
        for (k, v) in u.query {
            match k.as_str() {
                "host" => c.host = Some(v),
                "port" => c.port = Some(v),
                "user" => c.user = Some(v),
                "dbname" => c.dbname = Some(v),
                "password" => c.password = Some(v),
                _ => match PARAMS.iter().find(|(p, _)| *p == k) {
                    Some((_, var)) => c.env.push((var.to_string(), v)),
                    None => {
                        return Err(DumpError::Invalid(format!(
                            "the URL parameter {k:?} is not supported; known: password, {}",
                            PARAMS.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")
                        )))
                    }
                },
            }
        }
        Ok(c)
    }

    /// `host:port`, the first part of a snapshot's source name (`localhost:5432/app`).
    pub fn instance(&self) -> String {
        format!(
            "{}:{}",
            self.host.as_deref().filter(|h| !h.is_empty()).unwrap_or("localhost"),
            self.port.as_deref().filter(|p| !p.is_empty()).unwrap_or("5432")
        )
    }

    fn apply(&self, mut inv: Invocation, database: Option<&str>) -> Invocation {
        for (var, val) in [("PGHOST", &self.host), ("PGPORT", &self.port), ("PGUSER", &self.user)] {
            if let Some(v) = val {
                inv = inv.env(var, v);
            }
        }
        if let Some(p) = &self.password {
            inv = inv.env("PGPASSWORD", p);
        }
        for (k, v) in &self.env {
            inv = inv.env(k, v);
        }
        if let Some(d) = database.or(self.dbname.as_deref()) {
            inv = inv.env("PGDATABASE", d);
        }
        // Never wait for a password on a terminal: fail instead.
        inv.arg("--no-password")
    }
}

fn error_lines(stderr: &str, tool: &str) -> Option<String> {
    let needle = format!("{tool}: error:");
    stderr.lines().find(|l| l.contains(&needle)).map(|l| format!("it reported `{}`", l.trim()))
}

fn pg_dump_verdict(stderr: &str) -> Option<String> {
    error_lines(stderr, "pg_dump")
}

fn pg_dumpall_verdict(stderr: &str) -> Option<String> {
    error_lines(stderr, "pg_dumpall").or_else(|| error_lines(stderr, "pg_dump"))
}

fn client_verdict(stderr: &str) -> Option<String> {
    error_lines(stderr, "createdb")
        .or_else(|| error_lines(stderr, "dropdb"))
        .or_else(|| error_lines(stderr, "psql"))
        .or_else(|| stderr.lines().find(|l| l.contains("ERROR:")).map(|l| format!("it reported `{}`", l.trim())))
}

/// A cluster is restored into a running cluster that has at least the role we connect as:
/// `CREATE ROLE` for it (and for roles made earlier) fails, and that alone is expected.
fn cluster_load_verdict(stderr: &str) -> Option<String> {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR:") || l.contains("psql: error:") || l.contains("FATAL:"))
        .filter(|l| !(l.contains("ERROR:") && l.contains("role \"") && l.contains("already exists")))
        .collect();
    match errors.as_slice() {
        [] => None,
        [one] => Some(format!("it reported `{}`", one.trim())),
        [first, ..] => Some(format!("it reported {} errors, the first `{}`", errors.len(), first.trim())),
    }
}

/// `pg_dump` of one database in plain SQL, to standard output.
pub fn dump_database(conn: &PgConn, run: &dyn Runner, database: &str) -> Result<Running> {
    plain_name("database", database)?;
    let inv = Invocation::new("pg_dump", "dumping a PostgreSQL database", pg_dump_verdict).arg("--format=plain");
    run.spawn(conn.apply(inv, Some(database)), false)
}

/// `pg_dumpall`: roles, tablespaces and every database, to standard output.
pub fn dump_cluster(conn: &PgConn, run: &dyn Runner) -> Result<Running> {
    let inv = Invocation::new("pg_dumpall", "dumping a PostgreSQL cluster", pg_dumpall_verdict);
    run.spawn(conn.apply(inv, None), false)
}

/// The databases `--all-databases` dumps: every one that accepts connections except the
/// templates `template0` and `template1` (user-made templates are kept).
pub fn list_databases(conn: &PgConn, run: &dyn Runner) -> Result<Vec<String>> {
    let inv = Invocation::new("psql", "listing PostgreSQL databases", client_verdict)
        .arg("--no-psqlrc")
        .arg("--tuples-only")
        .arg("--no-align")
        .arg("--record-separator-zero")
        .arg("--set=ON_ERROR_STOP=1")
        .arg(
            "--command=SELECT datname FROM pg_catalog.pg_database \
             WHERE datallowconn AND datname NOT IN ('template0', 'template1') ORDER BY datname",
        );
    let maintenance = conn.dbname.clone().unwrap_or_else(|| "postgres".into());
    let out = conn.apply(inv, Some(&maintenance)).output_on(run)?;
    Ok(out.split('\0').map(|s| s.trim_matches('\n')).filter(|s| !s.is_empty()).map(String::from).collect())
}

/// Makes an empty database `name` for a restore; with `drop_existing`, a database of that name
/// is dropped first (its connections are ended). Without it, an existing database is an error.
pub fn create_database(conn: &PgConn, run: &dyn Runner, name: &str, drop_existing: bool) -> Result<()> {
    plain_name("database", name)?;
    if drop_existing {
        drop_database(conn, run, name)?;
    }
    let inv = Invocation::new("createdb", "creating the database to restore into", client_verdict);
    match conn.apply(inv, None).arg("--").arg(name).output_on(run) {
        Err(DumpError::Failed { stderr, .. }) if stderr.contains("already exists") => {
            Err(crate::database_exists(name, &conn.instance()))
        }
        r => r.map(|_| ()),
    }
}

/// Drops database `name` if it exists, ending its connections.
pub fn drop_database(conn: &PgConn, run: &dyn Runner, name: &str) -> Result<()> {
    plain_name("database", name)?;
    let inv =
        Invocation::new("dropdb", "dropping the database to replace", client_verdict).arg("--if-exists").arg("--force");
    conn.apply(inv, None).arg("--").arg(name).output_on(run).map(|_| ())
}

/// `psql` loading a plain `pg_dump` into `database`, all or nothing (one transaction, stop at
/// the first error). Feed the dump to [`Running::writer`], then call [`Running::finish`].
pub fn load_database(conn: &PgConn, run: &dyn Runner, database: &str) -> Result<Running> {
    plain_name("database", database)?;
    let inv = Invocation::new("psql", "loading the dump", client_verdict)
        .arg("--no-psqlrc")
        .arg("--quiet")
        .arg("--set=ON_ERROR_STOP=1")
        .arg("--single-transaction");
    run.spawn(conn.apply(inv, Some(database)), true)
}

/// `psql` loading a `pg_dumpall` into a running cluster. It connects to the URL's database (or
/// `postgres`); the dump itself makes the other databases and connects to them.
pub fn load_cluster(conn: &PgConn, run: &dyn Runner) -> Result<Running> {
    let inv =
        Invocation::new("psql", "loading the cluster dump", cluster_load_verdict).arg("--no-psqlrc").arg("--quiet");
    let db = conn.dbname.clone().unwrap_or_else(|| "postgres".into());
    run.spawn(conn.apply(inv, Some(&db)), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_become_libpq_variables() {
        let c = PgConn::from_url("postgresql://app:s3cr%3At@db:6543/shop?sslmode=verify-full").unwrap();
        assert_eq!(c.instance(), "db:6543");
        let inv = c.apply(Invocation::new("pg_dump", "t", pg_dump_verdict), None);
        assert!(inv.env.contains(&("PGPASSWORD".into(), "s3cr:t".into())));
        assert!(inv.env.contains(&("PGDATABASE".into(), "shop".into())));
        assert!(inv.env.contains(&("PGSSLMODE".into(), "verify-full".into())));
        assert!(!inv.shown().contains("s3cr"), "{}", inv.shown());
        assert_eq!(PgConn::default().instance(), "localhost:5432");
        assert!(PgConn::from_url("postgresql://h/db?bogus=1").is_err());
    }

    #[test]
    fn stderr_verdicts() {
        assert!(pg_dump_verdict("pg_dump: warning: there are circular foreign-key constraints").is_none());
        assert!(pg_dump_verdict("pg_dump: error: query failed: server closed the connection").is_some());
        assert!(cluster_load_verdict("psql:<stdin>:14: ERROR:  role \"bench\" already exists").is_none());
        assert!(cluster_load_verdict("psql:<stdin>:20: ERROR:  database \"a\" already exists").is_some());
    }
}
