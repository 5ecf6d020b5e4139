//! Where the password comes from: `HOARD_PASSWORD`, `HOARD_PASSWORD_FILE`,
//! `HOARD_PASSWORD_COMMAND` (or their flags), else a prompt on the terminal.

use std::io::{BufRead, Write};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The ways a password may be given, in the order they are tried.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub file: Option<String>,
    pub command: Option<String>,
}

fn trim_newline(mut s: String) -> String {
    while s.ends_with('\n') || s.ends_with('\r') {
        s.pop();
    }
    s
}

/// Reads a line from the terminal with echo off.
pub fn prompt(label: &str) -> Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no password given (set HOARD_PASSWORD, HOARD_PASSWORD_FILE or HOARD_PASSWORD_COMMAND) and no terminal to ask on")?;
    use std::os::fd::AsRawFd;
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on a valid fd with a zeroed struct they fill in.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    let have_termios = unsafe { libc::tcgetattr(fd, &mut old) } == 0;
    if have_termios {
        let mut t = old;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
    let mut w = &tty;
    write!(w, "{label}")?;
    w.flush()?;
    let mut line = String::new();
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    if have_termios {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    }
    r?;
    Ok(trim_newline(line))
}

/// The repository password.
pub fn get(src: &Source, label: &str) -> Result<String> {
    if let Ok(p) = std::env::var("HOARD_PASSWORD") {
        return Ok(p);
    }
    if let Some(f) = src.file.clone().or_else(|| std::env::var("HOARD_PASSWORD_FILE").ok()) {
        let s = std::fs::read_to_string(&f).with_context(|| format!("reading the password file {f}"))?;
        return Ok(trim_newline(s));
    }
    if let Some(c) = src.command.clone().or_else(|| std::env::var("HOARD_PASSWORD_COMMAND").ok()) {
        return run_command(&c);
    }
    prompt(label)
}

/// The password of the source repository of `hoard copy`: `HOARD_FROM_PASSWORD`,
/// `--from-password-file` / `HOARD_FROM_PASSWORD_FILE`, `--from-password-command` /
/// `HOARD_FROM_PASSWORD_COMMAND`; when none is given, the same sources as the target's.
pub fn get_from(from: &Source, target: &Source, label: &str) -> Result<String> {
    if let Ok(p) = std::env::var("HOARD_FROM_PASSWORD") {
        return Ok(p);
    }
    let from = Source {
        file: from.file.clone().or_else(|| std::env::var("HOARD_FROM_PASSWORD_FILE").ok()),
        command: from.command.clone().or_else(|| std::env::var("HOARD_FROM_PASSWORD_COMMAND").ok()),
    };
    if let Some(f) = &from.file {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading the password file {f}"))?;
        return Ok(trim_newline(s));
    }
    if let Some(c) = &from.command {
        return run_command(c);
    }
    get(target, label)
}

fn run_command(c: &str) -> Result<String> {
    let out =
        Command::new("sh").arg("-c").arg(c).output().with_context(|| format!("running the password command `{c}`"))?;
    if !out.status.success() {
        bail!("the password command `{c}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(trim_newline(String::from_utf8(out.stdout).context("the password command printed something that is not UTF-8")?))
}

/// A new password (init, key add, key passwd): `HOARD_NEW_PASSWORD`, `--new-password-file`,
/// else asked twice on the terminal. `init` also accepts the ordinary sources.
pub fn get_new(file: Option<&str>, allow_current_sources: bool, src: &Source) -> Result<String> {
    if let Ok(p) = std::env::var("HOARD_NEW_PASSWORD") {
        return check(p);
    }
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading the password file {f}"))?;
        return check(trim_newline(s));
    }
    if allow_current_sources
        && (std::env::var_os("HOARD_PASSWORD").is_some()
            || src.file.is_some()
            || src.command.is_some()
            || std::env::var_os("HOARD_PASSWORD_FILE").is_some()
            || std::env::var_os("HOARD_PASSWORD_COMMAND").is_some())
    {
        return check(get(src, "")?);
    }
    let a = prompt("enter new password: ")?;
    let b = prompt("enter it again: ")?;
    if a != b {
        bail!("the passwords do not match");
    }
    check(a)
}

fn check(p: String) -> Result<String> {
    if p.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(p)
}
