//! A global allocator that keeps absurd allocation sizes from aborting the process.
//!
//! The Kafka decoder sizes a `Vec` from the array length a request declares before it reads
//! the elements. A hostile 2^31-element array of structs asks for more memory than the
//! machine has; the system allocator refuses and Rust aborts the process. Decoding would
//! fail a moment later anyway (the frame, capped by `socket.request.max.bytes`, cannot hold
//! the elements), so such requests only need address space, never memory: allocations of
//! [`HUGE`] bytes or more are served by an anonymous `MAP_NORESERVE` mapping, which the
//! kernel grants without committing memory, and unmapped on free. Every other allocation goes
//! to the system allocator untouched.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped lazily. Nothing legitimate in Sluice comes
/// near it (requests are capped at 100 MiB by default).
pub const HUGE: usize = 1 << 30;

pub struct GuardedAlloc;

// SAFETY: huge blocks come from mmap (page-aligned, which satisfies any Layout alignment up
// to the page size; larger alignments go to the system allocator) and are released with
// munmap of the same length; everything else is delegated to `System` unchanged.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE && layout.align() <= 4096 {
            return map(layout.size());
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE && layout.align() <= 4096 {
            return map(layout.size()); // anonymous mappings are zero-filled
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= HUGE && layout.align() <= 4096 {
            libc::munmap(ptr.cast(), layout.size());
            return;
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_huge = layout.size() >= HUGE && layout.align() <= 4096;
        let new_huge = new_size >= HUGE && layout.align() <= 4096;
        if !old_huge && !new_huge {
            return System.realloc(ptr, layout, new_size);
        }
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new = self.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}

unsafe fn map(size: usize) -> *mut u8 {
    let p = libc::mmap(
        std::ptr::null_mut(),
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    );
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}
