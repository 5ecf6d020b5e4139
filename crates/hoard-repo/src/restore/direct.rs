//! Writing a large restored file around the page cache (`O_DIRECT`).
//!
//! Most of a restore's CPU time is the kernel's: every byte written through `write(2)` is copied
//! into page cache it has just allocated and zeroed, and written back to the disk later. For a
//! file of at least [`MIN_SIZE`] the worker instead gathers the file's bytes in an aligned
//! buffer and hands each full buffer to the disk directly, so the kernel neither copies nor
//! caches them, and a large restore does not push the running services' files out of memory.
//! The file's last partial block goes through the page cache.
//!
//! A direct write returns only once the disk has the data, so each full buffer is written on a
//! thread of its own while the worker fills the next one. Only files on ext4, XFS and Btrfs are
//! written this way; on a network or FUSE filesystem a direct write can be a synchronous round
//! trip. Whatever the filesystem does not accept (a larger alignment than [`ALIGN`], say) makes
//! the writer fall back to ordinary writes for the rest of the file; the bytes are the same
//! either way.

use std::alloc::{self, Layout};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::ptr::NonNull;

/// Files at least this large are written with `O_DIRECT`. Below it, a file is one or two
/// writes either way, and a direct write waits for the disk where a buffered one does not.
pub(super) const MIN_SIZE: u64 = 256 << 10;

/// The alignment of the buffer's address, of every direct write's file offset and of its
/// length: the logical block size of nearly every disk, and a multiple of the rest.
const ALIGN: usize = 4096;

/// How much a direct write carries at most. Writes of 1 to 2 MiB reach the disk's throughput
/// here (`dd oflag=direct`: 0.34 GB/s at 256 KiB, 1.4 at 1 MiB, 1.6 at 2 and 4 MiB).
const BUF: usize = 2 << 20;

/// A [`BUF`]-byte buffer aligned to [`ALIGN`]. A restore worker has two at most, reused for
/// every large file it writes.
pub(super) struct AlignedBuf {
    ptr: NonNull<u8>,
    /// Where the usable bytes start: 0, but for the test that hands the kernel a misaligned
    /// buffer.
    skew: usize,
}

// SAFETY: the buffer is owned memory like a Vec<u8>; nothing else points into it.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout() -> Layout {
        Layout::from_size_align(BUF + ALIGN, ALIGN).expect("constant layout")
    }

    pub(super) fn new() -> AlignedBuf {
        Self::with_skew(0)
    }

    fn with_skew(skew: usize) -> AlignedBuf {
        assert!(skew < ALIGN);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(Self::layout()) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(Self::layout()));
        AlignedBuf { ptr, skew }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the allocation holds BUF + ALIGN initialised (zeroed) bytes and skew < ALIGN.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.skew), BUF) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in with_skew with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout()) }
    }
}

/// Sets or clears `O_DIRECT` on an open file.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `file` is on a filesystem of a local disk that hoard writes directly: ext4, XFS or
/// Btrfs. Elsewhere (NFS, FUSE, overlay, tmpfs, ZFS) direct writes may be synchronous round
/// trips, unsupported, or no faster, and the page cache is used as before.
fn local_disk(file: &File) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    // SAFETY: fstatfs fills the struct it is given; zeroed is a valid statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor we own and a pointer to a live statfs.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libc targets
    let kind = st.f_type as i64;
    matches!(kind, EXT4 | XFS | BTRFS)
}

/// Writes `buf` at `offset`, all of it: directly while `direct`, and through the page
/// cache from the first write the kernel refuses or cuts short at an unaligned length. Returns
/// whether the file is still in direct mode.
fn write_all_at(file: &File, buf: &[u8], offset: u64, mut direct: bool) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match file.write_at(&buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                done += n;
                // A short direct write leaves an unaligned rest: write it the ordinary way.
                if direct && n % ALIGN != 0 {
                    set_direct(file, false)?;
                    direct = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("direct write refused ({e}); writing the rest of the file through the page cache");
                set_direct(file, false)?;
                direct = false;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(direct)
}

/// A full buffer being written on a thread of its own, so that the worker decompresses the
/// next one meanwhile: a direct write returns only once the disk has the data.
type InFlight = std::thread::JoinHandle<(AlignedBuf, io::Result<bool>)>;

/// Writes a new file from its start, in order, through two [`AlignedBuf`]s: one filling, one
/// being written.
pub(super) struct DirectWriter<'a> {
    file: &'a File,
    /// The worker's spare buffers, which the writer borrows from and gives back.
    pool: &'a mut Vec<AlignedBuf>,
    buf: Option<AlignedBuf>,
    in_flight: Option<InFlight>,
    /// Bytes in `buf` not yet written.
    filled: usize,
    /// The file offset of `buf`'s first byte.
    offset: u64,
    /// Whether the file is open with `O_DIRECT`.
    direct: bool,
}

impl<'a> DirectWriter<'a> {
    /// Turns on `O_DIRECT` for `file` (just created, nothing written to it yet), or writes
    /// through the page cache if the filesystem will not have it.
    pub(super) fn new(file: &'a File, pool: &'a mut Vec<AlignedBuf>) -> DirectWriter<'a> {
        let direct = local_disk(file)
            && match set_direct(file, true) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!("writing without O_DIRECT: {e}");
                    false
                }
            };
        let buf = Some(pool.pop().unwrap_or_else(AlignedBuf::new));
        DirectWriter { file, pool, buf, in_flight: None, filled: 0, offset: 0, direct }
    }

    #[cfg(test)]
    fn is_direct(&mut self) -> bool {
        self.wait().expect("the write in flight");
        self.direct
    }

    fn buf(&mut self) -> &mut [u8] {
        self.buf.as_mut().expect("a buffer outside finish").bytes()
    }

    pub(super) fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (BUF - self.filled).min(data.len());
            let at = self.filled;
            self.buf()[at..at + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == BUF {
                self.send()?;
            }
        }
        Ok(())
    }

    /// Hands the full buffer to a writing thread and goes on with a spare one.
    fn send(&mut self) -> io::Result<()> {
        self.wait()?;
        let buf = self.buf.take().expect("a buffer outside finish");
        self.buf = Some(self.pool.pop().unwrap_or_else(AlignedBuf::new));
        let file = self.file.try_clone()?;
        let (offset, direct) = (self.offset, self.direct);
        self.in_flight = Some(std::thread::spawn(move || {
            let mut buf = buf;
            let r = write_all_at(&file, buf.bytes(), offset, direct);
            (buf, r)
        }));
        self.offset += BUF as u64;
        self.filled = 0;
        Ok(())
    }

    /// Waits for the write in flight, if any, and takes its buffer back.
    fn wait(&mut self) -> io::Result<()> {
        let Some(h) = self.in_flight.take() else { return Ok(()) };
        let (buf, r) = h.join().map_err(|_| io::Error::other("a restore write thread panicked"))?;
        self.pool.push(buf);
        self.direct = r?;
        Ok(())
    }

    /// Writes what is left: the whole blocks directly, the last partial one through the page
    /// cache.
    pub(super) fn finish(mut self) -> io::Result<()> {
        self.wait()?;
        let whole = self.filled & !(ALIGN - 1);
        let (file, offset, filled, direct) = (self.file, self.offset, self.filled, self.direct);
        let buf = self.buf.as_mut().expect("a buffer outside finish").bytes();
        let direct = write_all_at(file, &buf[..whole], offset, direct)?;
        if filled > whole {
            if direct {
                set_direct(file, false)?;
            }
            write_all_at(file, &buf[whole..filled], offset + whole as u64, false)?;
        }
        self.filled = 0;
        Ok(())
    }
}

impl Drop for DirectWriter<'_> {
    /// Gives the buffers back, after any write in flight, also when the file failed.
    fn drop(&mut self) {
        let _ = self.wait();
        if let Some(b) = self.buf.take() {
            self.pool.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        blake3::Hasher::new().update(&(len as u64).to_le_bytes()).finalize_xof().fill(&mut v);
        v
    }

    /// Under CI the test machine's temporary directory is on ext4, which is written directly;
    /// elsewhere it may be a tmpfs, which is not.
    fn expect_direct(direct: bool) -> bool {
        let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        assert!(direct || !in_ci, "under CI the temporary directory must be on ext4, XFS or Btrfs, to test O_DIRECT");
        if !direct {
            eprintln!("not tested: the temporary directory is not on ext4, XFS or Btrfs, so only ordinary writes ran");
        }
        direct
    }

    /// Writes `data` in pieces of the given sizes (cycled); returns the file's content, whether
    /// the writer started with `O_DIRECT` and whether it still had it before `finish`.
    fn write_in_pieces(buf: &mut Vec<AlignedBuf>, data: &[u8], pieces: &[usize]) -> (Vec<u8>, bool, bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create_new(&path).unwrap();
        let mut w = DirectWriter::new(&file, buf);
        let started = w.is_direct();
        let mut rest = data;
        for &p in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = p.min(rest.len());
            w.write(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        let kept = w.is_direct();
        w.finish().unwrap();
        drop(file);
        (std::fs::read(&path).unwrap(), started, kept)
    }

    #[test]
    fn every_length_around_the_block_and_buffer_sizes_comes_back_whole() {
        let mut buf = Vec::new();
        let lengths = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BUF - 1, BUF, BUF + 1, 3 * BUF + ALIGN + 123];
        for len in lengths {
            let data = pattern(len);
            for pieces in [&[len.max(1)][..], &[1, 4095, 16 << 10, 1 << 20, 3 * BUF], &[65_537, 12_345]] {
                let (got, started, kept) = write_in_pieces(&mut buf, &data, pieces);
                assert!(got == data, "length {len}, pieces {pieces:?}: the file differs");
                if expect_direct(started) {
                    assert!(kept, "length {len}, pieces {pieces:?}: fell back to the page cache");
                }
            }
        }
    }

    /// A buffer the kernel will not take directly (its address is off by one byte): the first
    /// direct write fails with EINVAL, and the writer must go on through the page cache
    /// without losing or repeating a byte.
    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache() {
        let mut buf = vec![AlignedBuf::with_skew(1), AlignedBuf::with_skew(1)];
        let data = pattern(2 * BUF + 5000);
        let (got, started, kept) = write_in_pieces(&mut buf, &data, &[300_000]);
        assert!(got == data, "the file differs");
        if expect_direct(started) {
            assert!(!kept, "a misaligned buffer was written with O_DIRECT");
        }
    }
}
