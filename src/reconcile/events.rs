//! Docker's event stream, as a hint. The daemon keeps few events and forgets them on restart,
//! so after every (re)connection the loop is woken for a full list. Health changes go to the
//! loop as they are; everything else marks Docker changed and wakes the loop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::retry::Retry;
use crate::runtime::{Event, Health, Runtime};

pub(super) async fn watch_docker_events<R: Runtime>(
    runtime: Arc<R>,
    labels: BTreeMap<String, String>,
    wake: mpsc::Sender<()>,
    health: mpsc::Sender<(String, Health)>,
    docker_changed: Arc<AtomicBool>,
) {
    let look_again = || {
        docker_changed.store(true, Ordering::SeqCst);
        let _ = wake.try_send(());
    };
    let mut retry = Retry::new(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        if runtime.ping().await.is_ok() {
            let mut events = runtime.events(&labels);
            look_again();
            let connected = Instant::now();
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Health { id, health: h }) => {
                        if health.try_send((id, h)).is_err() {
                            look_again();
                        }
                    }
                    Ok(Event::Changed) => look_again(),
                    Err(_) => break,
                }
            }
            // The stream dropped: the loop should notice an outage now, not at the next tick.
            look_again();
            if connected.elapsed() > Duration::from_secs(30) {
                retry.reset();
            }
        }
        let delay = retry.fail();
        tokio::time::sleep(delay).await;
    }
}
