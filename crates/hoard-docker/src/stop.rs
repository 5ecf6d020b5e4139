//! Stopping containers while their volume is read, and starting them again whatever happens.

use std::sync::{Arc, Mutex};

use crate::{Engine, Result};

/// Containers this process stopped and owes a start. Dropping the guard starts them; the binary
/// also keeps a clone of [`StopGuard::pending`] so a signal handler can start them before exiting.
pub struct StopGuard {
    engine: Engine,
    stopped: Arc<Mutex<Vec<String>>>,
}

impl StopGuard {
    /// A guard that records into `pending` (shared with a signal handler).
    pub fn new(engine: &Engine, pending: Arc<Mutex<Vec<String>>>) -> StopGuard {
        StopGuard { engine: engine.clone(), stopped: pending }
    }

    /// The list of containers stopped and not yet started again.
    pub fn pending(&self) -> Arc<Mutex<Vec<String>>> {
        self.stopped.clone()
    }

    /// Stops a running container and remembers to start it. The id is recorded before the stop
    /// is asked for, so an interruption during the stop still starts it again.
    pub fn stop(&self, id: &str) -> Result<()> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner()).push(id.to_string());
        self.engine.stop_container(id)
    }

    /// Starts every container stopped so far; returns the errors of those that would not start.
    pub fn restart_all(&self) -> Vec<String> {
        restart(&self.engine, &self.stopped)
    }
}

/// Starts every container in `pending` and empties it; returns one message per failure.
pub fn restart(engine: &Engine, pending: &Mutex<Vec<String>>) -> Vec<String> {
    let ids: Vec<String> = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
    let mut errors = Vec::new();
    for id in ids {
        if let Err(e) = engine.start_container(&id) {
            errors.push(format!("container {id} was stopped for the backup and did not start again: {e}"));
        }
    }
    errors
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        for e in self.restart_all() {
            tracing::error!("{e}");
            eprintln!("error: {e}");
        }
    }
}
