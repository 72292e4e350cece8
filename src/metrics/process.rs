//! The process's file descriptors against its limit, read at scrape time:
//! every socket is one, and past the limit accepts fail (docs/DEPLOY.md,
//! open-files limits). Cheap: a directory listing and one system call.

/// (open descriptors, the soft `RLIMIT_NOFILE`); -1 for what cannot be read
/// (no /proc on this system).
pub fn fds() -> (f64, f64) {
    let open = std::fs::read_dir("/proc/self/fd")
        // The listing's own descriptor is among the entries: not counted.
        .map(|d| d.count().saturating_sub(1) as f64)
        .unwrap_or(-1.0);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        -1.0
    } else {
        // RLIM_INFINITY is u64::MAX: a huge finite number, as Prometheus wants.
        lim.rlim_cur as f64
    };
    (open, max)
}

#[cfg(test)]
mod tests {
    #[test]
    fn open_descriptors_are_counted_below_the_limit() {
        let (open, max) = super::fds();
        assert!(open > 0.0, "{open}");
        assert!(open <= max, "{open} > {max}");
    }
}
