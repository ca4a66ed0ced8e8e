//! What every handler of an API node shares.

use std::sync::Arc;

use crate::feed::cache::PageCache;
use crate::feed::hub::Hub;
use crate::metrics::Metrics;
use crate::store::replicas::Reader;
use crate::telegram::files::FileBots;

#[derive(Clone)]
pub struct ApiState {
    pub reader: Arc<Reader>,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub cache: Arc<PageCache>,
    pub media: Arc<FileBots>,
}
