//! Why an update could not be handled now, as the bot's behaviour reports it.

use crate::intake::LeaseLost;
use crate::intake::dialogue::DialogueError;
use crate::store::StoreError;
use crate::telegram::flood::FloodError;
use crate::telegram::outbox::NotifyError;

/// Why an update could not be handled now. Either way Telegram redelivers it.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Postgres, Redis or Telegram is unreachable: answer 503 with `Retry-After`; this does
    /// not count towards dead-lettering, since the update is not at fault.
    #[error("dependency unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Anything else: counted, and dead-lettered after too many attempts.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(e) => HandleError::Unavailable(e),
            StoreError::Other(e) => HandleError::Failed(e),
        }
    }
}

impl From<LeaseLost> for HandleError {
    fn from(e: LeaseLost) -> Self {
        HandleError::Unavailable(e.into())
    }
}

impl From<NotifyError> for HandleError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Store(e) => e.into(),
            NotifyError::Redis(e) => HandleError::Unavailable(e),
        }
    }
}

impl From<redis::RedisError> for HandleError {
    fn from(e: redis::RedisError) -> Self {
        HandleError::Unavailable(e.into())
    }
}

impl From<FloodError> for HandleError {
    fn from(e: FloodError) -> Self {
        HandleError::Unavailable(e.into())
    }
}

impl From<DialogueError> for HandleError {
    fn from(e: DialogueError) -> Self {
        match e {
            DialogueError::Redis(e) => HandleError::Unavailable(e),
            DialogueError::Conflict => HandleError::Failed(e.into()),
        }
    }
}
