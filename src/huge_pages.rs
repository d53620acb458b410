//! Transparent huge pages are turned off for the `flowengine` process.
//!
//! Queries allocate and free hash tables, batches and buffers in bursts of hundreds of
//! megabytes, and the allocator hands freed memory back to the kernel within milliseconds.
//! With transparent huge pages every first touch of returned memory faulted in and zeroed a
//! whole 2 MiB page: on TPC-H SF1 the kernel's page zeroing was 16% of all CPU time, and Q09
//! took 0.39-0.44 s against 0.27 s with them off, run after run (benches/README.md). Redis and
//! MongoDB document the same advice for their servers.
//!
//! `prctl(PR_SET_THP_DISABLE)` changes only this process. It is the call mimalloc itself
//! makes for `MIMALLOC_ALLOW_THP=0`; setting `MIMALLOC_ALLOW_THP` to anything else keeps the
//! kernel's configuration.

/// Whether the environment asks to keep transparent huge pages as the kernel configures them.
fn keep_kernel_setting(allow_thp: Option<&std::ffi::OsStr>) -> bool {
    allow_thp.is_some_and(|value| value != "0")
}

/// Turns transparent huge pages off for this process unless `MIMALLOC_ALLOW_THP` says
/// otherwise. A kernel that refuses is not an error: the process runs as before.
pub(crate) fn configure() {
    if keep_kernel_setting(std::env::var_os("MIMALLOC_ALLOW_THP").as_deref()) {
        return;
    }
    disable();
}

#[cfg(target_os = "linux")]
fn disable() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and reads or writes no memory
    // of this process; it sets a flag on the process's address space.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "transparent huge pages stay as the kernel configures them"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn disable() {}

#[cfg(test)]
mod tests {
    use super::keep_kernel_setting;
    use std::ffi::OsStr;

    #[test]
    fn only_a_nonzero_mimalloc_allow_thp_keeps_the_kernel_setting() {
        assert!(!keep_kernel_setting(None));
        assert!(!keep_kernel_setting(Some(OsStr::new("0"))));
        assert!(keep_kernel_setting(Some(OsStr::new("1"))));
        assert!(keep_kernel_setting(Some(OsStr::new("yes"))));
    }
}
