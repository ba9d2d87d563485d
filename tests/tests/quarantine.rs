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

/// A network namespace of the test's own, removed on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    /// `name` with loopback up and `addresses` on it.
    fn create(name: &str, addresses: &[&str]) -> Self {
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["netns", "add", name]);
        let netns = Self { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        for address in addresses {
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{address}/32"),
                "dev",
                "lo",
            ]);
        }
        netns
    }

    /// A listener on `addr` inside the namespace (bound from a thread that entered it; the
    /// socket stays in the namespace).
    fn listen(&self, addr: &str) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = addr.to_owned();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd, on this thread only.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpListener::bind(&addr).unwrap()
        })
        .join()
        .unwrap()
    }

    /// Whether a bash in `cgroup`, inside the namespace, connects to `host:port`; and its
    /// stderr.
    fn connect(&self, cgroup: &TestCgroup, host: &str, port: u16) -> (bool, String) {
        let output = cgroup
            .command("ip")
            .unwrap()
            .args(["netns", "exec", &self.name, "/bin/bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn the_api_server_and_the_cloud_metadata_endpoint_are_cut_off_with_the_rest() {
    if !privileged("the_api_server_and_the_cloud_metadata_endpoint_are_cut_off_with_the_rest") {
        return;
    }
    // A namespace of the test's own holds the addresses a pod's credentials are used against:
    // the `kubernetes` Service's ClusterIP and the cloud metadata endpoint.
    const API: (&str, u16) = ("10.96.0.1", 443);
    const METADATA: (&str, u16) = ("169.254.169.254", 80);
    let netns = TestNetns::create(
        &format!("detector-creds-{}", std::process::id()),
        &[API.0, METADATA.0],
    );
    let _api = netns.listen(&format!("{}:{}", API.0, API.1));
    let _metadata = netns.listen(&format!("{}:{}", METADATA.0, METADATA.1));
    let mut collector = Collector::start(&SensorsConfig::default(), Duration::from_millis(200))
        .expect("sensors load and attach");
    let pod = TestCgroup::for_test("creds-pod").unwrap();
    let sibling = TestCgroup::for_test("creds-sibling").unwrap();
    for (host, port) in [API, METADATA] {
        let (ok, stderr) = netns.connect(&pod, host, port);
        assert!(ok, "{host}:{port} before the block: {stderr}");
    }
    collector.quarantine().block(pod.id()).unwrap();
    for (host, port) in [API, METADATA] {
        let (ok, stderr) = netns.connect(&pod, host, port);
        assert!(!ok, "the quarantined pod reached {host}:{port}");
        assert!(stderr.contains("Operation not permitted"), "{stderr}");
        let (ok, stderr) = netns.connect(&sibling, host, port);
        assert!(ok, "{host}:{port} from the sibling: {stderr}");
    }
    collector.quarantine().release(pod.id()).unwrap();
    let (ok, stderr) = netns.connect(&pod, METADATA.0, METADATA.1);
    assert!(ok, "after release: {stderr}");
}
