//! Allocator tuning for the `slicedb` and `tpch` binaries, which use
//! mimalloc as their global allocator. The library itself never installs an
//! allocator: an embedding application keeps its own.

/// `mi_option_purge_delay` in mimalloc.h (the same in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory in the process instead of returning it to the kernel.
///
/// COPY batches, blocks and scan buffers are megabytes each and are freed
/// and allocated again at a high rate; with purging, every reuse faults in
/// fresh zeroed pages (about 10% of a COPY's CPU, measured with perf). The
/// cost is that a process keeps its peak heap. Call before starting work.
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer option; any value is
    // valid for purge_delay (-1 means never purge).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
