//! The front's share of the router's Prometheus metrics, named as the Python app's own
//! (its `metrics` module): the app adds these samples to its own when it is scraped, so
//! each metric is one series whichever path a request took.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::held;

pub const REQUESTS: &str = "meridian_router_requests";
pub const TTFB: &str = "meridian_router_time_to_first_byte_seconds";
pub const DURATION: &str = "meridian_router_request_duration_seconds";
pub const DECISIONS: &str = "meridian_router_routing_decisions";
pub const UPSTREAM_ERRORS: &str = "meridian_router_upstream_errors";
pub const FAILOVERS_REFUSED: &str = "meridian_router_failovers_refused";
pub const IN_FLIGHT: &str = "meridian_router_in_flight_requests";

/// (metric, label names, label values)
type Series = (&'static str, &'static [&'static str], Vec<String>);

struct Histogram {
    counts: Vec<u64>, // per bucket, not cumulative
    sum: f64,
    count: u64,
}

/// A sample as Prometheus' text format names it: `<metric>_total`, `<metric>_bucket`...
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

pub struct Metrics {
    bounds: Vec<f64>,
    bound_labels: Vec<String>,
    counters: Mutex<HashMap<Series, f64>>,
    histograms: Mutex<HashMap<Series, Histogram>>,
}

impl Metrics {
    /// `bucket_labels`: the histograms' upper bounds as the Python app writes them.
    pub fn new(bucket_labels: &[String]) -> Result<Self, String> {
        let bounds = bucket_labels
            .iter()
            .map(|label| {
                label
                    .parse::<f64>()
                    .map_err(|_| format!("bucket {label:?}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Metrics {
            bounds,
            bound_labels: bucket_labels.to_vec(),
            counters: Mutex::new(HashMap::new()),
            histograms: Mutex::new(HashMap::new()),
        })
    }

    pub fn count(&self, metric: &'static str, names: &'static [&'static str], values: &[&str]) {
        let series = (
            metric,
            names,
            values.iter().map(|v| v.to_string()).collect(),
        );
        *held(&self.counters).entry(series).or_insert(0.0) += 1.0;
    }

    pub fn observe(&self, metric: &'static str, region: &str, model: &str, seconds: f64) {
        let series: Series = (
            metric,
            &["region", "model"],
            vec![region.to_string(), model.to_string()],
        );
        let mut histograms = held(&self.histograms);
        let histogram = histograms.entry(series).or_insert_with(|| Histogram {
            counts: vec![0; self.bounds.len() + 1],
            sum: 0.0,
            count: 0,
        });
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        histogram.counts[bucket] += 1;
        histogram.sum += seconds;
        histogram.count += 1;
    }

    /// Every sample, `gauges` (name, labels, value) appended as they are.
    pub fn samples(&self, gauges: Vec<Sample>) -> Vec<Sample> {
        let labelled = |names: &[&str], values: &[String]| -> Vec<(String, String)> {
            names
                .iter()
                .zip(values)
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect()
        };
        let mut out: Vec<Sample> = held(&self.counters)
            .iter()
            .map(|((metric, names, values), value)| Sample {
                name: format!("{metric}_total"),
                labels: labelled(names, values),
                value: *value,
            })
            .collect();
        for ((metric, names, values), histogram) in held(&self.histograms).iter() {
            let labels = labelled(names, values);
            let mut cumulative = 0;
            let bounds = self.bound_labels.iter().map(String::as_str).chain(["+Inf"]);
            for (bound, count) in bounds.zip(&histogram.counts) {
                cumulative += count;
                let mut with_bound = labels.clone();
                with_bound.push(("le".to_string(), bound.to_string()));
                out.push(Sample {
                    name: format!("{metric}_bucket"),
                    labels: with_bound,
                    value: cumulative as f64,
                });
            }
            out.push(Sample {
                name: format!("{metric}_count"),
                labels: labels.clone(),
                value: histogram.count as f64,
            });
            out.push(Sample {
                name: format!("{metric}_sum"),
                labels,
                value: histogram.sum,
            });
        }
        out.extend(gauges);
        out
    }
}
