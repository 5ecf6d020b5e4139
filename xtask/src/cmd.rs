//! Running child processes: echo the command line, never give it our stdin, fail with the command named.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{bail, Context, Result};

/// A `Command` for `program args...` with stdin closed: CI has no stdin, and nothing here may wait on one.
pub(crate) fn new(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args).stdin(Stdio::null());
    c
}

/// The command line as a person would type it, with the environment it sets in front.
pub(crate) fn show(c: &Command) -> String {
    let mut parts = Vec::new();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            parts.push(format!("{}={}", k.to_string_lossy(), quote(v)));
        }
    }
    parts.push(quote(c.get_program()));
    parts.extend(c.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty() && s.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_./=:,+@%".contains(ch));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Run `c` with its output going straight to ours; an error names the command and how it ended.
pub(crate) fn run(c: &mut Command) -> Result<()> {
    let shown = show(c);
    println!("$ {shown}");
    let status = c.status().with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Run `c` and return what it printed on stdout and stderr, without echoing anything.
pub(crate) fn output(c: &mut Command) -> Result<(bool, String, String)> {
    let shown = show(c);
    let out = c.output().with_context(|| format!("could not start `{shown}`"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Run `c`, passing its stdout and stderr through line by line as they come, and hand each line
/// (with terminal colour codes taken out) to `seen` too. An error names the command.
pub(crate) fn run_watching(c: &mut Command, mut seen: impl FnMut(&str)) -> Result<()> {
    let shown = show(c);
    println!("$ {shown}");
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().expect("stdout is piped");
    let err = child.stderr.take().expect("stderr is piped");
    let t_out = pump(out, tx.clone(), false);
    let t_err = pump(err, tx, true);
    for line in rx {
        seen(&strip_ansi(&line));
    }
    let _ = t_out.join();
    let _ = t_err.join();
    let status = child.wait().with_context(|| format!("lost `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Copy `from` to our stdout or stderr line by line, sending each line on `tx` as well.
fn pump(
    from: impl Read + Send + 'static,
    tx: std::sync::mpsc::Sender<String>,
    to_stderr: bool,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = if to_stderr {
                        std::io::stderr().write_all(&buf)
                    } else {
                        let mut o = std::io::stdout().lock();
                        o.write_all(&buf).and_then(|()| o.flush())
                    };
                    let _ = tx.send(String::from_utf8_lossy(&buf).trim_end().to_owned());
                }
            }
        }
    })
}

/// `s` without ANSI escape sequences (colours, cursor moves).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '\u{1b}' {
            out.push(ch);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// Is `name` a command on PATH? Asks the shell's `command -v`, and gives the path it found.
pub(crate) fn which(name: &str) -> Option<String> {
    let out = new("sh", &["-c", r#"command -v -- "$1""#, "sh", name]).stderr(Stdio::null()).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !path.is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[32;1m     Summary\u{1b}[0m [ 1.0s] 3 tests run"),
            "     Summary [ 1.0s] 3 tests run"
        );
    }

    #[test]
    fn shows_env_and_quotes() {
        let mut c = new("cargo", &["doc", "--no-deps"]);
        c.env("RUSTDOCFLAGS", "-D warnings");
        assert_eq!(show(&c), "RUSTDOCFLAGS='-D warnings' cargo doc --no-deps");
    }
}
