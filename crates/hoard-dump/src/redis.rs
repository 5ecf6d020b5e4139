//! Redis: a consistent RDB straight from the server (`redis-cli --rdb -`: the server forks and
//! streams a point-in-time snapshot as it would to a replica), and the restore side (the RDB put
//! where the server loads it from, between `SHUTDOWN NOSAVE` and a start).
//!
//! On standard output `redis-cli --rdb -` follows the RDB with the 40-byte end mark of the
//! diskless transfer; [`RdbStream`] holds that back and checks the RDB's own end (the 0xFF
//! opcode and its CRC-64) as the bytes go by, so a cut-off transfer is an error, not a snapshot.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{DumpError, Host, Invocation, Result, Runner, Running, Url};

/// Where a Redis server is and how we authenticate (the password reaches redis-cli in
/// `REDISCLI_AUTH`, never in argv).
#[derive(Clone, Debug, Default)]
pub struct RedisConn {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// An ACL user (Redis 6+); none for the default user.
    pub user: Option<String>,
    pub password: Option<String>,
}

impl RedisConn {
    /// `redis://[user[:password]@]host[:port][/db]`. An RDB holds every database, so a database
    /// number in the URL changes nothing.
    pub fn from_url(s: &str) -> Result<RedisConn> {
        let u = Url::parse(s, &["redis"])?;
        if let Some((k, _)) = u.query.first() {
            return Err(DumpError::Invalid(format!("the redis URL parameter {k:?} is not supported")));
        }
        Ok(RedisConn { host: u.host, port: u.port, user: u.user, password: u.password })
    }

    /// `host:port`, a snapshot's source name.
    pub fn instance(&self) -> String {
        format!("{}:{}", self.host.as_deref().unwrap_or("localhost"), self.port.unwrap_or(6379))
    }

    fn cli(&self, why: &'static str, verdict: crate::StderrVerdict) -> Invocation {
        let mut inv = Invocation::new("redis-cli", why, verdict)
            .arg("-h")
            .arg(self.host.clone().unwrap_or_else(|| "127.0.0.1".into()))
            .arg("-p")
            .arg(self.port.unwrap_or(6379).to_string())
            .arg("--no-auth-warning");
        if let Some(u) = &self.user {
            inv = inv.arg("--user").arg(u);
        }
        if let Some(p) = &self.password {
            inv = inv.env("REDISCLI_AUTH", p);
        }
        inv
    }

    /// Runs one command and returns its reply; an error reply is an error.
    pub fn query(&self, args: &[&str]) -> Result<String> {
        self.query_on(&Host, args)
    }

    /// [`RedisConn::query`] with redis-cli run by `run` (in a container).
    pub fn query_on(&self, run: &dyn Runner, args: &[&str]) -> Result<String> {
        let mut inv = self.cli("talking to Redis", cli_verdict);
        for a in args {
            inv = inv.arg(*a);
        }
        let shown = args.join(" ");
        let out = inv.output_on(run)?;
        let first = out.lines().next().unwrap_or("");
        if ["ERR", "WRONGPASS", "NOAUTH", "NOPERM", "LOADING", "MISCONF"].iter().any(|e| first.starts_with(e)) {
            return Err(DumpError::Failed {
                tool: "redis-cli".into(),
                status: format!("{shown} was refused"),
                stderr: out,
            });
        }
        Ok(out)
    }

    fn config(&self, run: &dyn Runner, key: &str) -> Result<String> {
        let out = self.query_on(run, &["CONFIG", "GET", key])?;
        let mut lines = out.lines();
        match (lines.next(), lines.next()) {
            (Some(k), Some(v)) if k == key => Ok(v.to_string()),
            _ => Err(DumpError::Invalid(format!("CONFIG GET {key} on {} gave no value: {out:?}", self.instance()))),
        }
    }

    /// Whether the server answers PING.
    pub fn alive_on(&self, run: &dyn Runner) -> bool {
        matches!(self.query_on(run, &["PING"]), Ok(s) if s.trim() == "PONG")
    }

    fn alive(&self) -> bool {
        self.alive_on(&Host)
    }
}

fn cli_verdict(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find(|l| l.starts_with("Could not connect") || l.starts_with("AUTH failed") || l.contains("I/O error"))
        .map(|l| format!("it reported `{}`", l.trim()))
}

fn rdb_verdict(stderr: &str) -> Option<String> {
    cli_verdict(stderr).or_else(|| {
        (!stderr.contains("Transfer finished with success"))
            .then(|| "it did not report `Transfer finished with success`".to_string())
    })
}

/// `redis-cli --rdb -`: a point-in-time RDB of every database, read through [`RdbStream`].
pub fn dump(conn: &RedisConn, run: &dyn Runner) -> Result<Running> {
    let r = run.spawn(conn.cli("dumping Redis", rdb_verdict).arg("--rdb").arg("-"), false)?;
    Ok(r.map_reader(|inner| Box::new(RdbStream::new(inner))))
}

/// The redis-cli `--rdb -` trailer: a 40-character end mark after the RDB.
const MARK: usize = 40;
/// The RDB's last 8 bytes: its CRC-64, over everything before it.
const CRC: usize = 8;

/// Passes an RDB through, holding back the transfer's end mark, and checks the RDB's end.
pub struct RdbStream<R> {
    inner: R,
    pending: Vec<u8>,
    crc: u64,
    last: Option<u8>,
    total: u64,
    eof: bool,
    verified: bool,
}

impl<R: Read> RdbStream<R> {
    pub fn new(inner: R) -> RdbStream<R> {
        RdbStream { inner, pending: Vec::new(), crc: 0, last: None, total: 0, eof: false, verified: false }
    }

    fn release(&mut self, out: &mut [u8], n: usize) -> usize {
        out[..n].copy_from_slice(&self.pending[..n]);
        self.crc = crc64(self.crc, &self.pending[..n]);
        self.last = Some(self.pending[n - 1]);
        self.total += n as u64;
        self.pending.drain(..n);
        n
    }

    fn check_end(&self) -> io::Result<()> {
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("the RDB from redis-cli {why}"));
        if self.pending.len() != CRC + MARK {
            return Err(bad(format!("ended early ({} bytes)", self.total + self.pending.len() as u64)));
        }
        if self.last != Some(0xFF) {
            return Err(bad("does not end with the EOF opcode".into()));
        }
        let stored = u64::from_le_bytes(self.pending[..CRC].try_into().expect("8 bytes"));
        // A server with `rdbchecksum no` writes zero.
        if stored != 0 && stored != self.crc {
            return Err(bad(format!("has a bad checksum ({stored:#x}, computed {:#x})", self.crc)));
        }
        if !self.pending[CRC..].iter().all(u8::is_ascii_alphanumeric) {
            return Err(bad("is not followed by the transfer's end mark".into()));
        }
        Ok(())
    }
}

impl<R: Read> Read for RdbStream<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pending.len() > CRC + MARK {
                let n = out.len().min(self.pending.len() - CRC - MARK);
                return Ok(self.release(out, n));
            }
            if self.eof {
                if !self.verified {
                    self.check_end()?;
                    self.verified = true;
                }
                // The CRC bytes are part of the RDB; the mark is not.
                let n = out.len().min(self.pending.len() - MARK);
                out[..n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                return Ok(n);
            }
            let mut buf = [0u8; 64 << 10];
            let n = self.inner.read(&mut buf)?;
            if n == 0 {
                self.eof = true;
            } else {
                self.pending.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// Redis's CRC-64 (Jones polynomial, reflected, initial value 0).
fn crc64(mut crc: u64, data: &[u8]) -> u64 {
    const POLY: u64 = 0x95ac_9329_ac4b_c9b5;
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u64;
            for _ in 0..8 {
                c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    for &b in data {
        crc = table[((crc ^ b as u64) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// An RDB being written next to the file the server loads at start, under a temporary name.
/// [`Staged::install`] stops the server and puts it in place; dropping it removes it.
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

/// Where the server loads its RDB from: (`CONFIG GET dir`, `CONFIG GET dbfilename`). Refuses a
/// server with `appendonly yes`: it would load its AOF at start, not the RDB.
pub fn locate(conn: &RedisConn, run: &dyn Runner) -> Result<(String, String)> {
    if conn.config(run, "appendonly")? == "yes" {
        return Err(DumpError::Invalid(format!(
            "{} has appendonly yes: at start it loads its append-only file, not the RDB. Turn it off \
             (CONFIG SET appendonly no, and in its config file) before restoring, and on again after",
            conn.instance()
        )));
    }
    Ok((conn.config(run, "dir")?, conn.config(run, "dbfilename")?))
}

/// Where the server loads its RDB from ([`locate`]), unless `path` says.
pub fn stage(conn: &RedisConn, path: Option<&Path>) -> Result<Staged> {
    let (dir, file) = locate(conn, &Host)?;
    let dest = match path {
        Some(p) => p.to_path_buf(),
        None => Path::new(&dir).join(file),
    };
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.hoard-restore", dest.file_name().and_then(|n| n.to_str()).unwrap_or("dump.rdb")));
    let file = File::create(&tmp).map_err(|e| {
        DumpError::io(
            format!("creating {} (is {} the server's directory, on this host?)", tmp.display(), dir.display()),
            e,
        )
    })?;
    Ok(Staged { tmp, dest, file: Some(file) })
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.dest
    }

    pub fn writer(&mut self) -> &mut File {
        self.file.as_mut().expect("open until installed")
    }

    /// Stops the server without saving (`SHUTDOWN NOSAVE`), renames the RDB into place with
    /// the owner and mode of the file it replaces, and, given a `start` command, runs it
    /// (`sh -c`) and waits until the server answers.
    pub fn install(mut self, conn: &RedisConn, start: Option<&str>) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let f = self.file.take().expect("open until installed");
        f.sync_all().map_err(|e| DumpError::io(format!("writing {}", self.tmp.display()), e))?;
        drop(f);
        let mut magic = [0u8; 5];
        File::open(&self.tmp)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(|e| DumpError::io("reading back the RDB", e))?;
        if &magic != b"REDIS" {
            return Err(DumpError::Invalid("the snapshot does not hold an RDB file".into()));
        }
        // Owner and mode of the file replaced, else of its directory, so the server can read it.
        let like =
            std::fs::metadata(&self.dest).or_else(|_| std::fs::metadata(self.dest.parent().unwrap_or(Path::new("."))));
        if let Ok(m) = like {
            let _ = std::os::unix::fs::chown(&self.tmp, Some(m.uid()), Some(m.gid()));
        }
        let _ = conn.query(&["SHUTDOWN", "NOSAVE"]);
        let start_wait = Instant::now();
        while conn.alive() {
            if start_wait.elapsed() > Duration::from_secs(30) {
                return Err(DumpError::Invalid(format!(
                    "{} is still running 30 s after SHUTDOWN NOSAVE",
                    conn.instance()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| DumpError::io(format!("moving the RDB to {}", self.dest.display()), e))?;
        if let Some(dir) = self.dest.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        if let Some(cmd) = start {
            Invocation::new("sh", "starting Redis", |_| None).arg("-c").arg(cmd).output()?;
            let t = Instant::now();
            while !conn.alive() {
                if t.elapsed() > Duration::from_secs(60) {
                    return Err(DumpError::Invalid(format!(
                        "{} does not answer 60 s after `{cmd}`; its RDB is in place at {}",
                        conn.instance(),
                        self.dest.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_is_redis_s() {
        // The check value of CRC-64/Jones as Redis's crc64.c tests it.
        assert_eq!(crc64(0, b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    fn rdb(body: &[u8]) -> Vec<u8> {
        let mut v = b"REDIS0010".to_vec();
        v.extend_from_slice(body);
        v.push(0xFF);
        let c = crc64(0, &v);
        v.extend_from_slice(&c.to_le_bytes());
        v
    }

    fn through(input: Vec<u8>, chunk: usize) -> io::Result<Vec<u8>> {
        let mut s = RdbStream::new(io::Cursor::new(input));
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn the_end_mark_is_cut_and_the_rdb_kept_whole() {
        let r = rdb(&vec![7u8; 200_000]);
        let mut with_mark = r.clone();
        with_mark.extend_from_slice(b"31bfa7acfb05f8c1330707aa84c0bd69e82fe316");
        for chunk in [1, 3, 8, 4096, 1 << 20] {
            assert_eq!(through(with_mark.clone(), chunk).unwrap(), r, "read {chunk} at a time");
        }
    }

    #[test]
    fn a_cut_or_damaged_rdb_is_an_error() {
        let r = rdb(b"some keys");
        assert!(through(r.clone(), 4096).is_err(), "no mark");
        let mut short = r[..r.len() - 3].to_vec();
        short.extend_from_slice(&[b'a'; 40]);
        assert!(through(short, 4096).is_err(), "cut");
        let mut bad = r.clone();
        bad[10] ^= 1;
        bad.extend_from_slice(&[b'a'; 40]);
        assert!(through(bad, 4096).is_err(), "flipped bit");
    }

    #[test]
    fn urls() {
        let c = RedisConn::from_url("redis://app:pw@127.0.0.1:6390/3").unwrap();
        assert_eq!(c.instance(), "127.0.0.1:6390");
        let inv = c.cli("t", cli_verdict);
        assert!(!inv.shown().contains("pw") && inv.env.contains(&("REDISCLI_AUTH".into(), "pw".into())));
    }
}
