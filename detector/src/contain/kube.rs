//! Kubernetes API calls of the playbook: each error status handled deliberately.
//!
//! | status | handling |
//! |---|---|
//! | 404 | [`ApiError::NotFound`]: the step decides (a gone pod makes pod steps not applicable) |
//! | 409 | [`ApiError::Conflict`]: the step re-reads and re-applies ([`KubeApi::call`] never retries it blindly) |
//! | 400, 403, 422 | [`ApiError::Rejected`]: retrying cannot help; recorded as failed |
//! | 429 with a `DisruptionBudget` cause (an eviction) | retried as below, then [`ApiError::DisruptionBudget`]: the budget's refusal |
//! | 429, 5xx, timeouts, connection errors | retried with exponential backoff and jitter, then [`ApiError::Exhausted`] |
//!
//! The client has kube's own retry layer off ([`crate::attribution::pod_watch::client_from`]),
//! so every answer reaches this policy: left on, it retried a 429 inside one call for longer
//! than the call's timeout, and a budget's refusal ended as a timeout.

use std::{
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};

use super::config::ApiRetryConfig;

/// Failure of an API call, after the retries it allows.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The object does not exist (404).
    #[error("{what}: not found")]
    NotFound {
        /// The call.
        what: String,
    },
    /// The object changed since it was read, or already exists (409).
    #[error("{what}: conflict: {message}")]
    Conflict {
        /// The call.
        what: String,
        /// The server's message.
        message: String,
    },
    /// Refused for good (400, 403, 422 and other 4xx): retrying cannot help.
    #[error("{what}: rejected with {code}: {message}")]
    Rejected {
        /// The call.
        what: String,
        /// HTTP status.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// Transient failures (429, 5xx, timeouts, connection errors) until the attempts ran out.
    #[error("{what}: gave up after {attempts} attempts, last: {last}")]
    Exhausted {
        /// The call.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// An eviction a PodDisruptionBudget refused (429 with a `DisruptionBudget` cause) on every
    /// attempt until the deadline: the budget's decision, not a failure of the API.
    #[error("{what}: refused by a PodDisruptionBudget on each of {attempts} attempts: {message}")]
    DisruptionBudget {
        /// The call.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The server's message, the budget's own included.
        message: String,
    },
}

enum Class {
    NotFound,
    Conflict(String),
    Rejected(u16, String),
    Transient(String),
    /// A 429 whose cause is a PodDisruptionBudget: retried as a transient failure, reported as
    /// the budget's refusal.
    DisruptionBudget(String),
}

fn classify(err: &kube::Error) -> Class {
    match err {
        kube::Error::Api(status) => match status.code {
            404 => Class::NotFound,
            409 => Class::Conflict(status.message.clone()),
            429 if budget_cause(status).is_some() => {
                let cause = budget_cause(status).unwrap_or_default();
                Class::DisruptionBudget(format!("{} ({cause})", status.message))
            }
            429 | 500 | 502 | 503 | 504 => {
                Class::Transient(format!("{} {}", status.code, status.message))
            }
            code => Class::Rejected(code, status.message.clone()),
        },
        other => Class::Transient(other.to_string()),
    }
}

/// The `DisruptionBudget` cause of an eviction's 429, as the API server words it ("The
/// disruption budget db needs 1 healthy pods and has 1 currently").
fn budget_cause(status: &kube::core::Status) -> Option<&str> {
    status
        .details
        .as_ref()?
        .causes
        .iter()
        .find(|c| c.reason == "DisruptionBudget")
        .map(|c| c.message.as_str())
}

/// The API client with the playbook's retry policy.
pub struct KubeApi {
    client: Client,
    retry: ApiRetryConfig,
    seed: Mutex<u64>,
}

impl KubeApi {
    /// Wraps a client.
    pub fn new(client: Client, retry: ApiRetryConfig) -> Self {
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
        Self {
            client,
            retry,
            seed: Mutex::new(seed | 1),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The backoff before attempt `attempt + 1`: exponential, capped, with up to 50% jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .retry
            .backoff_base_ms
            .saturating_mul(1 << attempt.min(20))
            .min(self.retry.backoff_max_ms);
        let mut seed = self
            .seed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // xorshift64: jitter needs spread, not cryptographic quality.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let jitter = if full == 0 { 0 } else { *seed % (full / 2 + 1) };
        Duration::from_millis(full - jitter)
    }

    /// Runs a call with the configured timeout and retries.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        self.call_until(what, self.retry.max_attempts, None, f)
            .await
    }

    /// Runs a call, retrying transient failures up to `attempts` times or until `deadline`.
    pub async fn call_until<T, F, Fut>(
        &self,
        what: &str,
        attempts: u32,
        deadline: Option<Instant>,
        mut f: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let timeout = Duration::from_millis(self.retry.timeout_ms);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut budget = false;
            let last = match tokio::time::timeout(timeout, f()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => match classify(&err) {
                    Class::NotFound => return Err(ApiError::NotFound { what: what.into() }),
                    Class::Conflict(message) => {
                        return Err(ApiError::Conflict {
                            what: what.into(),
                            message,
                        });
                    }
                    Class::Rejected(code, message) => {
                        return Err(ApiError::Rejected {
                            what: what.into(),
                            code,
                            message,
                        });
                    }
                    Class::Transient(last) => last,
                    Class::DisruptionBudget(message) => {
                        budget = true;
                        message
                    }
                },
                Err(_) => format!("timed out after {timeout:?}"),
            };
            let pause = self.backoff(attempt - 1);
            let out_of_time = deadline.is_some_and(|d| Instant::now() + pause > d);
            if (attempt >= attempts || out_of_time) && budget {
                return Err(ApiError::DisruptionBudget {
                    what: what.into(),
                    attempts: attempt,
                    message: last,
                });
            }
            if attempt >= attempts || out_of_time {
                return Err(ApiError::Exhausted {
                    what: what.into(),
                    attempts: attempt,
                    last,
                });
            }
            tracing::debug!("{what}: {last}; retrying in {pause:?}");
            tokio::time::sleep(pause).await;
        }
    }

    /// Creates an Event about an object (best effort: a failure is logged, never a step
    /// failure). `namespace` is the object's, or `default` for nodes.
    pub async fn event(&self, target: EventObject<'_>, reason: &str, message: &str, unique: &str) {
        let namespace = target.namespace.unwrap_or("default");
        let now = Timestamp::now();
        let event = Event {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{}.{unique}", target.name)),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some(target.kind.into()),
                name: Some(target.name.into()),
                namespace: target.namespace.map(Into::into),
                uid: target.uid.map(Into::into),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.chars().take(1024).collect()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some("detector".into()),
                host: None,
            }),
            reporting_component: Some("detector".into()),
            reporting_instance: Some(target.reporter.into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some(reason.into()),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let params = PostParams::default();
        let result = self
            .call("create event", || api.create(&params, &event))
            .await;
        if let Err(err) = result {
            tracing::warn!("cannot record the event {reason} on {}: {err}", target.name);
        }
    }
}

/// The object an Event is about.
#[derive(Debug, Clone, Copy)]
pub struct EventObject<'a> {
    /// `Pod` or `Node`.
    pub kind: &'a str,
    /// Name.
    pub name: &'a str,
    /// Namespace (pods).
    pub namespace: Option<&'a str>,
    /// UID.
    pub uid: Option<&'a str>,
    /// The reporting instance (this node).
    pub reporter: &'a str,
}
