//! MySQL and MariaDB: `mariadb-dump` (or `mysqldump` where that is all there is) of one database
//! in one consistent read (`--single-transaction`) with its routines, events and triggers, and
//! the restore side (`mariadb` or `mysql`).
//!
//! The connection settings, password included, reach the tools in a 0600 option file in a
//! private temporary directory (`--defaults-extra-file`), removed when the tool ends: MySQL
//! clients have no other safe way to take a password (`MYSQL_PWD` is deprecated).

use crate::{plain_name, private_file, DumpError, Invocation, Result, Runner, Running, Url};

/// Where a MySQL or MariaDB server is and who we are to it. Unset parts are left to the
/// client's option files.
#[derive(Clone, Debug, Default)]
pub struct MyConn {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub socket: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The database named by the URL, if any.
    pub dbname: Option<String>,
}

/// Databases `--all-databases` leaves out: the server's own.
const SYSTEM: &[&str] = &["information_schema", "performance_schema", "sys", "mysql"];

impl MyConn {
    /// `mysql://[user[:password]@][host][:port][/database][?socket=/path]` (or `mariadb://`).
    pub fn from_url(s: &str) -> Result<MyConn> {
        let u = Url::parse(s, &["mysql", "mariadb"])?;
        let mut c =
            MyConn { host: u.host, port: u.port, socket: None, user: u.user, password: u.password, dbname: u.path };
        for (k, v) in u.query {
            match k.as_str() {
                "socket" => c.socket = Some(v),
                _ => {
                    return Err(DumpError::Invalid(format!("the URL parameter {k:?} is not supported; known: socket")))
                }
            }
        }
        Ok(c)
    }

    /// `host:port`, the first part of a snapshot's source name.
    pub fn instance(&self) -> String {
        format!("{}:{}", self.host.as_deref().unwrap_or("localhost"), self.port.unwrap_or(3306))
    }

    /// `program --defaults-extra-file=… ` with our settings in that file; for a tool that cannot
    /// read our files (in a container), the settings as options and the password in `MYSQL_PWD`,
    /// in the environment of that one process.
    fn invocation(
        &self,
        run: &dyn Runner,
        program: &str,
        why: &'static str,
        verdict: crate::StderrVerdict,
    ) -> Result<Invocation> {
        if !run.shares_files() {
            let mut inv = Invocation::new(program, why, verdict);
            if let Some(h) = &self.host {
                inv = inv.arg(format!("--host={h}")).arg("--protocol=tcp");
            }
            if let Some(p) = self.port {
                inv = inv.arg(format!("--port={p}"));
            }
            if let Some(s) = &self.socket {
                inv = inv.arg(format!("--socket={s}"));
            }
            if let Some(u) = &self.user {
                inv = inv.arg(format!("--user={u}"));
            }
            if let Some(p) = &self.password {
                inv = inv.env("MYSQL_PWD", p);
            }
            return Ok(inv);
        }
        let mut cnf = String::from("[client]\n");
        let mut put = |k: &str, v: &str| {
            // Option-file values are quoted; a backslash and a quote are escaped.
            cnf.push_str(&format!("{k}=\"{}\"\n", v.replace('\\', "\\\\").replace('"', "\\\"")));
        };
        if let Some(h) = &self.host {
            put("host", h);
            // A host name makes the clients use TCP; "localhost" would mean the socket.
            put("protocol", if self.socket.is_some() { "socket" } else { "tcp" });
        }
        if let Some(p) = self.port {
            put("port", &p.to_string());
        }
        if let Some(s) = &self.socket {
            put("socket", s);
        }
        if let Some(u) = &self.user {
            put("user", u);
        }
        if let Some(p) = &self.password {
            put("password", p);
        }
        let (dir, path) = private_file("client.cnf", &cnf)?;
        let mut inv = Invocation::new(program, why, verdict).arg(format!("--defaults-extra-file={}", path.display()));
        inv.keep = Some(dir);
        Ok(inv)
    }
}

/// The first of `names` on PATH (MariaDB's names first), or the last name for the error. A
/// remote runner gets the first name and chooses there (see the binary's container runner).
fn program(run: &dyn Runner, names: &[&'static str]) -> &'static str {
    if !run.shares_files() {
        return names[0];
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    names
        .iter()
        .find(|n| std::env::split_paths(&path).any(|d| d.join(n).is_file()))
        .copied()
        .unwrap_or(names[names.len() - 1])
}

fn dump_verdict(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find(|l| l.contains("Got error") || l.contains("Error:") || l.contains("Couldn't") || l.contains("ERROR "))
        .map(|l| format!("it reported `{}`", l.trim()))
}

fn client_verdict(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find(|l| l.starts_with("ERROR") || l.contains("Error:"))
        .map(|l| format!("it reported `{}`", l.trim()))
}

/// Quotes an identifier for SQL.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// One database, consistent (`--single-transaction`: InnoDB tables as of one moment), with
/// its routines, events and triggers; no dump date, so an unchanged database dumps the same.
pub fn dump_database(conn: &MyConn, run: &dyn Runner, database: &str) -> Result<Running> {
    plain_name("database", database)?;
    let inv = conn
        .invocation(run, program(run, &["mariadb-dump", "mysqldump"]), "dumping a MySQL database", dump_verdict)?
        .arg("--single-transaction")
        .arg("--routines")
        .arg("--events")
        .arg("--triggers")
        .arg("--hex-blob")
        .arg("--skip-dump-date")
        .arg("--default-character-set=utf8mb4")
        .arg(database);
    run.spawn(inv, false)
}

fn sql(conn: &MyConn, run: &dyn Runner, why: &'static str, statement: &str) -> Result<String> {
    conn.invocation(run, program(run, &["mariadb", "mysql"]), why, client_verdict)?
        .arg("--batch")
        .arg("--skip-column-names")
        .arg(format!("--execute={statement}"))
        .output_on(run)
}

/// Every database but the server's own (information_schema, performance_schema, sys, mysql).
pub fn list_databases(conn: &MyConn, run: &dyn Runner) -> Result<Vec<String>> {
    let out = sql(conn, run, "listing MySQL databases", "SHOW DATABASES")?;
    Ok(out.lines().filter(|d| !d.is_empty() && !SYSTEM.contains(d)).map(String::from).collect())
}

/// Makes an empty database `name`; with `drop_existing`, one of that name is dropped first.
pub fn create_database(conn: &MyConn, run: &dyn Runner, name: &str, drop_existing: bool) -> Result<()> {
    plain_name("database", name)?;
    if drop_existing {
        drop_database(conn, run, name)?;
    }
    match sql(conn, run, "creating the database to restore into", &format!("CREATE DATABASE {}", ident(name))) {
        Err(DumpError::Failed { stderr, .. }) if stderr.contains("database exists") => {
            Err(crate::database_exists(name, &conn.instance()))
        }
        r => r.map(|_| ()),
    }
}

pub fn drop_database(conn: &MyConn, run: &dyn Runner, name: &str) -> Result<()> {
    plain_name("database", name)?;
    sql(conn, run, "dropping the database to replace", &format!("DROP DATABASE IF EXISTS {}", ident(name))).map(|_| ())
}

/// The client loading a dump into `database`; it stops at the first error.
pub fn load_database(conn: &MyConn, run: &dyn Runner, database: &str) -> Result<Running> {
    plain_name("database", database)?;
    let inv = conn
        .invocation(run, program(run, &["mariadb", "mysql"]), "loading the dump", client_verdict)?
        .arg("--batch")
        .arg(format!("--database={database}"));
    run.spawn(inv, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_goes_into_a_private_option_file() {
        let c = MyConn::from_url("mysql://root:p%22w\\x@127.0.0.1:3307/shop").unwrap();
        assert_eq!(c.instance(), "127.0.0.1:3307");
        assert_eq!(c.dbname.as_deref(), Some("shop"));
        let inv = c.invocation(&crate::Host, "mariadb", "t", client_verdict).unwrap();
        assert!(!inv.shown().contains("p\"w"), "{}", inv.shown());
        let path = inv.shown().split("--defaults-extra-file=").nth(1).unwrap().to_string();
        let cnf = std::fs::read_to_string(&path).unwrap();
        assert!(cnf.contains("password=\"p\\\"w\\\\x\""), "{cnf}");
        drop(inv);
        assert!(!std::path::Path::new(&path).exists(), "the option file outlives the run");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("a`b"), "`a``b`");
    }
}
