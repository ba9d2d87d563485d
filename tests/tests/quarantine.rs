//! Privileged test of the in-kernel network quarantine: real programs, real processes in
//! cgroups the test creates, real loopback sockets.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    process::Stdio,
    time::{Duration, Instant},
};

use detector::{config::SensorsConfig, event::Body};
use tests::{Collector, TestCgroup, dump, privileged};

/// Runs a bash connect to `port` in `cgroup`; returns whether it connected, its stderr and how
/// long it took.
fn try_connect(cgroup: &TestCgroup, port: u16) -> (bool, String, Duration) {
    let start = Instant::now();
    let output = cgroup
        .command("/bin/bash")
        .unwrap()
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn quarantine_cuts_a_pod_off_at_once_and_release_restores_it() {
    if !privileged("quarantine_cuts_a_pod_off_at_once_and_release_restores_it") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut collector = Collector::start(&SensorsConfig::default(), Duration::from_millis(200))
        .expect("sensors load and attach");
    // A pod-level cgroup with a container cgroup below it, and an unrelated sibling.
    let pod = TestCgroup::for_test("quarantine-pod").unwrap();
    let container = TestCgroup::create(&format!(
        "detector-test/quarantine-pod-{}/container",
        std::process::id()
    ))
    .unwrap();
    let sibling = TestCgroup::for_test("quarantine-sibling").unwrap();

    // A connection established before the quarantine.
    let mut long_lived = container
        .command("/bin/bash")
        .unwrap()
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; echo before >&3; read x; echo after >&3; sleep 30"),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(accepted.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");

    let started = Instant::now();
    collector.quarantine().block(pod.id()).unwrap();
    let block_took = started.elapsed();

    // New connects from the pod fail at once with EPERM; the sibling still connects.
    let acceptor = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        listener.set_nonblocking(false).unwrap();
        for _ in 0..2 {
            accepted.push(listener.accept().map(|(s, _)| s));
        }
        accepted
    });
    let (ok, stderr, took) = try_connect(&container, port);
    assert!(!ok, "connect from a quarantined pod succeeded");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert!(
        took < Duration::from_secs(1),
        "refused after {took:?}, not at once"
    );
    let (ok, stderr, _) = try_connect(&sibling, port);
    assert!(ok, "the sibling cgroup is not quarantined: {stderr}");

    // Data on the established connection no longer gets through.
    long_lived
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 16];
    let got = reader.get_mut().read(&mut buf);
    assert!(
        got.is_err(),
        "data from a quarantined pod arrived: {got:?} {:?}",
        &buf[..got.as_ref().copied().unwrap_or(0)]
    );

    // The refused connect was reported, marked blocked.
    let container_id = container.id();
    let reported = collector.wait_until(Duration::from_secs(5), |seen| {
        seen.iter().any(|e| {
            e.cgroup_id == Some(container_id)
                && matches!(&e.body, Body::Connect(c) if c.dport == port && c.blocked)
        })
    });
    if !reported {
        dump(&collector.from_cgroup(container_id));
    }
    assert!(reported, "blocked connect event");

    // Release: connects work again, and TCP retransmits the data that was dropped.
    collector.quarantine().release(pod.id()).unwrap();
    let (ok, stderr, _) = try_connect(&container, port);
    assert!(ok, "connect after release: {stderr}");
    accepted
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "after\n", "retransmitted after release");
    for stream in acceptor.join().unwrap() {
        stream.unwrap();
    }
    // SAFETY: the pid is our own child's.
    unsafe { libc::kill(long_lived.id() as i32, libc::SIGKILL) };
    long_lived.wait().unwrap();
    eprintln!("kernel block in place {block_took:?} after the call");
    drop(container);
}

#[test]
fn the_root_and_the_daemons_own_cgroup_are_never_quarantined() {
    if !privileged("the_root_and_the_daemons_own_cgroup_are_never_quarantined") {
        return;
    }
    let mut collector = Collector::start(&SensorsConfig::default(), Duration::from_secs(1))
        .expect("sensors load and attach");
    assert!(collector.quarantine().block(1).is_err());
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let root = detector::cgroup::cgroup2_mount().unwrap();
    let own_id = detector::cgroup::cgroup_id(&root.join(own.trim_start_matches('/'))).unwrap();
    if own_id != 1 {
        let err = collector.quarantine().block(own_id).unwrap_err();
        assert!(err.to_string().contains("daemon's own cgroup"), "{err}");
    }
    assert!(collector.quarantine().blocked().is_empty());
    // The daemon still reaches the network.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(std::net::TcpStream::connect(listener.local_addr().unwrap()).is_ok());
}
