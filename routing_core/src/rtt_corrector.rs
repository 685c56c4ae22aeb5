//! Per region, a smoothed (observed time to first byte − predicted TTFT).
//!
//! The distance prior knows nothing of a region's real network path or of engine speed;
//! the residual the router observes on answered requests corrects both. One observation
//! moves a correction by at most `max_step_ms` (a slow client or one odd request cannot
//! swing it), and a correction fades with `half_life_s` once no traffic confirms it (a
//! region traffic avoids is not held to an old reading).

use crate::scoring::pow_as_python;

pub struct RttCorrector {
    alpha: f64,
    limit_ms: f64,
    max_step_ms: f64,
    half_life_s: f64,
    // (region, correction ms, when learned), in the order regions were first learned; the
    // regions are the spec's, so it holds a handful.
    learned: Vec<(String, f64, f64)>,
}

impl RttCorrector {
    pub fn new(alpha: f64, limit_ms: f64, max_step_ms: f64, half_life_s: f64) -> Self {
        RttCorrector {
            alpha,
            limit_ms,
            max_step_ms,
            half_life_s,
            learned: Vec::new(),
        }
    }

    fn decayed(&self, value: f64, at: f64, now: f64) -> f64 {
        value * pow_as_python(0.5, f64::max(0.0, now - at) / self.half_life_s)
    }

    /// The region's learned correction; before any evidence, the fleet's average.
    ///
    /// Much of a residual is model error common to every region (engine speed, prompt
    /// size); a region not yet observed must not look faster just for that.
    pub fn correction_for(&self, region: &str, now: f64) -> f64 {
        if let Some((_, value, at)) = self.learned.iter().find(|(name, _, _)| name == region) {
            return self.decayed(*value, *at, now);
        }
        if self.learned.is_empty() {
            return 0.0;
        }
        let total: f64 = self
            .learned
            .iter()
            .map(|(_, value, at)| self.decayed(*value, *at, now))
            .sum();
        total / self.learned.len() as f64
    }

    /// `predicted_ms` includes the correction the request was routed with.
    pub fn observe(&mut self, region: &str, predicted_ms: f64, observed_ms: f64, now: f64) {
        if !(predicted_ms.is_finite() && observed_ms.is_finite()) {
            return;
        }
        let current = self.correction_for(region, now);
        let residual = observed_ms - (predicted_ms - current);
        let step = (-self.max_step_ms).max(self.max_step_ms.min(self.alpha * (residual - current)));
        let value = (-self.limit_ms).max(self.limit_ms.min(current + step));
        match self.learned.iter_mut().find(|(name, _, _)| name == region) {
            Some(entry) => *entry = (region.to_string(), value, now),
            None => self.learned.push((region.to_string(), value, now)),
        }
    }
}
