//! Tests of the sans-IO parts: guardrails, journal folding, configuration, RBAC.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde::Deserialize;

use super::{
    StepOutcome,
    config::ContainConfig,
    dispatcher::{Admission, Guard, OwnPod, Refusal},
    journal::{Entry, EntryKind, IncidentState, Journal, replay},
    required_rbac,
};
use crate::score::Subject;

fn subject(ns: &str, pod: &str) -> Subject {
    Subject {
        key: format!("pod:{pod}-uid"),
        namespace: Some(ns.into()),
        pod: Some(pod.into()),
        pod_uid: Some(format!("{pod}-uid")),
        ..Subject::default()
    }
}

fn config() -> ContainConfig {
    ContainConfig {
        warmup_s: 10,
        protected_labels: vec!["tier=control".into(), "critical".into()],
        ..ContainConfig::default()
    }
}

#[test]
fn budget_stops_the_sixth_containment_in_a_window_of_five_and_disarms() {
    let mut guard = Guard::new(&config(), OwnPod::default(), 0);
    for i in 0..5 {
        let s = subject("shop", &format!("p{i}"));
        assert_eq!(guard.admit(&s, None, 20_000 + i, "x"), Admission::Contain);
    }
    assert_eq!(
        guard.admit(&subject("shop", "p5"), None, 20_010, "x"),
        Admission::Refuse(Refusal::BudgetExhausted {
            max: 5,
            window_s: 600
        })
    );
    assert!(!guard.armed());
    // Disarmed stays disarmed, even after the window.
    assert_eq!(
        guard.admit(&subject("shop", "p6"), None, 20_000_000, "x"),
        Admission::Refuse(Refusal::Disarmed)
    );
}

#[test]
fn a_cluster_refusal_gives_the_unit_back_and_refuses_on_the_spot_until_it_frees() {
    let mut guard = Guard::new(&config(), OwnPod::default(), 0);
    let p0 = subject("shop", "p0");
    assert_eq!(guard.admit(&p0, None, 20_000, "inc-0"), Admission::Contain);
    guard.refused_by_cluster(&p0, "inc-0", 20_100, std::time::Duration::from_secs(30));
    let spent = Admission::Refuse(Refusal::ClusterBudget {
        max: 10,
        window_s: 600,
    });
    // The pod is no longer active, and nothing is admitted while the cluster's budget is
    // known to be spent; the node stays armed.
    assert_eq!(guard.admit(&p0, None, 20_200, "inc-1"), spent);
    assert_eq!(
        guard.admit(&subject("shop", "p1"), None, 50_099, "inc-2"),
        spent
    );
    assert_eq!(
        guard.cluster_spent_for(50_000),
        std::time::Duration::from_millis(100)
    );
    assert!(guard.armed());
    // Once it frees, the node's own budget is whole again: the refused one was given back.
    for i in 0..5 {
        let s = subject("shop", &format!("q{i}"));
        assert_eq!(guard.admit(&s, None, 50_100 + i, "x"), Admission::Contain);
    }
    assert!(matches!(
        guard.admit(&subject("shop", "q5"), None, 50_200, "x"),
        Admission::Refuse(Refusal::BudgetExhausted { .. })
    ));
}

#[test]
fn a_namespace_mode_wins_then_a_proposing_rule_then_the_default() {
    use crate::contain::config::{Mode, ModesConfig};
    let modes = ModesConfig {
        namespaces: [("payments".to_owned(), Mode::Enforce)].into(),
        rules: [("noisy-tool".to_owned(), Mode::Propose)].into(),
        ..ModesConfig::default()
    };
    assert_eq!(
        modes.of(Some("shop"), ["shell", "noisy-tool"]),
        Mode::Propose
    );
    assert_eq!(modes.of(Some("payments"), ["noisy-tool"]), Mode::Enforce);
    assert_eq!(modes.of(None, ["shell"]), Mode::Enforce);
    let proposing = ModesConfig {
        default: Mode::Propose,
        ..modes
    };
    assert_eq!(proposing.of(Some("shop"), ["shell"]), Mode::Propose);
    assert_eq!(
        proposing.expiry(Mode::Propose),
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(proposing.expiry(Mode::Enforce), None);
}

#[test]
fn guardrails_refuse_warm_up_protected_and_own_pod_and_dedupe() {
    let own = OwnPod {
        namespace: Some("detector".into()),
        name: Some("detector-abc".into()),
        uid: Some("own-uid".into()),
    };
    let mut guard = Guard::new(&config(), own, 0);
    let web = subject("shop", "web");
    assert_eq!(
        guard.admit(&web, None, 5_000, "a"),
        Admission::Refuse(Refusal::WarmUp)
    );
    assert_eq!(
        guard.admit(&subject("kube-system", "dns"), None, 20_000, "a"),
        Admission::Refuse(Refusal::ProtectedNamespace("kube-system".into()))
    );
    assert_eq!(
        guard.admit(&subject("detector", "other"), None, 20_000, "a"),
        Admission::Refuse(Refusal::ProtectedNamespace("detector".into()))
    );
    let mut own_subject = subject("default", "x");
    own_subject.pod_uid = Some("own-uid".into());
    assert_eq!(
        guard.admit(&own_subject, None, 20_000, "a"),
        Admission::Refuse(Refusal::OwnPod)
    );
    let labels: BTreeMap<String, String> = [("tier".into(), "control".into())].into();
    assert_eq!(
        guard.admit(&web, Some(&labels), 20_000, "a"),
        Admission::Refuse(Refusal::ProtectedLabel("tier=control".into()))
    );
    let labels: BTreeMap<String, String> = [("critical".into(), "yes".into())].into();
    assert!(guard.protected_by_labels(&labels).is_some());
    assert_eq!(guard.admit(&web, None, 20_000, "inc-1"), Admission::Contain);
    assert_eq!(
        guard.admit(&web, None, 20_001, "inc-2"),
        Admission::Duplicate("inc-1".into())
    );
    guard.closed(&web);
    assert_eq!(guard.admit(&web, None, 20_002, "inc-3"), Admission::Contain);
}

#[test]
fn disabled_refuses_everything() {
    let config = ContainConfig {
        enabled: false,
        ..config()
    };
    let mut guard = Guard::new(&config, OwnPod::default(), 0);
    assert_eq!(
        guard.admit(&subject("shop", "web"), None, 1 << 40, "a"),
        Admission::Refuse(Refusal::Disabled)
    );
}

fn entry(incident: &str, kind: EntryKind) -> Entry {
    Entry::new(incident, kind)
}

#[test]
fn journal_survives_reopen_skips_a_torn_line_and_folds_states() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let opened = EntryKind::Opened {
        subject: subject("shop", "web"),
        node: "node-1".into(),
        score: 12.0,
        reason: "r".into(),
        cgroup_ids: vec![42],
        event_ktime_ns: 1,
        dry_run: false,
        boot_id: None,
        mode: Default::default(),
    };
    journal.append("inc-1", opened.clone()).unwrap();
    journal
        .append(
            "inc-1",
            EntryKind::Step {
                step: "remove_from_service".into(),
                outcome: StepOutcome::Done {
                    detail: "removed app".into(),
                    undo: serde_json::json!({"labels": {"app": "web"}}),
                },
            },
        )
        .unwrap();
    // A resumed run finding its own work keeps the undo data.
    journal
        .append(
            "inc-1",
            EntryKind::Step {
                step: "remove_from_service".into(),
                outcome: StepOutcome::AlreadyDone {
                    detail: "nothing".into(),
                },
            },
        )
        .unwrap();
    journal.append("inc-2", opened).unwrap();
    journal.append("inc-2", EntryKind::Completed).unwrap();
    drop(journal);
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("journal.jsonl"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"ts\":\"torn"))
        .unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let records = replay(&journal.entries().unwrap());
    assert_eq!(records["inc-1"].state, IncidentState::Open);
    assert_eq!(
        records["inc-1"]
            .step("remove_from_service")
            .unwrap()
            .undo_data()["labels"]["app"],
        "web"
    );
    assert_eq!(records["inc-2"].state, IncidentState::Contained);
    let more = [
        entry("inc-2", EntryKind::ReleaseRequested { by: "cli".into() }),
        entry("inc-2", EntryKind::Released),
    ];
    let all: Vec<Entry> = journal.entries().unwrap().into_iter().chain(more).collect();
    assert_eq!(replay(&all)["inc-2"].state, IncidentState::Released);
}

#[test]
fn default_config_is_valid_and_problems_are_located() {
    assert!(ContainConfig::default().validate("contain").is_empty());
    let mut bad = ContainConfig::default();
    bad.budget.max = 0;
    bad.protected_labels = vec!["bad key!=x".into()];
    bad.steps.freeze = true;
    bad.steps.kill = true;
    let at: Vec<String> = bad.validate("contain").into_iter().map(|p| p.at).collect();
    assert_eq!(
        at,
        [
            "contain.budget.max",
            "contain.protected_labels[0]",
            "contain.steps.kill"
        ]
    );
    let text = "contain:\n  budget: {max: 3}\n  dry_run: true\n";
    let parsed = crate::config::Config::parse(text, Path::new("c.yaml")).unwrap();
    assert_eq!(parsed.contain.budget.max, 3);
    assert!(parsed.contain.dry_run);
    assert!(
        crate::config::Config::parse("contain:\n  dryrun: true\n", Path::new("c.yaml")).is_err()
    );
}

#[derive(Deserialize)]
struct Doc {
    kind: String,
    #[serde(default)]
    rules: Vec<YamlRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct YamlRule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

/// The (group, resource, verb) triples the ClusterRoles and Roles of a deploy/ file grant.
fn granted(file: &str) -> BTreeSet<(String, String, String)> {
    let path = format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut granted = BTreeSet::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc = Doc::deserialize(doc).unwrap();
        // The Role holds what the daemon needs in its own namespace only (the Lease).
        if doc.kind != "ClusterRole" && doc.kind != "Role" {
            continue;
        }
        for rule in doc.rules {
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    for verb in &rule.verbs {
                        assert_ne!(verb, "*", "no wildcard verbs");
                        assert_ne!(resource, "*", "no wildcard resources");
                        granted.insert((group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    granted
}

fn triples(rules: &[crate::contain::Rule]) -> BTreeSet<(String, String, String)> {
    rules
        .iter()
        .flat_map(|r| {
            r.verbs.iter().map(|v| {
                (
                    r.api_group.to_owned(),
                    r.resource.to_owned(),
                    (*v).to_owned(),
                )
            })
        })
        .collect()
}

#[test]
fn the_revoke_component_grants_what_its_step_needs_and_the_base_does_not() {
    let component = granted("components/revoke-credentials/rbac.yaml");
    assert_eq!(
        component,
        triples(&crate::contain::component_rbac("revoke-credentials"))
    );
    let base = granted("rbac.yaml");
    for wide in [
        ("rbac.authorization.k8s.io", "clusterroles", "bind"),
        ("", "secrets", "delete"),
    ] {
        let wide = (wide.0.to_owned(), wide.1.to_owned(), wide.2.to_owned());
        assert!(!base.contains(&wide), "the base RBAC grants {wide:?}");
    }
}

#[test]
fn rbac_matches_the_code() {
    let granted = granted("rbac.yaml");
    let needed = triples(&required_rbac());
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(missing.is_empty(), "deploy/rbac.yaml lacks {missing:?}");
    assert!(
        extra.is_empty(),
        "deploy/rbac.yaml grants more than the code uses: {extra:?}"
    );
}
