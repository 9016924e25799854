//! Publishing counts through the `metrics` facade.
//!
//! Calls are counted per thread in each plugin instance (`stats.rs`), never through the
//! facade on the call path: a facade call costs a registry lookup. This flush reads the sums
//! and sets the facade's counters to them (`absolute`), so whichever recorder the host
//! installed (Prometheus, StatsD, ...) sees `swapkit_calls_total` and friends. When a
//! generation retires its instances' counts go with it, which a recorder sees as a counter
//! reset.

use std::collections::BTreeMap;

use crate::reload::Reloader;

pub(crate) fn publish(core: &Reloader) {
    let alive = core.published.alive();
    let mut sums: BTreeMap<(String, String), crate::stats::Counts> = BTreeMap::new();
    let mut pins = 0;
    let mut seen = std::collections::HashSet::new();
    for generation in &alive {
        pins += generation.pin_count();
        for p in &generation.plugins {
            // An instance carried over is shared by several generations: count it once.
            if !seen.insert(std::sync::Arc::as_ptr(p)) {
                continue;
            }
            *sums
                .entry((p.code.name.to_string(), p.code.version.to_string()))
                .or_default() += p.stats.counts();
        }
    }
    ::metrics::gauge!("swapkit_generations_alive").set(alive.len() as f64);
    ::metrics::gauge!("swapkit_pins_held").set(pins as f64);
    drop(alive);
    for ((plugin, version), c) in sums {
        let labels = [("plugin", plugin), ("version", version)];
        ::metrics::counter!("swapkit_calls_total", &labels).absolute(c.calls);
        for (kind, n) in [("error", c.errors), ("panic", c.panics), ("trap", c.traps)] {
            let labels = [
                ("plugin", labels[0].1.clone()),
                ("version", labels[1].1.clone()),
                ("kind", kind.to_owned()),
            ];
            ::metrics::counter!("swapkit_call_failures_total", &labels).absolute(n);
        }
    }
}
