//! Docker volumes as tree snapshots. A volume is read either from its mountpoint on this machine
//! or as a tar stream from the engine's archive API; both give the same tree for the same content,
//! because every node is recorded in a *portable* form that keeps only what both sources can see
//! and what matters inside a container: numeric owners, mode, mtime to the second (the archive
//! API's precision), size, content, link targets, device numbers and `security.capability`.
//! Paths are relative to the volume, so a snapshot does not depend on where it was mounted.
//!
//! The volume's root directory has no node in a tree; its owner, mode and mtime travel in the
//! snapshot label [`ROOT_LABEL`].

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use hoard_core::format::tree::{Node, NodeKind};

use super::{commit, now_ns, BackupOptions, BackupResult};
use crate::error::{RepoError, Result};
use crate::packer::Packer;
use crate::repo::Repository;

/// The source kind of volume snapshots.
pub const SOURCE_KIND: &str = "docker-volume";
/// The label that keeps the volume root's metadata: `mode=0755 uid=0 gid=0 mtime=1700000000`.
pub const ROOT_LABEL: &str = "hoard.volume.root";

/// Puts a node in portable form (see the module documentation). Inode numbers survive only on
/// files with more than one link, where restore needs them to link the group again; so a volume
/// with hard links gives trees that differ between the two ways of reading it, though both
/// restore the same files.
pub fn portable(n: &mut Node) {
    n.ctime_ns = 0;
    n.device = 0;
    n.user.clear();
    n.group.clear();
    n.mtime_ns = n.mtime_ns.div_euclid(1_000_000_000) * 1_000_000_000;
    n.xattrs.retain(|(k, _)| k == b"security.capability");
    if n.kind() == NodeKind::File {
        // Holes are not in a tar stream; restore leaves zero blocks as holes either way.
        n.sparse = true;
        if n.links <= 1 {
            n.links = 1;
            n.inode = 0;
        }
    } else {
        n.links = 1;
        n.inode = 0;
        n.sparse = false;
    }
}

/// The volume root's metadata as the value of [`ROOT_LABEL`].
pub fn root_label(n: &Node) -> String {
    format!("mode={:04o} uid={} gid={} mtime={}", n.mode, n.uid, n.gid, n.mtime_ns.div_euclid(1_000_000_000))
}

/// The volume root's (mode, uid, gid, mtime seconds) from [`ROOT_LABEL`]'s value.
pub fn parse_root_label(s: &str) -> Option<(u32, u32, u32, i64)> {
    let (mut mode, mut uid, mut gid, mut mtime) = (None, None, None, None);
    for part in s.split_whitespace() {
        let (k, v) = part.split_once('=')?;
        match k {
            "mode" => mode = u32::from_str_radix(v, 8).ok(),
            "uid" => uid = v.parse().ok(),
            "gid" => gid = v.parse().ok(),
            "mtime" => mtime = v.parse().ok(),
            _ => {}
        }
    }
    Some((mode?, uid?, gid?, mtime?))
}

fn with_root(opts: &BackupOptions, root: Option<&Node>) -> BackupOptions {
    let mut o = opts.clone();
    o.labels.retain(|(k, _)| k != ROOT_LABEL);
    if let Some(r) = root {
        o.labels.push((ROOT_LABEL.into(), root_label(r)));
        o.labels.sort();
    }
    o
}

/// Backs up volume `name` from its mountpoint `dir` on this machine. Files whose size and mtime
/// match the previous snapshot of the volume are not read again.
pub fn backup_volume_dir(repo: &Repository, dir: &Path, name: &str, opts: &BackupOptions) -> Result<BackupResult> {
    backup_dir(repo, dir, SOURCE_KIND, name, opts)
}

/// Backs up directory `dir` as a portable tree snapshot of source `kind` and `name` (a volume's
/// mountpoint, or a compose project's bind mount), incremental against the newest snapshot of
/// the same kind and name.
pub fn backup_dir(repo: &Repository, dir: &Path, kind: &str, name: &str, opts: &BackupOptions) -> Result<BackupResult> {
    let started = Instant::now();
    let started_ns = now_ns();
    let parent = super::parent(repo, opts, &|s| s.source_kind == kind && s.source_name == name && s.host == opts.host)?;
    let mut parent_tree = match parent {
        Some(p) => match repo.find_snapshot(&p.to_hex(), &|_| true).and_then(|s| repo.load_tree(&s.snapshot.tree)) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("parent snapshot {} unreadable, reading everything: {e}", p.short());
                None
            }
        },
        None => None,
    };
    super::locked(repo, opts, |session| {
        let ((tree, summary, warnings, root), stats) = Packer::run(repo, repo.storage().connections(), |packer| {
            super::fs::tree_of_dir(packer, dir, parent_tree.as_mut(), opts, started_ns)
        })?;
        let o = with_root(opts, Some(&root));
        commit(session, repo, &o, kind, name, vec![], parent, tree, summary, stats, started, warnings)
    })
}

/// Backs up volume `name` from a tar stream whose entries sit under one top directory (the
/// archive API's answer for the directory the volume is mounted on).
pub fn backup_volume_tar(
    repo: &Repository,
    input: &mut dyn Read,
    name: &str,
    opts: &BackupOptions,
) -> Result<BackupResult> {
    let started = Instant::now();
    let parent =
        super::parent(repo, opts, &|s| s.source_kind == SOURCE_KIND && s.source_name == name && s.host == opts.host)?;
    super::locked(repo, opts, |session| {
        let ((tree, summary, root), stats) = Packer::run(repo, repo.storage().connections(), |packer| {
            super::tar::tree_from_tar_with(packer, input, 1, opts, true)
        })?;
        if root.is_none() {
            return Err(RepoError::Invalid(format!("the tar stream of volume {name} has no top directory")));
        }
        let o = with_root(opts, root.as_ref());
        commit(session, repo, &o, SOURCE_KIND, name, vec![], parent, tree, summary, stats, started, vec![])
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_label_round_trips() {
        let n = hoard_core::format::tree::Node {
            mode: 0o700,
            uid: 999,
            gid: 472,
            mtime_ns: 1_700_000_000_123,
            ..Default::default()
        };
        let s = super::root_label(&n);
        assert_eq!(s, "mode=0700 uid=999 gid=472 mtime=1700");
        assert_eq!(super::parse_root_label(&s), Some((0o700, 999, 472, 1700)));
        assert_eq!(super::parse_root_label("mode=07 uid=1"), None);
    }
}
