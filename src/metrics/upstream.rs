//! The pull-through cache's figures: lookups and fetches by upstream and
//! outcome, bytes fetched, fetches running, and whether each upstream answers.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// How a narinfo lookup at an upstream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Lookup {
    /// A narinfo signed by one of the upstream's keys.
    found,
    /// 404 (or 403, as S3-backed caches answer): the upstream lacks the path.
    missing,
    /// An answer larder would not pass on (no verifying signature, not a
    /// narinfo, another path…).
    refused,
    /// No answer: connection, timeout or 5xx.
    error,
}

/// How a NAR fetch from an upstream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Fetch {
    /// The NAR checked out against its signed NarHash and clients got all of it.
    checked,
    /// The fetch failed (unreachable, wrong hash, cut short): nothing stored.
    failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LookupLabels {
    upstream: String,
    result: Lookup,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FetchLabels {
    upstream: String,
    result: Fetch,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

/// The families, registered under the server's `larder_` prefix.
pub(crate) struct UpstreamMetrics {
    lookups: Family<LookupLabels, Counter>,
    fetches: Family<FetchLabels, Counter>,
    fetched: Family<UpstreamLabel, Counter>,
    up: Family<UpstreamLabel, Gauge>,
    running: Gauge,
}

impl UpstreamMetrics {
    pub(crate) fn register(r: &mut Registry) -> UpstreamMetrics {
        let m = UpstreamMetrics {
            lookups: Family::default(),
            fetches: Family::default(),
            fetched: Family::default(),
            up: Family::default(),
            running: Gauge::default(),
        };
        r.register(
            "upstream_narinfo_lookups",
            "narinfo lookups sent to upstreams, by upstream and result (found, missing, refused, error)",
            m.lookups.clone(),
        );
        r.register(
            "upstream_nar_fetches",
            "NAR fetches from upstreams that ended, by upstream and result (checked, failed)",
            m.fetches.clone(),
        );
        r.register_with_unit(
            "upstream_fetched",
            "NAR bytes received from upstreams as sent (compressed), by upstream",
            Unit::Bytes,
            m.fetched.clone(),
        );
        r.register(
            "upstream_up",
            "1 while an upstream answers, 0 from a failed request (connection, timeout, 5xx) until one succeeds",
            m.up.clone(),
        );
        r.register(
            "upstream_nar_fetches_running",
            "NAR fetches from upstreams in progress",
            m.running.clone(),
        );
        m
    }

    pub(crate) fn lookup(&self, upstream: &str, result: Lookup) {
        self.lookups
            .get_or_create(&LookupLabels {
                upstream: upstream.to_owned(),
                result,
            })
            .inc();
    }

    pub(crate) fn fetch_ended(&self, upstream: &str, result: Fetch) {
        self.fetches
            .get_or_create(&FetchLabels {
                upstream: upstream.to_owned(),
                result,
            })
            .inc();
    }

    /// A counter of the bytes fetched from `upstream`, to add to as they come.
    pub(crate) fn fetched(&self, upstream: &str) -> Counter {
        self.fetched.get_or_create_owned(&UpstreamLabel {
            upstream: upstream.to_owned(),
        })
    }

    pub(crate) fn set_up(&self, upstream: &str, up: bool) {
        self.up
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Count a fetch as running until the guard is dropped.
    pub(crate) fn running(&self) -> RunningGuard {
        self.running.inc();
        RunningGuard(self.running.clone())
    }
}

/// Holds one count of `upstream_nar_fetches_running`.
pub(crate) struct RunningGuard(Gauge);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
