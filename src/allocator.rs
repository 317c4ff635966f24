//! The process's allocator: mimalloc, configured before any thread starts. Every binary
//! that runs a node (`bahi`, `bahi-bench`) calls `configure` first thing in `main`.

// The writer, the fold and the HTTP path allocate many small, short-lived values across
// threads, where glibc's malloc cost a large share of the CPU (BENCHMARKS.md has the A/B).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_decommits` in mimalloc's `mimalloc.h` (the sixth option, index 5, in the
/// v2 and v3 headers alike; libmimalloc-sys names no constant for it).
const MIMALLOC_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// `mi_option_allow_thp` in the v3 `mimalloc.h` that libmimalloc-sys 0.1.49 builds by
/// default (index 43; checked by compiling a program against that header).
const MIMALLOC_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Makes mimalloc give freed memory back with `MADV_FREE` (reset) instead of decommitting it.
/// The fold's hash maps double as the ledger grows; decommitted, the old tables' pages were
/// faulted and zeroed afresh by the next allocations (`clear_page_erms` dominated a
/// replay's profile). Reset pages stay mapped until the kernel needs them.
///
/// And keeps the heap off transparent huge pages. Loading hands every event's bytes from
/// the reader to the fold, which frees them on another thread; with huge pages each fault
/// zeroed 2 MiB, and loading a large log spent most of its system time there (BENCHMARKS.md).
#[allow(unsafe_code)]
pub fn configure() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table. It is not
    // thread-safe, so it runs first thing in `main`, before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(MIMALLOC_OPTION_PURGE_DECOMMITS, 0);
        libmimalloc_sys::mi_option_set(MIMALLOC_OPTION_ALLOW_THP, 0);
    }
    // mimalloc reserved its first memory before `main`, under the option's old value; this
    // turns transparent huge pages off for the whole process, that memory included, as
    // mimalloc itself does when the option is set from the environment. A kernel without
    // the call leaves things as they were.
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments and touches no memory.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
