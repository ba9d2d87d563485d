//! The Kubernetes CRI API (`runtime.v1`), what a kubelet's runtime answers on its socket: CRI-O
//! on its own, containerd through its CRI plugin. Asked for the runtime's status of the
//! container and of its pod sandbox (verbose, so with the runtime's own record), and for the
//! log file it writes, which is then read from the node.

use std::{
    future::Future,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use futures::{StreamExt as _, stream};
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStatusRequest, ContainerStatusResponse,
    ListContainersRequest, PodSandboxStatusRequest, runtime_service_client::RuntimeServiceClient,
};
use tokio::io::AsyncReadExt as _;
use tonic::{Code, transport::Channel};

use super::runtime::{BoxFuture, ByteStream, ContainerRuntime, RuntimeError};

/// How long connecting to a runtime's socket may take: a wedged runtime must not hold up the
/// node-side artifacts.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A CRI runtime reached over its unix socket.
#[derive(Debug, Clone)]
pub struct CriRuntime {
    client: RuntimeServiceClient<Channel>,
    runtime: &'static str,
    socket: String,
    host_root: PathBuf,
}

/// A gRPC channel over a unix socket, given up after [`CONNECT_TIMEOUT`].
pub(super) async fn channel(runtime: &'static str, socket: &Path) -> Result<Channel, RuntimeError> {
    let connect_err = |source: Box<dyn std::error::Error + Send + Sync>| RuntimeError::Connect {
        runtime,
        endpoint: socket.display().to_string(),
        source,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(socket)).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(err)) => Err(connect_err(Box::new(err))),
        Err(_) => Err(connect_err(
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()).into(),
        )),
    }
}

/// A failed call, named.
pub(super) fn api(
    runtime: &'static str,
    operation: &'static str,
    status: tonic::Status,
) -> RuntimeError {
    RuntimeError::Api {
        runtime,
        operation,
        source: Box::new(status),
    }
}

impl CriRuntime {
    /// Connects to the CRI socket of `runtime` (`cri-o`, `containerd`). Its log files are read
    /// below `host_root`.
    pub async fn connect(
        runtime: &'static str,
        socket: &Path,
        host_root: &Path,
    ) -> Result<Self, RuntimeError> {
        let channel = channel(runtime, socket).await?;
        Ok(Self {
            client: RuntimeServiceClient::new(channel),
            runtime,
            socket: socket.display().to_string(),
            host_root: host_root.to_owned(),
        })
    }

    /// Whether the runtime knows container `id`: `Ok(false)` when it says it has no such
    /// container, or when the socket serves no CRI (containerd with its CRI plugin off).
    pub async fn knows(&self, id: &str) -> Result<bool, RuntimeError> {
        match self.status(id, false).await {
            Ok(_) => Ok(true),
            Err(status) if matches!(status.code(), Code::NotFound | Code::Unimplemented) => {
                Ok(false)
            }
            Err(status) => Err(api(self.runtime, "ContainerStatus", status)),
        }
    }

    async fn status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<ContainerStatusResponse, tonic::Status> {
        let request = ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose,
        };
        Ok(self
            .client
            .clone()
            .container_status(request)
            .await?
            .into_inner())
    }

    /// The runtime's status of the container and of its pod sandbox, each with the runtime's
    /// verbose record (`info`, JSON values parsed).
    pub async fn describe(&self, id: &str) -> Result<serde_json::Value, RuntimeError> {
        let answer = self
            .status(id, true)
            .await
            .map_err(|status| api(self.runtime, "ContainerStatus", status))?;
        let state = answer
            .status
            .as_ref()
            .and_then(|s| ContainerState::try_from(s.state).ok())
            .map(|s| s.as_str_name());
        let mut value = serde_json::json!({
            "state": state,
            "status": to_json(self.runtime, &answer.status)?,
            "info": info_json(answer.info),
        });
        if let Some(sandbox) = self.sandbox_of(id).await? {
            let answer = self
                .client
                .clone()
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: sandbox,
                    verbose: true,
                })
                .await
                .map_err(|status| api(self.runtime, "PodSandboxStatus", status))?
                .into_inner();
            value["sandbox"] = serde_json::json!({
                "status": to_json(self.runtime, &answer.status)?,
                "info": info_json(answer.info),
            });
        }
        Ok(value)
    }

    /// The pod sandbox the container runs in.
    async fn sandbox_of(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        let request = ListContainersRequest {
            filter: Some(ContainerFilter {
                id: id.to_owned(),
                ..ContainerFilter::default()
            }),
        };
        let answer = self
            .client
            .clone()
            .list_containers(request)
            .await
            .map_err(|status| api(self.runtime, "ListContainers", status))?;
        Ok(answer
            .into_inner()
            .containers
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.pod_sandbox_id))
    }

    /// The container's log file, as the runtime writes it (the CRI log format: a timestamp,
    /// the stream, a partial or full tag and the line), read from the node.
    pub fn log_file(&self, id: &str) -> ByteStream<'_> {
        let id = id.to_owned();
        node_file(self.runtime, &self.host_root, async move {
            let answer = self
                .status(&id, false)
                .await
                .map_err(|status| api(self.runtime, "ContainerStatus", status))?;
            let log_path = answer.status.map(|s| s.log_path).unwrap_or_default();
            if log_path.is_empty() {
                return Err(api_msg(
                    self.runtime,
                    "logs",
                    "the runtime names no log file for the container",
                ));
            }
            Ok(log_path)
        })
    }
}

/// The file at the path `path` answers (a path on the node, read below `host_root`), as a
/// stream of chunks.
pub(super) fn node_file<'a>(
    runtime: &'static str,
    host_root: &'a Path,
    path: impl Future<Output = Result<String, RuntimeError>> + Send + 'a,
) -> ByteStream<'a> {
    stream::once(async move {
        let path = path.await?;
        let on_node = host_root.join(path.trim_start_matches('/'));
        let file = tokio::fs::File::open(&on_node).await.map_err(|err| {
            api_msg(
                runtime,
                "logs",
                format!("cannot open the log file {}: {err}", on_node.display()),
            )
        })?;
        Ok(read_chunks(runtime, file))
    })
    .map(|opened| match opened {
        Ok(chunks) => chunks,
        Err(err) => stream::once(async move { Err(err) }).boxed(),
    })
    .flatten()
    .boxed()
}

/// A failed call described in words.
pub(super) fn api_msg(
    runtime: &'static str,
    operation: &'static str,
    message: impl Into<String>,
) -> RuntimeError {
    RuntimeError::Api {
        runtime,
        operation,
        source: message.into().into(),
    }
}

/// A file as a stream of chunks.
fn read_chunks(runtime: &'static str, file: tokio::fs::File) -> ByteStream<'static> {
    stream::try_unfold(file, move |mut file| async move {
        let mut buf = vec![0u8; 64 << 10];
        let n = file
            .read(&mut buf)
            .await
            .map_err(|err| api_msg(runtime, "logs", format!("cannot read the log file: {err}")))?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    })
    .boxed()
}

fn to_json<T: serde::Serialize>(
    runtime: &'static str,
    value: &T,
) -> Result<serde_json::Value, RuntimeError> {
    serde_json::to_value(value).map_err(|err| api_msg(runtime, "ContainerStatus", err.to_string()))
}

/// The verbose `info` map, each value parsed as the JSON the CRI says it holds (kept as a
/// string when it is not).
fn info_json(info: std::collections::HashMap<String, String>) -> serde_json::Value {
    info.into_iter()
        .map(|(key, text)| {
            let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            (key, value)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

impl ContainerRuntime for CriRuntime {
    fn name(&self) -> &'static str {
        self.runtime
    }

    fn endpoint(&self) -> String {
        format!("cri:{}", self.socket)
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>> {
        Box::pin(async move { Ok(serde_json::json!({ "cri": self.describe(id).await? })) })
    }

    fn top<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>> {
        Box::pin(async move {
            Err(api_msg(
                self.runtime,
                "top",
                "the CRI API lists no processes; proc/processes.json has the node's view",
            ))
        })
    }

    fn logs<'a>(&'a self, id: &'a str) -> ByteStream<'a> {
        self.log_file(id)
    }
}
