//! [`Metered`]: any [`Runtime`], with every call counted and timed by operation and result
//! (`pgm_docker_requests_total`, `pgm_docker_request_duration_seconds`) and every event
//! subscription after the first counted as a reconnection. Without metrics it only forwards,
//! so `main` always wraps and the Docker runtime itself knows nothing of metrics.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::Instant;

use super::{
    ContainerInfo, EventStream, LineStream, LogCursor, Orchestrator, Runtime, RuntimeError,
};
use crate::metrics::{Metrics, Outcome};
use crate::render::ContainerSpec;

pub struct Metered<R> {
    inner: R,
    metrics: Option<Metrics>,
    /// Whether the event stream was subscribed to before: every later subscription is a
    /// reconnection (the loop subscribes once, and again after each drop).
    subscribed: AtomicBool,
}

impl<R: Runtime> Metered<R> {
    pub fn new(inner: R, metrics: Option<Metrics>) -> Metered<R> {
        Metered {
            inner,
            metrics,
            subscribed: AtomicBool::new(false),
        }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        let Some(metrics) = &self.metrics else {
            return call.await;
        };
        let started = Instant::now();
        let result = call.await;
        metrics.docker_request(operation, Outcome::of(&result), started.elapsed());
        result
    }
}

impl<R: Runtime> Runtime for Metered<R> {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.timed("ensure_network", self.inner.ensure_network(name))
            .await
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.timed("list", self.inner.list(labels)).await
    }

    async fn find_by_name(&self, name: &str) -> Result<ContainerInfo, RuntimeError> {
        self.timed("find_by_name", self.inner.find_by_name(name))
            .await
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.timed("inspect", self.inner.inspect(id)).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.timed("create", self.inner.create(spec)).await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.timed("start", self.inner.start(id)).await
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.timed("signal", self.inner.signal(id, signal)).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.timed("remove", self.inner.remove(id)).await
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        self.timed("rename", self.inner.rename(id, name)).await
    }

    fn events(&self, labels: &BTreeMap<String, String>) -> EventStream {
        if self.subscribed.swap(true, Ordering::Relaxed) {
            if let Some(metrics) = &self.metrics {
                metrics.event_stream_reconnected();
            }
        }
        self.inner.events(labels)
    }

    async fn claim(&self, name: &str, holder: &str) -> Result<Option<String>, RuntimeError> {
        self.timed("claim", self.inner.claim(name, holder)).await
    }

    fn orchestrator(&self) -> Orchestrator {
        self.inner.orchestrator()
    }

    async fn update(
        &self,
        id: &str,
        spec: &ContainerSpec,
        restart_token: u64,
    ) -> Result<(), RuntimeError> {
        self.timed("update", self.inner.update(id, spec, restart_token))
            .await
    }

    async fn logs(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        self.timed("logs", self.inner.logs(id, lines)).await
    }

    async fn log_cursor(&self, id: &str) -> Result<LogCursor, RuntimeError> {
        self.timed("log_cursor", self.inner.log_cursor(id)).await
    }

    /// A stream that lasts as long as the caller waits: not timed as one call.
    fn log_after(&self, id: &str, cursor: LogCursor) -> LineStream {
        self.inner.log_after(id, cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    #[tokio::test]
    async fn counts_calls_by_operation_and_result_and_reconnections() {
        let metrics = Metrics::new();
        let fake = FakeRuntime::new();
        let metered = Metered::new(fake.clone(), Some(metrics.clone()));
        metered.ping().await.unwrap();
        metered.list(&BTreeMap::new()).await.unwrap();
        assert_eq!(metered.inspect("nope").await, Err(RuntimeError::NotFound));
        fake.set_unavailable(true);
        assert!(metered.ping().await.is_err());
        drop(metered.events(&BTreeMap::new()));
        drop(metered.events(&BTreeMap::new()));
        drop(metered.events(&BTreeMap::new()));

        let text = metrics.encode();
        for line in [
            r#"pgm_docker_requests_total{operation="ping",result="ok"} 1"#,
            r#"pgm_docker_requests_total{operation="ping",result="unavailable"} 1"#,
            r#"pgm_docker_requests_total{operation="list",result="ok"} 1"#,
            r#"pgm_docker_requests_total{operation="inspect",result="not_found"} 1"#,
            r#"pgm_docker_request_duration_seconds_count{operation="ping"} 2"#,
            "pgm_docker_event_stream_reconnects_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[tokio::test]
    async fn without_metrics_it_only_forwards() {
        let fake = FakeRuntime::new();
        let metered = Metered::new(fake.clone(), None);
        metered.ping().await.unwrap();
        assert_eq!(fake.take_calls(), vec![crate::runtime::fake::Call::Ping]);
    }
}
