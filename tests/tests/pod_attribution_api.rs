//! kube-rs pod attribution against the project's test API server over real HTTP on loopback.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use detector::{
    attribution::{
        AttributionConfig, Enricher,
        pod_watch::watch_pods,
        pods::{PodIndex, SharedPodIndex},
    },
    event::{Body, Event, Exec, ProcessFields},
};
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{Api, Client};
use serde_json::json;
use tests::apiserver::ApiServer;

const NODE: &str = "node-1";

fn container_id(n: u32) -> String {
    format!("{n:064x}")
}

fn pod_object(
    name: &str,
    uid: &str,
    node: &str,
    owner: Option<(&str, &str)>,
    container: &str,
) -> Pod {
    let owners: Vec<_> = owner
        .into_iter()
        .map(|(kind, name)| {
            json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "owner-uid", "controller": true})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid,
            "labels": {"app": "web", "pod-template-hash": "5d4f8b9c7"},
            "ownerReferences": owners,
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
        "spec": {"nodeName": node, "serviceAccountName": "web", "containers": [{"name": "nginx", "image": "nginx:1.27"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "nginx", "image": "nginx:1.27",
            "imageID": "", "ready": true, "restartCount": 0, "containerID": format!("containerd://{container}")}]}
    }))
    .unwrap()
}

fn client(server: &ApiServer) -> Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    detector::attribution::pod_watch::client_from(config).unwrap()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cgroup_of(uid: &str, container: &str) -> String {
    format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container}.scope",
        uid.replace('-', "_")
    )
}

fn exec_event(pid: u32, cgroup_id: u64) -> Event {
    Event {
        time: time::OffsetDateTime::UNIX_EPOCH,
        ktime_ns: 0,
        process: ProcessFields {
            pid: Some(pid),
            tid: Some(pid),
            ppid: Some(1),
            uid: Some(0),
            gid: Some(0),
            ns_pid: None,
            comm: Some("sh".into()),
        },
        cgroup_id: Some(cgroup_id),
        container: None,
        pod: None,
        ancestry: Vec::new(),
        lineage: None,
        body: Body::Exec(Exec {
            filename: "/bin/sh".into(),
            argv: vec!["sh".into()],
            argv_truncated: false,
            filename_truncated: false,
            tty: false,
            parent_cgroup_id: None,
            fileless: false,
            stdin_socket: false,
            stdout_socket: false,
            deleted: false,
        }),
    }
}

const UID_A: &str = "0a0a0a0a-0000-4000-8000-00000000000a";
const UID_B: &str = "0b0b0b0b-0000-4000-8000-00000000000b";
const UID_C: &str = "0c0c0c0c-0000-4000-8000-00000000000c";
const UID_OTHER: &str = "0d0d0d0d-0000-4000-8000-00000000000d";

async fn start() -> (ApiServer, SharedPodIndex, tokio::task::JoinHandle<()>) {
    let server = ApiServer::start().await.unwrap();
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d4f8b9c7", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d", "controller": true}]},
    }))
    .unwrap();
    server.put_replica_set(&rs);
    server.put_pod(&pod_object(
        "web-5d4f8b9c7-aaaaa",
        UID_A,
        NODE,
        Some(("ReplicaSet", "web-5d4f8b9c7")),
        &container_id(1),
    ));
    server.put_pod(&pod_object(
        "db-0",
        UID_B,
        NODE,
        Some(("StatefulSet", "db")),
        &container_id(2),
    ));
    server.put_pod(&pod_object(
        "elsewhere",
        UID_OTHER,
        "node-2",
        None,
        &container_id(9),
    ));
    let index = PodIndex::shared(AttributionConfig::default().pod_limits());
    let watcher = tokio::spawn({
        let index = index.clone();
        let client = client(&server);
        async move { watch_pods(client, NODE, index).await }
    });
    (server, index, watcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_enough_kubernetes_for_kube() {
    let server = ApiServer::start().await.unwrap();
    let client = client(&server);
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.minor, "34");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    assert!(pods.get_opt("missing").await.unwrap().is_none());
    let err = pods.get("missing").await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 404);
    let created = pods
        .create(
            &Default::default(),
            &pod_object("p", UID_C, NODE, None, &container_id(3)),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.uid.as_deref(), Some(UID_C));
    assert!(pods.create(&Default::default(), &created).await.is_err());
    assert_eq!(pods.list(&Default::default()).await.unwrap().items.len(), 1);
    pods.delete("p", &Default::default()).await.unwrap();
    assert!(pods.get_opt("p").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_fills_the_index_with_this_nodes_pods_only() {
    let (server, index, watcher) = start().await;
    eventually("two pods", || index.read().unwrap().len() == 2).await;
    let now = Instant::now();
    {
        let index = index.read().unwrap();
        let web = index.get(UID_A, now).unwrap().pod;
        assert_eq!(
            web.owner
                .as_ref()
                .map(|o| (o.kind.as_str(), o.name.as_str())),
            Some(("Deployment", "web"))
        );
        assert_eq!(web.service_account.as_deref(), Some("web"));
        assert_eq!(
            index.by_container(&container_id(1), now).unwrap().pod.uid,
            UID_A
        );
        let db = index.get(UID_B, now).unwrap().pod;
        assert_eq!(db.owner.as_ref().unwrap().kind, "StatefulSet");
        assert!(index.get(UID_OTHER, now).is_none());
    }
    // Every pod request was scoped to this node: no cluster-wide watch.
    let pod_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/pods")
        .collect();
    assert!(
        pod_requests.iter().any(|r| r.query.contains_key("watch")),
        "{pod_requests:?}"
    );
    for r in &pod_requests {
        assert_eq!(
            r.query.get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node-1"),
            "{r:?}"
        );
    }
    // The ReplicaSet was fetched once.
    let rs_gets = server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/replicasets/web-5d4f8b9c7"))
        .count();
    assert_eq!(rs_gets, 1);

    // A ReplicaSet the API does not have: the owner comes from the naming convention.
    server.put_pod(&pod_object(
        "api-5d4f8b9c7-zzzzz",
        UID_C,
        NODE,
        Some(("ReplicaSet", "api-5d4f8b9c7")),
        &container_id(3),
    ));
    eventually("the third pod", || index.read().unwrap().len() == 3).await;
    let api = index
        .read()
        .unwrap()
        .get(UID_C, Instant::now())
        .unwrap()
        .pod;
    assert_eq!(
        api.owner
            .as_ref()
            .map(|o| (o.kind.as_str(), o.name.as_str())),
        Some(("Deployment", "api"))
    );
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_get_pod_metadata_held_until_known_and_after_deletion() {
    let (server, index, watcher) = start().await;
    eventually("two pods", || index.read().unwrap().len() == 2).await;
    let cgroups: HashMap<u64, String> = HashMap::from([
        (1, cgroup_of(UID_A, &container_id(1))),
        (3, cgroup_of(UID_C, &container_id(3))),
    ]);
    let config = AttributionConfig::default();
    let mut enricher = Enricher::new(Box::new(cgroups), index.clone(), &config);

    // A known pod: everything at once.
    let out = enricher.process(vec![exec_event(100, 1)], Instant::now());
    let pod = out[0].pod.as_ref().unwrap();
    assert!(pod.resolved);
    assert_eq!(
        (pod.namespace.as_deref(), pod.name.as_deref()),
        (Some("shop"), Some("web-5d4f8b9c7-aaaaa"))
    );
    assert_eq!(pod.labels["app"], "web");
    assert_eq!(pod.owner.as_ref().unwrap().name, "web");
    assert_eq!(
        out[0].container.as_ref().unwrap().name.as_deref(),
        Some("nginx")
    );

    // A pod the watch has not delivered yet: held, then released complete.
    let t0 = Instant::now();
    assert!(enricher.process(vec![exec_event(300, 3)], t0).is_empty());
    server.put_pod(&pod_object("late", UID_C, NODE, None, &container_id(3)));
    eventually("the late pod", || {
        index.read().unwrap().get(UID_C, Instant::now()).is_some()
    })
    .await;
    let out = enricher.tick(Instant::now());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].pod.as_ref().unwrap().name.as_deref(), Some("late"));

    // Deleted 1 s before its last events: still attributed.
    assert!(server.delete_pod("shop", "web-5d4f8b9c7-aaaaa"));
    eventually("the delete", || index.read().unwrap().deleted_len() == 1).await;
    let out = enricher.process(
        vec![exec_event(101, 1)],
        Instant::now() + Duration::from_secs(1),
    );
    let pod = out[0].pod.as_ref().unwrap();
    assert!(pod.resolved);
    assert_eq!(pod.name.as_deref(), Some("web-5d4f8b9c7-aaaaa"));
    watcher.abort();
}
