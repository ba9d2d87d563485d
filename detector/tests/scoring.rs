//! Acceptance: the seed's intrusion is contained, a benign day is not even reported, and a
//! committed recording replays through the same engine with bad lines counted.

mod common;

use std::path::Path;

use detector::{
    rules::RuleSet,
    score::{
        Decision, Engine, Record, ScoreConfig, Verdict,
        replay::{ReplaySummary, replay},
    },
};

fn engine() -> Engine {
    Engine::new(RuleSet::defaults().unwrap(), ScoreConfig::default())
}

fn verdicts(records: &[Record]) -> Vec<&Verdict> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Verdict(v) => Some(&**v),
            Record::Alert(_) => None,
        })
        .collect()
}

#[test]
fn nginx_shell_curl_pipe_sh_and_proc_write_is_contained() {
    let mut engine = engine();
    let records: Vec<Record> = common::attack(0)
        .iter()
        .flat_map(|e| engine.process(e))
        .collect();
    let verdicts = verdicts(&records);
    let contain = verdicts
        .iter()
        .find(|v| v.decision == Decision::Contain)
        .expect("a contain verdict");
    assert!(contain.score >= 100.0, "{}", contain.score);
    assert_eq!(contain.subject.namespace.as_deref(), Some("shop"));
    let ids: Vec<_> = contain.rules.iter().map(|c| c.rule.id.as_str()).collect();
    for want in ["shell-spawned-by-server", "download-and-execute"] {
        assert!(ids.contains(&want), "{want} not in {ids:?}");
    }
    assert!(contain.mitre.iter().any(|m| m.technique == "T1059.004"));
    assert!(contain.rules.iter().all(|c| !c.events.is_empty()));
    // The /proc/sys write comes after containment and is still reported.
    let proc_write = records.iter().any(|r| {
        matches!(r, Record::Alert(a) if a.rule.id == "write-below-proc" && a.decision == Decision::Contain)
    });
    assert!(proc_write, "{records:#?}");
}

#[test]
fn a_day_of_benign_serving_crosses_nothing() {
    let mut engine = engine();
    let events = common::benign(0, 24, 7);
    assert!(events.len() > 100_000, "{}", events.len());
    let span = events.last().unwrap().time - events.first().unwrap().time;
    assert!(span.whole_hours() >= 23, "{span}");
    let records: Vec<Record> = events.iter().flat_map(|e| engine.process(e)).collect();
    assert!(
        records.is_empty(),
        "benign activity reported: {:#?}",
        &records[..records.len().min(3)]
    );
    assert_eq!(engine.stats().events, events.len() as u64);
}

#[test]
fn committed_recording_replays_with_bad_lines_counted() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nginx_curl_sh.jsonl");
    let recording = std::fs::read_to_string(&path).unwrap();
    let mut input = String::from("{\"kind\": \"exec\"}\nnot json\n");
    input.push_str(&recording);
    let mut out = Vec::new();
    let mut diagnostics = Vec::new();
    let summary = replay(&mut engine(), input.as_bytes(), &mut out, &mut diagnostics).unwrap();
    let diagnostics = String::from_utf8(diagnostics).unwrap();
    assert_eq!(summary.bad_lines, 2, "{diagnostics}");
    assert!(diagnostics.contains("line 1: skipped"), "{diagnostics}");
    assert!(diagnostics.contains("line 2: skipped"), "{diagnostics}");
    assert_eq!(summary.events, recording.lines().count() as u64);
    let records: Vec<Record> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        verdicts(&records)
            .iter()
            .any(|v| v.decision == Decision::Contain)
    );
    assert_eq!(
        summary,
        ReplaySummary {
            lines: summary.lines,
            events: summary.events,
            bad_lines: 2,
            alerts: records.len() as u64 - summary.verdicts,
            verdicts: summary.verdicts,
        }
    );
}

/// The committed recording is the generator's output (`REGENERATE_TEST_DATA=1 cargo test`
/// rewrites it), so that a change of the generator shows up in review.
#[test]
fn committed_recording_matches_the_generator() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nginx_curl_sh.jsonl");
    let mut events = common::attack(0);
    // Keep the file small: the start, ten seconds of serving and the intrusion.
    events.retain(|e| {
        !matches!(e.body, detector::event::Body::Egress(_)) || e.ktime_ns < 16_000_000_000
    });
    let text: String = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    if std::env::var_os("REGENERATE_TEST_DATA").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "run with REGENERATE_TEST_DATA=1"
    );
}
