//! Privileged end-to-end test of container lifecycles on a real Docker engine: containers
//! started, probed, exec'd into, restarted and removed while `detector run` watches, with
//! containment armed. The runtime's own set-up is seen and attributed to it, the workload's
//! processes carry their lineage, nothing benign alerts, and an attack through an exec session
//! still does.

use std::{ffi::OsStr, path::Path, time::Duration};

use serde_json::Value;
use tests::{daemon::Daemon, docker::Dockerd, privileged};

const IMAGE: &str = "lifecycle:1";
const POD_UID: &str = "5b0c7d2e-1f3a-4b5c-8d9e-0a1b2c3d4e5f";
const EARLY_POD_UID: &str = "6c1d8e3f-2a4b-4c6d-9e0f-1a2b3c4d5e6f";
const SHADOW: &[u8] = b"root:$6$salt$hash:19000:0:99999:7:::\n";

fn in_pod(line: &Value) -> bool {
    line["pod"]["uid"] == POD_UID
}

fn role(line: &Value) -> &str {
    line["lineage"]["role"].as_str().unwrap_or("")
}

fn what(line: &Value) -> String {
    format!(
        "{} cg={} {} {} pid={} ppid={} ns_pid={} comm={} lineage={}",
        line["kind"],
        line["cgroup_id"],
        line["filename"]
            .as_str()
            .or(line["path"].as_str())
            .unwrap_or(""),
        line["argv"],
        line["pid"],
        line["ppid"],
        line["ns_pid"],
        line["comm"],
        line["lineage"]
    )
}

#[test]
fn containers_started_while_the_daemon_runs_are_not_contained() {
    let test = "containers_started_while_the_daemon_runs_are_not_contained";
    if !privileged(test) {
        return;
    }
    let Some(mut dockerd) = Dockerd::start("lifecycle") else {
        return;
    };
    dockerd
        .import_busybox(IMAGE, &[("/etc/shadow", SHADOW)])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "sensors:\n  watch: containers\ncontain:\n  warmup_s: 0\n  journal_dir: {}\nevidence:\n  out_dir: {}\n  docker_socket: {}\nmetrics:\n  enabled: false\n",
            dir.path().join("incidents").display(),
            dir.path().join("evidence").display(),
            dockerd.socket().display()
        ),
    )
    .unwrap();
    // Running before the daemon starts (under another root, `kubepods`, the cgroupfs driver's):
    // the start-up scan gives its processes their roles.
    let early_parent = dockerd.cgroup_parent(&format!("kubepods/besteffort/pod{EARLY_POD_UID}"));
    dockerd
        .cli(&[
            "run",
            "-d",
            "--network",
            "none",
            "--cgroup-parent",
            &early_parent,
            "--name",
            "early",
            IMAGE,
            "sh",
            "-c",
            "echo ok > /tmp/healthy; exec sleep 600",
        ])
        .unwrap();
    let mut daemon = Daemon::start(
        Path::new(env!("CARGO_BIN_EXE_detector")),
        &config,
        &output,
        &[("DETECTOR_LOG", OsStr::new("info"))],
    )
    .unwrap();

    // Started after the daemon: a shell-form entrypoint and an exec-form one, in a pod's
    // cgroup parent.
    let parent = dockerd.cgroup_parent(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        POD_UID.replace('-', "_")
    ));
    let run = |name: &str, cmd: &[&str]| {
        let mut args = vec![
            "run",
            "-d",
            "--network",
            "none",
            "--cgroup-parent",
            &parent,
            "--name",
            name,
            IMAGE,
        ];
        args.extend_from_slice(cmd);
        dockerd.cli(&args).unwrap()
    };
    run(
        "shellform",
        &["sh", "-c", "echo ok > /tmp/healthy; exec sleep 600"],
    );
    run("execform", &["sleep", "600"]);
    // Exec probes, as a kubelet runs them, twice a second.
    for _ in 0..4 {
        for probe in [
            &["cat", "/tmp/healthy"][..],
            &["sh", "-c", "test -f /tmp/healthy"],
        ] {
            let mut args = vec!["exec", "shellform"];
            args.extend_from_slice(probe);
            dockerd.cli(&args).unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // An exec session into the container that was there first.
    dockerd
        .cli(&["exec", "early", "sh", "-c", "cat /tmp/healthy"])
        .unwrap();
    // A restart and a removal.
    dockerd.cli(&["restart", "-t", "1", "shellform"]).unwrap();
    dockerd.cli(&["rm", "-f", "execform"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let benign = daemon.lines();

    // Then an attack through an exec session.
    dockerd
        .cli(&["exec", "shellform", "cat", "/etc/shadow"])
        .unwrap();
    let lines = daemon.wait_for(Duration::from_secs(10), |l| {
        l["kind"] == "alert" && l["rule"]["id"] == "shadow-file-access"
    });
    let (status, log) = daemon.stop();
    assert!(status.success(), "daemon: {status}\n{}", log.join("\n"));

    if std::env::var_os("LIFECYCLE_DUMP").is_some() {
        for l in &benign {
            eprintln!("DUMP {}", what(l));
        }
    }
    let ours: Vec<&Value> = benign.iter().filter(|l| in_pod(l)).collect();
    let listing = || ours.iter().map(|l| what(l)).collect::<Vec<_>>().join("\n");
    let acted: Vec<&Value> = benign
        .iter()
        .filter(|l| {
            matches!(l["kind"].as_str(), Some("alert" | "verdict"))
                && l["subject"]["pod_uid"] == POD_UID
        })
        .collect();
    assert!(
        acted.is_empty(),
        "benign lifecycles alerted: {acted:#?}\n{}",
        listing()
    );
    // The runtime's set-up happened in the containers' cgroups and is the runtime's.
    let setup: Vec<String> = ours
        .iter()
        .filter(|l| {
            l["kind"] == "file"
                && role(l) == "runtime"
                && l["path"].as_str().is_some_and(|p| p.starts_with("/proc/"))
        })
        .map(|l| what(l))
        .collect();
    eprintln!("the runtime's set-up under /proc:\n{}", setup.join("\n"));
    assert!(!setup.is_empty(), "no runtime set-up seen:\n{}", listing());
    // Every container event carries a lineage.
    assert!(
        ours.iter().all(|l| l.get("lineage").is_some()),
        "{}",
        listing()
    );
    // Each start's main process: pid 1 in its namespace, started by the runtime (three starts:
    // two containers and the restart).
    let mains: Vec<_> = ours
        .iter()
        .filter(|l| {
            l["kind"] == "exec" && role(l) == "entrypoint" && l["lineage"]["leader"] == true
        })
        .collect();
    assert!(mains.iter().all(|l| l["ns_pid"] == 1), "{}", listing());
    let started: std::collections::BTreeSet<u64> = mains
        .iter()
        .filter_map(|l| l["cgroup_id"].as_u64())
        .collect();
    assert!(started.len() >= 3, "{}", listing());
    // The probes are exec sessions, then recognised as probes.
    let probes: Vec<&str> = ours
        .iter()
        .filter(|l| l["kind"] == "exec" && l["argv"][1] == "/tmp/healthy")
        .map(|l| role(l))
        .collect();
    assert_eq!(probes.len(), 4, "{}", listing());
    assert_eq!(
        &probes[..2],
        ["exec_session", "exec_session"],
        "{}",
        listing()
    );
    assert_eq!(&probes[2..], ["probe", "probe"], "{}", listing());

    // The early container's main process is known from the scan: the exec into it is a
    // session started by the runtime (busybox's shell then execs `cat` in its own place, the
    // same process: still the session's leader), not a new main process.
    let early: Vec<&Value> = benign
        .iter()
        .filter(|l| l["pod"]["uid"] == EARLY_POD_UID && l["kind"] == "exec")
        .collect();
    let roles: Vec<(&str, bool)> = early
        .iter()
        .map(|l| (role(l), l["lineage"]["leader"] == true))
        .collect();
    assert_eq!(
        roles,
        [("exec_session", true), ("exec_session", true)],
        "{early:#?}"
    );
    assert!(
        !benign
            .iter()
            .any(|l| l["kind"] == "alert" && l["subject"]["pod_uid"] == EARLY_POD_UID),
        "the early container alerted"
    );

    let attack = lines
        .iter()
        .find(|l| l["kind"] == "alert" && l["rule"]["id"] == "shadow-file-access")
        .unwrap_or_else(|| panic!("the attack did not alert:\n{}", log.join("\n")));
    assert_eq!(attack["subject"]["pod_uid"], POD_UID, "{attack}");
}
