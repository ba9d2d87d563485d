//! Node-side chores shared by the harnesses that start daemons of their own (dockerd,
//! containerd, the detector): stopping a child the test started, and removing a directory a
//! daemon mounted things below.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

/// Mount points whose path or type satisfies `filter(point, fstype)`, from mountinfo.
pub fn mounts(filter: impl Fn(&str, &str) -> bool) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let fstype = right.split_whitespace().next()?;
            filter(point, fstype).then(|| PathBuf::from(point))
        })
        .collect()
}

/// Stops `child`, which the test started: SIGTERM, then SIGKILL after `grace` (saying so on
/// standard error, naming `what`); its exit status.
pub fn stop_child(child: &mut Child, what: &str, grace: Duration) -> Option<ExitStatus> {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Err(_) => return None,
            Ok(None) if Instant::now() > deadline => {
                let _ = writeln!(
                    std::io::stderr(),
                    "{what} did not stop on SIGTERM: killing it"
                );
                let _ = child.kill();
                return child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Unmounts (lazily, deepest first) whatever is mounted below `dir`, then removes it.
pub fn remove_with_mounts(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut left = mounts(|point, _| point.starts_with(&prefix));
    left.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in left {
        let _ = Command::new("umount").arg("-l").arg(&point).status();
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        let _ = writeln!(std::io::stderr(), "cannot remove {}: {e}", dir.display());
    }
}

/// A pin directory for one daemon's network quarantine (`sensors.pin_dir`), on a bpf
/// filesystem of its own: `<scratch>/bpf/detector`, where `<scratch>/bpf` starts empty, so the
/// daemon mounts the bpf filesystem itself (as on a node without `/sys/fs/bpf`). Dropped, it
/// unmounts that filesystem, which lets go of every pin in it (the links detach) and removes
/// the scratch directory.
pub struct PinScratch {
    scratch: PathBuf,
}

impl PinScratch {
    /// A new, empty scratch directory under the system's temporary directory.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix(&format!("detector-pins-{name}-"))
            .tempdir()?
            .keep();
        fs::create_dir(scratch.join("bpf"))?;
        Ok(Self { scratch })
    }

    /// The pin directory to give the daemon.
    pub fn pin_dir(&self) -> PathBuf {
        self.scratch.join("bpf/detector")
    }

    /// The variable that sets it.
    pub fn env(&self) -> (&'static str, std::ffi::OsString) {
        ("DETECTOR_SENSORS__PIN_DIR", self.pin_dir().into_os_string())
    }
}

impl Drop for PinScratch {
    fn drop(&mut self) {
        remove_with_mounts(&self.scratch);
    }
}
