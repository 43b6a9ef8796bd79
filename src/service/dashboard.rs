//! What the web dashboard shows of one cache (`docs/design/dashboard.md`): its
//! config, usage, the running server's counters and its latest pushes, in one
//! answer, for a caller with `pull` on it.

use serde::{Deserialize, Serialize};

use super::gc::CacheUsage;
use super::{CacheConfig, Larder, ServiceError};
use crate::auth::{Caller, Permission};
use crate::meta::RecentPath;
use crate::metrics::CacheCounts;

/// How many of the latest stored paths a summary lists.
pub const RECENT_PATHS: u32 = 20;

/// `GET /_api/v1/cache/{cache}/summary`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheSummary {
    pub name: String,
    pub config: CacheConfig,
    pub usage: CacheUsage,
    /// narinfo hits, misses and pushes since the server started.
    pub counts: CacheCounts,
    /// The latest stored paths, newest first.
    pub recent: Vec<RecentPath>,
}

impl Larder {
    /// A cache's summary (needs `pull`, like `cache-config` and `usage`).
    pub fn cache_summary(
        &self,
        caller: &Caller,
        cache: &str,
    ) -> Result<CacheSummary, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        Ok(CacheSummary {
            name: row.name.clone(),
            config: self.config_of(&row)?,
            usage: self.usage_of(&row)?,
            counts: self.metrics.cache_counts(&row.name),
            recent: self.meta.recent_paths(row.id, RECENT_PATHS)?,
        })
    }
}
