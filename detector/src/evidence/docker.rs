//! Docker Engine through bollard: the only place that talks to Docker.

use std::path::Path;

use bollard::{
    Docker,
    query_parameters::{LogsOptionsBuilder, TopOptionsBuilder},
};
use futures::{StreamExt as _, TryStreamExt as _};

use super::runtime::{BoxFuture, ByteStream, ContainerRuntime, RuntimeError};

const NAME: &str = "docker";

/// A Docker Engine reached over its unix socket, API version negotiated with the daemon.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    socket: String,
}

fn api(
    operation: &'static str,
) -> impl Fn(bollard::errors::Error) -> RuntimeError + Copy + Send + Sync {
    move |source| RuntimeError::Api {
        runtime: NAME,
        operation,
        source: Box::new(source),
    }
}

impl DockerRuntime {
    /// Connects to the socket and negotiates the API version (Docker 20.10 speaks 1.41).
    pub async fn connect(socket: &Path) -> Result<Self, RuntimeError> {
        let endpoint = socket.display().to_string();
        let connect_err = |source: bollard::errors::Error| RuntimeError::Connect {
            runtime: NAME,
            endpoint: endpoint.clone(),
            source: Box::new(source),
        };
        let docker = Docker::connect_with_unix(&endpoint, 120, bollard::API_DEFAULT_VERSION)
            .map_err(connect_err)?
            .negotiate_version()
            .await
            .map_err(connect_err)?;
        Ok(Self {
            docker,
            socket: endpoint,
        })
    }
}

impl ContainerRuntime for DockerRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn endpoint(&self) -> String {
        format!("docker:{}", self.socket)
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>> {
        Box::pin(async move {
            let info = self
                .docker
                .inspect_container(id, None)
                .await
                .map_err(api("inspect"))?;
            serde_json::to_value(info).map_err(|source| RuntimeError::Api {
                runtime: NAME,
                operation: "inspect",
                source: Box::new(source),
            })
        })
    }

    fn top<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>> {
        Box::pin(async move {
            let options = TopOptionsBuilder::default().ps_args("-ef").build();
            let top = self
                .docker
                .top_processes(id, Some(options))
                .await
                .map_err(api("top"))?;
            serde_json::to_value(top).map_err(|source| RuntimeError::Api {
                runtime: NAME,
                operation: "top",
                source: Box::new(source),
            })
        })
    }

    fn logs<'a>(&'a self, id: &'a str) -> ByteStream<'a> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail("all")
            .build();
        self.docker
            .logs(id, Some(options))
            .map_ok(bollard::container::LogOutput::into_bytes)
            .map_err(api("logs"))
            .boxed()
    }
}
