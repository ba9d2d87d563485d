//! Privileged end-to-end test of the output for people: the real binary with `--format pretty`,
//! a real process in a kubepods-style cgroup reading /etc/shadow, the lines it writes.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use tests::{TestCgroup, daemon::Daemon, privileged};

const POD_UID: &str = "7e1d2c3b-4a59-4687-9a1b-c2d3e4f5a6b7";

#[test]
fn the_pretty_format_writes_one_line_per_alert_and_no_events() {
    if !privileged("the_pretty_format_writes_one_line_per_alert_and_no_events") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("alerts.txt");
    // Detection only: another test's daemon contains; this one must not act on its pods.
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "contain:\n  enabled: false\nevidence:\n  on_contain: false\nmetrics:\n  enabled: false\n",
    )
    .unwrap();
    let mut daemon = Daemon::run(
        Path::new(env!("CARGO_BIN_EXE_detector")),
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--format".as_ref(),
            "pretty".as_ref(),
            "--output".as_ref(),
            output.as_os_str(),
        ],
        &output,
        &[],
    )
    .unwrap();
    let cgroup = TestCgroup::create(&format!(
        "detector-test/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
        POD_UID.replace('-', "_"),
        "5e".repeat(32)
    ))
    .unwrap();
    cgroup.run_shell("cat /etc/shadow > /dev/null").unwrap();

    let read = || std::fs::read_to_string(&output).unwrap_or_default();
    let pod = format!("pod:{}", &POD_UID[..8]);
    let is_alert =
        |line: &str| line.contains(&pod) && line.contains("shadow-file-access T1003.008  score ");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !read().lines().any(is_alert) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, log) = daemon.stop();
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );
    drop(cgroup);

    let text = read();
    let alert = text
        .lines()
        .find(|l| is_alert(l))
        .unwrap_or_else(|| panic!("no shadow-file-access line for {pod} in:\n{text}"));
    // Time, severity, pod, rule and technique, score, the path, the process.
    let (clock, rest) = alert.split_once(' ').unwrap();
    assert!(
        clock.len() == 12 && clock.as_bytes()[2] == b':' && clock.as_bytes()[8] == b'.',
        "{alert}"
    );
    assert!(rest.starts_with("high      "), "{alert}");
    assert!(alert.contains("  open /etc/shadow  (cat pid "), "{alert}");
    // No events, no JSON, no colour in a file.
    for line in text.lines() {
        assert!(!line.starts_with('{'), "a JSON line: {line}");
        assert!(!line.contains('\x1b'), "colour in a file: {line:?}");
        let level = line.get(13..).unwrap_or_default();
        for kind in ["exec ", "exit ", "file ", "connect ", "egress ", "loss "] {
            assert!(!level.starts_with(kind), "an event line: {line}");
        }
    }
    eprintln!("{text}");
}
