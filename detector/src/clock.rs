//! Kernel timestamps to wall-clock time.
//!
//! The programs stamp records with `bpf_ktime_get_boot_ns()` (`CLOCK_BOOTTIME`). The daemon
//! measures the offset between `CLOCK_REALTIME` and `CLOCK_BOOTTIME` once at start and adds it.

use time::OffsetDateTime;

/// Converts boot-time nanoseconds to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `CLOCK_REALTIME - CLOCK_BOOTTIME`, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    /// Measures the offset now. Of several readings it keeps the one taken in the shortest
    /// window, so a preemption between the two clock reads does not skew it.
    pub fn measure() -> Self {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..5 {
            let boot_before = now_ns(libc::CLOCK_BOOTTIME);
            let real = now_ns(libc::CLOCK_REALTIME);
            let boot_after = now_ns(libc::CLOCK_BOOTTIME);
            let window = boot_after - boot_before;
            let offset = real - (boot_before + window / 2);
            if best.is_none_or(|(w, _)| window < w) {
                best = Some((window, offset));
            }
        }
        Self {
            offset_ns: best.map_or(0, |(_, offset)| offset),
        }
    }

    /// A clock with a fixed offset, for tests and replays.
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Wall-clock time of a boot-time timestamp.
    pub fn wall_time(&self, boot_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.offset_ns + i128::from(boot_ns))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Boot-time nanoseconds now.
    pub fn boot_now_ns() -> u64 {
        now_ns(libc::CLOCK_BOOTTIME) as u64
    }
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; the clock ids are supported by Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), which cgroup ids are only unique
/// within; `None` when it cannot be read.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_offset_maps_now_to_now() {
        let clock = Clock::measure();
        let wall = clock.wall_time(Clock::boot_now_ns());
        let diff = (OffsetDateTime::now_utc() - wall).abs();
        assert!(diff < time::Duration::seconds(1), "{diff}");
    }
}
