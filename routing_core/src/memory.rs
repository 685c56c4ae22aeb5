//! What the scorer remembers between requests: where prompt blocks went, sessions, each
//! client area's last region, and the price of spilling. Every map is bounded.
//!
//! Keys are 64-bit hashes of the caller's keys (prompt blocks, sessions, client areas),
//! made here so that every caller (the Python router, the compiled front) keys alike.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use lru::LruCache;

pub type Key = u64;

/// Prompt-cache affinity is tracked in blocks of this many bytes of prompt text (about
/// 64 tokens), and over at most this many leading blocks.
pub const BLOCK_BYTES: usize = 256;
pub const MAX_BLOCKS: usize = 64;

/// A text's key (a session id): the same in every process of one build.
pub fn text_key(text: &[u8]) -> Key {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// A client area's key: whole degrees of latitude and longitude, and the model.
pub fn cell_key(lat: i64, lon: i64, model: &str) -> Key {
    let mut hasher = DefaultHasher::new();
    (lat, lon, model).hash(&mut hasher);
    hasher.finish()
}

/// Chained hashes of the prompt's leading whole blocks: block i's key covers blocks 0..i,
/// so two prompts share a block's key only if they share everything up to its end.
pub fn prefix_blocks(text: &[u8]) -> Vec<Key> {
    let mut hasher = DefaultHasher::new();
    text.chunks_exact(BLOCK_BYTES)
        .take(MAX_BLOCKS)
        .map(|block| {
            block.hash(&mut hasher);
            hasher.finish()
        })
        .collect()
}

/// Python's `round`: halves to even, so a client area is the same cell in both languages.
pub fn round_half_even(x: f64) -> f64 {
    let rounded = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        rounded
    }
}

/// Which regions recently served which prompt blocks: where a prefix is likely cached.
pub struct PrefixIndex {
    regions_of_block: LruCache<Key, Vec<String>>,
}

impl PrefixIndex {
    pub fn new(capacity_blocks: usize) -> Self {
        PrefixIndex {
            regions_of_block: LruCache::new(capacity_blocks),
        }
    }

    /// How many leading blocks `region` holds (chained hashes: a match implies its prefix).
    pub fn cached_blocks(&mut self, region: &str, blocks: &[Key]) -> usize {
        let mut held = 0;
        for block in blocks {
            match self.regions_of_block.get(block) {
                Some(regions) if regions.iter().any(|r| r == region) => held += 1,
                _ => break,
            }
        }
        held
    }

    pub fn record(&mut self, region: &str, blocks: &[Key]) {
        for block in blocks {
            if let Some(regions) = self.regions_of_block.get_mut(block) {
                if !regions.iter().any(|r| r == region) {
                    regions.push(region.to_string());
                }
            } else {
                self.regions_of_block.put(*block, vec![region.to_string()]);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.regions_of_block.len()
    }
}

/// A markup on `spill_rtt_factor`, kept so that the mean RTT of the answers stays within
/// the spec's `mean_rtt_budget` of the nearest regions' mean RTT.
///
/// The markup is the price of the budget's constraint, found as a Lagrange multiplier is:
/// each answer moves its logarithm by `step` times what it spent over its allowance (the
/// budget's share of its nearest region's RTT), in units of the recent mean allowance, so
/// it stops moving where spills spend the allowance on average. It never falls below 1,
/// and one answer moves it by a factor of at most e^`max_move`. Spills then go where they
/// buy the most TTFT per millisecond of RTT, whatever the load and the fleet's geography.
#[derive(Clone)]
pub struct SpillPrice {
    pub markup: f64,
    window: f64,
    step: f64,
    max_move: f64,
    ceiling: f64,
    allowance_ms: f64, // a running mean over about `window` answers
}

impl SpillPrice {
    pub fn new(window: f64, step: f64, max_move: f64, ceiling: f64) -> Self {
        SpillPrice {
            markup: 1.0,
            window,
            step,
            max_move,
            ceiling,
            allowance_ms: 0.0,
        }
    }

    pub fn observe(&mut self, extra_ms: f64, allowance_ms: f64) {
        self.allowance_ms += (allowance_ms - self.allowance_ms) / self.window;
        let overspent = (extra_ms - allowance_ms) / f64::max(1.0, self.allowance_ms);
        let step = (-self.max_move).max(self.max_move.min(self.step * overspent));
        self.markup = f64::max(1.0, self.ceiling.min(self.markup * step.exp()));
    }
}

impl Default for SpillPrice {
    fn default() -> Self {
        SpillPrice::new(200.0, 0.02, 0.5, 1024.0)
    }
}

pub struct RoutingMemory {
    pub prefixes: PrefixIndex,
    pub sessions: LruCache<Key, String>,
    pub last_choice: LruCache<Key, String>,
    pub spill_price: SpillPrice,
}

impl RoutingMemory {
    pub fn new(capacity: usize) -> Self {
        RoutingMemory {
            prefixes: PrefixIndex::new(capacity),
            sessions: LruCache::new(capacity),
            last_choice: LruCache::new(capacity),
            spill_price: SpillPrice::default(),
        }
    }
}
