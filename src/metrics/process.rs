//! The process's own figures, read from /proc when scraped.

/// Resident memory and open descriptors now (0 where /proc cannot tell).
pub struct Sample {
    pub resident_bytes: u64,
    pub open_fds: u64,
}

pub fn sample() -> Sample {
    // statm: size resident shared ... in pages.
    let resident_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Sample {
        resident_bytes: resident_pages * page,
        open_fds,
    }
}
