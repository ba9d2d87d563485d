//! Unit tests of the engine: decay, thresholds, drift, egress and bounds.

use time::{Duration, OffsetDateTime};

use super::*;
use crate::event::{Container, Egress, Exec, FileActivity, Lineage, Pod, ProcessFields, Role};

fn at(seconds: i64, pod: &str, body: Body) -> Event {
    Event {
        time: OffsetDateTime::UNIX_EPOCH + Duration::seconds(1_700_000_000 + seconds),
        ktime_ns: 0,
        process: ProcessFields::default(),
        cgroup_id: Some(3),
        container: Some(Container {
            id: format!("c-{pod}"),
            runtime: "containerd".into(),
            ..Container::default()
        }),
        pod: Some(Pod {
            uid: pod.into(),
            ..Pod::default()
        }),
        ancestry: Vec::new(),
        // Commands typed in an exec session into the container.
        lineage: Some(Lineage {
            role: Role::ExecSession,
            tty: false,
            leader: false,
        }),
        body,
    }
}

fn exec(seconds: i64, pod: &str, filename: &str) -> Event {
    at(
        seconds,
        pod,
        Body::Exec(Exec {
            filename: filename.into(),
            argv: vec![filename.into()],
            argv_truncated: false,
            filename_truncated: false,
            tty: false,
            parent_cgroup_id: None,
            fileless: false,
            stdin_socket: false,
            stdout_socket: false,
            deleted: false,
        }),
    )
}

fn write(seconds: i64, pod: &str, path: &str) -> Event {
    at(
        seconds,
        pod,
        Body::File(FileActivity {
            op: FileOperation::Open,
            path: path.into(),
            flags: 0o101,
            write: true,
            sensitive: false,
            read_sensitive: false,
            relative: false,
            dirfd: None,
            path_truncated: false,
            target: None,
            suppressed: 0,
            result: None,
            resolved: false,
            outside_root: false,
            joined: false,
            original_path: None,
            original_target: None,
            self_path: None,
            log: false,
            unresolved: false,
            io_uring: false,
        }),
    )
}

fn engine(config: ScoreConfig) -> Engine {
    Engine::new(RuleSet::defaults().unwrap(), config)
}

fn alerts(records: &[Record]) -> Vec<(&str, Decision)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Alert(a) => Some((a.rule.id.as_str(), a.decision)),
            Record::Verdict(_) => None,
        })
        .collect()
}

#[test]
fn score_halves_every_half_life() {
    let mut e = engine(ScoreConfig::default());
    e.process(&exec(0, "p", "/usr/bin/curl"));
    let later = exec(900, "p", "/bin/true");
    assert!(
        (e.score_of(&later) - 15.0).abs() < 1e-9,
        "{}",
        e.score_of(&later)
    );
}

#[test]
fn matches_add_up_to_alert_then_contain_with_one_verdict_each() {
    let mut e = engine(ScoreConfig::default());
    let mut verdicts = Vec::new();
    for (i, tool) in [
        "/usr/bin/curl",
        "/usr/bin/wget",
        "/usr/bin/nc",
        "/usr/bin/curl",
    ]
    .iter()
    .enumerate()
    {
        for r in e.process(&exec(i as i64, "p", tool)) {
            if let Record::Verdict(v) = r {
                verdicts.push(v);
            }
        }
    }
    let decisions: Vec<_> = verdicts.iter().map(|v| v.decision).collect();
    assert_eq!(decisions, [Decision::Alert, Decision::Contain]);
    let last = &verdicts[1];
    assert_eq!(last.rules.len(), 1);
    assert_eq!(last.rules[0].matches, 4);
    assert_eq!(last.rules[0].events.len(), 3, "events per rule are bounded");
    assert_eq!(last.mitre[0].technique, "T1105");
}

#[test]
fn drift_fires_on_exec_of_a_written_file_in_the_same_pod_only() {
    let mut e = engine(ScoreConfig::default());
    assert!(e.process(&write(0, "p", "/tmp/payload")).is_empty());
    assert!(e.process(&exec(1, "q", "/tmp/payload")).is_empty());
    assert_eq!(
        alerts(&e.process(&exec(2, "p", "/tmp/payload"))),
        [("drift-executed", Decision::Alert)]
    );
}

#[test]
fn contain_immediately_rule_contains_at_once() {
    let yaml = r#"
rules:
  - id: miner
    description: a miner
    mitre: {tactic: Impact, technique: T1496}
    severity: critical
    weight: 1
    contain_immediately: true
    when: {kind: exec, exe: {basename: xmrig}}
"#;
    let rules = RuleSet::from_sources(&[("m.yaml".into(), yaml.into())]).unwrap();
    let mut e = Engine::new(rules, ScoreConfig::default());
    let records = e.process(&exec(0, "p", "/tmp/xmrig"));
    let Some(Record::Verdict(v)) = records.last() else {
        panic!("no verdict: {records:?}")
    };
    assert_eq!(v.decision, Decision::Contain);
    assert_eq!(v.reason, "rule miner contains immediately");
}

#[test]
fn egress_spike_after_warm_up_is_an_alert() {
    let mut e = engine(ScoreConfig::default());
    let egress = |s: i64, bytes| {
        at(
            s,
            "p",
            Body::Egress(Egress {
                bytes,
                packets: 1,
                interval_ms: 1000,
                total_bytes: 0,
            }),
        )
    };
    for s in 0..120 {
        assert!(e.process(&egress(s, 100_000)).is_empty());
    }
    assert!(e.process(&egress(120, 50_000_000)).is_empty());
    let records = e.process(&egress(121, 50_000_000));
    assert_eq!(alerts(&records), [("egress-spike", Decision::Log)]);
    let Record::Alert(a) = &records[0] else {
        unreachable!()
    };
    assert!(
        a.detail.as_deref().unwrap().contains("50000000 B/s"),
        "{:?}",
        a.detail
    );
    // A burst followed by silence: the sampler's quiet sample closes the burst's window.
    let mut e = engine(ScoreConfig::default());
    for s in 0..120 {
        assert!(e.process(&egress(s, 1_000)).is_empty());
    }
    assert!(e.process(&egress(120, 200_000_000)).is_empty());
    let records = e.process(&egress(121, 0));
    assert_eq!(alerts(&records), [("egress-spike", Decision::Log)]);
}

#[test]
fn idle_and_excess_pods_are_evicted() {
    let config = ScoreConfig {
        max_pods: 100,
        idle_evict_s: 60,
        ..ScoreConfig::default()
    };
    let mut e = engine(config);
    for i in 0..1000 {
        e.process(&write(i / 100, &format!("pod-{i}"), "/tmp/x"));
        assert!(e.tracked() <= 101);
    }
    e.process(&write(1000, "late", "/tmp/x"));
    assert!(e.stats().evicted > 0);
}

#[test]
fn records_read_back_from_json() {
    let mut e = engine(ScoreConfig::default());
    let mut records = e.process(&exec(0, "p", "/usr/bin/curl"));
    records.extend(e.process(&exec(1, "p", "/usr/bin/nc")));
    assert!(matches!(records.last(), Some(Record::Verdict(_))));
    for record in records {
        let text = serde_json::to_string(&record).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(value["kind"] == "alert" || value["kind"] == "verdict");
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
    }
}

fn verdicts(records: &[Record]) -> Vec<&Verdict> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Verdict(v) => Some(&**v),
            _ => None,
        })
        .collect()
}

fn time(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + Duration::seconds(1_700_000_000 + seconds)
}

fn ns(seconds: i64) -> i64 {
    i64::try_from(time(seconds).unix_timestamp_nanos()).unwrap()
}

/// Drives pod `p` to `contain` (four tool downloads, as above) and returns that verdict.
fn to_contain(e: &mut Engine) -> Verdict {
    let mut last = None;
    for (i, tool) in [
        "/usr/bin/curl",
        "/usr/bin/wget",
        "/usr/bin/nc",
        "/usr/bin/curl",
    ]
    .iter()
    .enumerate()
    {
        for v in verdicts(&e.process(&exec(i as i64, "p", tool))) {
            last = Some(v.clone());
        }
    }
    let last = last.unwrap();
    assert_eq!(last.decision, Decision::Contain);
    last
}

#[test]
fn a_deferred_contain_is_decided_again_when_its_reason_lapses() {
    let mut e = engine(ScoreConfig::default());
    let refused = to_contain(&mut e);
    e.defer(&refused.subject.key, ns(60), "warming up");
    // Not before the reason lapses.
    assert!(e.redecide(time(30), 1).is_empty());
    // Then once: the score is still above the threshold.
    let again = e.redecide(time(60), 2);
    let again = verdicts(&again);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].decision, Decision::Contain);
    assert_eq!(again[0].subject, refused.subject);
    assert_eq!(again[0].ktime_ns, 2);
    assert!(
        again[0]
            .reason
            .starts_with("decided again once warming up lapsed: score"),
        "{}",
        again[0].reason
    );
    assert_eq!(again[0].rules, refused.rules);
    assert!(e.redecide(time(120), 3).is_empty(), "decided once");
}

#[test]
fn a_deferred_pod_that_fell_below_the_threshold_is_not_contained() {
    let config = ScoreConfig {
        half_life_s: 10.0,
        ..ScoreConfig::default()
    };
    let mut e = engine(config);
    let refused = to_contain(&mut e);
    e.defer(&refused.subject.key, ns(60), "warming up");
    // Six half-lives later the score is far below `contain`.
    assert!(e.redecide(time(60), 1).is_empty());
}

#[test]
fn a_match_after_a_deferral_reports_contain_again() {
    let mut e = engine(ScoreConfig::default());
    let refused = to_contain(&mut e);
    e.defer(&refused.subject.key, ns(600), "warming up");
    // Still above the threshold: the next match's verdict says contain again.
    let records = e.process(&exec(10, "p", "/usr/bin/wget"));
    let again = verdicts(&records);
    assert_eq!(again.len(), 1, "{records:?}");
    assert_eq!(again[0].decision, Decision::Contain);
    // Reported: the deferral's own decision is not made a second time.
    assert!(e.redecide(time(600), 1).is_empty());
}
