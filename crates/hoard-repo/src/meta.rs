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
        self.users.lock().unwrap().entry(uid).or_insert_with(|| lookup_user(uid)).clone()
    }
    pub fn group(&self, gid: u32) -> String {
        self.groups.lock().unwrap().entry(gid).or_insert_with(|| lookup_group(gid)).clone()
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

/// A node from `lstat` data (no content, no subtree yet).
pub fn node_from_metadata(name: &[u8], m: &Metadata, names: &Names) -> Node {
    let kind = kind_of(m);
    Node {
        name: name.to_vec(),
        kind: Some(kind),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        user: names.user(m.uid()),
        group: names.group(m.gid()),
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
