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
        config::Mode,
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

    /// Appends entries a `detector` command wrote (see [`cli_entry`]) to the journal.
    fn append_as_cli(&self, entries: &[Entry]) {
        Journal::open(self.dir.path())
            .unwrap()
            .append_entries(entries)
            .unwrap();
    }

    /// Starts a daemon on the cluster and has it contain `shop/<pod>` (cgroup `cgroup`), every
    /// step done.
    fn contain(&self, config: ContainConfig, pod: &str, cgroup: u64) -> ContainmentHandle {
        let handle = self.start(config, true);
        let v = contain_verdict("shop", pod);
        handle.on_verdict(&v, v.ktime_ns, vec![cgroup]);
        handle.flush();
        handle
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

/// An entry as a `detector` command writes it: another process's, which the daemon follows.
fn cli_entry(incident: &str, kind: EntryKind) -> Entry {
    let mut entry = Entry::new(incident, kind);
    entry.pid = 0;
    entry
}

/// The incident of pod `pod` in the environment's journal.
fn record_of(env: &Env, pod: &str) -> IncidentRecord {
    env.records()
        .into_values()
        .find(|r| r.subject.pod.as_deref() == Some(pod))
        .unwrap_or_else(|| panic!("no incident of {pod}"))
}

fn only(records: &std::collections::BTreeMap<String, IncidentRecord>) -> &IncidentRecord {
    assert_eq!(records.len(), 1, "{records:#?}");
    records.values().next().unwrap()
}

#[test]
fn playbook_isolates_the_one_pod_and_release_restores_it() {
    let env = Env::new();
    env.shop();
    // The operator keeps the autoscaler off node-1 already: release leaves that as it was.
    let mut node1 = env.node("node-1");
    node1["metadata"]["annotations"] =
        json!({"cluster-autoscaler.kubernetes.io/scale-down-disabled": "true"});
    env.server.put("api/v1", "nodes", node1);
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
    // Each step ran once: the node is patched by the label step, the protection and the
    // cordon, no more (an incident opened right at start must not also be picked up as one to
    // resume).
    let node_patches = env
        .server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == "/api/v1/nodes/node-1")
        .count();
    assert_eq!(node_patches, 3);
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
    // Neither autoscaler may take the pod or its node while the incident holds them.
    assert_eq!(annotations["karpenter.sh/do-not-disrupt"], "true");
    assert_eq!(
        annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"],
        "false"
    );
    let node_annotations = &env.node("node-1")["metadata"]["annotations"];
    assert_eq!(node_annotations["karpenter.sh/do-not-disrupt"], "true");
    assert_eq!(
        node_annotations["cluster-autoscaler.kubernetes.io/scale-down-disabled"],
        "true"
    );
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
    let annotations = &web1["metadata"]["annotations"];
    for gone in [
        "detector.security/incident",
        "karpenter.sh/do-not-disrupt",
        "cluster-autoscaler.kubernetes.io/safe-to-evict",
    ] {
        assert!(annotations.get(gone).is_none(), "{gone}: {annotations}");
    }
    let node = env.node("node-1");
    // Karpenter's mark goes; the operator's own scale-down opt-out stays.
    assert_eq!(
        node["metadata"]["annotations"],
        json!({"cluster-autoscaler.kubernetes.io/scale-down-disabled": "true"})
    );
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
    let handle = env.contain(config, "web-1", 4242);

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
    let handle = env.contain(config, "web-1", 1);
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
                mode: Mode::Enforce,
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
            mode: Mode::Enforce,
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
                entries.push(cli_entry(&record.id, kind));
            },
        ))
        .unwrap();
    env.append_as_cli(&entries);
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
    config.cluster_budget.max = 1000;
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

/// A daemon of its own (journal, node, kernel block) on the environment's API server.
struct Daemon {
    dir: tempfile::TempDir,
    block: RecordingBlock,
    node: String,
}

impl Daemon {
    fn new(node: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            block: RecordingBlock::default(),
            node: node.into(),
        }
    }

    fn start(&self, env: &Env, max: u32) -> ContainmentHandle {
        let mut config = env.config();
        config.journal_dir = self.dir.path().to_owned();
        config.node_name = Some(self.node.clone());
        config.steps.evict_other_pods = false;
        config.cluster_budget.max = max;
        let _guard = env.rt.enter();
        Containment::start_with(
            config,
            Box::new(self.block.clone()),
            Some(env.client.clone()),
            self.dir.path(),
            OwnPod {
                namespace: Some("detector".into()),
                name: Some(format!("detector-{}", self.node)),
                uid: Some(format!("detector-{}-uid", self.node)),
            },
        )
        .unwrap()
    }

    fn records(&self) -> std::collections::BTreeMap<String, IncidentRecord> {
        let (entries, _) =
            journal::read_from(&self.dir.path().join(journal::JOURNAL_FILE), 0).unwrap();
        journal::replay(&entries)
    }
}

/// The containments the cluster budget's Lease lists.
fn lease_list(env: &Env) -> Vec<Value> {
    let lease = env
        .server
        .object(
            "apis/coordination.k8s.io/v1",
            "leases",
            "detector",
            "detector-containment-budget",
        )
        .expect("the Lease exists");
    let text = lease["metadata"]["annotations"]["detector.security/containments"]
        .as_str()
        .expect("the Lease lists its containments")
        .to_owned();
    serde_json::from_str(&text).unwrap()
}

fn refused_events(env: &Env) -> BTreeSet<String> {
    env.server.with_store(|s| {
        s.list("api/v1", "events", None)
            .iter()
            .filter(|e| e["reason"] == "ContainmentRefused")
            .map(|e| {
                e["involvedObject"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    })
}

#[test]
fn three_daemons_sharing_a_budget_of_two_contain_two_pods_of_five() {
    let env = Env::new();
    let daemons: Vec<Daemon> = (1..=3).map(|n| Daemon::new(&format!("node-{n}"))).collect();
    for daemon in &daemons {
        env.put_node(&daemon.node);
    }
    // Five attacked pods, spread over the three nodes.
    let pods: Vec<(String, usize)> = (0..5).map(|i| (format!("p{i}"), i % 3)).collect();
    for (pod, node) in &pods {
        env.put_pod("shop", pod, &daemons[*node].node, json!({"app": pod}), None);
    }
    let handles: Vec<ContainmentHandle> = daemons.iter().map(|d| d.start(&env, 2)).collect();
    // Every verdict at the same moment: the daemons race for the Lease.
    let start = std::sync::Barrier::new(pods.len());
    std::thread::scope(|scope| {
        for (i, (pod, node)) in pods.iter().enumerate() {
            let (handle, start) = (&handles[*node], &start);
            scope.spawn(move || {
                let v = contain_verdict("shop", pod);
                start.wait();
                handle.on_verdict(&v, v.ktime_ns, vec![100 + i as u64]);
            });
        }
    });
    for handle in &handles {
        handle.flush();
    }
    let records: Vec<IncidentRecord> = daemons
        .iter()
        .flat_map(|d| d.records().into_values())
        .collect();
    let contained: BTreeSet<String> = records
        .iter()
        .filter(|r| r.state == IncidentState::Contained)
        .filter_map(|r| r.subject.pod.clone())
        .collect();
    let refused: BTreeSet<String> = records
        .iter()
        .filter(|r| r.state == IncidentState::Refused)
        .filter_map(|r| r.subject.pod.clone())
        .collect();
    assert_eq!(contained.len(), 2, "{records:#?}");
    assert_eq!(refused.len(), 3, "{records:#?}");
    assert!(contained.is_disjoint(&refused));
    for record in records.iter().filter(|r| r.state == IncidentState::Refused) {
        assert!(
            record
                .reason
                .contains("cluster budget of 2 containments per 600s"),
            "{record:#?}"
        );
    }
    // The Lease lists exactly the two, with their nodes.
    let listed: BTreeSet<String> = lease_list(&env)
        .iter()
        .map(|s| s["pod"].as_str().unwrap().to_owned())
        .collect();
    let keys: BTreeSet<String> = contained.iter().map(|p| format!("shop/{p}")).collect();
    assert_eq!(listed, keys);
    // Only the two are changed in the API and cut off in the kernel; the refused ones' blocks
    // were lifted.
    for (i, (pod, node)) in pods.iter().enumerate() {
        let quarantined = labels(&env.pod("shop", pod).unwrap())["quarantine"] == "true";
        let blocked = daemons[*node].block.blocked().contains(&(100 + i as u64));
        assert_eq!(quarantined, contained.contains(pod), "{pod}");
        assert_eq!(blocked, contained.contains(pod), "{pod}");
    }
    assert_eq!(
        refused_events(&env),
        refused,
        "an Event on each refused pod"
    );
    // A restarted daemon reads the same budget: a sixth pod on its node is refused.
    let mut handles = handles;
    drop(handles.remove(0));
    let restarted = daemons[0].start(&env, 2);
    env.put_pod("shop", "p5", "node-1", json!({"app": "p5"}), None);
    let v = contain_verdict("shop", "p5");
    restarted.on_verdict(&v, v.ktime_ns, vec![105]);
    restarted.flush();
    let p5 = daemons[0]
        .records()
        .into_values()
        .find(|r| r.subject.pod.as_deref() == Some("p5"))
        .unwrap();
    assert_eq!(p5.state, IncidentState::Refused, "{p5:#?}");
    assert!(!daemons[0].block.blocked().contains(&105));
    assert_eq!(
        labels(&env.pod("shop", "p5").unwrap()),
        json!({"app": "p5"})
    );
    assert_eq!(lease_list(&env).len(), 2);
}

#[test]
fn with_the_lease_unreachable_the_node_budget_decides_and_the_journal_says_so() {
    let env = Env::new();
    env.put_node("node-1");
    env.put_pod("shop", "web-1", "node-1", json!({"app": "web"}), None);
    env.server.fail_next(
        None,
        "/apis/coordination.k8s.io/v1/namespaces/detector/leases",
        1000,
        503,
    );
    let daemon = Daemon::new("node-1");
    let handle = daemon.start(&env, 2);
    let v = contain_verdict("shop", "web-1");
    handle.on_verdict(&v, v.ktime_ns, vec![7]);
    handle.flush();
    let records = daemon.records();
    let record = only(&records);
    assert_eq!(record.state, IncidentState::Contained, "{record:#?}");
    assert!(
        matches!(record.step("cluster_budget"), Some(StepOutcome::NotApplicable { why })
            if why.contains("503") && why.contains("this node's own budget decided")),
        "{record:#?}"
    );
    assert_eq!(
        labels(&env.pod("shop", "web-1").unwrap())["quarantine"],
        "true"
    );
    assert!(daemon.block.blocked().contains(&7));
}

/// Waits until incident `id` of the journal is in `state`.
fn wait_state(env: &Env, id: &str, state: IncidentState) -> IncidentRecord {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let record = env.records()[id].clone();
        if record.state == state {
            return record;
        }
        assert!(Instant::now() < deadline, "never {state:?}: {record:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The requests that changed something, other than Events.
fn writes(env: &Env) -> Vec<String> {
    env.server
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && !r.path.ends_with("/events"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[test]
fn propose_changes_nothing_in_the_api_until_approved_then_runs_the_playbook() {
    let env = Env::new();
    env.shop();
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    config.modes.default = Mode::Propose;
    let handle = env.contain(config, "web-1", 4242);
    let id = only(&env.records()).id.clone();
    let record = env.records()[&id].clone();
    assert_eq!(record.state, IncidentState::Proposed, "{record:#?}");
    // The kernel block holds the pod meanwhile; the API has only the proposal on the pod.
    assert_eq!(env.block.blocked(), BTreeSet::from([4242]));
    assert_eq!(writes(&env), ["PATCH /api/v1/namespaces/shop/pods/web-1"]);
    let web1 = env.pod("shop", "web-1").unwrap();
    assert_eq!(
        labels(&web1),
        json!({"app": "web", "pod-template-hash": "abc", "team": "shop"})
    );
    assert_eq!(
        web1["metadata"]["annotations"],
        json!({"detector.security/proposed": id})
    );
    assert_eq!(env.node("node-1")["spec"].get("unschedulable"), None);
    let asked = env.server.with_store(|s| {
        s.list("api/v1", "events", Some("shop"))
            .iter()
            .filter(|e| e["reason"] == "ContainmentProposed")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    });
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].contains(&format!("detector approve {id}")),
        "{asked:?}"
    );
    // Nothing is taken from the cluster budget by a proposal.
    assert!(
        env.server
            .object(
                "apis/coordination.k8s.io/v1",
                "leases",
                "detector",
                "detector-containment-budget"
            )
            .is_none()
    );

    // A person approves it on the pod: the playbook runs.
    let mut web1 = env.pod("shop", "web-1").unwrap();
    web1["metadata"]["annotations"]["detector.security/approve"] = json!(id);
    env.server.put("api/v1", "pods", web1);
    let record = wait_state(&env, &id, IncidentState::Contained);
    assert!(record.confirmed);
    assert_eq!(
        labels(&env.pod("shop", "web-1").unwrap()),
        json!({"team": "shop", "quarantine": "true"})
    );
    assert_eq!(env.node("node-1")["spec"]["unschedulable"], true);
    assert_eq!(lease_list(&env).len(), 1);

    // Another, approved with `detector approve` (its journal entry, another process's).
    let v = contain_verdict("shop", "db-1");
    handle.on_verdict(&v, v.ktime_ns, vec![4343]);
    handle.flush();
    let db = record_of(&env, "db-1");
    assert_eq!(db.state, IncidentState::Proposed);
    env.append_as_cli(&[cli_entry(&db.id, EntryKind::Approved { by: "cli".into() })]);
    wait_state(&env, &db.id, IncidentState::Contained);
    handle.flush();
    assert_eq!(
        labels(&env.pod("shop", "db-1").unwrap())["quarantine"],
        "true"
    );
    drop(handle);
}

#[test]
fn an_unapproved_proposal_expires_and_is_released() {
    let env = Env::new();
    env.shop();
    let mut config = env.config();
    config.modes.default = Mode::Propose;
    config.modes.propose_expiry_s = 1;
    let handle = env.contain(config, "web-1", 4242);
    let id = only(&env.records()).id.clone();
    assert_eq!(env.block.blocked(), BTreeSet::from([4242]));
    let record = wait_state(&env, &id, IncidentState::Released);
    assert!(record.expired, "{record:#?}");
    assert!(env.block.blocked().is_empty());
    let web1 = env.pod("shop", "web-1").unwrap();
    assert!(
        web1["metadata"]["annotations"]
            .get("detector.security/proposed")
            .is_none(),
        "{web1}"
    );
    let (entries, _) = journal::read_from(&env.dir.path().join(journal::JOURNAL_FILE), 0).unwrap();
    assert!(
        entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::Expired { after_s: 1 }))
    );
    drop(handle);
}

#[test]
fn the_incident_lists_what_the_pods_service_account_may_do() {
    let env = Env::new();
    env.put_node("node-1");
    env.server.put(
        "api/v1",
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "web-1-uid", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web", "containers": [{"name": "c", "image": "nginx"}]}}),
    );
    let rbac = "apis/rbac.authorization.k8s.io/v1";
    env.server.put(
        rbac,
        "roles",
        json!({"kind": "Role", "metadata": {"name": "secret-reader", "namespace": "shop"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]}),
    );
    env.server.put(
        rbac,
        "rolebindings",
        json!({"kind": "RoleBinding", "metadata": {"name": "web-secrets", "namespace": "shop"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "web"}]}),
    );
    // Another account's binding, and one for every ServiceAccount of the cluster.
    env.server.put(
        rbac,
        "rolebindings",
        json!({"kind": "RoleBinding", "metadata": {"name": "db-secrets", "namespace": "shop"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "db", "namespace": "shop"}]}),
    );
    env.server.put(
        rbac,
        "clusterroles",
        json!({"kind": "ClusterRole", "metadata": {"name": "node-lister"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]}),
    );
    env.server.put(
        rbac,
        "clusterrolebindings",
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "all-accounts-list-nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "node-lister"},
            "subjects": [{"kind": "Group", "name": "system:serviceaccounts", "apiGroup": "rbac.authorization.k8s.io"}]}),
    );
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    let handle = env.contain(config, "web-1", 1);
    drop(handle);
    let records = env.records();
    let Some(StepOutcome::Done { detail, .. }) = only(&records).step("list_access") else {
        panic!("{records:#?}");
    };
    assert!(
        detail.starts_with("ServiceAccount shop/web (its token is mounted): "),
        "{detail}"
    );
    assert!(
        detail.contains(
            "RoleBinding shop/web-secrets -> Role secret-reader: get,list secrets (core)"
        ),
        "{detail}"
    );
    assert!(
        detail.contains(
            "ClusterRoleBinding all-accounts-list-nodes -> ClusterRole node-lister: list nodes (core)"
        ),
        "{detail}"
    );
    assert!(!detail.contains("db-secrets"), "{detail}");
}

#[test]
fn each_claim_the_pod_mounts_is_snapshotted_and_the_snapshots_outlive_the_release() {
    let env = Env::new();
    env.put_node("node-1");
    env.server.put(
        "api/v1",
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db-1", "namespace": "shop", "uid": "db-1-uid", "labels": {"app": "db"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "postgres"}],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-1"}},
                    {"name": "wal", "persistentVolumeClaim": {"claimName": "wal-db-1"}},
                    {"name": "tmp", "emptyDir": {}}]}}),
    );
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    config.steps.snapshot_volumes = true;
    config.snapshot_class = Some("csi-snapclass".into());
    let handle = env.contain(config, "db-1", 1);
    let id = only(&env.records()).id.clone();
    for claim in ["data-db-1", "wal-db-1"] {
        let name = format!("{claim}-{id}");
        let snapshot = env
            .server
            .object(
                "apis/snapshot.storage.k8s.io/v1",
                "volumesnapshots",
                "shop",
                &name,
            )
            .unwrap_or_else(|| panic!("no snapshot {name}"));
        assert_eq!(
            snapshot["spec"],
            json!({"source": {"persistentVolumeClaimName": claim}, "volumeSnapshotClassName": "csi-snapclass"})
        );
        assert_eq!(snapshot["kind"], "VolumeSnapshot");
        assert_eq!(
            snapshot["metadata"]["annotations"]["detector.security/incident"],
            id.as_str()
        );
    }
    // The evidence of the incident names them in its manifest.
    let references = env.rt.block_on(detector::respond::snapshot_references(
        Some(handle.view()),
        id.clone(),
        Some("shop".into()),
    ));
    let named: Vec<(&str, &str, &str)> = references
        .iter()
        .map(|r| (r.kind.as_str(), r.namespace.as_str(), r.name.as_str()))
        .collect();
    let (data, wal) = (format!("data-db-1-{id}"), format!("wal-db-1-{id}"));
    assert_eq!(
        named,
        [
            ("VolumeSnapshot", "shop", data.as_str()),
            ("VolumeSnapshot", "shop", wal.as_str())
        ]
    );
    handle.release(&id).unwrap();
    let kept = env.server.with_store(|s| {
        s.list(
            "apis/snapshot.storage.k8s.io/v1",
            "volumesnapshots",
            Some("shop"),
        )
        .len()
    });
    assert_eq!(kept, 2, "snapshots are evidence: kept on release");

    // Without the snapshot API (no CSI snapshot controller), the step says so.
    env.server.put(
        "api/v1",
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db-2", "namespace": "shop", "uid": "db-2-uid"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "postgres"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-2"}}]}}),
    );
    env.server.unserve("apis/snapshot.storage.k8s.io/v1");
    let v = contain_verdict("shop", "db-2");
    handle.on_verdict(&v, v.ktime_ns, vec![2]);
    handle.flush();
    drop(handle);
    let record = record_of(&env, "db-2");
    assert!(
        matches!(record.step("snapshot_volumes"), Some(StepOutcome::Failed { error })
            if error.contains("CSI snapshot controller")),
        "{record:#?}"
    );
}

/// The fields and enums of `openreports.io/v1alpha1` Report and ReportResult, as the
/// OpenReports API's Go types declare them (JSON names).
fn check_openreports(report: &Value) {
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let report_fields: BTreeSet<String> = [
        "apiVersion",
        "kind",
        "metadata",
        "source",
        "scope",
        "scopeSelector",
        "configuration",
        "summary",
        "results",
    ]
    .map(String::from)
    .into();
    assert!(keys(report).is_subset(&report_fields), "{report}");
    assert_eq!(report["apiVersion"], "openreports.io/v1alpha1");
    assert_eq!(report["kind"], "Report");
    let summary_fields: BTreeSet<String> = ["pass", "fail", "warn", "error", "skip"]
        .map(String::from)
        .into();
    assert!(keys(&report["summary"]).is_subset(&summary_fields));
    let result_fields: BTreeSet<String> = [
        "source",
        "policy",
        "rule",
        "category",
        "severity",
        "timestamp",
        "result",
        "scored",
        "resources",
        "resourceSelector",
        "message",
        "properties",
    ]
    .map(String::from)
    .into();
    let results = report["results"].as_array().unwrap();
    assert_eq!(report["summary"]["fail"], results.len());
    for result in results {
        assert!(keys(result).is_subset(&result_fields), "{result}");
        assert!(result["policy"].is_string(), "policy is required: {result}");
        assert!(
            ["pass", "fail", "warn", "error", "skip"].contains(&result["result"].as_str().unwrap())
        );
        assert!(
            ["critical", "high", "medium", "low", "info"]
                .contains(&result["severity"].as_str().unwrap())
        );
        // metav1.Timestamp: seconds and nanos.
        assert_eq!(
            keys(&result["timestamp"]),
            ["nanos", "seconds"].map(String::from).into()
        );
        // properties: map[string]string.
        for value in result["properties"].as_object().unwrap().values() {
            assert!(value.is_string(), "{result}");
        }
        for resource in result["resources"].as_array().unwrap() {
            assert_eq!(resource["kind"], "Pod");
        }
    }
}

#[test]
fn the_incident_is_an_openreports_report_on_the_pod_deleted_on_release() {
    let env = Env::new();
    env.shop();
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    let handle = env.start(config, true);
    let mut v = contain_verdict("shop", "web-1");
    v.rules = ["reverse-shell", "credential-read"]
        .into_iter()
        .map(|id| detector::score::Contribution {
            rule: detector::rules::RuleMeta {
                id: id.into(),
                description: format!("{id} seen"),
                tactic: "execution".into(),
                technique: "T1059".into(),
                severity: detector::rules::Severity::High,
                weight: 20.0,
                contain_immediately: false,
            },
            matches: 1,
            events: Vec::new(),
        })
        .collect();
    handle.on_verdict(&v, v.ktime_ns, vec![1]);
    handle.flush();
    let id = only(&env.records()).id.clone();
    let name = format!("detector-{id}");
    let report = env
        .server
        .object("apis/openreports.io/v1alpha1", "reports", "shop", &name)
        .expect("the Report is created");
    check_openreports(&report);
    assert_eq!(report["scope"]["name"], "web-1");
    let policies: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["reverse-shell", "credential-read"]);
    assert_eq!(report["results"][0]["properties"]["incident"], id.as_str());
    handle.release(&id).unwrap();
    assert!(
        env.server
            .object("apis/openreports.io/v1alpha1", "reports", "shop", &name)
            .is_none(),
        "a Report tells the current state: gone on release"
    );
    // Without the CRD, the step is not applicable and nothing else changes.
    env.server.unserve("apis/openreports.io/v1alpha1");
    let v = contain_verdict("shop", "db-1");
    handle.on_verdict(&v, v.ktime_ns, vec![2]);
    handle.flush();
    drop(handle);
    let record = record_of(&env, "db-1");
    assert!(
        matches!(record.step("report"), Some(StepOutcome::NotApplicable { why }) if why.contains("CRD")),
        "{record:#?}"
    );
    assert_eq!(record.state, IncidentState::Contained);
}

#[test]
fn revocation_takes_the_account_out_of_its_bindings_deletes_its_tokens_and_release_puts_it_back() {
    let env = Env::new();
    env.put_node("node-1");
    env.server.put(
        "api/v1",
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "web-1-uid"},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web", "containers": [{"name": "c", "image": "nginx"}]}}),
    );
    let rbac = "apis/rbac.authorization.k8s.io/v1";
    let web = json!({"kind": "ServiceAccount", "name": "web", "namespace": "shop"});
    let alice = json!({"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"});
    env.server.put(
        rbac,
        "rolebindings",
        json!({"kind": "RoleBinding", "metadata": {"name": "web-secrets", "namespace": "shop"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
            "subjects": [web, alice]}),
    );
    env.server.put(
        rbac,
        "clusterrolebindings",
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "web-nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "node-lister"},
            "subjects": [web]}),
    );
    let group = json!({"kind": "ClusterRoleBinding", "metadata": {"name": "all-accounts"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": "system:serviceaccounts", "apiGroup": "rbac.authorization.k8s.io"}]});
    env.server.put(rbac, "clusterrolebindings", group.clone());
    for (name, account) in [("web-token-x1", "web"), ("db-token-y2", "db")] {
        env.server.put(
            "api/v1",
            "secrets",
            json!({"kind": "Secret", "type": "kubernetes.io/service-account-token",
                "metadata": {"name": name, "namespace": "shop",
                    "annotations": {"kubernetes.io/service-account.name": account}}}),
        );
    }
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    config.steps.revoke_service_account = true;
    let handle = env.contain(config, "web-1", 1);
    let record = only(&env.records()).clone();
    assert!(
        matches!(record.step("revoke_service_account"), Some(StepOutcome::Done { detail, .. })
            if detail.contains("RoleBinding web-secrets") && detail.contains("ClusterRoleBinding web-nodes")
                && detail.contains("web-token-x1")),
        "{record:#?}"
    );
    let subjects = |plural: &str, ns: &str, name: &str| {
        env.server.object(rbac, plural, ns, name).unwrap()["subjects"].clone()
    };
    assert_eq!(
        subjects("rolebindings", "shop", "web-secrets"),
        json!([alice])
    );
    assert_eq!(subjects("clusterrolebindings", "", "web-nodes"), json!([]));
    // A grant through a group cannot be taken from one account: left alone.
    assert_eq!(
        subjects("clusterrolebindings", "", "all-accounts"),
        group["subjects"]
    );
    assert!(
        env.server
            .object("api/v1", "secrets", "shop", "web-token-x1")
            .is_none()
    );
    assert!(
        env.server
            .object("api/v1", "secrets", "shop", "db-token-y2")
            .is_some()
    );

    handle.release(&record.id).unwrap();
    drop(handle);
    assert_eq!(
        subjects("rolebindings", "shop", "web-secrets"),
        json!([alice, web])
    );
    assert_eq!(
        subjects("clusterrolebindings", "", "web-nodes"),
        json!([web])
    );
    assert!(
        env.server
            .object("api/v1", "secrets", "shop", "web-token-x1")
            .is_none(),
        "a deleted token stays deleted"
    );
}

/// A verdict on `ns/pod` with `decision` and the rules `ids`.
fn verdict_with(
    ns: &str,
    pod: &str,
    decision: detector::score::Decision,
    ids: &[&str],
) -> detector::score::Verdict {
    let mut v = contain_verdict(ns, pod);
    v.decision = decision;
    v.rules = ids
        .iter()
        .map(|id| detector::score::Contribution {
            rule: detector::rules::RuleMeta {
                id: (*id).into(),
                description: format!("{id} seen"),
                tactic: "execution".into(),
                technique: "T1059".into(),
                severity: detector::rules::Severity::Medium,
                weight: 5.0,
                contain_immediately: false,
            },
            matches: 1,
            events: Vec::new(),
        })
        .collect();
    v
}

/// Waits until `check` holds of the pod's verdict Report.
fn wait_report(env: &Env, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(report) =
            env.server
                .object("apis/openreports.io/v1alpha1", "reports", "shop", name)
            && check(&report)
        {
            return report;
        }
        assert!(Instant::now() < deadline, "no such Report {name}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn each_pods_latest_alerting_verdict_is_a_report_owned_by_the_pod() {
    use detector::{contain::verdict_reports::VerdictReports, score::Decision};
    let env = Env::new();
    env.shop();
    let reports = {
        let _guard = env.rt.enter();
        VerdictReports::start(env.client.clone(), env.config().api, env.rt.handle())
    };
    let policies = |report: &Value| -> Vec<String> {
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["policy"].as_str().unwrap().to_owned())
            .collect()
    };
    reports.verdict(&verdict_with(
        "shop",
        "web-1",
        Decision::Alert,
        &["shell-in-container"],
    ));
    // A `log` verdict is no finding.
    reports.verdict(&verdict_with("shop", "web-2", Decision::Log, &["noise"]));
    let report = wait_report(&env, "detector-pod-web-1", |_| true);
    check_openreports(&report);
    assert_eq!(policies(&report), ["shell-in-container"]);
    assert_eq!(
        report["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Pod", "name": "web-1", "uid": "web-1-uid"}])
    );
    assert_eq!(report["results"][0]["properties"]["decision"], "alert");
    // The pod's next verdict replaces it.
    reports.verdict(&verdict_with(
        "shop",
        "web-1",
        Decision::Contain,
        &["shell-in-container", "credential-read"],
    ));
    let report = wait_report(&env, "detector-pod-web-1", |r| {
        r["results"].as_array().unwrap().len() == 2
    });
    check_openreports(&report);
    assert_eq!(policies(&report), ["shell-in-container", "credential-read"]);
    assert!(
        env.server
            .object(
                "apis/openreports.io/v1alpha1",
                "reports",
                "shop",
                "detector-pod-web-2"
            )
            .is_none()
    );
    assert_eq!(reports.dropped(), 0);
}

#[test]
fn an_unconfirmed_enforced_incident_expires_its_release_is_retried_and_a_confirmed_one_stays() {
    let env = Env::new();
    env.shop();
    let mut config = env.config();
    config.steps.evict_other_pods = false;
    config.modes.enforce_expiry_s = 2;
    let handle = env.contain(config, "web-1", 1);
    let v = contain_verdict("shop", "db-1");
    handle.on_verdict(&v, v.ktime_ns, vec![2]);
    handle.flush();
    let (web, db) = (record_of(&env, "web-1"), record_of(&env, "db-1"));
    assert_eq!(web.state, IncidentState::Contained);
    // A person confirms db-1's.
    env.append_as_cli(&[cli_entry(&db.id, EntryKind::Confirmed { by: "cli".into() })]);
    // The first undo of web-1's labels is refused: the release is incomplete, and tried again.
    env.server
        .fail_next(Some("PATCH"), "/api/v1/namespaces/shop/pods/web-1", 1, 403);
    let web = wait_state(&env, &web.id, IncidentState::Released);
    assert!(web.expired);
    let (entries, _) = journal::read_from(&env.dir.path().join(journal::JOURNAL_FILE), 0).unwrap();
    let expired = entries
        .iter()
        .filter(|e| e.incident == web.id && matches!(e.kind, EntryKind::Expired { after_s: 2 }))
        .count();
    assert_eq!(expired, 1, "expired once, released on a second try");
    assert!(
        entries.iter().any(|e| e.incident == web.id
            && matches!(
                &e.kind,
                EntryKind::Undo {
                    outcome: StepOutcome::Failed { .. },
                    ..
                }
            )),
        "the first release's refused undo is journaled"
    );
    assert_eq!(labels(&env.pod("shop", "web-1").unwrap())["app"], "web");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        record_of(&env, "db-1").state,
        IncidentState::Contained,
        "a confirmed incident does not expire"
    );
    drop(handle);
}
