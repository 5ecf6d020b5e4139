//! The process's memory policy: how glibc's malloc hands out and gives back large blocks, and
//! transparent huge pages for the largest.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of 4 MiB and more (pack buffers, read blocks of large files) get pages of their
/// own and give them back when freed. glibc's default raises that threshold to the largest
/// block freed so far, after which a backup's 20 MiB pack buffers were carved out of the
/// per-thread heaps and kept there: night 1 of the bench peaked at 200 to 240 MiB instead of
/// about 135 (docs/PERFORMANCE.md).
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a malloc parameter; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Blocks this large are backed by transparent huge pages where the kernel leaves that to the
/// program (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, Debian's default).
///
/// In a backup or restore of the bench's data the only one is the argon2id memory of the key
/// derivation, 64 MiB by default (`thp_fault_alloc` in `/proc/vmstat` rises by 32 in either),
/// which every command that opens a repository fills once: with 4 KiB pages that is
/// 16,384 page faults, each one a fault in the hypervisor as well on a virtual machine that
/// returns freed memory to its host. With 2 MiB pages it is 32. `hoard snapshots` (a key
/// derivation and little else) on the 2-core benchmark machine: 87 and 91 ms without, 59 and
/// 61 ms with (PERFORMANCE.md, "Key derivation"). Pack buffers (20 MiB) stay below it: they are
/// filled only as far as a pack goes, and huge pages would make the untouched rest resident.
const HUGE_MIN: usize = 32 << 20;

/// [`System`], except that blocks of [`HUGE_MIN`] bytes and more are mappings of their own,
/// advised to use huge pages before anything touches them.
///
/// Advising a block after `System` returns it is too late for most: an aligned zeroed
/// allocation (argon2's blocks are aligned to 64 bytes) comes back already cleared with
/// `memset`, in 4 KiB pages. A fresh mapping is zero without being touched. glibc would map
/// blocks this large on their own as well (its threshold is 4 MiB, [`tune_malloc`]), so what
/// the process holds and gives back is the same.
pub struct Allocator;

#[cfg(target_os = "linux")]
impl Allocator {
    fn is_huge(layout: &Layout) -> bool {
        layout.size() >= HUGE_MIN && layout.align() <= PAGE
    }

    /// A mapping of `size` bytes, rounded up to whole pages; null when the system has none.
    fn map(size: usize) -> *mut u8 {
        let len = size.next_multiple_of(PAGE);
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
        // no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        // SAFETY: the range is the mapping just made. Only advice: where it is refused (huge
        // pages off, an old kernel) the mapping keeps small pages.
        unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
        p.cast()
    }
}

#[cfg(target_os = "linux")]
const PAGE: usize = 4096;

// SAFETY: blocks under HUGE_MIN (or aligned beyond a page) go to `System` with the arguments
// received. Larger ones are whole mappings: page-aligned (so aligned enough), zero when new (so
// `alloc_zeroed` holds), and `dealloc` and `realloc` recognise them by the same layout test,
// which the caller's layout makes consistent (GlobalAlloc's contract: the layout a block was
// allocated with).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if Self::is_huge(&layout) {
            return Self::map(layout.size());
        }
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if Self::is_huge(&layout) {
            return Self::map(layout.size());
        }
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        #[cfg(target_os = "linux")]
        if Self::is_huge(&layout) {
            // SAFETY: `ptr` is a mapping of this length made by `map` (same layout test).
            unsafe { libc::munmap(ptr.cast(), layout.size().next_multiple_of(PAGE)) };
            return;
        }
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: GlobalAlloc's contract for realloc: the new layout is valid.
            let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            match (Self::is_huge(&layout), Self::is_huge(&new)) {
                (false, false) => {}
                (true, true) => {
                    // SAFETY: `ptr` is a mapping of the old length made by `map`; the kernel
                    // moves it whole (its huge-page advice with it) or fails and leaves it.
                    let p = unsafe {
                        libc::mremap(
                            ptr.cast(),
                            layout.size().next_multiple_of(PAGE),
                            new_size.next_multiple_of(PAGE),
                            libc::MREMAP_MAYMOVE,
                        )
                    };
                    return if p == libc::MAP_FAILED { std::ptr::null_mut() } else { p.cast() };
                }
                _ => {
                    // Across the threshold: a new block, the contents copied, the old freed.
                    // SAFETY: `new` is non-zero in size (realloc's contract); both blocks are
                    // live for the copy, of at least the copied length each.
                    unsafe {
                        let p = self.alloc(new);
                        if !p.is_null() {
                            std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                            self.dealloc(ptr, layout);
                        }
                        return p;
                    }
                }
            }
        }
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Huge-page advice must not change what an allocation holds: a large zeroed block reads
    /// as zeros, a large block keeps what is written to it through growth and shrinking.
    #[test]
    fn large_blocks_behave_as_any_other() {
        let a = Allocator;
        for size in [HUGE_MIN, HUGE_MIN + 12_345, 3 * HUGE_MIN] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: the layout is non-zero in size; each block is freed with its layout.
            unsafe {
                let z = a.alloc_zeroed(layout);
                assert!(!z.is_null());
                let s = std::slice::from_raw_parts_mut(z, size);
                assert!(s.iter().step_by(4093).all(|&b| b == 0) && s[size - 1] == 0);
                s.iter_mut().step_by(4096).for_each(|b| *b = 7);
                let g = a.realloc(z, layout, size * 2);
                assert!(!g.is_null());
                let s = std::slice::from_raw_parts(g, size);
                assert!(s.iter().step_by(4096).all(|&b| b == 7));
                let small = a.realloc(g, Layout::from_size_align(size * 2, 64).unwrap(), 1000);
                assert_eq!(*small, 7);
                a.dealloc(small, Layout::from_size_align(1000, 64).unwrap());
            }
        }
        // A small block grown past the threshold.
        let mut v: Vec<u8> = vec![1; 1000];
        v.resize(HUGE_MIN + 1, 2);
        assert_eq!((v[999], v[1000], v[HUGE_MIN]), (1, 2, 2));
    }
}
