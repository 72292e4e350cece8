//! What a run reports, and how the reports of several load-generator
//! processes are merged into one (counts add up, histograms merge exactly:
//! each child ships its recorded buckets, not its percentiles).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub connections: usize,
    /// Connections that could not be opened (or resumed after a storm).
    pub connect_errors: u64,
    pub connect_seconds: f64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub offered_rate: f64,
    pub achieved_rate: f64,
    pub latency_us: Latency,
    /// Snapshots teachers got after their first one (the server chose to
    /// re-synchronise them rather than send every event).
    #[serde(default)]
    pub resyncs: u64,
    /// First connections refused and tried again (all connected in the end
    /// unless `connect_errors` says otherwise: a run fails on a client that
    /// never connects).
    #[serde(default)]
    pub connect_retries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<Storm>,
    /// Clients whose server went away (a rolling restart) and came back on
    /// another instance; `None` when no server went away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<Moved>,
    /// Recorded latency buckets `[value_us, count]`, for merging children.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub histogram: Vec<[u64; 2]>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The reconnect storm: every client dropped at once and came back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Storm {
    /// Clients dropped.
    pub clients: u64,
    /// Clients back (students welcomed, teachers resumed).
    pub back: u64,
    /// From the drop until the last client was back.
    pub all_back_seconds: f64,
    /// Snapshots teachers got instead of a replay (all of them, when the
    /// run had a storm: see `Report::resyncs`).
    pub snapshots: u64,
}

/// Clients whose server closed them 1012 / 1001 or died, and moved to the
/// next server of their list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Moved {
    /// Connections lost that way (a client that moved twice counts twice).
    pub clients: u64,
    /// Of those, back (students welcomed, teachers resumed).
    pub back: u64,
    /// From the first such loss until the last client was back (so it
    /// spans the instance's `server.drain_window`).
    pub all_back_seconds: f64,
    /// The longest one client was away: from its close to its welcome.
    pub max_away_seconds: f64,
    /// Events students re-sent on the new connection (not acknowledged
    /// before the close; `Plan::acked` only).
    pub resent: u64,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// The buckets of `h`, to ship to a parent process.
pub fn buckets(h: &Histogram<u64>) -> Vec<[u64; 2]> {
    h.iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

impl Report {
    /// Merges child reports into one, as if one process had run them all.
    pub fn merge(parts: Vec<Report>) -> anyhow::Result<Report> {
        let mut hist = new_histogram();
        let mut out = Report::default();
        let mut storm: Option<Storm> = None;
        let mut moved: Option<Moved> = None;
        for p in parts {
            out.connections += p.connections;
            out.connect_errors += p.connect_errors;
            out.connect_seconds = out.connect_seconds.max(p.connect_seconds);
            out.sent += p.sent;
            out.expected += p.expected;
            out.delivered += p.delivered;
            out.lost += p.lost;
            out.duplicated += p.duplicated;
            out.resyncs += p.resyncs;
            out.connect_retries += p.connect_retries;
            out.offered_rate += p.offered_rate;
            out.achieved_rate += p.achieved_rate;
            for [value, count] in p.histogram {
                hist.record_n(value, count)?;
            }
            if let Some(s) = p.storm {
                let m = storm.get_or_insert_with(Storm::default);
                m.clients += s.clients;
                m.back += s.back;
                m.snapshots += s.snapshots;
                m.all_back_seconds = m.all_back_seconds.max(s.all_back_seconds);
            }
            if let Some(s) = p.moved {
                let m = moved.get_or_insert_with(Moved::default);
                m.clients += s.clients;
                m.back += s.back;
                m.resent += s.resent;
                m.all_back_seconds = m.all_back_seconds.max(s.all_back_seconds);
                m.max_away_seconds = m.max_away_seconds.max(s.max_away_seconds);
            }
        }
        out.latency_us = Latency::of(&hist);
        out.storm = storm;
        out.moved = moved;
        Ok(out)
    }

    /// The one-screen human summary.
    pub fn summary(&self) -> String {
        let l = &self.latency_us;
        let mut s = format!(
            "{} connections ({} errors, {} retries) in {:.1}s | sent {} at {:.0}/s | delivered {}/{} | lost {} | duplicated {} | resyncs {}\n\
             latency µs p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.connections,
            self.connect_errors,
            self.connect_retries,
            self.connect_seconds,
            self.sent,
            self.achieved_rate,
            self.delivered,
            self.expected,
            self.lost,
            self.duplicated,
            self.resyncs,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
        if let Some(st) = &self.storm {
            s += &format!(
                "\nstorm: {}/{} clients back in {:.2}s ({} teacher snapshots)",
                st.back, st.clients, st.all_back_seconds, st.snapshots
            );
        }
        if let Some(m) = &self.moved {
            s += &format!(
                "\nmoved: {}/{} clients of a server that went away back in {:.2}s (longest away {:.2}s, {} events re-sent)",
                m.back, m.clients, m.all_back_seconds, m.max_away_seconds, m.resent
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_children_add_up_and_keep_their_latencies() {
        let mut a = new_histogram();
        a.record_n(100, 99).unwrap();
        let mut b = new_histogram();
        b.record(5_000).unwrap();
        let part = |h: &Histogram<u64>, sent| Report {
            sent,
            delivered: sent,
            expected: sent,
            histogram: buckets(h),
            ..Report::default()
        };
        let m = Report::merge(vec![part(&a, 99), part(&b, 1)]).unwrap();
        assert_eq!((m.sent, m.delivered, m.lost), (100, 100, 0));
        assert_eq!(m.latency_us.p50, 100);
        assert!(m.latency_us.max >= 5_000 && m.latency_us.max < 5_010);
    }
}
