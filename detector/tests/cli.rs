//! The `rules check`, `replay`, `approve` and `confirm` subcommands, run as a person would.

use std::process::Command;

fn detector() -> Command {
    Command::new(env!("CARGO_BIN_EXE_detector"))
}

#[test]
fn rules_check_accepts_the_defaults_and_the_shipped_directory() {
    let out = detector().args(["rules", "check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rules");
    let out = detector()
        .args(["rules", "check", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn rules_check_reports_a_typo_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "rules:\n  - id: shell\n    description: a shell\n    mitre: {tactic: Execution, technique: T1059.004}\n    severity: medium\n    weight: 10\n    when:\n      kind: exec\n      exe: {basename: sh}\n      argv_contain: [\"-c\"]\n";
    std::fs::write(dir.path().join("site.yaml"), rule).unwrap();
    let out = detector()
        .args(["rules", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("site.yaml"), "{stderr}");
    assert!(stderr.contains("unknown field `argv_contain`"), "{stderr}");
    assert!(stderr.contains("line 10 column 7"), "{stderr}");
}

#[test]
fn replay_prints_records_and_counts_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nginx_curl_sh.jsonl"
    );
    let mut text = std::fs::read_to_string(data).unwrap();
    text.push_str("{broken\n");
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, text).unwrap();
    let out = detector().arg("replay").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 bad lines skipped"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("\"kind\":\"verdict\"") && l.contains("\"decision\":\"contain\"")),
        "{stdout}"
    );
}

#[test]
fn approve_and_confirm_journal_a_persons_decision_and_refuse_what_does_not_apply() {
    use detector::contain::{
        config::Mode,
        journal::{self, EntryKind, IncidentState, Journal},
    };
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let opened = |mode| EntryKind::Opened {
        subject: detector::score::Subject {
            key: "pod:web-1-uid".into(),
            namespace: Some("shop".into()),
            pod: Some("web-1".into()),
            ..Default::default()
        },
        node: "node-1".into(),
        score: 42.0,
        reason: "r".into(),
        cgroup_ids: vec![1],
        event_ktime_ns: 1,
        dry_run: false,
        boot_id: None,
        mode,
    };
    journal.append("inc-p", opened(Mode::Propose)).unwrap();
    journal.append("inc-e", opened(Mode::Enforce)).unwrap();
    let run = |args: &[&str]| {
        detector()
            .args(args)
            .arg("--journal-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    // Only a proposal is approved.
    let out = run(&["approve", "inc-e"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("incident inc-e is Open: there is nothing to approve"),
        "{stderr}"
    );
    let out = run(&["approve", "inc-nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no incident inc-nope"));
    let out = run(&["approve", "inc-p"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["confirm", "inc-e"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (entries, _) = journal::read_from(&dir.path().join(journal::JOURNAL_FILE), 0).unwrap();
    // Written by another process than the daemon's: the daemon follows and acts on them.
    let decided: Vec<_> = entries
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EntryKind::Approved { .. } | EntryKind::Confirmed { .. }
            )
        })
        .collect();
    assert_eq!(decided.len(), 2);
    assert!(decided.iter().all(|e| e.pid != std::process::id()));
    let records = journal::replay(&entries);
    assert_eq!(records["inc-p"].state, IncidentState::Open);
    assert!(records["inc-p"].confirmed && records["inc-e"].confirmed);
}
