//! containerd through its own API: the container's record (image, labels, runtime, snapshotter
//! and snapshot, OCI spec), its task (pid, state) and its image, in whichever containerd
//! namespace holds it (`k8s.io` for a kubelet's, `moby` for Docker's, any other for `ctr`'s).
//! A container the CRI plugin created is described through the CRI API as well, and its log
//! file is the one the plugin writes.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use containerd_client::{
    services::v1::{
        GetContainerRequest, GetImageRequest, ListNamespacesRequest, ListPidsRequest,
        containers_client::ContainersClient, images_client::ImagesClient,
        namespaces_client::NamespacesClient, tasks_client::TasksClient,
    },
    tonic::{Code, Request},
    types::v1::Status,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::{
    cri::{self, CriRuntime, api, api_msg},
    runtime::{BoxFuture, ByteStream, ContainerRuntime, RuntimeError},
};

const NAME: &str = "containerd";

/// The namespace the CRI plugin keeps a kubelet's containers in.
const CRI_NAMESPACE: &str = "k8s.io";

/// A containerd that knows the container, in the namespace that holds it.
#[derive(Debug, Clone)]
pub struct ContainerdRuntime {
    channel: Channel,
    socket: String,
    namespace: String,
    /// The CRI plugin, when it created the container.
    cri: Option<CriRuntime>,
    /// Where the node's files (log files) are read.
    host_root: PathBuf,
}

/// `request` addressed to `namespace`.
fn in_namespace<T>(namespace: &str, request: T) -> Request<T> {
    let mut request = Request::new(request);
    if let Ok(value) = namespace.parse() {
        request.metadata_mut().insert("containerd-namespace", value);
    }
    request
}

impl ContainerdRuntime {
    /// Connects to containerd at `socket` and finds the namespace that holds container `id`;
    /// `Ok(None)` when no namespace does. Log files are read below `host_root`.
    pub async fn find(
        socket: &Path,
        host_root: &Path,
        id: &str,
    ) -> Result<Option<Self>, RuntimeError> {
        let channel = cri::channel(NAME, socket).await?;
        let namespaces = NamespacesClient::new(channel.clone())
            .list(ListNamespacesRequest::default())
            .await
            .map_err(|status| api(NAME, "namespaces.List", status))?
            .into_inner()
            .namespaces;
        // The kubelet's namespace first: that is where a pod's container almost always is.
        let mut names: Vec<String> = namespaces.into_iter().map(|n| n.name).collect();
        names.sort_by_key(|n| n != CRI_NAMESPACE);
        for namespace in names {
            let found = ContainersClient::new(channel.clone())
                .get(in_namespace(
                    &namespace,
                    GetContainerRequest { id: id.to_owned() },
                ))
                .await;
            match found {
                Ok(_) => {
                    let cri = if namespace == CRI_NAMESPACE {
                        Self::cri_plugin(socket, host_root, id).await
                    } else {
                        None
                    };
                    return Ok(Some(Self {
                        channel,
                        socket: socket.display().to_string(),
                        namespace,
                        cri,
                        host_root: host_root.to_owned(),
                    }));
                }
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => return Err(api(NAME, "containers.Get", status)),
            }
        }
        Ok(None)
    }

    /// The CRI plugin on the same socket, when it knows the container (it is off in some
    /// configurations, and does not know containers made with `ctr` in `k8s.io`).
    async fn cri_plugin(socket: &Path, host_root: &Path, id: &str) -> Option<CriRuntime> {
        let cri = CriRuntime::connect(NAME, socket, host_root).await.ok()?;
        match cri.knows(id).await {
            Ok(true) => Some(cri),
            Ok(false) => None,
            Err(err) => {
                tracing::debug!(%err, "containerd's CRI plugin does not describe the container");
                None
            }
        }
    }

    async fn container(&self, id: &str) -> Result<Value, RuntimeError> {
        let container = ContainersClient::new(self.channel.clone())
            .get(in_namespace(
                &self.namespace,
                GetContainerRequest { id: id.to_owned() },
            ))
            .await
            .map_err(|status| api(NAME, "containers.Get", status))?
            .into_inner()
            .container
            .ok_or_else(|| api_msg(NAME, "containers.Get", "the answer holds no container"))?;
        let extensions: serde_json::Map<String, Value> = container
            .extensions
            .iter()
            .map(|(name, any)| (name.clone(), any_json(any)))
            .collect();
        Ok(json!({
            "id": container.id,
            "labels": container.labels,
            "image": container.image,
            "runtime": container.runtime.map(|r| json!({
                "name": r.name,
                "options": r.options.as_ref().map(any_json),
            })),
            "spec": container.spec.as_ref().map(any_json),
            "snapshotter": container.snapshotter,
            "snapshot_key": container.snapshot_key,
            "created_at": container.created_at.as_ref().map(timestamp),
            "updated_at": container.updated_at.as_ref().map(timestamp),
            "extensions": extensions,
            "sandbox": container.sandbox,
        }))
    }

    async fn task(&self, id: &str) -> Result<Value, RuntimeError> {
        let request = containerd_client::services::v1::GetRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        let process = TasksClient::new(self.channel.clone())
            .get(in_namespace(&self.namespace, request))
            .await
            .map_err(|status| api(NAME, "tasks.Get", status))?
            .into_inner()
            .process
            .ok_or_else(|| api_msg(NAME, "tasks.Get", "the answer holds no process"))?;
        let status = Status::try_from(process.status)
            .map_or("unknown", |s| s.as_str_name())
            .to_ascii_lowercase();
        Ok(json!({
            "pid": process.pid,
            "status": status,
            "exit_status": process.exit_status,
            "exited_at": process.exited_at.as_ref().map(timestamp),
            "terminal": process.terminal,
            "stdin": process.stdin,
            "stdout": process.stdout,
            "stderr": process.stderr,
        }))
    }

    async fn image(&self, name: &str) -> Result<Value, RuntimeError> {
        let image = ImagesClient::new(self.channel.clone())
            .get(in_namespace(
                &self.namespace,
                GetImageRequest {
                    name: name.to_owned(),
                },
            ))
            .await
            .map_err(|status| api(NAME, "images.Get", status))?
            .into_inner()
            .image
            .ok_or_else(|| api_msg(NAME, "images.Get", "the answer holds no image"))?;
        Ok(json!({
            "name": image.name,
            "labels": image.labels,
            "target": image.target.map(|t| json!({
                "media_type": t.media_type,
                "digest": t.digest,
                "size": t.size,
            })),
            "created_at": image.created_at.as_ref().map(timestamp),
            "updated_at": image.updated_at.as_ref().map(timestamp),
        }))
    }

    /// containerd's record of the container, its task and its image; the task and the image
    /// can be gone (a stopped container, a removed image) and say why instead.
    async fn describe(&self, id: &str) -> Result<Value, RuntimeError> {
        let container = self.container(id).await?;
        let mut value = json!({ "namespace": self.namespace, "container": container });
        match self.task(id).await {
            Ok(task) => value["task"] = task,
            Err(err) => value["task_error"] = err.to_string().into(),
        }
        let image = value["container"]["image"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if !image.is_empty() {
            match self.image(&image).await {
                Ok(found) => value["image"] = found,
                Err(err) => value["image_error"] = err.to_string().into(),
            }
        }
        Ok(value)
    }
}

/// An `Any` as JSON: containerd stores the OCI spec and its CRI metadata as JSON documents;
/// anything else (protobuf options) is kept as its type and base64 bytes.
fn any_json(any: &prost_types::Any) -> Value {
    match serde_json::from_slice::<Value>(&any.value) {
        Ok(value) if value.is_object() => value,
        _ => json!({
            "type_url": any.type_url,
            "value_base64": base64::engine::general_purpose::STANDARD.encode(&any.value),
        }),
    }
}

/// A protobuf timestamp as RFC 3339.
fn timestamp(ts: &prost_types::Timestamp) -> String {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

impl ContainerRuntime for ContainerdRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn endpoint(&self) -> String {
        format!("containerd:{}#{}", self.socket, self.namespace)
    }

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Value, RuntimeError>> {
        Box::pin(async move {
            let mut value = json!({ "containerd": self.describe(id).await? });
            if let Some(cri) = &self.cri {
                match cri.describe(id).await {
                    Ok(status) => value["cri"] = status,
                    Err(err) => value["cri_error"] = err.to_string().into(),
                }
            }
            Ok(value)
        })
    }

    fn top<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Value, RuntimeError>> {
        Box::pin(async move {
            let processes = TasksClient::new(self.channel.clone())
                .list_pids(in_namespace(
                    &self.namespace,
                    ListPidsRequest {
                        container_id: id.to_owned(),
                    },
                ))
                .await
                .map_err(|status| api(NAME, "tasks.ListPids", status))?
                .into_inner()
                .processes;
            let pids: Vec<Value> = processes
                .iter()
                .map(|p| json!({ "pid": p.pid, "info": p.info.as_ref().map(any_json) }))
                .collect();
            Ok(json!({ "namespace": self.namespace, "pids": pids }))
        })
    }

    fn logs<'a>(&'a self, id: &'a str) -> ByteStream<'a> {
        if let Some(cri) = &self.cri {
            return cri.log_file(id);
        }
        // A client may have sent the output to a file (`ctr run --log-uri file://...`): the
        // task's standard output names it.
        cri::node_file(NAME, &self.host_root, async move {
            let task = self.task(id).await?;
            let stdout = task["stdout"].as_str().unwrap_or_default();
            stdout
                .strip_prefix("file://")
                .map(str::to_owned)
                .ok_or_else(|| {
                    api_msg(
                        NAME,
                        "logs",
                        format!(
                            "containerd keeps no logs of a container its CRI plugin did not \
                         create, and its output went to {stdout:?}, not to a file"
                        ),
                    )
                })
        })
    }
}
