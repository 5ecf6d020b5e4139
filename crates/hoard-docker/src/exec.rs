//! Running commands inside containers (`docker exec`), streaming in both directions: stdout comes
//! out as a [`Read`], stdin can be fed from any [`Read`]. Nothing is buffered beyond one piece of
//! the connection, so a 100 GiB `pg_dump` goes through in bounded memory.

use std::io::Read;
use std::pin::Pin;
use std::thread::JoinHandle;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::{DockerError, Engine, Result};

/// How much of a command's stderr is kept for the error message (the end of it).
const STDERR_KEEP: usize = 64 * 1024;

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// The standard output of a command running in a container, as a blocking [`Read`]. Its stderr is
/// collected on the side (the last 64 KiB). Read it to the end, then call [`ExecReader::finish`] for
/// the exit code.
pub struct ExecReader {
    engine: Engine,
    id: String,
    container: String,
    command: String,
    output: Output,
    buf: Bytes,
    stderr: Vec<u8>,
    done: bool,
    feeder: Option<JoinHandle<std::io::Result<()>>>,
}

/// How a command ended.
#[derive(Debug, Clone)]
pub struct ExecStatus {
    pub code: i64,
    /// The end of what it wrote to stderr (at most 64 KiB), lossily decoded.
    pub stderr: String,
    /// The container and command, for messages.
    pub container: String,
    pub command: String,
}

impl ExecStatus {
    /// `Ok` for exit code 0, else [`DockerError::CommandFailed`] with the stderr.
    pub fn check(self) -> Result<()> {
        if self.code == 0 {
            return Ok(());
        }
        Err(DockerError::CommandFailed {
            container: self.container,
            command: self.command,
            code: self.code,
            stderr: self.stderr,
        })
    }
}

impl Engine {
    /// Starts `argv` in the running container `container` (name or id) with extra environment
    /// `env` (`KEY=VALUE`), and returns its stdout as a stream. Its stdin is closed.
    ///
    /// The command runs as the container's user, without a TTY, so stdout is byte-exact. Read the
    /// returned [`ExecReader`] to the end, then call [`ExecReader::finish`] for the exit code and
    /// stderr; a non-zero code is not an error until [`ExecStatus::check`].
    ///
    /// ```no_run
    /// # fn main() -> hoard_docker::Result<()> {
    /// let engine = hoard_docker::Engine::connect()?;
    /// let mut dump = engine.exec("db", &["pg_dumpall", "-U", "postgres"], &[])?;
    /// std::io::copy(&mut dump, &mut std::io::sink()).unwrap();
    /// dump.finish()?.check()?;
    /// # Ok(()) }
    /// ```
    pub fn exec(&self, container: &str, argv: &[&str], env: &[&str]) -> Result<ExecReader> {
        self.start(container, argv, env, None::<std::io::Empty>)
    }

    /// Like [`Engine::exec`], and feeds the command's stdin from `stdin` on a thread of its own,
    /// closing it at the end of `stdin`, while the caller reads stdout (so a command that answers
    /// as it reads cannot deadlock). An error reading `stdin` is returned by
    /// [`ExecReader::finish`].
    pub fn exec_with_stdin<R: Read + Send + 'static>(
        &self,
        container: &str,
        argv: &[&str],
        env: &[&str],
        stdin: R,
    ) -> Result<ExecReader> {
        self.start(container, argv, env, Some(stdin))
    }

    /// Runs a command to its end and returns the first `limit` bytes of its stdout; a non-zero
    /// exit code is an error.
    pub fn exec_output(&self, container: &str, argv: &[&str], limit: usize) -> Result<Vec<u8>> {
        let mut r = self.exec(container, argv, &[])?;
        let mut out = Vec::new();
        let io = |e| DockerError::Io { context: format!("reading the output of {argv:?}"), source: e };
        (&mut r).take(limit as u64).read_to_end(&mut out).map_err(io)?;
        std::io::copy(&mut r, &mut std::io::sink()).map_err(io)?;
        r.finish()?.check()?;
        Ok(out)
    }

    fn start<R: Read + Send + 'static>(
        &self,
        container: &str,
        argv: &[&str],
        env: &[&str],
        stdin: Option<R>,
    ) -> Result<ExecReader> {
        let what = format!("container {container}");
        let config = ExecConfig {
            attach_stdin: Some(stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: if env.is_empty() { None } else { Some(env.iter().map(|s| s.to_string()).collect()) },
            cmd: Some(argv.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        let created = self.block_on(self.docker().create_exec(container, config)).map_err(|e| self.err(&what, e))?;
        let opts = StartExecOptions { detach: false, tty: false, output_capacity: Some(64 * 1024) };
        let started =
            self.block_on(self.docker().start_exec(&created.id, Some(opts))).map_err(|e| self.err(&what, e))?;
        let StartExecResults::Attached { output, mut input } = started else {
            return Err(DockerError::Engine { context: what, detail: "the exec did not attach".into() });
        };
        let feeder = stdin.map(|mut r| {
            let engine = self.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // Close stdin anyway so the command ends; the caller learns why.
                            let _ = engine.block_on(input.shutdown());
                            return Err(e);
                        }
                    };
                    if engine.block_on(input.write_all(&buf[..n])).is_err() {
                        // The command closed its stdin (or ended): what it made of it shows in
                        // its exit code.
                        return Ok(());
                    }
                }
                let _ = engine.block_on(input.flush());
                let _ = engine.block_on(input.shutdown());
                Ok(())
            })
        });
        Ok(ExecReader {
            engine: self.clone(),
            id: created.id,
            container: container.to_string(),
            command: argv.join(" "),
            output,
            buf: Bytes::new(),
            stderr: Vec::new(),
            done: false,
            feeder,
        })
    }
}

impl ExecReader {
    /// Reads what is left of stdout (discarding it), waits for the command to end, and returns
    /// its exit code and stderr.
    pub fn finish(mut self) -> Result<ExecStatus> {
        let io = |e| DockerError::Io { context: "reading a command's output".into(), source: e };
        std::io::copy(&mut self, &mut std::io::sink()).map_err(io)?;
        if let Some(f) = self.feeder.take() {
            match f.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(DockerError::Io {
                        context: format!("feeding the stdin of `{}`", self.command),
                        source: e,
                    })
                }
                Err(_) => {
                    return Err(DockerError::Engine {
                        context: self.command.clone(),
                        detail: "the thread feeding stdin panicked".into(),
                    })
                }
            }
        }
        let what = format!("container {}", self.container);
        // The stream can end a moment before the engine records the exit code.
        let mut code = None;
        for _ in 0..200 {
            let r = self
                .engine
                .block_on(self.engine.docker().inspect_exec(&self.id))
                .map_err(|e| self.engine.err(&what, e))?;
            if r.running != Some(true) {
                code = r.exit_code;
                if code.is_some() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let Some(code) = code else {
            return Err(DockerError::Engine {
                context: what,
                detail: format!("`{}` did not report an exit code", self.command),
            });
        };
        Ok(ExecStatus {
            code,
            stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
            container: self.container.clone(),
            command: self.command.clone(),
        })
    }
}

impl Read for ExecReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.engine.block_on(self.output.next()) {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => self.buf = message,
                Some(Ok(LogOutput::StdErr { message })) => {
                    self.stderr.extend_from_slice(&message);
                    if self.stderr.len() > STDERR_KEEP {
                        let cut = self.stderr.len() - STDERR_KEEP;
                        self.stderr.drain(..cut);
                    }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    self.done = true;
                    let what = format!("the output of `{}` in {}", self.command, self.container);
                    return Err(std::io::Error::other(self.engine.err(&what, e)));
                }
                None => self.done = true,
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}
