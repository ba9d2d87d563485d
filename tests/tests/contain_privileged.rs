//! Privileged: a containment through the dispatcher with the real kernel quarantine and a real
//! cgroup: the pod's connects are refused once the verdict is handed over, and release lifts it.

use std::{net::TcpListener, time::Duration};

use detector::{
    clock::Clock,
    config::SensorsConfig,
    contain::{
        ContainConfig, Containment, StepOutcome,
        dispatcher::OwnPod,
        journal::{self, IncidentState},
    },
    score::{Decision, Subject, Verdict},
};
use tests::{Collector, TestCgroup, privileged};

fn connects(cgroup: &TestCgroup, port: u16) -> (bool, String) {
    let output = cgroup
        .command("/bin/bash")
        .unwrap()
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_dispatcher_blocks_a_real_cgroup_and_release_lifts_it() {
    if !privileged("the_dispatcher_blocks_a_real_cgroup_and_release_lifts_it") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..2 {
            let _ = listener.accept();
        }
    });
    let mut collector = Collector::start(&SensorsConfig::default(), Duration::from_millis(200))
        .expect("sensors load and attach");
    let quarantine = collector.take_quarantine().unwrap();
    let pod = TestCgroup::for_test("contain-pod").unwrap();
    let (ok, stderr) = connects(&pod, port);
    assert!(ok, "before: {stderr}");

    let dir = tempfile::tempdir().unwrap();
    let config = ContainConfig {
        warmup_s: 0,
        journal_dir: dir.path().to_owned(),
        ..ContainConfig::default()
    };
    let handle = Containment::start_with(
        config,
        Box::new(quarantine),
        None,
        dir.path(),
        OwnPod::default(),
    )
    .unwrap();
    let verdict = Verdict {
        time: time::OffsetDateTime::now_utc(),
        ktime_ns: Clock::boot_now_ns(),
        subject: Subject {
            key: format!("cgroup:{}", pod.id()),
            cgroup_id: Some(pod.id()),
            ..Subject::default()
        },
        score: 50.0,
        decision: Decision::Contain,
        reason: "test".into(),
        mitre: Vec::new(),
        rules: Vec::new(),
        omitted_rules: 0,
    };
    handle.on_verdict(&verdict, verdict.ktime_ns, vec![pod.id()]);
    // The block is in place when on_verdict returns.
    let (ok, stderr) = connects(&pod, port);
    assert!(!ok, "connect from a contained pod succeeded");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    handle.flush();
    let (entries, _) = journal::read_from(&dir.path().join(journal::JOURNAL_FILE), 0).unwrap();
    let records = journal::replay(&entries);
    let record = records.values().next().unwrap();
    assert!(matches!(
        record.step("kernel_block"),
        Some(StepOutcome::Done { .. })
    ));
    eprintln!(
        "kernel block {:?} after the verdict's timestamp",
        Duration::from_nanos(record.kernel_block_ns.unwrap() - record.event_ktime_ns)
    );

    handle.release(&record.id).unwrap();
    let (ok, stderr) = connects(&pod, port);
    assert!(ok, "after release: {stderr}");
    drop(handle);
    let (entries, _) = journal::read_from(&dir.path().join(journal::JOURNAL_FILE), 0).unwrap();
    assert_eq!(
        journal::replay(&entries)[&record.id].state,
        IncidentState::Released
    );
    acceptor.join().unwrap();
}
