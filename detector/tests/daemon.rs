//! Privileged end-to-end test of `detector run`: the real binary, real programs, a real process
//! in a kubepods-style cgroup, the JSON lines it writes.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    TestCgroup,
    daemon::{Daemon, read_lines},
    privileged,
};

const POD_UID: &str = "0c4d1f9e-7a2b-4c3d-9e8f-112233445566";
const CONTAINER: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// What crosses the `contain` score: a shell reading /etc/shadow and piping into a shell.
const ATTACK: &str = "cat /etc/shadow > /dev/null; echo 'echo owned' | sh > /dev/null; exec sh -c 'x=$(cat /etc/shadow | wc -c) | sh'";

/// A bash in `cgroup` connecting to a loopback `port`; its exit status and stderr.
fn connect_from(cgroup: &TestCgroup, port: u16) -> std::process::Output {
    cgroup
        .command("/bin/bash")
        .unwrap()
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
        .output()
        .unwrap()
}

/// A systemd-driver pod layout below the test's own parent cgroup; the parser takes the pod
/// uid and container id from the names, whatever comes before the `kubepods.slice` root.
fn pod_cgroup(pod_uid: &str, container: &str) -> TestCgroup {
    TestCgroup::create(&format!(
        "detector-test/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container}.scope",
        pod_uid.replace('-', "_")
    ))
    .unwrap()
}

/// Every daemon of these tests watches the whole node and contains any pod it sees attacked,
/// the other tests' pods too. The tests run side by side, except the one that checks a pod is
/// back on the network after a release: it runs alone.
static SIDE_BY_SIDE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn side_by_side() -> std::sync::RwLockReadGuard<'static, ()> {
    SIDE_BY_SIDE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    SIDE_BY_SIDE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn the_daemon_streams_attributed_events_and_alerts_for_a_pod_shell() {
    if !privileged("the_daemon_streams_attributed_events_and_alerts_for_a_pod_shell") {
        return;
    }
    let _side_by_side = side_by_side();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    // Detection only: another test's daemon contains; this one must not act on its pods.
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "contain:\n  enabled: false\nevidence:\n  on_contain: false\nmetrics:\n  enabled: false\n",
    )
    .unwrap();
    let mut daemon = Daemon::start(
        Path::new(env!("CARGO_BIN_EXE_detector")),
        &config,
        &output,
        &[],
    )
    .unwrap();
    let daemon_pid = daemon.pid();
    let cgroup = pod_cgroup(POD_UID, CONTAINER);
    let pid = cgroup
        .run_shell("cat /etc/shadow > /dev/null; echo done > /dev/null")
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lines: Vec<Value> = Vec::new();
    let found = |lines: &[Value]| {
        lines
            .iter()
            .any(|l| l["kind"] == "alert" && l["rule"]["id"] == "shadow-file-access")
    };
    while Instant::now() < deadline && !found(&lines) {
        std::thread::sleep(Duration::from_millis(200));
        lines = read_lines(&output);
    }
    let (status, log) = daemon.stop();
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );
    let cgroup_id = cgroup.id();
    drop(cgroup);

    let lines = read_lines(&output);
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
    assert!(found(&lines), "shadow-file-access alert");
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

/// The standalone response, end to end: an attack in a pod-style cgroup crosses `contain`, the
/// daemon cuts the pod off in the kernel at once, journals the API steps as not applicable (no
/// cluster), and captures evidence from the node side into a bundle that verifies.
#[test]
fn a_contain_verdict_blocks_the_pod_in_the_kernel_and_captures_evidence() {
    if !privileged("a_contain_verdict_blocks_the_pod_in_the_kernel_and_captures_evidence") {
        return;
    }
    let _side_by_side = side_by_side();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    let journal = dir.path().join("incidents");
    let evidence = dir.path().join("evidence");
    let siem = dir.path().join("siem.jsonl");
    let config = dir.path().join("config.yaml");
    let metrics_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    std::fs::write(
        &config,
        format!(
            "contain:\n  warmup_s: 0\n  journal_dir: {}\nevidence:\n  out_dir: {}\n  docker_socket: {}\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\nexport:\n  state_dir: {}\n  sinks:\n    - name: siem\n      schema: ocsf\n      kinds: [verdict, action, evidence]\n      to:\n        file: {{ path: {} }}\n",
            journal.display(),
            evidence.display(),
            dir.path().join("no-docker.sock").display(),
            dir.path().join("export-state").display(),
            siem.display(),
        ),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut daemon = Daemon::start(
        Path::new(env!("CARGO_BIN_EXE_detector")),
        &config,
        &output,
        &[],
    )
    .unwrap();
    let pod_uid = "5d3c2b1a-0f9e-4d8c-b7a6-998877665544";
    let cgroup = pod_cgroup(pod_uid, &"cd".repeat(32));
    // Before: the pod reaches the listener.
    let reach = || connect_from(&cgroup, port);
    assert!(
        reach().status.success(),
        "the pod connects before the attack"
    );
    // The attack: a shell reading /etc/shadow and piping a download into a shell.
    let _ = cgroup.run_shell(ATTACK);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refused = None;
    while Instant::now() < deadline {
        let out = reach();
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = read_lines(&output);
    let verdict = lines
        .iter()
        .find(|l| l["kind"] == "verdict" && l["decision"] == "contain");
    assert!(
        verdict.is_some(),
        "no contain verdict; alerts: {:?}; the pod's file events and every loss: {:?}",
        lines
            .iter()
            .filter(|l| l["kind"] == "alert")
            .map(|l| (l["rule"]["id"].clone(), l["score"].clone()))
            .collect::<Vec<_>>(),
        lines
            .iter()
            .filter(|l| (l["kind"] == "file" && l["pod"]["uid"] == pod_uid) || l["kind"] == "loss")
            .collect::<Vec<_>>()
    );
    let refused = refused.expect("the pod is cut off after the contain verdict");
    assert!(refused.contains("Operation not permitted"), "{refused}");

    // The journal: the kernel block done, the API steps not applicable without a cluster. The
    // steps after the kernel block are journaled on their own time: wait for the incident's
    // `completed` entry rather than read the journal the moment the pod is cut off.
    let journal_path = journal.join("journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    let journal_text = loop {
        let text = std::fs::read_to_string(&journal_path).unwrap_or_default();
        if text.contains(r#""entry":"completed""#) || Instant::now() >= deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(journal_text.contains(pod_uid), "{journal_text}");
    assert!(journal_text.contains("not_applicable"), "{journal_text}");
    let entries: Vec<Value> = journal_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let deciding = entries
        .iter()
        .find_map(|e| (e["entry"] == "opened").then(|| e["event_ktime_ns"].as_u64()))
        .flatten()
        .expect("opened entry with the deciding event's kernel time");
    let blocked = entries
        .iter()
        .find_map(|e| {
            (e["entry"] == "step" && e["step"] == "kernel_block").then(|| e["boot_ns"].as_u64())
        })
        .flatten()
        .expect("kernel_block step with its time");
    // A figure for the record, not a timed assertion: latency targets are benchmarks' business.
    eprintln!(
        "kernel block in place {:.3} ms after the deciding event's kernel timestamp",
        (blocked.saturating_sub(deciding)) as f64 / 1e6
    );

    // Evidence from the node side: a bundle that verifies.
    let deadline = Instant::now() + Duration::from_secs(20);
    let bundle = loop {
        let found = std::fs::read_dir(&evidence).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.join("manifest.json.sha256").exists())
        });
        if let Some(bundle) = found {
            break bundle;
        }
        assert!(
            Instant::now() < deadline,
            "no evidence bundle in {}",
            evidence.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let verify = Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(["evidence", "verify"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let (status, log) = daemon.stop();
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );

    // The SIEM got the verdict, every journaled action and the evidence, in OCSF.
    let exported = read_lines(&siem);
    let classes: Vec<u64> = exported
        .iter()
        .filter_map(|r| r["class_uid"].as_u64())
        .collect();
    assert!(classes.contains(&2004), "no detection finding: {classes:?}");
    let actions: Vec<&Value> = exported.iter().filter(|r| r["class_uid"] == 7001).collect();
    let block = actions
        .iter()
        .find(|r| r["unmapped"]["step"] == "kernel_block")
        .unwrap_or_else(|| panic!("no kernel_block action exported: {actions:#?}"));
    assert_eq!(block["activity_name"], "Isolate");
    assert_eq!(block["status"], "Success");
    assert_eq!(block["unmapped"]["subject"]["pod_uid"], pod_uid);
    let incident = block["command_uid"].as_str().unwrap();
    let journal_text = std::fs::read_to_string(journal.join("journal.jsonl")).unwrap();
    assert!(journal_text.contains(incident));
    let journaled_steps = journal_text
        .lines()
        .filter(|l| l.contains(r#""entry":"step""#))
        .count();
    let exported_steps = actions
        .iter()
        .filter(|r| r["unmapped"]["entry"] == "step")
        .count();
    assert_eq!(
        exported_steps, journaled_steps,
        "every journaled step is exported once"
    );
    assert!(
        exported
            .iter()
            .any(|r| r["class_uid"] == 2004 && r["activity_name"] == "Update"),
        "the evidence manifest is exported"
    );
    drop(cgroup);
}

#[test]
fn a_pod_above_contain_during_the_warm_up_is_contained_when_it_ends() {
    if !privileged("a_pod_above_contain_during_the_warm_up_is_contained_when_it_ends") {
        return;
    }
    let _side_by_side = side_by_side();
    const WARMUP_S: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let output = dir.path().join("events.jsonl");
    let journal = dir.path().join("incidents");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "contain:\n  warmup_s: {WARMUP_S}\n  journal_dir: {}\nevidence:\n  on_contain: false\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\n",
            journal.display(),
        ),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = Instant::now();
    let mut daemon = Daemon::start(
        Path::new(env!("CARGO_BIN_EXE_detector")),
        &config,
        &output,
        &[],
    )
    .unwrap();
    let pod_uid = "6e4d3c2b-1a0f-4e9d-8c7b-a69988776655";
    let cgroup = pod_cgroup(pod_uid, &"ef".repeat(32));
    let reach = || connect_from(&cgroup, port);
    // The attack, while the daemon warms up: refused, and nothing more happens in the pod.
    let _ = cgroup.run_shell(ATTACK);
    let journal_path = journal.join("journal.jsonl");
    let read_journal = || std::fs::read_to_string(&journal_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(WARMUP_S);
    while !read_journal().contains("warming up") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        read_journal().contains("warming up"),
        "the attack is not refused during the warm-up (is the machine too slow for a {WARMUP_S} s warm-up?):\n{}",
        read_journal()
    );
    // The refusal is counted where Prometheus looks, and every queue's depth is there.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused_series = "detector_containment_refused_total{reason=\"warm_up\"} ";
    let metrics = loop {
        let (_, body) = http_get(metrics_port, "/metrics");
        let counted = body
            .lines()
            .find_map(|l| l.strip_prefix(refused_series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0);
        if counted || Instant::now() >= deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(refused_series) && !l.ends_with(" 0")),
        "{metrics}"
    );
    for queue in ["batches", "held_events", "containment"] {
        assert!(
            metrics.contains(&format!("detector_queue_depth{{queue=\"{queue}\"}} ")),
            "{metrics}"
        );
    }

    // Nothing runs in the pod from now on: only the re-decision can contain it.
    let deadline = started + Duration::from_secs(WARMUP_S + 20);
    while !read_journal().contains(r#""entry":"opened""#) {
        assert!(
            Instant::now() < deadline,
            "still not contained after the warm-up:\n{}",
            read_journal()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(WARMUP_S),
        "contained before the warm-up ended"
    );
    let out = reach();
    assert!(!out.status.success(), "the pod is not cut off");
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(refused.contains("Operation not permitted"), "{refused}");
    let lines = read_lines(&output);
    let contains: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "verdict" && l["decision"] == "contain")
        .collect();
    let again = contains
        .iter()
        .find(|l| {
            l["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("decided again once warming up lapsed"))
        })
        .unwrap_or_else(|| panic!("no verdict decided again: {contains:#?}"));
    assert_eq!(again["subject"]["pod_uid"], pod_uid);
    let entries: Vec<Value> = read_journal()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["entry"].as_str()).collect();
    let refused_at = kinds.iter().position(|k| *k == "refused").unwrap();
    let opened_at = kinds.iter().position(|k| *k == "opened").unwrap();
    assert!(refused_at < opened_at, "{kinds:?}");
    let (status, log) = daemon.stop();
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );
    drop(cgroup);
}

/// A tmpfs of `size` at a fresh directory, unmounted on drop: a disk that fills.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Self { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_output_disk_never_stops_sensing_or_containment() {
    if !privileged("a_full_output_disk_never_stops_sensing_or_containment") {
        return;
    }
    let _side_by_side = side_by_side();
    let disk = SmallDisk::mount("64k");
    let output = disk.dir.path().join("events.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("incidents");
    let config = dir.path().join("config.yaml");
    let metrics_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    std::fs::write(
        &config,
        format!(
            "contain:\n  warmup_s: 0\n  journal_dir: {}\nevidence:\n  on_contain: false\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\n",
            journal.display(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(
        Path::new(env!("CARGO_BIN_EXE_detector")),
        &config,
        &output,
        &[],
    )
    .unwrap();
    // The node's own activity fills the 64 KiB disk within moments; then the attack.
    let filler = Command::new("sh")
        .args([
            "-c",
            "for i in $(seq 1 400); do cat /etc/hostname > /dev/null; done",
        ])
        .status()
        .unwrap();
    assert!(filler.success());
    let dropped = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("detector_output_dropped_lines_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while dropped(&http_get(metrics_port, "/metrics").1) == 0.0 {
        assert!(Instant::now() < deadline, "the output disk never filled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pod_uid = "7f5e4d3c-2b1a-4f0e-9d8c-b7a699887766";
    let cgroup = pod_cgroup(pod_uid, &"ab".repeat(32));
    let _ = cgroup.run_shell(ATTACK);
    // Sensing, scoring and containment go on: the pod's incident is opened and journaled.
    let journal_path = journal.join("journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&journal_path).unwrap_or_default();
        if text.contains(pod_uid) && text.contains(r#""entry":"opened""#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no containment while the output disk is full:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http_get(metrics_port, "/metrics");
    assert_eq!(status, 200);
    assert!(dropped(&body) > 0.0);
    let (status, log) = daemon.stop();
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );
    // One log line for the condition, not one per batch.
    let complaints = log
        .iter()
        .filter(|l| l.contains("output: cannot write"))
        .count();
    assert_eq!(complaints, 1, "{}", log.join("\n"));
    drop(cgroup);
}

/// One HTTP/1.1 GET on loopback with `Connection: close`: the status code and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

#[test]
fn programs_the_kernel_refuses_are_named_and_the_rest_run_unless_all_are_required() {
    if !privileged("programs_the_kernel_refuses_are_named_and_the_rest_run_unless_all_are_required")
    {
        return;
    }
    let _side_by_side = side_by_side();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    // A directory that is not a cgroup: the kernel refuses to attach the cgroup programs
    // (connect4, connect6, egress, ingress) there; the tracepoint programs do not need it.
    let not_a_cgroup = dir.path().join("not-a-cgroup");
    std::fs::create_dir(&not_a_cgroup).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("config.yaml");
    let write_config = |require_all: bool| {
        std::fs::write(
            &config,
            format!(
                "contain:\n  enabled: false\nevidence:\n  on_contain: false\n\
                 metrics:\n  enabled: true\n  listen: 127.0.0.1:{port}\n\
                 sensors:\n  cgroup2_path: {}\n  require_all_programs: {require_all}\n",
                not_a_cgroup.display()
            ),
        )
        .unwrap();
    };
    write_config(false);
    let binary = Path::new(env!("CARGO_BIN_EXE_detector"));
    let mut daemon = Daemon::start(binary, &config, &output, &[]).unwrap();

    let (status, body) = http_get(port, "/readyz");
    assert_eq!(
        status, 200,
        "degraded is ready: the other programs run: {body}"
    );
    assert!(
        body.starts_with("ready (typed programs; not running: "),
        "{body}"
    );
    for program in ["connect4", "connect6", "egress", "ingress"] {
        assert!(body.contains(&format!("{program} (attach: ")), "{body}");
    }
    let (_, metrics) = http_get(port, "/metrics");
    for program in ["connect4", "connect6", "egress", "ingress"] {
        let line = format!("detector_program_attached{{program=\"{program}\"}} 0\n");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    for program in ["sys_exit", "sys_exit_path_op", "sched_process_exec"] {
        let line = format!("detector_program_attached{{program=\"{program}\"}} 1\n");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains("detector_program_variant{variant=\"typed\"} 1\n"),
        "{metrics}"
    );
    // The programs that run report: a process's exec and exit.
    let cgroup = TestCgroup::for_test("degraded").unwrap();
    let pid = cgroup.run_shell("true").unwrap();
    let lines = daemon.wait_for(Duration::from_secs(15), |line| {
        line["kind"] == "exit" && line["pid"] == pid
    });
    let (_, log) = daemon.stop();
    assert!(
        lines
            .iter()
            .any(|line| line["kind"] == "exit" && line["pid"] == pid),
        "no exit of pid {pid}; log:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter()
            .any(|line| line.contains("not running") && line.contains("connect4")),
        "the log names the refused program:\n{}",
        log.join("\n")
    );

    // Every program required: the same refusal stops the start, naming the program.
    write_config(true);
    let started = Instant::now();
    let refused = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(&output)
        .env_remove("POD_UID")
        .env_remove("POD_NAMESPACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started anyway: {stderr}");
    assert!(
        stderr.contains("connect4") && stderr.contains("require_all_programs"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn the_quarantine_outlives_a_killed_daemon_and_only_a_release_lifts_it() {
    if !privileged("the_quarantine_outlives_a_killed_daemon_and_only_a_release_lifts_it") {
        return;
    }
    let _alone = alone();
    const ROUNDS: usize = 10;
    let binary = Path::new(env!("CARGO_BIN_EXE_detector"));
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    let journal = dir.path().join("incidents");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "contain:\n  warmup_s: 0\n  journal_dir: {}\nevidence:\n  on_contain: false\n",
            journal.display(),
        ),
    )
    .unwrap();
    // The pins on a bpf filesystem of the test's own, which every run of the daemon shares.
    let pins = tests::host::PinScratch::new("outlives").unwrap();
    let (key, value) = pins.env();
    let env = [(key, value.as_os_str())];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut daemon = Daemon::start(binary, &config, &output, &env).unwrap();
    let cgroup = pod_cgroup("7f5e4d3c-2b1a-4f0e-9d8c-b7a699887766", &"a7".repeat(32));
    // Whether a connect from the pod is refused with EPERM; its stderr.
    let refused = || {
        let out = connect_from(&cgroup, port);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            !out.status.success() && stderr.contains("Operation not permitted"),
            stderr,
        )
    };
    assert!(!refused().0, "the pod is cut off before any attack");
    let _ = cgroup.run_shell(ATTACK);
    let journal_path = journal.join("journal.jsonl");
    let entries = || -> Vec<Value> {
        std::fs::read_to_string(&journal_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let incident = loop {
        let blocked = entries()
            .into_iter()
            .find(|e| e["step"] == "kernel_block" && e["outcome"]["status"] == "done");
        if let Some(entry) = blocked {
            break entry["incident"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "not contained:\n{}",
            std::fs::read_to_string(&journal_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (cut, stderr) = refused();
    assert!(cut, "contained but not cut off: {stderr}");

    // Killed (as the OOM killer or a forced rollout kills it) and started again, ten times: the
    // pod is cut off while no daemon runs, and after each start.
    let mut held = Vec::new();
    for round in 0..ROUNDS {
        let log = daemon.kill();
        let (dead, stderr) = refused();
        let restarted = Daemon::start(binary, &config, &output, &env);
        let mut next = restarted.unwrap_or_else(|err| panic!("round {round}: {err:#}"));
        let (again, stderr_again) = refused();
        held.push((dead, again));
        if !(dead && again) {
            let (_, new_log) = next.stop();
            panic!(
                "round {round}: cut off while no daemon ran: {dead} ({stderr}); after the \
                 restart: {again} ({stderr_again})\nthe killed daemon's log:\n{}\nthe new one's:\n{}",
                log.join("\n"),
                new_log.join("\n")
            );
        }
        daemon = next;
    }
    eprintln!("cut off while no daemon ran, and after the restart: {held:?}");

    // Released while no daemon runs: the block holds until a daemon reads the release, and
    // the next start lifts it.
    daemon.kill();
    let release = Command::new(binary)
        .args(["release", &incident, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        release.status.success(),
        "detector release: {}",
        String::from_utf8_lossy(&release.stderr)
    );
    assert!(refused().0, "lifted with no daemon to lift it");
    let mut daemon = Daemon::start(binary, &config, &output, &env).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused().0 {
        assert!(
            Instant::now() < deadline,
            "still cut off after the release and a start:\n{}",
            std::fs::read_to_string(&journal_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let released = entries()
        .iter()
        .any(|e| e["incident"] == incident.as_str() && e["entry"] == "released");
    assert!(
        released,
        "{}",
        std::fs::read_to_string(&journal_path).unwrap_or_default()
    );
    // Nothing is quarantined: a stop removes the pins.
    let (status, log) = daemon.stop();
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );
    assert!(
        !pins.pin_dir().exists(),
        "pins left with nothing quarantined: {:?}",
        std::fs::read_dir(pins.pin_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    drop(listener);
    drop(cgroup);
}
