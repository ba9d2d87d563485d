//! Evidence from the node alone, without a Docker Engine, against real kernel objects: the
//! cgroup freezer (v2 and v1) holding a real process, a real overlay mount changed through its
//! merged directory, the image written from its layers run by a real containerd (and loaded by
//! docker), and a container containerd runs read from the node: layers from its mountinfo,
//! changes, a freeze of its cgroup and an export of its root.
//!
//! Root is needed (cgroups, `mount -t overlay`); under `CI=true` a missing resource fails the
//! test, elsewhere it is skipped with the reason printed.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{PermissionsExt as _, chown},
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use detector::evidence::{
    freezer::{Freezer, freeze},
    fsexport::{Truncated, export_root},
    oci::{ImageMeta, Staging, write_image},
    overlay::{OverlayLayers, changes},
};
use tests::{
    TestCgroup,
    containerd::{Containerd, KubePod, random_container_id},
    docker::Dockerd,
    overlay::{OverlayMount, write},
    privileged, skip_or_fail,
};

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

/// The dropped file's owner and xattr, which the export and the image must keep.
const DROPPED_UID: u32 = 1234;
const DROPPED_GID: u32 = 5678;
const DROPPED_XATTR: (&str, &[u8]) = ("user.evidence", b"dropped-by-test");

/// What `docker diff` would list after [`change_like_an_attacker`].
const EXPECTED_CHANGES: &[&str] = &[
    "C /etc",
    "C /etc/passwd",
    "C /opt",
    "C /opt/app",
    "D /opt/app/bin",
    "D /opt/app/lib",
    "A /opt/app/new",
    "C /tmp",
    "A /tmp/dropped.sh",
    "C /usr",
    "C /usr/bin",
    "D /usr/bin/tool",
];

/// Mounts the test overlay and changes it through the merged directory, so that the kernel
/// writes the upper layer: a file dropped (with an owner and an xattr), a lower file deleted
/// (a whiteout), a directory replaced (opaque) and a lower file modified (copied up).
fn changed_overlay(test: &str) -> Option<OverlayMount> {
    if !privileged(test) {
        return None;
    }
    let overlay = match OverlayMount::mount(test) {
        Ok(overlay) => overlay,
        Err(err) => {
            skip_or_fail(test, &format!("cannot mount an overlay: {err:#}"));
            return None;
        }
    };
    change_like_an_attacker(&overlay.merged());
    Some(overlay)
}

fn change_like_an_attacker(root: &Path) {
    let dropped = root.join("tmp/dropped.sh");
    write(&dropped, b"#!/bin/sh\necho dropped payload\n").unwrap();
    fs::set_permissions(&dropped, fs::Permissions::from_mode(0o755)).unwrap();
    chown(&dropped, Some(DROPPED_UID), Some(DROPPED_GID)).unwrap();
    xattr::set(&dropped, DROPPED_XATTR.0, DROPPED_XATTR.1).unwrap();
    fs::remove_file(root.join("usr/bin/tool")).unwrap();
    fs::remove_dir_all(root.join("opt/app")).unwrap();
    fs::create_dir(root.join("opt/app")).unwrap();
    write(&root.join("opt/app/new"), b"replacement\n").unwrap();
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    write(
        &root.join("etc/passwd"),
        format!("{passwd}backdoor:x:0:0::/:/bin/sh\n").as_bytes(),
    )
    .unwrap();
}

#[test]
fn changes_of_a_real_overlay_are_what_docker_diff_lists() {
    const TEST: &str = "changes_of_a_real_overlay_are_what_docker_diff_lists";
    let Some(overlay) = changed_overlay(TEST) else {
        return;
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let merged = overlay.merged();
    let layers = OverlayLayers::from_mountinfo(&mountinfo, &merged.to_string_lossy()).unwrap();
    assert_eq!(layers.lower, [overlay.top(), overlay.bottom()]);
    assert_eq!(layers.upper, overlay.upper());
    assert_eq!(layers.work, Some(overlay.work()));

    let got = changes(&layers, Path::new("/"), 1000).unwrap();
    let listed: Vec<String> = got
        .entries
        .iter()
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect();
    assert_eq!(listed, EXPECTED_CHANGES);
    assert!(!got.truncated);

    let cut = changes(&layers, Path::new("/"), 4).unwrap();
    assert!(cut.truncated && cut.entries.len() == 4, "{cut:?}");
}

#[test]
fn export_of_a_real_overlay_keeps_owners_modes_xattrs_and_its_own_mount() {
    const TEST: &str = "export_of_a_real_overlay_keeps_owners_modes_xattrs_and_its_own_mount";
    let Some(overlay) = changed_overlay(TEST) else {
        return;
    };
    let merged = overlay.merged();
    // A volume below the root: its mount point is archived, its contents are not.
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(merged.join("mnt"))
        .status()
        .unwrap();
    assert!(status.success(), "mount -t tmpfs: {status}");
    write(&merged.join("mnt/secret"), b"on another filesystem\n").unwrap();
    // A bind mount of the root's own filesystem (same st_dev), as a volume can be.
    let status = Command::new("mount")
        .arg("--bind")
        .arg(merged.join("etc"))
        .arg(merged.join("proc"))
        .status()
        .unwrap();
    assert!(status.success(), "mount --bind: {status}");

    let mut archive = Vec::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let summary = export_root(&merged, &mut archive, 1 << 30, deadline).unwrap();
    eprintln!(
        "export: {} entries, {} bytes in {:?}",
        summary.entries,
        summary.bytes,
        started.elapsed()
    );
    assert_eq!(summary.truncated, None);
    assert_eq!(summary.skipped_mounts, ["/mnt", "/proc"]);
    assert!(summary.unreadable.is_empty(), "{:?}", summary.unreadable);
    assert_eq!(summary.bytes, archive.len() as u64);

    let mut entries = BTreeMap::new();
    for entry in tar::Archive::new(archive.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let xattrs: Vec<(String, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .map(|ext| {
                ext.map(|e| {
                    let e = e.unwrap();
                    (e.key().unwrap().to_owned(), e.value_bytes().to_vec())
                })
                .collect()
            })
            .unwrap_or_default();
        let header = entry.header().clone();
        let link = entry.link_name().unwrap().map(|l| l.into_owned());
        entries.insert(path, (header, xattrs, link));
    }
    assert_eq!(entries.len() as u64, summary.entries);
    let (dropped, xattrs, _) = &entries["tmp/dropped.sh"];
    assert_eq!(dropped.mode().unwrap(), 0o755);
    assert_eq!(dropped.uid().unwrap(), u64::from(DROPPED_UID));
    assert_eq!(dropped.gid().unwrap(), u64::from(DROPPED_GID));
    let key = format!("SCHILY.xattr.{}", DROPPED_XATTR.0);
    assert!(
        xattrs
            .iter()
            .any(|(k, v)| *k == key && v == DROPPED_XATTR.1),
        "{xattrs:?}"
    );
    for gone in [
        "usr/bin/tool",
        "opt/app/bin",
        "opt/app/lib",
        "mnt/secret",
        "proc/passwd",
    ] {
        assert!(!entries.contains_key(gone), "{gone} is in the export");
    }
    for kept in [
        "opt/app/new",
        "etc/motd",
        "srv/data.txt",
        "mnt",
        "usr/lib/a",
    ] {
        assert!(entries.contains_key(kept), "{kept} is not in the export");
    }
    let (sh, _, target) = &entries["bin/sh"];
    assert_eq!(sh.entry_type(), tar::EntryType::Symlink);
    assert_eq!(target.as_deref(), Some(Path::new("busybox")));
    let (b, _, target) = &entries["usr/lib/b"];
    assert_eq!(b.entry_type(), tar::EntryType::Link);
    assert_eq!(target.as_deref(), Some(Path::new("usr/lib/a")));

    let small = export_root(&merged, std::io::sink(), 64 * 1024, deadline).unwrap();
    assert_eq!(small.truncated, Some(Truncated::Size));
    assert!(small.bytes <= 64 * 1024, "{small:?}");
    let late = export_root(&merged, std::io::sink(), 1 << 30, Instant::now()).unwrap();
    assert_eq!(
        (late.truncated, late.entries),
        (Some(Truncated::Deadline), 0)
    );
}

#[test]
fn image_of_a_real_overlay_runs_in_containerd_and_loads_in_docker() {
    const TEST: &str = "image_of_a_real_overlay_runs_in_containerd_and_loads_in_docker";
    let Some(overlay) = changed_overlay(TEST) else {
        return;
    };
    let layers = OverlayLayers {
        lower: vec![overlay.top(), overlay.bottom()],
        upper: overlay.upper(),
        work: Some(overlay.work()),
        data: Vec::new(),
    };
    let reference = format!(
        "docker.io/library/detector-evidence:node-{}",
        std::process::id()
    );
    let archive = overlay.scratch().unwrap().join("image.tar");
    let created = time::OffsetDateTime::now_utc();
    let mut meta = ImageMeta::for_this_node(created, "detector evidence: container changes");
    meta.labels.insert("detector.test".into(), TEST.into());
    let started = Instant::now();
    let summary = write_image(
        &layers.lower,
        &layers.upper,
        fs::File::create(&archive).unwrap(),
        &reference,
        &meta,
        Staging {
            dir: &overlay.scratch().unwrap(),
            max_bytes: u64::MAX,
        },
    )
    .unwrap();
    eprintln!(
        "image: {} layers, {} bytes in {:?}",
        summary.layers.len(),
        fs::metadata(&archive).unwrap().len(),
        started.elapsed()
    );
    assert_eq!(summary.layers.len(), 3);
    assert_eq!(summary.layers[0].source, overlay.bottom());
    assert!(summary.unreadable.is_empty(), "{:?}", summary.unreadable);

    let script = "cat /tmp/dropped.sh; test -e /usr/bin/tool || echo tool-deleted; \
                  test -e /opt/app/bin || echo app-replaced; cat /opt/app/new; cat /etc/motd";
    let expected = [
        "echo dropped payload",
        "tool-deleted",
        "app-replaced",
        "replacement",
        "welcome",
    ];
    let Some(mut containerd) = Containerd::start(TEST) else {
        return;
    };
    containerd.import(&archive, &reference).unwrap();
    let name = format!("evidence-node-{}", std::process::id());
    let cgroup = KubePod::new().containerd_scope(&random_container_id());
    containerd
        .run(&name, &reference, &cgroup, &["/bin/sh", "-c", script])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !expected.iter().all(|e| containerd.logs(&name).contains(e)) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = containerd.logs(&name);
    assert!(
        expected.iter().all(|e| logs.contains(e)),
        "containerd: {logs}"
    );
    containerd.rm(&name).unwrap();
    check_live_container(&mut containerd, &reference);
    drop(containerd);

    let Some(dockerd) = Dockerd::start(TEST) else {
        return;
    };
    dockerd
        .cli(&["load", "-i", &archive.to_string_lossy()])
        .unwrap();
    let out = dockerd
        .cli(&[
            "run",
            "--rm",
            "--network",
            "none",
            &reference,
            "sh",
            "-c",
            script,
        ])
        .unwrap();
    assert!(expected.iter().all(|e| out.contains(e)), "docker: {out}");
}

/// The files of the tar archive `blob` of image archive `image`, with their modes.
fn layer_files(image: &[u8], blob: &str) -> BTreeMap<String, (u32, Vec<u8>)> {
    let path = format!("blobs/{}", blob.replacen(':', "/", 1));
    let mut outer = tar::Archive::new(image);
    let mut layer = Vec::new();
    for entry in outer.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == path {
            std::io::Read::read_to_end(&mut entry, &mut layer).unwrap();
        }
    }
    let mut files = BTreeMap::new();
    for entry in tar::Archive::new(layer.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mode = entry.header().mode().unwrap();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        files.insert(name, (mode, content));
    }
    files
}

#[test]
fn image_of_a_metacopy_overlay_carries_the_data_of_metadata_only_copy_ups() {
    const TEST: &str = "image_of_a_metacopy_overlay_carries_the_data_of_metadata_only_copy_ups";
    if !privileged(TEST) {
        return;
    }
    // CRI-O's default: a chmod copies up the metadata only, the data stays below.
    let overlay = match OverlayMount::mount_with(TEST, "redirect_dir=on,metacopy=on") {
        Ok(overlay) => overlay,
        Err(err) => return skip_or_fail(TEST, &format!("cannot mount with metacopy=on: {err:#}")),
    };
    let merged = overlay.merged();
    fs::set_permissions(merged.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(
        merged.join("srv/data.txt"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs::rename(merged.join("srv/data.txt"), merged.join("srv/moved.txt")).unwrap();
    let upper = overlay.upper();
    for copied in ["etc/passwd", "srv/moved.txt"] {
        let metacopy = xattr::get(upper.join(copied), "trusted.overlay.metacopy").unwrap();
        assert!(
            metacopy.is_some(),
            "{copied} was copied up with its data: no metacopy"
        );
    }

    let mut image = Vec::new();
    let meta = ImageMeta::for_this_node(time::OffsetDateTime::now_utc(), "metacopy");
    let lower = [overlay.top(), overlay.bottom()];
    let scratch = overlay.scratch().unwrap();
    let staging = Staging {
        dir: &scratch,
        max_bytes: u64::MAX,
    };
    let summary = write_image(
        &lower,
        &upper,
        &mut image,
        "docker.io/library/m:1",
        &meta,
        staging,
    )
    .unwrap();
    assert!(summary.unreadable.is_empty(), "{:?}", summary.unreadable);
    let top = layer_files(&image, &summary.layers[2].digest);
    assert_eq!(
        top["etc/passwd"],
        (0o600, b"root:x:0:0:root:/root:/bin/sh\n".to_vec())
    );
    assert_eq!(top["srv/moved.txt"], (0o640, b"data\n".to_vec()));
    assert!(top.contains_key("srv/.wh.data.txt"), "{:?}", top.keys());
}

/// The four pieces on a container containerd runs (its snapshotter's mount, its runc-made
/// cgroup): the layers from the process's mountinfo, its changes, a freeze, and an export of
/// its root through `/proc/<pid>/root` while frozen.
fn check_live_container(containerd: &mut Containerd, image: &str) {
    let name = format!("evidence-live-{}", std::process::id());
    let cgroup = KubePod::new().containerd_scope(&random_container_id());
    let script = "echo implant > /tmp/implant; rm /etc/motd; echo ready; exec sleep 60";
    containerd
        .run(&name, image, &cgroup, &["/bin/sh", "-c", script])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !containerd.logs(&name).contains("ready") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = containerd.pid(&name).unwrap();

    let layers = OverlayLayers::of_pid(pid, Path::new("/")).unwrap();
    assert_eq!(layers.lower.len(), 3, "{layers:?}");
    assert!(
        layers
            .upper
            .to_string_lossy()
            .contains("io.containerd.snapshotter.v1.overlayfs"),
        "{layers:?}"
    );
    let listed: Vec<String> = changes(&layers, Path::new("/"), 1000)
        .unwrap()
        .entries
        .iter()
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect();
    for expected in ["C /etc", "D /etc/motd", "C /tmp", "A /tmp/implant"] {
        assert!(
            listed.iter().any(|l| l == expected),
            "{expected} not in {listed:?}"
        );
    }

    let cgroup_dir = detector::cgroup::cgroup2_mount()
        .unwrap()
        .join(cgroup.trim_start_matches('/'));
    let frozen = freeze(&cgroup_dir, FREEZE_TIMEOUT).unwrap();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut archive = Vec::new();
    let summary = export_root(&root, &mut archive, 1 << 30, deadline).unwrap();
    frozen.thaw().unwrap();
    for mount in ["/dev", "/proc", "/sys"] {
        assert!(
            summary.skipped_mounts.iter().any(|m| m == mount),
            "{summary:?}"
        );
    }
    let names: Vec<String> = tar::Archive::new(archive.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "tmp/implant"), "{names:?}");
    assert!(!names.iter().any(|n| n == "etc/motd"), "{names:?}");
    containerd.rm(&name).unwrap();
}
