//! API keys' rate limits as token buckets, pure: the caller passes the time. One table is
//! shared by the router's Python app and its compiled front, so a key's limits hold
//! across both (geo_router/policy/ratelimit.py is its Python face).

use std::collections::HashMap;

/// Holds up to `capacity`; refills `capacity` per `period_s` continuously.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    period_s: f64,
    level: f64,
    updated_at: f64,
}

impl TokenBucket {
    pub fn new(capacity: f64, period_s: f64) -> Self {
        TokenBucket {
            capacity,
            period_s,
            level: capacity,
            updated_at: f64::NEG_INFINITY,
        }
    }

    fn refill(&mut self, now: f64) {
        let rate_per_s = self.capacity / self.period_s;
        let refilled = self.level + (now - self.updated_at).max(0.0) * rate_per_s;
        self.level = self.capacity.min(refilled);
        self.updated_at = self.updated_at.max(now);
    }

    /// Seconds until `amount` could be taken (0 if now); infinite if it never fits.
    pub fn wait_s(&mut self, amount: f64, now: f64) -> f64 {
        self.refill(now);
        if amount > self.capacity {
            return f64::INFINITY;
        }
        f64::max(0.0, (amount - self.level) / (self.capacity / self.period_s))
    }

    /// What it holds at `now`.
    pub fn level_at(&mut self, now: f64) -> f64 {
        self.refill(now);
        self.level
    }

    pub fn take(&mut self, amount: f64, now: f64) {
        self.refill(now);
        self.level -= amount;
    }

    /// Return what was taken and not used; a negative amount takes what was used beyond it.
    pub fn give_back(&mut self, amount: f64, now: f64) {
        self.refill(now);
        self.level = self.capacity.min(self.level + amount);
    }
}

/// A key's requests-per-minute and tokens-per-minute buckets, taken together or not at all.
#[derive(Clone, Debug)]
pub struct KeyLimits {
    pub requests: Option<TokenBucket>,
    pub tokens: Option<TokenBucket>,
}

impl KeyLimits {
    pub fn per_minute(requests: Option<f64>, tokens: Option<f64>) -> Self {
        KeyLimits {
            requests: requests.map(|capacity| TokenBucket::new(capacity, 60.0)),
            tokens: tokens.map(|capacity| TokenBucket::new(capacity, 60.0)),
        }
    }

    /// Each limit's bucket with what a request for `tokens` takes from it.
    fn demands(
        &mut self,
        tokens: f64,
    ) -> impl Iterator<Item = (&'static str, &mut TokenBucket, f64)> {
        let requests = self.requests.as_mut().map(|b| ("requests", b, 1.0));
        let tokens = self.tokens.as_mut().map(|b| ("tokens", b, tokens));
        requests.into_iter().chain(tokens)
    }

    /// Take one request and `tokens` if both fit; else take nothing and return the wait in s.
    pub fn admit(&mut self, tokens: f64, now: f64) -> f64 {
        let wait = self
            .demands(tokens)
            .map(|(_, bucket, amount)| bucket.wait_s(amount, now))
            .fold(0.0, f64::max);
        if wait == 0.0 {
            for (_, bucket, amount) in self.demands(tokens) {
                bucket.take(amount, now);
            }
        }
        wait
    }

    /// Give back all an admitted request took: it was never sent anywhere.
    pub fn refund(&mut self, tokens: f64, now: f64) {
        for (_, bucket, amount) in self.demands(tokens) {
            bucket.give_back(amount, now);
        }
    }

    /// A request charged `charged` tokens ahead turned out to use `used` (its answer's usage).
    pub fn settle(&mut self, charged: f64, used: f64, now: f64) {
        if let Some(tokens) = self.tokens.as_mut() {
            tokens.give_back(charged - used, now);
        }
    }

    /// The limit that keeps a request for `tokens` waiting longest now: the one that refused it.
    pub fn limiting(&mut self, tokens: f64, now: f64) -> &'static str {
        let mut longest = ("requests", f64::NEG_INFINITY);
        for (limit, bucket, amount) in self.demands(tokens) {
            let wait = bucket.wait_s(amount, now);
            if wait > longest.1 {
                longest = (limit, wait);
            }
        }
        longest.0
    }
}

/// Every key's limits, by the key's name (the spec's keys: a fixed set).
#[derive(Debug, Default)]
pub struct RateLimits(HashMap<String, KeyLimits>);

impl RateLimits {
    pub fn new(keys: impl IntoIterator<Item = (String, KeyLimits)>) -> Self {
        RateLimits(keys.into_iter().collect())
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut KeyLimits> {
        self.0.get_mut(key)
    }

    /// Whether `key`'s requests are charged tokens, and so settled on their usage.
    pub fn limits_tokens(&self, key: &str) -> bool {
        self.0
            .get(key)
            .map_or(false, |limits| limits.tokens.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_takes_from_no_bucket() {
        let mut limits = KeyLimits::per_minute(Some(10.0), Some(100.0));
        assert_eq!(limits.admit(90.0, 0.0), 0.0);
        assert!(limits.admit(20.0, 0.0) > 0.0);
        assert_eq!(limits.requests.as_mut().unwrap().level_at(0.0), 9.0);
        assert_eq!(limits.limiting(20.0, 0.0), "tokens");
    }

    #[test]
    fn a_refund_gives_back_what_was_taken() {
        let mut limits = KeyLimits::per_minute(Some(1.0), Some(100.0));
        assert_eq!(limits.admit(100.0, 5.0), 0.0);
        limits.refund(100.0, 5.0);
        assert_eq!(limits.admit(100.0, 5.0), 0.0);
    }
}
