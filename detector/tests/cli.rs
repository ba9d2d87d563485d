//! The `rules check` and `replay` subcommands, run as a person would.

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
