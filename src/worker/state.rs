//! What the worker's route shares between requests.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::record::Recorder;
use crate::bot::Services;
use crate::intake::Intake;
use crate::kv;
use crate::metrics::Metrics;
use crate::telegram::Client;

/// One configured bot: its client on the sending path, and its intake.
pub struct BotRuntime {
    pub client: Arc<Client>,
    pub intake: Intake,
}

/// What every request handler shares.
#[derive(Clone)]
pub struct WorkerState {
    pub bots: Arc<HashMap<String, Arc<BotRuntime>>>,
    /// What the bot's behaviour uses: storage, the sending path, the feed.
    pub services: Arc<Services>,
    /// The Redis connection every update shares (multiplexed).
    pub redis: Arc<kv::Shared>,
    pub metrics: Arc<Metrics>,
    /// Failed attempts at one update before it is dead-lettered.
    pub max_attempts: u64,
    /// Update handling runs in tasks tracked here, so a caller that hangs up cannot cut the
    /// work in half and a draining process waits for it.
    pub tasks: TaskTracker,
    /// One permit per update being handled (`BOTFLEET_MAX_IN_FLIGHT`): when none is left the
    /// worker is overloaded and says so at once, rather than letting Telegram time out.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub max_body_bytes: usize,
    /// Records every update received, when asked to (`BOTFLEET_RECORD_PATH`).
    pub recorder: Option<Arc<Recorder>>,
}
