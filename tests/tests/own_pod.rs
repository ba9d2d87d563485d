//! The real `detector run`, started with the downward-API environment deploy/daemonset.yaml
//! gives it (`NODE_NAME`, `POD_NAMESPACE`, `POD_NAME`, `POD_UID`, from the fieldRefs read out
//! of that file), in cluster mode against the project's test API server: an attack in its own
//! pod and one in another pod of its namespace each reach a `contain` verdict, and the daemon
//! refuses both (journaled, logged, not one API mutation), while the same attack in a pod of
//! another namespace is contained through the API.
//!
//!
//! And the daemon's stop in cluster mode: SIGTERM while an eviction is retried on its budget's
//! 429 ends the daemon within 5 s, and the next start resumes the step.
//!
//! Privileged (the real programs, pod-style cgroups); skipped without root, a failure under
//! `CI=true`.

use std::{
    ffi::OsStr,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use serde::Deserialize as _;
use serde_json::{Value, json};
use tests::{
    TestCgroup,
    apiserver::ApiServer,
    daemon::{Daemon, read_lines},
    privileged,
};

const NODE: &str = "node-7";
const OWN_NAMESPACE: &str = "detector-system";
const OWN_POD: &str = "detector-x7k2p";
const OWN_UID: &str = "6a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d";
const NEIGHBOUR_POD: &str = "toolbox";
const NEIGHBOUR_UID: &str = "7b1c2d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e";
const OTHER_NAMESPACE: &str = "shop";
const OTHER_POD: &str = "web-5d8f7-q2w9z";
const OTHER_UID: &str = "8c2d3e4f-5a6b-4c7d-8e8f-9a0b1c2d3e4f";

/// What crosses the `contain` score: a shell reading /etc/shadow and piping into a shell.
const ATTACK: &str = "cat /etc/shadow > /dev/null; echo 'echo owned' | sh > /dev/null; exec sh -c 'x=$(cat /etc/shadow | wc -c) | sh'";

/// A systemd-driver pod cgroup below the test's own parent (the parser takes the pod UID from
/// the names, whatever comes before `kubepods.slice`).
fn pod_cgroup(uid: &str, container: &str) -> TestCgroup {
    TestCgroup::create(&format!(
        "detector-test/own-pod-{}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container}.scope",
        std::process::id(),
        uid.replace('-', "_")
    ))
    .unwrap()
}

/// The downward-API variables of deploy/daemonset.yaml, each with the value the kubelet gives
/// it for the pod `namespace/name` (uid) on `node`.
fn downward_env(namespace: &str, name: &str, uid: &str, node: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let set = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let env = set["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    let vars: Vec<(String, String)> = env
        .iter()
        .filter_map(|var| {
            let field = var["valueFrom"]["fieldRef"]["fieldPath"].as_str()?;
            let value = match field {
                "spec.nodeName" => node,
                "metadata.namespace" => namespace,
                "metadata.name" => name,
                "metadata.uid" => uid,
                other => panic!("a fieldRef this test does not know: {other}"),
            };
            Some((var["name"].as_str().unwrap().to_owned(), value.to_owned()))
        })
        .collect();
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in ["NODE_NAME", "POD_NAMESPACE", "POD_NAME", "POD_UID"] {
        assert!(
            names.contains(&wanted),
            "deploy/daemonset.yaml sets no {wanted}"
        );
    }
    vars
}

fn pod(namespace: &str, name: &str, uid: &str, owner: Option<(&str, &str)>) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": {"app": name}},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Running", "qosClass": "BestEffort"}});
    if let Some((kind, owner)) = owner {
        pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind,
            "name": owner, "uid": "00000000-0000-4000-8000-000000000001", "controller": true}]);
    }
    pod
}

fn http_get(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn wait_until<T>(timeout: Duration, mut what: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = what() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Requests that change something (everything but reads and watches).
fn mutations(api: &ApiServer) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// The project's test API server holding the node, both namespaces and the three pods, and a
/// kubeconfig that points at it.
struct Cluster {
    api: ApiServer,
    kubeconfig: std::path::PathBuf,
    _runtime: tokio::runtime::Runtime,
}

impl Cluster {
    fn new(dir: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let api = runtime.block_on(ApiServer::start()).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\nusers:\n- name: t\n  user: {{}}\n",
                api.url()
            ),
        )
        .unwrap();
        api.put(
            "api/v1",
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}}),
        );
        for namespace in [OWN_NAMESPACE, OTHER_NAMESPACE] {
            api.put(
                "api/v1",
                "namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
            );
        }
        api.put(
            "api/v1",
            "pods",
            pod(
                OWN_NAMESPACE,
                OWN_POD,
                OWN_UID,
                Some(("DaemonSet", "detector")),
            ),
        );
        api.put(
            "api/v1",
            "pods",
            pod(OWN_NAMESPACE, NEIGHBOUR_POD, NEIGHBOUR_UID, None),
        );
        api.put(
            "api/v1",
            "pods",
            pod(OTHER_NAMESPACE, OTHER_POD, OTHER_UID, None),
        );
        Self {
            api,
            kubeconfig,
            _runtime: runtime,
        }
    }

    /// `detector run` in cluster mode as the DaemonSet's pod on the node, waited for until
    /// `/readyz` answers 200 on `metrics_port` (its pod cache synced).
    fn daemon(&self, config: &Path, output: &Path, metrics_port: u16) -> Daemon {
        let env = downward_env(OWN_NAMESPACE, OWN_POD, OWN_UID, NODE);
        let mut env: Vec<(&str, &OsStr)> = env
            .iter()
            .map(|(name, value)| (name.as_str(), OsStr::new(value.as_str())))
            .collect();
        env.push(("KUBECONFIG", self.kubeconfig.as_os_str()));
        let binary = tests::daemon::binary();
        let daemon = Daemon::start(&binary, config, output, &env)
            .unwrap_or_else(|err| panic!("{}: {err:#}", binary.display()));
        assert!(
            wait_until(Duration::from_secs(30), || {
                (http_get(metrics_port, "/readyz") == Some(200)).then_some(())
            })
            .is_some(),
            "the daemon never said ready (pod cache not synced?)"
        );
        daemon
    }
}

/// The tests of this file one at a time: each daemon watches every cgroup of the node, so an
/// attack in one test's pod would reach the other test's daemon (and its API server).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A free loopback port.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[test]
fn the_daemon_refuses_to_contain_its_own_pod_and_namespace() {
    if !privileged("the_daemon_refuses_to_contain_its_own_pod_and_namespace") {
        return;
    }
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(dir.path());
    let api = &cluster.api;

    let output = dir.path().join("events.jsonl");
    let journal = dir.path().join("incidents");
    let bundles = dir.path().join("evidence");
    let metrics_port = free_port();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "attribution:\n  kubernetes: true\ncontain:\n  warmup_s: 0\n  journal_dir: {}\nevidence:\n  on_contain: true\n  out_dir: {}\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\n",
            journal.display(),
            bundles.display()
        ),
    )
    .unwrap();
    let mut daemon = cluster.daemon(&config, &output, metrics_port);
    let before = mutations(api);

    // The attack in its own pod, then in another pod of its namespace.
    let journal_path = journal.join("journal.jsonl");
    let refused = |uid: &str| {
        read_lines(&journal_path)
            .into_iter()
            .find(|e| e["entry"] == "refused" && e["subject"]["pod_uid"] == uid)
    };
    let verdict = |uid: &str| {
        read_lines(&output).into_iter().find(|l| {
            l["kind"] == "verdict" && l["decision"] == "contain" && l["subject"]["pod_uid"] == uid
        })
    };
    let mut refusals = Vec::new();
    for (uid, container) in [(OWN_UID, "a1"), (NEIGHBOUR_UID, "b2")] {
        let cgroup = pod_cgroup(uid, &container.repeat(32));
        cgroup.run_shell(ATTACK).unwrap();
        let decided = wait_until(Duration::from_secs(15), || verdict(uid));
        let decided = decided.unwrap_or_else(|| {
            panic!(
                "no contain verdict for pod {uid}; alerts: {:?}",
                read_lines(&output)
                    .iter()
                    .filter(|l| l["kind"] == "alert" && l["pod"]["uid"] == uid)
                    .map(|l| (l["rule"]["id"].clone(), l["score"].clone()))
                    .collect::<Vec<_>>()
            )
        });
        assert_eq!(decided["subject"]["namespace"], OWN_NAMESPACE, "{decided}");
        let entry = wait_until(Duration::from_secs(10), || refused(uid))
            .unwrap_or_else(|| panic!("no refusal journaled for pod {uid}"));
        refusals.push(entry["why"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        refusals,
        [
            "the daemon's own pod".to_owned(),
            format!("protected namespace {OWN_NAMESPACE}")
        ]
    );
    // Nothing was changed through the API: the verdicts are reported (findings, OpenReports
    // Reports owned by each pod), never acted on.
    let reports = "/apis/openreports.io/v1alpha1/";
    let changed: Vec<String> = mutations(api)
        .into_iter()
        .filter(|m| !m.contains(reports))
        .collect();
    assert_eq!(changed, before, "the refused verdicts changed something");
    let own_report = wait_until(Duration::from_secs(10), || {
        api.object(
            "apis/openreports.io/v1alpha1",
            "reports",
            OWN_NAMESPACE,
            &format!("detector-pod-{OWN_POD}"),
        )
    })
    .expect("the verdict on the daemon's own pod is reported, though not acted on");
    assert_eq!(own_report["scope"]["name"], OWN_POD);

    // The same attack in a pod of another namespace is contained.
    let cgroup = pod_cgroup(OTHER_UID, &"c3".repeat(32));
    cgroup.run_shell(ATTACK).unwrap();
    let completed = wait_until(Duration::from_secs(30), || {
        let entries = read_lines(&journal_path);
        let opened = entries
            .iter()
            .find(|e| e["entry"] == "opened" && e["subject"]["pod_uid"] == OTHER_UID)?;
        entries
            .iter()
            .any(|e| e["entry"] == "completed" && e["incident"] == opened["incident"])
            .then(|| opened["incident"].as_str().unwrap_or_default().to_owned())
    });
    // Its evidence bundle is named as the journal names the incident, and holds the pod's
    // events before the verdict (they happened in its container cgroup, below the pod's).
    let bundle = completed.as_ref().and_then(|incident| {
        let bundle = bundles.join(incident);
        wait_until(Duration::from_secs(30), || {
            bundle
                .join("manifest.json")
                .exists()
                .then(|| bundle.clone())
        })
    });
    let (status, log) = daemon.stop();
    assert!(
        completed.is_some(),
        "the other pod's incident did not complete:\n{}",
        log.join("\n")
    );
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );
    for uid in [OWN_UID, NEIGHBOUR_UID] {
        assert!(
            log.iter()
                .any(|l| l.contains(uid) && l.contains("not contained")),
            "the refusal of {uid} is not in the log"
        );
    }
    let bundle = bundle.unwrap_or_else(|| {
        panic!(
            "no evidence bundle named after incident {completed:?} in {}: {:?}",
            bundles.display(),
            std::fs::read_dir(&bundles)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        )
    });
    let bundled = std::fs::read_dir(&bundles).unwrap().count();
    assert_eq!(bundled, 1, "evidence of a refused incident was captured");
    let events = read_lines(&bundle.join("events.jsonl"));
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "exec" && e["pod"]["uid"] == OTHER_UID),
        "the bundle's events hold none of the pod's execs: {events:#?}"
    );
    assert!(
        events.iter().all(|e| e["pod"]["uid"] == OTHER_UID),
        "the bundle holds events of other pods: {events:#?}"
    );
    let changed = mutations(api);
    let other = format!("/namespaces/{OTHER_NAMESPACE}/");
    assert!(
        changed
            .iter()
            .any(|m| m.starts_with("PATCH") && m.contains(&format!("{other}pods/{OTHER_POD}"))),
        "the other pod was not labelled: {changed:#?}\njournal:\n{}\nlog:\n{}",
        std::fs::read_to_string(&journal_path).unwrap_or_default(),
        log.join("\n")
    );
    let own = format!("/namespaces/{OWN_NAMESPACE}/");
    // The cluster budget's Lease lives in the daemon's namespace: taking from it is the one
    // change there besides the verdict Reports, and it names the other pod.
    let budget = "/apis/coordination.k8s.io/v1/namespaces/";
    let in_own_namespace: Vec<&String> = changed
        .iter()
        .filter(|m| {
            m.contains(&own)
                && !m.contains("/events")
                && !m.contains(budget)
                && !m.contains(reports)
        })
        .collect();
    assert!(
        in_own_namespace.is_empty(),
        "containing another pod changed the daemon's namespace: {in_own_namespace:#?}"
    );
    let lease = api
        .object(
            "apis/coordination.k8s.io/v1",
            "leases",
            OWN_NAMESPACE,
            "detector-containment-budget",
        )
        .expect("the cluster budget's Lease");
    let spent = lease["metadata"]["annotations"]["detector.security/containments"]
        .as_str()
        .unwrap_or_default();
    assert!(
        spent.contains(&format!("\"{OTHER_NAMESPACE}/{OTHER_POD}\"")),
        "{lease}"
    );
    let pod_of =
        |namespace: &str, name: &str| api.object("api/v1", "pods", namespace, name).unwrap();
    assert_eq!(
        pod_of(OTHER_NAMESPACE, OTHER_POD)["metadata"]["labels"]["quarantine"],
        "true"
    );
    for name in [OWN_POD, NEIGHBOUR_POD] {
        let pod = pod_of(OWN_NAMESPACE, name);
        assert!(
            pod["metadata"]["labels"].get("quarantine").is_none(),
            "{name}: {pod}"
        );
    }
    drop(cgroup);
}

#[test]
fn sigterm_during_an_eviction_retry_stops_within_5_s_and_the_next_start_resumes_it() {
    if !privileged(
        "sigterm_during_an_eviction_retry_stops_within_5_s_and_the_next_start_resumes_it",
    ) {
        return;
    }
    let _alone = one_at_a_time();
    const DB_POD: &str = "db-0";
    const DB_UID: &str = "9d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a";
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(dir.path());
    let api = &cluster.api;
    // Another pod on the node, whose budget allows no disruption: its eviction is refused
    // (429) and retried until `evict_deadline_s`.
    api.put(
        "api/v1",
        "pods",
        pod(OTHER_NAMESPACE, DB_POD, DB_UID, Some(("StatefulSet", "db"))),
    );
    api.put(
        "apis/policy/v1",
        "poddisruptionbudgets",
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "db", "namespace": OTHER_NAMESPACE},
            "spec": {"selector": {"matchLabels": {"app": DB_POD}}},
            "status": {"disruptionsAllowed": 0, "desiredHealthy": 1, "currentHealthy": 1}}),
    );
    let output = dir.path().join("events.jsonl");
    let journal = dir.path().join("incidents");
    let metrics_port = free_port();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "attribution:\n  kubernetes: true\ncontain:\n  warmup_s: 0\n  journal_dir: {}\n  evict_deadline_s: 300\nevidence:\n  on_contain: false\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\n",
            journal.display(),
        ),
    )
    .unwrap();
    let mut daemon = cluster.daemon(&config, &output, metrics_port);
    let cgroup = pod_cgroup(OTHER_UID, &"d4".repeat(32));
    cgroup.run_shell(ATTACK).unwrap();
    let eviction = format!("/api/v1/namespaces/{OTHER_NAMESPACE}/pods/{DB_POD}/eviction");
    let attempts = || {
        api.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == eviction)
            .count()
    };
    let retrying = wait_until(Duration::from_secs(30), || (attempts() >= 2).then_some(()));
    if retrying.is_none() {
        let (_, log) = daemon.stop();
        panic!(
            "the eviction is not being retried ({} attempts):\n{}",
            attempts(),
            log.join("\n")
        );
    }

    // SIGTERM while the eviction is retried.
    let stopping = Instant::now();
    let (status, log) = daemon.stop();
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after SIGTERM:\n{}",
        log.join("\n")
    );
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );
    let journal_path = journal.join("journal.jsonl");
    let record = || {
        let (entries, _) = detector::contain::journal::read_from(&journal_path, 0).unwrap();
        let records = detector::contain::journal::replay(&entries);
        let mut ours = records
            .into_values()
            .filter(|r| r.subject.pod_uid.as_deref() == Some(OTHER_UID));
        let record = ours.next().expect("an incident on the pod");
        assert!(ours.next().is_none(), "two incidents on the pod");
        record
    };
    let stopped = record();
    assert_eq!(
        stopped.state,
        detector::contain::journal::IncidentState::Open,
        "{stopped:#?}"
    );
    assert!(
        matches!(
            stopped.step("evict_other_pods"),
            Some(detector::contain::StepOutcome::Pending { why }) if why.contains("interrupted")
        ),
        "{stopped:#?}"
    );

    // The budget allows it now; the next start resumes the step and evicts the pod.
    let mut pdb = api
        .object(
            "apis/policy/v1",
            "poddisruptionbudgets",
            OTHER_NAMESPACE,
            "db",
        )
        .unwrap();
    pdb["status"]["disruptionsAllowed"] = json!(1);
    api.put("apis/policy/v1", "poddisruptionbudgets", pdb);
    let mut daemon = cluster.daemon(&config, &output, metrics_port);
    let resumed = wait_until(Duration::from_secs(30), || {
        let record = record();
        matches!(
            record.step("evict_other_pods"),
            Some(detector::contain::StepOutcome::Done { .. })
        )
        .then_some(record)
    });
    let (status, log) = daemon.stop();
    let resumed = resumed.unwrap_or_else(|| {
        panic!(
            "the eviction was not resumed: {:#?}\n{}",
            record(),
            log.join("\n")
        )
    });
    assert!(
        status.success(),
        "daemon exit {status}:\n{}",
        log.join("\n")
    );
    assert_eq!(
        resumed.state,
        detector::contain::journal::IncidentState::Contained,
        "{resumed:#?}"
    );
    assert!(
        api.object("api/v1", "pods", OTHER_NAMESPACE, DB_POD)
            .is_none()
    );
    drop(cgroup);
}
