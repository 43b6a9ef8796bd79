//! Access times without a database write per request: GETs note what they
//! found in memory; [`AccessLog::flush`] writes the batch in one transaction.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::meta::{AccessKey, Meta, MetaError};

/// Notes beyond this many distinct keys are dropped until the next flush (a
/// dropped note only makes a path look older than it is).
const MAX_PENDING: usize = 1 << 20;

#[derive(Default)]
pub struct AccessLog {
    pending: Mutex<HashMap<(i64, AccessKey), i64>>,
}

impl AccessLog {
    pub fn note(&self, cache_id: i64, key: AccessKey, at: i64) {
        if let Ok(mut p) = self.pending.lock() {
            if p.len() < MAX_PENDING || p.contains_key(&(cache_id, key.clone())) {
                p.insert((cache_id, key), at);
            }
        }
    }

    /// Write what was noted since the last flush.
    pub fn flush(&self, meta: &Meta) -> Result<usize, MetaError> {
        let batch: Vec<(i64, AccessKey, i64)> = match self.pending.lock() {
            Ok(mut p) => p.drain().map(|((c, k), at)| (c, k, at)).collect(),
            Err(_) => return Ok(0),
        };
        meta.record_access(&batch)?;
        Ok(batch.len())
    }
}
