//! What every handler of an API node shares.

use std::sync::Arc;

use tokio::sync::OnceCell;

use super::error::ApiError;
use crate::feed::cache::PageCache;
use crate::feed::cursor::CursorKey;
use crate::feed::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{self, replicas::Reader};
use crate::telegram::files::FileBots;

#[derive(Clone)]
pub struct ApiState {
    pub reader: Arc<Reader>,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub cache: Arc<PageCache>,
    pub media: Arc<FileBots>,
    /// Read from Postgres on first use (a node starts before its database answers).
    pub cursors: Arc<OnceCell<CursorKey>>,
}

impl ApiState {
    /// The key this deployment's cursors are signed with.
    pub async fn cursor_key(&self) -> Result<&CursorKey, ApiError> {
        let read =
            || async { Ok::<_, ApiError>(CursorKey::new(store::feed::cursor_key(&self.reader).await?)) };
        self.cursors.get_or_try_init(read).await
    }
}
