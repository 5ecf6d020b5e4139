//! File metadata in and out of tree nodes: stat fields, owner names, extended attributes.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

use hoard_core::format::tree::{Node, NodeKind};

/// Owner and group names by id, looked up once each.
#[derive(Default)]
pub struct Names {
    users: Mutex<HashMap<u32, String>>,
    groups: Mutex<HashMap<u32, String>>,
}

fn lookup_user(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; the result points into `pw`/`buf`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned()
}

fn lookup_group(gid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as above.
    let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(gr.gr_name) }.to_string_lossy().into_owned()
}

impl Names {
    pub fn user(&self, uid: u32) -> String {
        self.user_reusing(uid, None)
    }
    pub fn group(&self, gid: u32) -> String {
        self.group_reusing(gid, None)
    }
    /// The name of `uid`: moved out of `reuse` when that holds the same name (no allocation),
    /// else a copy.
    pub fn user_reusing(&self, uid: u32, reuse: Option<&mut String>) -> String {
        reuse_or_copy(self.users.lock().unwrap().entry(uid).or_insert_with(|| lookup_user(uid)), reuse)
    }
    pub fn group_reusing(&self, gid: u32, reuse: Option<&mut String>) -> String {
        reuse_or_copy(self.groups.lock().unwrap().entry(gid).or_insert_with(|| lookup_group(gid)), reuse)
    }
}

fn reuse_or_copy(name: &str, reuse: Option<&mut String>) -> String {
    match reuse {
        Some(r) if r == name => std::mem::take(r),
        _ => name.to_owned(),
    }
}

pub fn kind_of(m: &Metadata) -> NodeKind {
    let t = m.file_type();
    if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_socket() {
        NodeKind::Socket
    } else if t.is_char_device() {
        NodeKind::CharDevice
    } else if t.is_block_device() {
        NodeKind::BlockDevice
    } else {
        NodeKind::File
    }
}

/// A node from `lstat` data (no content, no subtree yet). `reuse` is the entry of the same name
/// in the parent snapshot, if any: its owner and group names are moved into the new node when
/// they are the same, so an unchanged entry costs no allocation for them.
pub fn node_from_metadata(name: Vec<u8>, m: &Metadata, names: &Names, reuse: Option<&mut Node>) -> Node {
    let kind = kind_of(m);
    let (user, group) = match reuse {
        Some(p) => (names.user_reusing(m.uid(), Some(&mut p.user)), names.group_reusing(m.gid(), Some(&mut p.group))),
        None => (names.user(m.uid()), names.group(m.gid())),
    };
    Node {
        name,
        kind: Some(kind),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        user,
        group,
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        inode: m.ino(),
        device: m.dev(),
        links: m.nlink(),
        size: if kind == NodeKind::File { m.size() } else { 0 },
        rdev: if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) { m.rdev() } else { 0 },
        sparse: kind == NodeKind::File && m.blocks() * 512 < m.size(),
        ..Default::default()
    }
}

/// Extended attributes of a path (not following symlinks). Filesystems without xattr support
/// give none.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for n in names {
        if let Some(v) = xattr::get(path, &n)? {
            out.push((n.as_bytes().to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unchanged entry's owner name is moved out of the parent's node; a name that differs
    /// from the parent's (the account was renamed) is the current one, and the parent's stays.
    #[test]
    fn owner_names_are_reused_only_when_they_are_the_same() {
        let names = Names::default();
        names.users.lock().unwrap().insert(1000, "alice".into());
        names.groups.lock().unwrap().insert(1000, "staff".into());
        let mut same = String::from("alice");
        assert_eq!(names.user_reusing(1000, Some(&mut same)), "alice");
        assert!(same.is_empty(), "the parent's name was copied, not moved");
        let mut renamed = String::from("bob");
        assert_eq!(names.user_reusing(1000, Some(&mut renamed)), "alice");
        assert_eq!(renamed, "bob");
        let mut group = String::from("wheel");
        assert_eq!(names.group_reusing(1000, Some(&mut group)), "staff");
        assert_eq!(group, "wheel");
        assert_eq!(names.user(1000), "alice");
        assert_eq!(names.users.lock().unwrap()[&1000], "alice", "the cache lost the name");
    }
}
