//! A labelled counter family whose label values are not known up front
//! (refusal codes, close codes, message types other engineers add), without
//! a lock or an allocation once a value has been seen.
//!
//! A fixed array of slots, each a `OnceLock` holding one label value and the
//! counter registered for it. A lookup scans the filled slots (a dozen at
//! most in practice: one atomic load and a short compare each) and takes no
//! lock. Only the first sight of a value registers its counter with the
//! recorder (its one allocation and its one lock), in the first free slot;
//! a thread racing for the same slot waits for that, then moves on if the
//! slot went to another value (and the recorder hands out the same counter
//! for the same key anyway). Once every slot is taken, new values are
//! counted under `other`, so a flood of strange values cannot grow the
//! scrape without bound.

use std::sync::OnceLock;

use metrics::{Counter, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;

/// Distinct label sets a family keeps before counting the rest as `other`.
const SLOTS: usize = 48;

/// The label value that stands for everything past the last slot.
pub const OTHER: &str = "other";

pub struct Family<K> {
    name: &'static str,
    slots: Box<[OnceLock<(K, Counter)>]>,
    /// Counts whatever no slot could take (registered at start-up).
    other: Counter,
}

impl<K> Family<K> {
    /// `other` is the labels that stand for values past the last slot.
    pub fn new(recorder: &PrometheusRecorder, name: &'static str, other: Vec<Label>) -> Self {
        Self {
            name,
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            other: register(recorder, name, other),
        }
    }

    /// Adds `by` to the counter of the key `is` recognises; on first sight,
    /// `make` gives the key to keep and its labels, and the counter is
    /// registered.
    pub fn increment(
        &self,
        recorder: &PrometheusRecorder,
        is: impl Fn(&K) -> bool,
        make: impl FnOnce() -> (K, Vec<Label>),
        by: u64,
    ) {
        let mut make = Some(make);
        for slot in self.slots.iter() {
            if let Some((k, counter)) = slot.get() {
                if is(k) {
                    counter.increment(by);
                    return;
                }
                continue;
            }
            // A free slot: take it, unless another thread just did (then
            // that one may hold our value, or the next slot is free).
            let (k, counter) = slot.get_or_init(|| {
                let (k, labels) = (make.take().expect("a key is made once"))();
                (k, register(recorder, self.name, labels))
            });
            if is(k) {
                counter.increment(by);
                return;
            }
            if make.is_none() {
                break; // cannot happen: what we made matches itself
            }
        }
        self.other.increment(by);
    }
}

/// Registers one counter of this recorder (no global recorder involved).
pub fn register(recorder: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Counter {
    recorder.register_counter(&Key::from_parts(name, labels), &metadata())
}

pub fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}
