//! Per-request figures without contention: every worker thread counts into a
//! shard of its own (requests by class and status, latency buckets, body
//! bytes), and a scrape sums the shards. `prometheus-client`'s own counters and
//! histogram would share one cache line (and, for the histogram, one mutex)
//! between every core on every request; at tens of thousands of narinfo
//! lookups a second that costs more than the lookups. The sums are encoded by
//! `prometheus-client` like any family (`encode_family`, `encode_counter`,
//! `encode_histogram`): nothing here writes the text format.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::{Class, ClassLabel, RequestLabels};

const SHARDS: usize = 8;
const CLASSES: usize = Class::ALL.len();
/// Status codes 100..=599, one slot each.
const FIRST_CODE: u16 = 100;
const CODES: usize = 500;

/// Upper bounds of the latency buckets, in seconds: 100 µs × 4^k, k = 0..10
/// (100 µs to ~105 s), then +Inf.
fn bounds() -> [f64; BUCKETS] {
    let mut b = [f64::INFINITY; BUCKETS];
    let mut v = 0.0001;
    for slot in b.iter_mut().take(BUCKETS - 1) {
        *slot = v;
        v *= 4.0;
    }
    b
}
const BUCKETS: usize = 12;

#[repr(align(128))]
struct Shard {
    /// `[class][code - 100]`.
    requests: Box<[AtomicU64]>,
    /// `[class][bucket]`, not cumulative.
    buckets: Box<[AtomicU64]>,
    sum_ns: [AtomicU64; CLASSES],
    sent: [AtomicU64; CLASSES],
    received: [AtomicU64; CLASSES],
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Shard {
    fn new() -> Shard {
        Shard {
            requests: zeros(CLASSES * CODES),
            buckets: zeros(CLASSES * BUCKETS),
            sum_ns: Default::default(),
            sent: Default::default(),
            received: Default::default(),
        }
    }
}

/// The per-request counters of one server.
pub(crate) struct RequestStats {
    shards: Box<[Shard]>,
    bounds: [f64; BUCKETS],
}

impl std::fmt::Debug for RequestStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestStats")
    }
}

/// This thread's shard, assigned round-robin on first use.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<Option<usize>> = const { Cell::new(None) };
    }
    MINE.with(|m| match m.get() {
        Some(i) => i,
        None => {
            let i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            m.set(Some(i));
            i
        }
    })
}

impl RequestStats {
    pub(crate) fn new() -> Arc<RequestStats> {
        Arc::new(RequestStats {
            shards: (0..SHARDS).map(|_| Shard::new()).collect(),
            bounds: bounds(),
        })
    }

    /// Count one answered request.
    pub(crate) fn record(&self, class: Class, code: u16, took: Duration, received: u64, sent: u64) {
        let Some(s) = self.shards.get(shard_index()) else {
            return;
        };
        let c = class as usize;
        let code_slot =
            usize::from(code.clamp(FIRST_CODE, FIRST_CODE + CODES as u16 - 1) - FIRST_CODE);
        if let Some(n) = s.requests.get(c * CODES + code_slot) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        let b = self
            .bounds
            .iter()
            .position(|&ub| secs <= ub)
            .unwrap_or(BUCKETS - 1);
        if let Some(n) = s.buckets.get(c * BUCKETS + b) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        s.sum_ns[c].fetch_add(ns, Ordering::Relaxed);
        if received > 0 {
            s.received[c].fetch_add(received, Ordering::Relaxed);
        }
        if sent > 0 {
            s.sent[c].fetch_add(sent, Ordering::Relaxed);
        }
    }

    fn sum(&self, f: impl Fn(&Shard) -> u64) -> u64 {
        self.shards.iter().map(f).fold(0u64, u64::wrapping_add)
    }

    fn requests(&self, class: usize, slot: usize) -> u64 {
        self.sum(|s| s.requests[class * CODES + slot].load(Ordering::Relaxed))
    }
}

/// `larder_http_requests_total{class,code}`: the codes seen so far.
#[derive(Debug, Clone)]
pub(crate) struct RequestsView(pub Arc<RequestStats>);

impl EncodeMetric for RequestsView {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for class in Class::ALL {
            for slot in 0..CODES {
                let n = self.0.requests(class as usize, slot);
                if n == 0 {
                    continue;
                }
                let labels = RequestLabels {
                    class,
                    code: FIRST_CODE + slot as u16,
                };
                encoder
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// `larder_http_request_duration_seconds{class}`: every class, from the start.
#[derive(Debug, Clone)]
pub(crate) struct LatencyView(pub Arc<RequestStats>);

impl EncodeMetric for LatencyView {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let st = &self.0;
        for class in Class::ALL {
            let c = class as usize;
            let mut buckets = [(0.0, 0u64); BUCKETS];
            let mut count = 0u64;
            for (b, slot) in buckets.iter_mut().enumerate() {
                let n = st.sum(|s| s.buckets[c * BUCKETS + b].load(Ordering::Relaxed));
                *slot = (st.bounds[b], n);
                count = count.wrapping_add(n);
            }
            let sum = st.sum(|s| s.sum_ns[c].load(Ordering::Relaxed)) as f64 / 1e9;
            encoder
                .encode_family(&ClassLabel { class })?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Body bytes by class, sent or received.
#[derive(Debug, Clone)]
pub(crate) struct BytesView {
    pub stats: Arc<RequestStats>,
    pub sent: bool,
}

impl EncodeMetric for BytesView {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for class in Class::ALL {
            let c = class as usize;
            let n = if self.sent {
                self.stats.sum(|s| s.sent[c].load(Ordering::Relaxed))
            } else {
                self.stats.sum(|s| s.received[c].load(Ordering::Relaxed))
            };
            encoder
                .encode_family(&ClassLabel { class })?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_across_threads() {
        let st = RequestStats::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let st = &st;
                s.spawn(move || {
                    for _ in 0..1000 {
                        st.record(Class::narinfo, 200, Duration::from_micros(50), 0, 10);
                    }
                });
            }
        });
        st.record(Class::nar, 404, Duration::from_secs(1), 5, 0);
        assert_eq!(st.requests(Class::narinfo as usize, 100), 4000);
        assert_eq!(st.requests(Class::nar as usize, 304), 1);
        let c = Class::narinfo as usize;
        assert_eq!(
            st.sum(|s| s.buckets[c * BUCKETS].load(Ordering::Relaxed)),
            4000
        );
        assert_eq!(st.sum(|s| s.sent[c].load(Ordering::Relaxed)), 40_000);
        assert_eq!(bounds()[0], 0.0001);
        assert!(bounds()[BUCKETS - 1].is_infinite());
    }
}
