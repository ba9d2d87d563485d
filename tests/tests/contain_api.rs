//! The containment playbook through `kube::Client` over real HTTP against the project's test API
//! server, asserting the resulting object state: the playbook and its release, dry run, the
//! budget, API faults (500, 409, 422, 429, timeouts, 404), standalone mode, resume after a
//! restart, a CLI-style release finished by the daemon, and 100 incidents on 100 pods (their
//! latency is measured by `cargo bench -p tests --bench containment`).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use detector::{
    clock::Clock,
    contain::{
        ContainConfig, Containment, ContainmentHandle, NetworkBlock as _, StepOutcome,
        dispatcher::OwnPod,
        journal::{self, Entry, EntryKind, IncidentRecord, IncidentState, Journal},
        release,
    },
    score::Subject,
};
use kube::Client;
use serde_json::{Value, json};
use tests::{
    apiserver::ApiServer,
    contain::{RecordingBlock, contain_verdict},
};

struct Env {
    rt: tokio::runtime::Runtime,
    server: ApiServer,
    client: Client,
    dir: tempfile::TempDir,
    block: RecordingBlock,
}

impl Env {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(ApiServer::start()).unwrap();
        let client = {
            let _guard = rt.enter();
            detector::attribution::pod_watch::client_from(kube::Config::new(
                server.url().parse().unwrap(),
            ))
            .unwrap()
        };
        Self {
            rt,
            server,
            client,
            dir: tempfile::tempdir().unwrap(),
            block: RecordingBlock::default(),
        }
    }

    fn config(&self) -> ContainConfig {
        let mut config = ContainConfig {
            warmup_s: 0,
            journal_dir: self.dir.path().to_owned(),
            node_name: Some("node-1".into()),
            ..ContainConfig::default()
        };
        config.api.backoff_base_ms = 10;
        config.api.backoff_max_ms = 100;
        config.api.timeout_ms = 1000;
        config.evict_deadline_s = 10;
        config
    }

    fn start(&self, config: ContainConfig, cluster: bool) -> ContainmentHandle {
        let _guard = self.rt.enter();
        Containment::start_with(
            config,
            Box::new(self.block.clone()),
            cluster.then(|| self.client.clone()),
            self.dir.path(),
            OwnPod {
                namespace: Some("detector".into()),
                name: Some("detector-xyz".into()),
                uid: Some("detector-uid".into()),
            },
        )
        .unwrap()
    }

    fn records(&self) -> std::collections::BTreeMap<String, IncidentRecord> {
        let (entries, _) =
            journal::read_from(&self.dir.path().join(journal::JOURNAL_FILE), 0).unwrap();
        journal::replay(&entries)
    }

    fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        self.server.object("api/v1", "pods", ns, name)
    }

    fn node(&self, name: &str) -> Value {
        self.server.object("api/v1", "nodes", "", name).unwrap()
    }

    fn put_pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        labels: Value,
        owner: Option<(&str, &str)>,
    ) {
        let owners: Vec<Value> = owner
            .into_iter()
            .map(|(kind, n)| json!({"apiVersion": "apps/v1", "kind": kind, "name": n, "uid": format!("{n}-uid"), "controller": true}))
            .collect();
        self.server.put(
            "api/v1",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "uid": format!("{name}-uid"), "labels": labels, "ownerReferences": owners},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
                "status": {"phase": "Running"}}),
        );
    }

    fn put_node(&self, name: &str) {
        self.server.put(
            "api/v1",
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {}}),
        );
    }

    /// A shop: ReplicaSet `web-abc` and Service `web` select app=web; the suspect `web-1` and
    /// an unrelated `db-1` (under a PodDisruptionBudget) run on node-1 with a DaemonSet pod and
    /// a mirror pod; the replica `web-2` runs on node-2.
    fn shop(&self) {
        self.put_node("node-1");
        self.put_node("node-2");
        self.server.put(
            "apis/apps/v1",
            "replicasets",
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "web-abc", "namespace": "shop"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "abc"}},
                    "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
        );
        self.server.put(
            "api/v1",
            "services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        );
        let web = json!({"app": "web", "pod-template-hash": "abc", "team": "shop"});
        self.put_pod(
            "shop",
            "web-1",
            "node-1",
            web.clone(),
            Some(("ReplicaSet", "web-abc")),
        );
        self.put_pod(
            "shop",
            "web-2",
            "node-2",
            web,
            Some(("ReplicaSet", "web-abc")),
        );
        self.put_pod(
            "shop",
            "db-1",
            "node-1",
            json!({"app": "db"}),
            Some(("ReplicaSet", "db-1")),
        );
        self.put_pod(
            "monitoring",
            "agent-1",
            "node-1",
            json!({"app": "agent"}),
            Some(("DaemonSet", "agent")),
        );
        self.server.put(
            "api/v1",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "etcd-node-1", "namespace": "infra",
                "annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": {"nodeName": "node-1"}}),
        );
        self.server.put(
            "apis/policy/v1",
            "poddisruptionbudgets",
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "db", "namespace": "shop"},
                "spec": {"selector": {"matchLabels": {"app": "db"}}}, "status": {"disruptionsAllowed": 1}}),
        );
    }
}

fn labels(object: &Value) -> Value {
    object["metadata"]["labels"].clone()
}

fn only(records: &std::collections::BTreeMap<String, IncidentRecord>) -> &IncidentRecord {
    assert_eq!(records.len(), 1, "{records:#?}");
    records.values().next().unwrap()
}

#[test]
fn playbook_isolates_the_one_pod_and_release_restores_it() {
    let env = Env::new();
    env.shop();
    // The budget allows no disruption for a while: the eviction is retried on 429.
    env.server.put(
        "apis/policy/v1",
        "poddisruptionbudgets",
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}}, "status": {"disruptionsAllowed": 0}}),
    );
    let handle = env.start(env.config(), true);
    let v = contain_verdict("shop", "web-1");
    handle.on_verdict(&v, v.ktime_ns, vec![4242]);
    handle.on_verdict(&v, v.ktime_ns, vec![4242]); // a repeat: no duplicate work
    std::thread::sleep(Duration::from_millis(300));
    env.server.with_store(|_| ());
    let mut pdb = env
        .server
        .object("apis/policy/v1", "poddisruptionbudgets", "shop", "db")
        .unwrap();
    pdb["status"]["disruptionsAllowed"] = json!(1);
    env.server
        .put("apis/policy/v1", "poddisruptionbudgets", pdb);
    handle.flush();

    assert_eq!(env.block.blocked(), BTreeSet::from([4242]));
    // Each step ran once: the node is patched by the label step and the cordon, no more (an
    // incident opened right at start must not also be picked up as one to resume).
    let node_patches = env
        .server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == "/api/v1/nodes/node-1")
        .count();
    assert_eq!(node_patches, 2);
    let web1 = env.pod("shop", "web-1").expect("the suspect pod stays");
    assert_eq!(labels(&web1), json!({"team": "shop", "quarantine": "true"}));
    let annotations = &web1["metadata"]["annotations"];
    let records = env.records();
    let record = only(&records);
    assert_eq!(
        annotations["detector.security/incident"],
        record.id.as_str()
    );
    assert_eq!(annotations["detector.security/score"], "42.0");
    // The other replica is untouched: only the suspect pod is isolated.
    assert_eq!(
        labels(&env.pod("shop", "web-2").unwrap()),
        json!({"app": "web", "pod-template-hash": "abc", "team": "shop"})
    );
    let policy = env
        .server
        .object(
            "apis/networking.k8s.io/v1",
            "networkpolicies",
            "shop",
            "detector-quarantine",
        )
        .unwrap();
    assert_eq!(
        policy["spec"]["podSelector"],
        json!({"matchLabels": {"quarantine": "true"}})
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert!(policy["spec"].get("ingress").is_none() && policy["spec"].get("egress").is_none());
    let node = env.node("node-1");
    assert_eq!(
        node["metadata"]["labels"]["detector.security/suspect"],
        "true"
    );
    assert_eq!(node["spec"]["unschedulable"], true);
    assert_eq!(env.node("node-2")["spec"].get("unschedulable"), None);
    assert!(
        env.pod("shop", "db-1").is_none(),
        "db-1 evicted once its budget allowed it"
    );
    assert!(
        env.pod("monitoring", "agent-1").is_some(),
        "DaemonSet pods stay"
    );
    assert!(
        env.pod("infra", "etcd-node-1").is_some(),
        "mirror pods stay"
    );
    let evictions_refused = env
        .server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/shop/pods/db-1/eviction")
        .count();
    assert!(
        evictions_refused >= 2,
        "429 retried: {evictions_refused} attempts"
    );
    assert_eq!(record.state, IncidentState::Contained);
    for (step, outcome) in &record.steps {
        assert!(
            matches!(outcome, StepOutcome::Done { .. }),
            "{step}: {outcome:?}"
        );
    }
    let events = env
        .server
        .with_store(|s| s.list("api/v1", "events", None).len());
    assert!(events >= 7, "{events} events");

    handle.release(&record.id).unwrap();
    let web1 = env.pod("shop", "web-1").unwrap();
    assert_eq!(
        labels(&web1),
        json!({"team": "shop", "app": "web", "pod-template-hash": "abc"})
    );
    assert!(
        web1["metadata"]["annotations"]
            .get("detector.security/incident")
            .is_none()
    );
    let node = env.node("node-1");
    assert_eq!(node["spec"]["unschedulable"], false);
    assert!(
        node["metadata"]["labels"]
            .get("detector.security/suspect")
            .is_none()
    );
    assert!(env.block.blocked().is_empty());
    drop(handle);
    assert_eq!(only(&env.records()).state, IncidentState::Released);
}

#[test]
fn an_eviction_its_budget_never_allows_is_journaled_as_the_budget_refusal() {
    let env = Env::new();
    env.shop();
    env.server.put(
        "apis/policy/v1",
        "poddisruptionbudgets",
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}},
            "status": {"disruptionsAllowed": 0, "desiredHealthy": 1, "currentHealthy": 1}}),
    );
    let mut config = env.config();
    config.evict_deadline_s = 2;
    let handle = env.start(config, true);
    let v = contain_verdict("shop", "web-1");
    handle.on_verdict(&v, v.ktime_ns, vec![4242]);
    handle.flush();

    let records = env.records();
    let record = only(&records);
    let Some(StepOutcome::Failed { error }) = record.step("evict_other_pods") else {
        panic!("{:?}", record.step("evict_other_pods"));
    };
    // The budget's answer, not a timeout: each attempt was answered at once and reached the
    // step's own policy.
    assert!(
        error.contains("shop/db-1: evict pod: refused by a PodDisruptionBudget"),
        "{error}"
    );
    assert!(
        error.contains("The disruption budget db needs 1 healthy pods and has 1 currently"),
        "{error}"
    );
    assert!(!error.contains("timed out"), "{error}");
    let attempts = env
        .server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/shop/pods/db-1/eviction")
        .count();
    assert!(attempts >= 3, "{attempts} eviction attempts in 2 s");
    assert!(env.pod("shop", "db-1").is_some());
    // The rest of the playbook is done all the same.
    assert_eq!(
        record
            .step("cordon_node")
            .map(|o| matches!(o, StepOutcome::Done { .. })),
        Some(true),
        "{record:#?}"
    );
    drop(handle);
}

#[test]
fn a_shutdown_during_an_eviction_retry_is_bounded_and_the_next_start_resumes_it() {
    let env = Env::new();
    env.shop();
    env.server.put(
        "apis/policy/v1",
        "poddisruptionbudgets",
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}},
            "status": {"disruptionsAllowed": 0, "desiredHealthy": 1, "currentHealthy": 1}}),
    );
    let mut config = env.config();
    config.evict_deadline_s = 120;
    let handle = env.start(config.clone(), true);
    let v = contain_verdict("shop", "web-1");
    handle.on_verdict(&v, v.ktime_ns, vec![4242]);
    // The eviction is being retried on the budget's 429 when the daemon is told to stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env
        .server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/shop/pods/db-1/eviction")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "no eviction attempt");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopping = Instant::now();
    handle.shutdown(Duration::from_millis(500));
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let records = env.records();
    let record = only(&records);
    assert_eq!(record.state, IncidentState::Open);
    assert!(
        matches!(record.step("evict_other_pods"), Some(StepOutcome::Pending { why }) if why.contains("interrupted")),
        "{record:#?}"
    );

    // The next start resumes it; the budget now allows the eviction.
    let mut pdb = env
        .server
        .object("apis/policy/v1", "poddisruptionbudgets", "shop", "db")
        .unwrap();
    pdb["status"]["disruptionsAllowed"] = json!(1);
    env.server
        .put("apis/policy/v1", "poddisruptionbudgets", pdb);
    let handle = env.start(config, true);
    handle.flush();
    let records = env.records();
    let record = only(&records);
    assert_eq!(record.state, IncidentState::Contained, "{record:#?}");
    assert!(
        matches!(
            record.step("evict_other_pods"),
            Some(StepOutcome::Done { .. })
        ),
        "{record:#?}"
    );
    assert!(env.pod("shop", "db-1").is_none());
    drop(handle);
}

#[test]
fn dry_run_changes_nothing_and_journals_the_exact_calls() {
    let env = Env::new();
    env.shop();
    let before = env.server.snapshot();
    let handle = env.start(
        ContainConfig {
            dry_run: true,
            ..env.config()
        },
        true,
    );
    let v = contain_verdict("shop", "web-1");
    handle.on_verdict(&v, v.ktime_ns, vec![7]);
    handle.flush();
    drop(handle);
    assert_eq!(
        env.server.snapshot(),
        before,
        "the API server state changed"
    );
    assert!(env.block.blocked().is_empty());
    let writes: Vec<_> = env
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    let records = env.records();
    let record = only(&records);
    assert!(record.dry_run);
    let Some(StepOutcome::DryRun { calls }) = record.step("remove_from_service") else {
        panic!("{record:#?}");
    };
    assert!(
        calls[0].starts_with("PATCH /api/v1/namespaces/shop/pods/web-1"),
        "{calls:?}"
    );
    assert!(calls[0].contains("\"app\":null"), "{calls:?}");
    assert!(matches!(
        record.step("kernel_block"),
        Some(StepOutcome::DryRun { .. })
    ));
    assert!(
        matches!(record.step("evict_other_pods"), Some(StepOutcome::DryRun { calls }) if calls.iter().any(|c| c.contains("db-1/eviction")))
    );
}

#[test]
fn the_budget_stops_the_sixth_containment_in_a_window_of_five() {
    let env = Env::new();
    env.put_node("node-1");
    for i in 0..6 {
        env.put_pod(
            "shop",
            &format!("p{i}"),
            "node-1",
            json!({"app": format!("p{i}")}),
            None,
        );
    }
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    let handle = env.start(config, true);
    for i in 0..6 {
        let v = contain_verdict("shop", &format!("p{i}"));
        handle.on_verdict(&v, v.ktime_ns, vec![100 + i]);
    }
    // Protected: never contained, never counted.
    let v = contain_verdict("kube-system", "coredns");
    handle.on_verdict(&v, v.ktime_ns, vec![99]);
    handle.flush();
    drop(handle);
    let records = env.records();
    let refused: Vec<_> = records
        .values()
        .filter(|r| r.state == IncidentState::Refused)
        .collect();
    assert_eq!(refused.len(), 2, "{records:#?}");
    assert!(
        refused
            .iter()
            .any(|r| r.subject.pod.as_deref() == Some("p5") && r.reason.contains("budget"))
    );
    assert!(
        refused
            .iter()
            .any(|r| r.reason.contains("protected namespace kube-system"))
    );
    assert_eq!(env.block.blocked(), (100..105).collect());
    assert_eq!(
        labels(&env.pod("shop", "p5").unwrap()),
        json!({"app": "p5"})
    );
    let disarmed = env.server.with_store(|s| {
        s.list("api/v1", "events", None)
            .iter()
            .any(|e| e["reason"] == "ContainmentDisarmed")
    });
    assert!(disarmed, "the disarm is alerted as an Event on the node");
}

#[test]
fn api_faults_are_retried_re_read_or_recorded_and_never_skip_the_rest() {
    let env = Env::new();
    env.shop();
    let web1 = "/api/v1/namespaces/shop/pods/web-1";
    // Two 500s on the first pod patch: retried with backoff.
    env.server.fail_next(Some("PATCH"), web1, 2, 500);
    // A timeout on the policy read: retried.
    env.server.delay_next(
        Some("GET"),
        "/apis/networking.k8s.io",
        1,
        Duration::from_secs(3),
    );
    // A 422 on the node label: given up at once, recorded; the cordon still runs.
    env.server
        .fail_next(Some("PATCH"), "/api/v1/nodes/node-1", 1, 422);
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    let handle = env.start(config, true);
    let v = contain_verdict("shop", "web-1");
    handle.on_verdict(&v, v.ktime_ns, vec![1]);
    // Incidents run concurrently; the 422 queued for the node patch is meant for web-1's, so the
    // second incident (on the same node) starts only once the first is done.
    handle.flush();
    // A pod that does not exist: pod steps are not applicable, the node steps still run.
    let v = contain_verdict("shop", "ghost");
    handle.on_verdict(&v, v.ktime_ns, vec![2]);
    handle.flush();
    drop(handle);
    let records = env.records();
    let web = records
        .values()
        .find(|r| r.subject.pod.as_deref() == Some("web-1"))
        .unwrap();
    assert!(
        matches!(
            web.step("remove_from_service"),
            Some(StepOutcome::Done { .. })
        ),
        "{web:#?}"
    );
    assert!(
        matches!(web.step("network_policy"), Some(StepOutcome::Done { .. })),
        "{web:#?}"
    );
    let label_node = web.step("label_node").unwrap();
    assert!(
        matches!(label_node, StepOutcome::Failed { error } if error.contains("422")),
        "{label_node:?}"
    );
    assert!(matches!(
        web.step("cordon_node"),
        Some(StepOutcome::Done { .. })
    ));
    assert_eq!(
        labels(&env.pod("shop", "web-1").unwrap()),
        json!({"team": "shop", "quarantine": "true"})
    );
    let ghost = records
        .values()
        .find(|r| r.subject.pod.as_deref() == Some("ghost"))
        .unwrap();
    assert!(
        matches!(ghost.step("label_pod"), Some(StepOutcome::NotApplicable { why }) if why.contains("gone"))
    );
    assert!(ghost.step("cordon_node").is_some_and(StepOutcome::ok));
    assert_eq!(ghost.state, IncidentState::Contained);
}

#[test]
fn a_conflicting_change_is_re_read_and_re_applied() {
    let env = Env::new();
    env.shop();
    env.server
        .fail_next(Some("PATCH"), "/api/v1/namespaces/shop/pods/web-1", 1, 409);
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    let handle = env.start(config, true);
    let v = contain_verdict("shop", "web-1");
    handle.on_verdict(&v, v.ktime_ns, vec![1]);
    handle.flush();
    drop(handle);
    let records = env.records();
    assert!(matches!(
        only(&records).step("remove_from_service"),
        Some(StepOutcome::Done { .. })
    ));
    let reads = env
        .server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/namespaces/shop/pods/web-1")
        .count();
    assert!(reads >= 3, "re-read after the conflict: {reads} reads");
}

#[test]
fn standalone_applies_the_kernel_block_and_records_api_steps_as_not_applicable() {
    let env = Env::new();
    let handle = env.start(env.config(), false);
    let mut v = contain_verdict("shop", "web-1");
    v.subject = Subject {
        key: "cgroup:77".into(),
        cgroup_id: Some(77),
        ..Subject::default()
    };
    handle.on_verdict(&v, v.ktime_ns, vec![77]);
    handle.flush();
    drop(handle);
    assert_eq!(env.block.blocked(), BTreeSet::from([77]));
    let records = env.records();
    let record = only(&records);
    assert!(matches!(
        record.step("kernel_block"),
        Some(StepOutcome::Done { .. })
    ));
    for step in [
        "remove_from_service",
        "label_pod",
        "network_policy",
        "label_node",
        "cordon_node",
        "evict_other_pods",
    ] {
        assert!(
            matches!(record.step(step), Some(StepOutcome::NotApplicable { .. })),
            "{step}: {record:#?}"
        );
    }
    assert_eq!(record.state, IncidentState::Contained);
}

/// Journals incident `id` on `subject` as a daemon of this boot left it: opened with
/// `cgroup_ids`, its kernel block done (`undo` recorded); the journal, to add more.
fn journal_blocked(
    env: &Env,
    id: &str,
    subject: &Subject,
    cgroup_ids: Vec<u64>,
    undo: Value,
) -> Journal {
    let journal = Journal::open(env.dir.path()).unwrap();
    journal
        .append(
            id,
            EntryKind::Opened {
                subject: subject.clone(),
                node: "node-1".into(),
                score: 42.0,
                reason: "r".into(),
                cgroup_ids,
                event_ktime_ns: 1,
                dry_run: false,
                // The same boot: its cgroup ids still name the same cgroups.
                boot_id: detector::clock::boot_id(),
            },
        )
        .unwrap();
    journal
        .append(
            id,
            EntryKind::Step {
                step: "kernel_block".into(),
                outcome: StepOutcome::Done {
                    detail: "cut off".into(),
                    undo,
                },
            },
        )
        .unwrap();
    journal
}

#[test]
fn an_interrupted_incident_is_resumed_after_a_restart() {
    let env = Env::new();
    env.shop();
    // A daemon died right after the kernel block.
    let v = contain_verdict("shop", "web-1");
    journal_blocked(&env, "inc-old", &v.subject, vec![55], Value::Null);
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    let handle = env.start(config, true);
    // The resumed incident holds the pod: a new verdict does no duplicate work.
    handle.on_verdict(&v, v.ktime_ns, vec![55]);
    handle.flush();
    drop(handle);
    assert_eq!(env.block.blocked(), BTreeSet::from([55]));
    let records = env.records();
    let record = only(&records);
    assert_eq!(record.state, IncidentState::Contained);
    assert_eq!(
        labels(&env.pod("shop", "web-1").unwrap())["quarantine"],
        "true"
    );
}

#[test]
fn a_pinned_block_no_incident_in_force_holds_is_lifted_at_start() {
    let env = Env::new();
    let v = contain_verdict("shop", "web-1");
    journal_blocked(
        &env,
        "inc-old",
        &v.subject,
        vec![55],
        json!({ "cgroup_ids": [55, 56] }),
    );
    // What the pinned map held when the daemon started: the incident's cgroups, and one whose
    // incident was released while no daemon ran (or whose journal was lost).
    let mut pinned = env.block.clone();
    for id in [55, 56, 66] {
        detector::contain::NetworkBlock::block(&mut pinned, id).unwrap();
    }
    let handle = env.start(env.config(), false);
    handle.flush();
    drop(handle);
    assert_eq!(env.block.blocked(), BTreeSet::from([55, 56]));
    assert_eq!(only(&env.records()).state, IncidentState::Contained);
}

/// A journal written in an earlier boot: incident `inc-old` on `subject`, kernel-blocked by
/// cgroup id 55 of that boot, its API steps done.
fn earlier_boot_journal(env: &Env, subject: &Subject) {
    let journal = Journal::open(env.dir.path()).unwrap();
    let entries = [
        EntryKind::Opened {
            subject: subject.clone(),
            node: "node-1".into(),
            score: 42.0,
            reason: "r".into(),
            cgroup_ids: vec![55],
            event_ktime_ns: 1,
            dry_run: false,
            boot_id: Some("00000000-0000-4000-8000-000000000000".into()),
        },
        EntryKind::Step {
            step: "kernel_block".into(),
            outcome: StepOutcome::Done {
                detail: "cgroups [55] cut off the network".into(),
                undo: json!({"cgroup_ids": [55]}),
            },
        },
        EntryKind::Completed,
    ];
    for kind in entries {
        journal.append("inc-old", kind).unwrap();
    }
}

#[test]
fn an_earlier_boots_incident_of_a_gone_pod_blocks_nothing_and_is_closed() {
    let env = Env::new();
    env.shop();
    let gone = Subject {
        key: "pod:gone-uid".into(),
        namespace: Some("shop".into()),
        pod: Some("gone-1".into()),
        pod_uid: Some("9a8b7c6d-0000-4000-8000-00000000dead".into()),
        ..Subject::default()
    };
    earlier_boot_journal(&env, &gone);
    // In this boot, cgroup id 55 is someone else's, and blocked by another incident (held by
    // the pinned map when the daemon starts).
    let other = contain_verdict("shop", "other-1");
    journal_blocked(
        &env,
        "inc-now",
        &other.subject,
        vec![55],
        json!({"cgroup_ids": [55]}),
    )
    .append("inc-now", EntryKind::Completed)
    .unwrap();
    env.block.clone().block(55).unwrap();
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    let handle = env.start(config, true);
    handle.flush();
    drop(handle);
    // Nothing re-applied by the old id, nothing lifted by it either.
    assert_eq!(env.block.blocked(), BTreeSet::from([55]));
    let records = env.records();
    let record = &records["inc-old"];
    assert_eq!(record.state, IncidentState::Released, "{record:#?}");
    assert!(
        matches!(record.step("kernel_block"), Some(StepOutcome::NotApplicable { why }) if why.contains("earlier boot")),
        "{record:#?}"
    );
}

#[test]
fn an_earlier_boots_incident_of_a_living_pod_blocks_its_cgroups_of_this_boot() {
    if !tests::privileged("an_earlier_boots_incident_of_a_living_pod") {
        return;
    }
    let env = Env::new();
    env.shop();
    let uid = "5e6f7a8b-1111-4222-8333-444455556666";
    // The node restarted the pod's containers: the pod's cgroup of this boot.
    let pod = tests::TestCgroup::create(&format!(
        "detector-test/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        uid.replace('-', "_")
    ))
    .unwrap();
    let living = Subject {
        key: format!("pod:{uid}"),
        namespace: Some("shop".into()),
        pod: Some("web-1".into()),
        pod_uid: Some(uid.into()),
        ..Subject::default()
    };
    earlier_boot_journal(&env, &living);
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    let handle = env.start(config, true);
    handle.flush();
    assert_eq!(env.block.blocked(), BTreeSet::from([pod.id()]));
    let records = env.records();
    assert_eq!(only(&records).state, IncidentState::Contained);
    // Its release lifts this boot's block, not the old id.
    env.block.clone().block(55).unwrap();
    handle.release("inc-old").unwrap();
    drop(handle);
    assert_eq!(env.block.blocked(), BTreeSet::from([55]));
}

#[test]
fn a_cli_release_is_finished_by_the_daemon() {
    let env = Env::new();
    env.shop();
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    let handle = env.start(config.clone(), true);
    let v = contain_verdict("shop", "web-1");
    handle.on_verdict(&v, v.ktime_ns, vec![9]);
    handle.flush();
    let records = env.records();
    let record = only(&records).clone();
    // What `detector release` does: API undo itself, the kernel block left pending. Its
    // entries are marked as another process's.
    let api = detector::contain::kube::KubeApi::new(env.client.clone(), config.api.clone());
    let mut entries = Vec::new();
    env.rt
        .block_on(release::release(
            &config,
            &record,
            Vec::new(),
            Some(&api),
            None,
            None,
            "cli",
            |kind| {
                let mut entry = Entry::new(&record.id, kind);
                entry.pid = 0;
                entries.push(entry);
            },
        ))
        .unwrap();
    Journal::open(env.dir.path())
        .unwrap()
        .append_entries(&entries)
        .unwrap();
    assert_eq!(
        env.records()[&record.id].state,
        IncidentState::ReleasePending
    );
    assert_eq!(labels(&env.pod("shop", "web-1").unwrap())["app"], "web");
    assert_eq!(env.node("node-1")["spec"]["unschedulable"], false);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !env.block.blocked().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not lift the block"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.flush();
    drop(handle);
    assert_eq!(env.records()[&record.id].state, IncidentState::Released);
}

#[test]
fn a_hundred_incidents_on_a_hundred_pods_are_each_contained_once() {
    // Latency is the containment benchmark's business (`cargo bench -p tests --bench
    // containment`); this checks that every one of them completes, in order and in full.
    let env = Env::new();
    let n = 100;
    for i in 0..n {
        env.put_node(&format!("node-{i}"));
        env.put_pod(
            "shop",
            &format!("p{i}"),
            &format!("node-{i}"),
            json!({"app": format!("p{i}")}),
            None,
        );
    }
    let mut config = env.config();
    config.budget.max = 1000;
    let handle = env.start(config, true);
    for i in 0..n {
        let v = contain_verdict("shop", &format!("p{i}"));
        handle.on_verdict(&v, Clock::boot_now_ns(), vec![1000 + i]);
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.flush();
    drop(handle);
    let records = env.records();
    assert_eq!(records.len(), n as usize);
    for r in records.values() {
        assert_eq!(r.state, IncidentState::Contained);
        assert!(r.steps.iter().all(|(_, o)| o.ok()), "{r:#?}");
        assert!(r.kernel_block_ns.unwrap() >= r.event_ktime_ns);
        assert!(r.completed_ns.unwrap() >= r.kernel_block_ns.unwrap());
    }
    assert_eq!(env.block.blocked(), (1000..1000 + n).collect());
}
