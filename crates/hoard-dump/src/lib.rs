//! The database dump tools hoard drives: `pg_dump` / `pg_dumpall` / `psql` / `createdb` /
//! `dropdb`, `mariadb-dump` (or `mysqldump`) / `mariadb` (or `mysql`), and `redis-cli`.
//!
//! This crate owns what hoard knows about them: their command lines, how secrets reach them
//! (environment variables and 0600 option files, never argv, which `ps` shows to everyone),
//! and how to tell a good dump from a failed or partial one (exit status *and* standard error).
//! It knows nothing about repositories: a dump is a [`Running`] tool whose output the caller
//! streams wherever it likes (hoard's stream backup), and a restore is a [`Running`] tool whose
//! input the caller feeds.
//!
//! **Architecture Invariant:** a dump is good only if [`Running::finish`] says so, and
//! `finish` is called after the last byte was read. Callers commit nothing before that.

pub mod mysql;
pub mod postgres;
pub mod redis;

mod url;

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

pub use url::Url;

/// How much of a tool's error output is kept for the message.
const STDERR_KEEP: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Bad input from the user (a malformed URL, an unsupported option).
    #[error("{0}")]
    Invalid(String),
    #[error("could not start `{program}` ({why}): {source}")]
    Start { program: String, why: &'static str, source: io::Error },
    /// The tool ran and failed, or said on standard error that it failed.
    #[error("{tool} failed ({status}). Its error output:\n{stderr}")]
    Failed { tool: String, status: String, stderr: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

pub type Result<T, E = DumpError> = std::result::Result<T, E>;

impl DumpError {
    fn io(context: impl Into<String>, source: io::Error) -> DumpError {
        DumpError::Io { context: context.into(), source }
    }
}

/// Decides from a finished tool's error output whether it failed even though it exited 0:
/// returns the reason, or `None` for a clean run.
pub type StderrVerdict = fn(&str) -> Option<String>;

/// One run of one tool: program, arguments, and the environment it gets on top of ours.
pub struct Invocation {
    pub program: String,
    pub args: Vec<OsString>,
    /// Set in the child only (secrets go here, never into `args`).
    pub env: Vec<(String, String)>,
    /// Why it runs, for error messages: "dumping", "restoring", …
    pub why: &'static str,
    pub verdict: StderrVerdict,
    /// Files the tool needs while it runs (a 0600 option file); removed when the run ends.
    pub keep: Option<tempfile::TempDir>,
}

impl Invocation {
    pub fn new(program: &str, why: &'static str, verdict: StderrVerdict) -> Invocation {
        Invocation { program: program.into(), args: Vec::new(), env: Vec::new(), why, verdict, keep: None }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Invocation {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Invocation {
        self.env.push((k.into(), v.into()));
        self
    }

    /// What the command line looks like (never contains secrets: they are not in `args`).
    pub fn shown(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Starts the tool on this host with its standard output piped to the caller (a dump).
    pub fn spawn_reader(self) -> Result<Running> {
        Host.spawn(self, false)
    }

    /// Starts the tool on this host with its standard input fed by the caller (a restore).
    pub fn spawn_writer(self) -> Result<Running> {
        Host.spawn(self, true)
    }

    /// Runs the tool on this host to the end with no input and returns its standard output.
    pub fn output(self) -> Result<String> {
        self.output_on(&Host)
    }

    /// Runs the tool through `runner` to the end with no input and returns its standard output.
    pub fn output_on(self, runner: &dyn Runner) -> Result<String> {
        let mut r = runner.spawn(self, false)?;
        let mut out = String::new();
        let read = r.reader().read_to_string(&mut out);
        r.finish()?;
        read.map_err(|e| DumpError::io(format!("reading the output of {}", r.tool), e))?;
        Ok(out)
    }

    fn spawn_local(self, input: bool) -> Result<Running> {
        let (stdin, stdout) = if input { (Stdio::piped(), Stdio::null()) } else { (Stdio::null(), Stdio::piped()) };
        let mut child = self
            .command()
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DumpError::Start { program: self.program.clone(), why: self.why, source: e })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = std::thread::spawn(move || keep_tail(stderr));
        let reader: Option<Box<dyn Read + Send>> = child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>);
        let stdin: Option<Box<dyn Write + Send>> = child.stdin.take().map(|i| Box::new(i) as Box<dyn Write + Send>);
        let tool = tool_name(&self.program);
        Ok(Running {
            tool,
            process: Some(Process::Local { child, tail }),
            reader,
            stdin,
            verdict: self.verdict,
            _keep: self.keep,
        })
    }
}

fn tool_name(program: &str) -> String {
    program.rsplit('/').next().unwrap_or(program).to_string()
}

/// Where tools run: on this host ([`Host`]), or somewhere else, such as inside a container
/// (the binary's `docker exec` runner).
pub trait Runner {
    /// Starts `inv`: with `input`, its standard input is fed through [`Running::writer`] and its
    /// output thrown away; without, its output is read through [`Running::reader`].
    fn spawn(&self, inv: Invocation, input: bool) -> Result<Running>;

    /// Whether the tool can read files this process writes (a private option file).
    fn shares_files(&self) -> bool {
        true
    }
}

/// Tools run as child processes of hoard.
pub struct Host;

impl Runner for Host {
    fn spawn(&self, inv: Invocation, input: bool) -> Result<Running> {
        inv.spawn_local(input)
    }
}

/// A tool running somewhere else: how to learn how it ended.
pub trait Remote: Send {
    /// Waits for the end: (succeeded, how it ended in words, the end of its standard error).
    fn wait(self: Box<Self>) -> std::result::Result<(bool, String, String), String>;
}

/// Reads a tool's standard error to the end, passing it through to ours and keeping the last
/// [`STDERR_KEEP`] bytes for the message.
fn keep_tail(mut from: impl Read) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = io::stderr().write_all(&buf[..n]);
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > STDERR_KEEP {
                    kept.drain(..kept.len() - STDERR_KEEP);
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

enum Process {
    Local { child: Child, tail: JoinHandle<String> },
    Remote(Box<dyn Remote>),
}

/// A tool that is running. Dropping it without [`Running::finish`] stops it (a local one is
/// killed; a remote one loses its connection).
pub struct Running {
    tool: String,
    process: Option<Process>,
    reader: Option<Box<dyn Read + Send>>,
    stdin: Option<Box<dyn Write + Send>>,
    verdict: StderrVerdict,
    _keep: Option<tempfile::TempDir>,
}

impl Running {
    /// A tool started by a [`Runner`] other than [`Host`].
    pub fn remote(
        inv: &Invocation,
        reader: Option<Box<dyn Read + Send>>,
        writer: Option<Box<dyn Write + Send>>,
        process: Box<dyn Remote>,
    ) -> Running {
        Running {
            tool: tool_name(&inv.program),
            process: Some(Process::Remote(process)),
            reader,
            stdin: writer,
            verdict: inv.verdict,
            _keep: None,
        }
    }

    /// The tool's name, for messages.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// What the tool writes (a dump).
    pub fn reader(&mut self) -> &mut (dyn Read + Send) {
        self.reader.as_deref_mut().expect("the tool's output is piped")
    }

    /// Takes the output stream, so that it can be read while [`Running::finish`] is still in
    /// reach (a backup calls `finish` from inside the read loop's caller).
    pub fn take_reader(&mut self) -> Box<dyn Read + Send> {
        self.reader.take().expect("the tool's output is piped and taken once")
    }

    /// Wraps the output stream (redis-cli's trailer is cut off this way).
    pub(crate) fn map_reader(mut self, f: impl FnOnce(Box<dyn Read + Send>) -> Box<dyn Read + Send>) -> Running {
        self.reader = self.reader.take().map(f);
        self
    }

    /// Where the tool reads from (a restore).
    pub fn writer(&mut self) -> &mut (dyn Write + Send) {
        self.stdin.as_deref_mut().expect("the tool's input is piped")
    }

    /// Ends the input, waits for the tool and judges the run by its exit status and its error
    /// output. Call it after reading the whole output.
    pub fn finish(&mut self) -> Result<()> {
        drop(self.stdin.take());
        let (ok, status, stderr) = match self.process.take() {
            None => return Err(DumpError::Invalid(format!("{} was already finished", self.tool))),
            Some(Process::Local { mut child, tail }) => {
                let status = child.wait().map_err(|e| DumpError::io(format!("waiting for {}", self.tool), e))?;
                (status.success(), status.to_string(), tail.join().unwrap_or_default())
            }
            Some(Process::Remote(r)) => {
                // Whatever output is left goes first: the remote end may wait for it to be read.
                drop(self.reader.take());
                r.wait().map_err(|e| DumpError::Failed { tool: self.tool.clone(), status: e, stderr: String::new() })?
            }
        };
        judge(&self.tool, ok, status, stderr, self.verdict)
    }

    /// Whether [`Running::finish`] or [`Running::kill`] was called.
    pub fn finished(&self) -> bool {
        self.process.is_none()
    }

    /// Stops the tool (a restore whose input could not be read completely).
    pub fn kill(&mut self) {
        match self.process.take() {
            Some(Process::Local { mut child, tail }) => {
                let _ = child.kill();
                drop(self.stdin.take());
                let _ = child.wait();
                let _ = tail.join();
            }
            Some(Process::Remote(r)) => {
                drop(self.stdin.take());
                drop(self.reader.take());
                drop(r);
            }
            None => {}
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

fn judge(tool: &str, ok: bool, status: String, stderr: String, verdict: StderrVerdict) -> Result<()> {
    if !ok {
        return Err(DumpError::Failed { tool: tool.to_string(), status, stderr });
    }
    match verdict(&stderr) {
        None => Ok(()),
        Some(why) => Err(DumpError::Failed { tool: tool.to_string(), status: format!("exited 0, but {why}"), stderr }),
    }
}

/// Refuses names that a tool would take for an option.
/// The refusal to restore into a database that exists, the same for every server.
fn database_exists(name: &str, instance: &str) -> DumpError {
    DumpError::Invalid(format!(
        "database {name:?} already exists on {instance}: restore into another one with --database NEW, \
         or replace it with --drop-existing"
    ))
}

fn plain_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('-') || name.contains('\0') {
        return Err(DumpError::Invalid(format!("{name:?} is not a usable {what} name")));
    }
    Ok(())
}

/// Writes `contents` to a new file only we can read, in a new private directory.
fn private_file(name: &str, contents: &str) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::Builder::new()
        .prefix("hoard-dump-")
        .tempdir()
        .map_err(|e| DumpError::io("creating a private directory for credentials", e))?;
    let path = dir.path().join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| DumpError::io(format!("creating {}", path.display()), e))?;
    f.write_all(contents.as_bytes()).map_err(|e| DumpError::io(format!("writing {}", path.display()), e))?;
    Ok((dir, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: &str) -> Option<String> {
        None
    }

    fn says_error(s: &str) -> Option<String> {
        s.contains("error:").then(|| "it reported an error".into())
    }

    #[test]
    fn a_failing_tool_is_reported_with_its_stderr() {
        let mut r = Invocation::new("sh", "testing", never)
            .arg("-c")
            .arg("echo out; echo 'pg_dump: connection refused' >&2; exit 3")
            .spawn_reader()
            .unwrap();
        let mut s = String::new();
        r.reader().read_to_string(&mut s).unwrap();
        assert_eq!(s, "out\n");
        match r.finish() {
            Err(DumpError::Failed { stderr, status, .. }) => {
                assert!(stderr.contains("connection refused"));
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exit_zero_with_an_error_on_stderr_is_a_failure() {
        let mut r = Invocation::new("sh", "testing", says_error)
            .arg("-c")
            .arg("echo 'x: error: bad' >&2")
            .spawn_reader()
            .unwrap();
        assert!(matches!(r.finish(), Err(DumpError::Failed { .. })));
        let mut r = Invocation::new("sh", "testing", says_error).arg("-c").arg("echo fine >&2").spawn_reader().unwrap();
        r.finish().unwrap();
    }

    #[test]
    fn secrets_go_to_the_environment_not_argv() {
        let inv =
            Invocation::new("sh", "testing", never).arg("-c").arg("printf %s \"$SECRET\"").env("SECRET", "hunter2");
        assert!(!inv.shown().contains("hunter2"));
        assert_eq!(inv.output().unwrap(), "hunter2");
    }

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, p) = private_file("my.cnf", "[client]\n").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
