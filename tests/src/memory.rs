//! A process's memory as the kernel counts it (`/proc/<pid>/status`), for the memory benchmark.

use std::io;

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rss {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// The most it was resident (`VmHWM`).
    pub peak_kib: u64,
    /// Of `rss_kib`: anonymous memory (heap, stacks).
    pub anon_kib: u64,
    /// Of `rss_kib`: file pages (the binary's text and data).
    pub file_kib: u64,
    /// Of `rss_kib`: shared memory and mapped kernel buffers (the eBPF ring buffer).
    pub shmem_kib: u64,
}

impl Rss {
    /// The figures of process `pid`.
    pub fn of(pid: u32) -> io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(format!(
            "/proc/{pid}/status"
        ))?))
    }

    /// The figures of a `/proc/<pid>/status` text; a missing line reads as 0.
    pub fn parse(status: &str) -> Self {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
            anon_kib: field("RssAnon:"),
            file_kib: field("RssFile:"),
            shmem_kib: field("RssShmem:"),
        }
    }

    /// `rss_kib` in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    /// `peak_kib` in MiB.
    pub fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\tdetector\nVmHWM:\t  81920 kB\nVmRSS:\t   65536 kB\nRssAnon:\t   20480 kB\nRssFile:\t   12288 kB\nRssShmem:\t   32768 kB\n";
        let rss = Rss::parse(status);
        assert_eq!(
            rss,
            Rss {
                rss_kib: 65536,
                peak_kib: 81920,
                anon_kib: 20480,
                file_kib: 12288,
                shmem_kib: 32768,
            }
        );
        assert_eq!(rss.rss_mib(), 64.0);
    }
}
