//! Privileged end-to-end test of `detector run`: the real binary, real programs, a real process
//! in a kubepods-style cgroup, the JSON lines it writes.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{TestCgroup, privileged};

const POD_UID: &str = "0c4d1f9e-7a2b-4c3d-9e8f-112233445566";
const CONTAINER: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

#[test]
fn the_daemon_streams_attributed_events_and_alerts_for_a_pod_shell() {
    if !privileged("the_daemon_streams_attributed_events_and_alerts_for_a_pod_shell") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(["run", "--output"])
        .arg(&output)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let daemon_pid = daemon.id();
    let stderr = daemon.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" ready") {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    let stop = |daemon: &mut std::process::Child| {
        // SAFETY: the pid is our own child's.
        unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
        daemon.wait().unwrap()
    };
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        stop(&mut daemon);
        panic!("daemon not ready:\n{}", log.join().unwrap().join("\n"));
    }

    // A systemd-driver pod layout below the test's own parent cgroup; the parser takes the pod
    // uid and container id from the names, whatever comes before the `kubepods.slice` root.
    let cgroup = TestCgroup::create(&format!(
        "detector-test/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CONTAINER}.scope",
        POD_UID.replace('-', "_")
    ))
    .unwrap();
    let pid = cgroup
        .run_shell("cat /etc/shadow > /dev/null; echo done > /dev/null")
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lines: Vec<Value> = Vec::new();
    let found = |lines: &[Value]| {
        lines
            .iter()
            .any(|l| l["kind"] == "alert" && l["rule"]["id"] == "shell-in-container")
    };
    while Instant::now() < deadline && !found(&lines) {
        std::thread::sleep(Duration::from_millis(200));
        lines = std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
    }
    let status = stop(&mut daemon);
    let log = log.join().unwrap();
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );
    let cgroup_id = cgroup.id();
    drop(cgroup);

    let lines: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exec = lines
        .iter()
        .find(|l| l["kind"] == "exec" && l["pid"] == pid)
        .unwrap_or_else(|| panic!("no exec of pid {pid}"));
    assert_eq!(exec["argv"][0], "/bin/sh");
    assert_eq!(exec["cgroup_id"], cgroup_id);
    assert_eq!(exec["pod"]["uid"], POD_UID);
    assert_eq!(exec["pod"]["qos"], "besteffort");
    assert_eq!(exec["container"]["id"], CONTAINER);
    assert_eq!(exec["container"]["runtime"], "containerd");
    assert!(
        exec["ancestry"].as_array().is_some_and(|a| !a.is_empty()),
        "ancestry: {exec}"
    );
    // `cat` is the shell's child, in the same cgroup.
    assert!(lines.iter().any(|l| l["kind"] == "file"
        && l["cgroup_id"] == cgroup_id
        && l["ppid"] == pid
        && l["path"] == "/etc/shadow"
        && l["read_sensitive"] == true));
    assert!(found(&lines), "shell-in-container alert");
    assert!(
        lines.iter().all(|l| l["pid"] != daemon_pid),
        "the daemon reported itself"
    );
    for line in &lines {
        for key in ["kind", "ts", "pid", "ppid", "uid", "cgroup_id", "comm"] {
            if line["kind"] != "alert" && line["kind"] != "verdict" {
                assert!(line.get(key).is_some(), "{key} missing in {line}");
            }
        }
    }
}
