//! Waiting out ext4's memory of freed inodes before anything is measured.
//!
//! On ext4 *without a journal*, a new inode avoids one freed in the last 60 s, or in the last
//! 360 s while the block of the inode table holding it is dirty (`recently_deleted` in
//! `fs/ext4/ialloc.c`: `RECENTCY_MIN` 60, plus `RECENTCY_DIRTY` 300). To find one it looks up the
//! inode table block of every free inode of the group in turn, and when the group's free inodes
//! were all freed recently it takes the last of them only after passing over all. A restore of
//! 44,000 files a minute after a bench run had removed its copies took 6.2 s instead of 1.7 s,
//! 45% of its samples in `recently_deleted` and `find_get_block_common`; at +7 minutes it took
//! 1.7 s again (PERFORMANCE.md, "What it does"). Writing new files into the same groups dirties
//! those blocks again, so syncing does not shorten the wait to 60 s. A journaled ext4 and other
//! filesystems reuse freed inodes at once, and nothing here waits for them.
//!
//! The bench notes when it last removed a tree on such a filesystem, in a file of the system's
//! temporary directory named after the device, so that a run started within the window after
//! another run's removals (with another `--work` too) waits out the rest before it measures.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;

/// 60 s plus 300 s while the inode table block is dirty, and a margin.
pub const WINDOW: Duration = Duration::from_secs(60 + 300 + 5);

/// A filesystem whose freed inodes must be waited out: ext4 without a journal.
pub struct Fs {
    /// The kernel's name of its block device (`vda`, `loop0`), for messages.
    pub device: String,
    stamp: PathBuf,
}

/// The filesystem `path` lies on, if it is ext4 without a journal.
pub fn journalless_ext4(path: &Path) -> Option<Fs> {
    let dev = fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    // /sys/dev/block/MAJ:MIN links to the device's directory, named as in /proc/fs.
    let link = fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let device = link.file_name()?.to_str()?.to_owned();
    journalless(Path::new("/proc/fs"), &device)
        .then(|| Fs { stamp: std::env::temp_dir().join(format!("hoard-bench-freed-{major}-{minor}")), device })
}

/// Whether `/proc/fs` lists `device` as mounted ext4 (`ext4/DEVICE`) with no journal
/// (`jbd2/DEVICE-8`, one per journal).
fn journalless(proc_fs: &Path, device: &str) -> bool {
    if !proc_fs.join("ext4").join(device).is_dir() {
        return false;
    }
    let prefix = format!("{device}-");
    let journal = fs::read_dir(proc_fs.join("jbd2"))
        .map(|d| d.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix))))
        .unwrap_or(false);
    !journal
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Fs {
    /// Notes that inodes were freed just now.
    pub fn freed(&self) -> Result<()> {
        fs::write(&self.stamp, now().to_string())?;
        Ok(())
    }

    /// How long until the last noted removal is out of the window.
    pub fn remaining(&self) -> Duration {
        let Some(at) = fs::read_to_string(&self.stamp).ok().and_then(|s| s.trim().parse::<u64>().ok()) else {
            return Duration::ZERO;
        };
        remaining_at(at, now())
    }
}

fn remaining_at(freed_at: u64, now: u64) -> Duration {
    (Duration::from_secs(freed_at) + WINDOW).saturating_sub(Duration::from_secs(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_detection_reads_proc_fs() {
        let d = std::env::temp_dir().join(format!("hoard-freed-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("ext4/vda")).unwrap();
        fs::create_dir_all(d.join("ext4/loop0")).unwrap();
        fs::create_dir_all(d.join("jbd2/loop0-8")).unwrap();
        assert!(journalless(&d, "vda"));
        assert!(!journalless(&d, "loop0"), "loop0 has a journal");
        assert!(!journalless(&d, "sda"), "sda is not ext4");
        // vda-8 would be vda's journal; vda1's does not count for vda.
        fs::create_dir_all(d.join("jbd2/vda1-8")).unwrap();
        assert!(journalless(&d, "vda"));
        fs::create_dir_all(d.join("jbd2/vda-8")).unwrap();
        assert!(!journalless(&d, "vda"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn window_counts_from_the_removal() {
        assert_eq!(remaining_at(1000, 1000), WINDOW);
        assert_eq!(remaining_at(1000, 1100), WINDOW - Duration::from_secs(100));
        assert_eq!(remaining_at(1000, 1000 + WINDOW.as_secs()), Duration::ZERO);
        assert_eq!(remaining_at(1000, 99_999), Duration::ZERO);
    }
}
