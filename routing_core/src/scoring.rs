//! Which region answers a request soonest: an estimate of time to first token per region,
//! and a choice among them that keeps shared prefixes and sessions where they already are
//! and does not flap. Pure: plain data in, a decision out. The model behind the estimate
//! is explained in geo_router/policy/scoring.py, the Python face of this code.

use std::cmp::Ordering;

use crate::memory::{Key, RoutingMemory};

// Read from Python by attribute (the `python` feature) and from JSON (`serde`), field by
// field under these names: geo.py's LatLon, replica_model.py's ReplicaProfile, spec.py's
// ScoringSpec and geo_router/policy/scoring.py's RegionLoad.
#[derive(Clone, Copy)]
#[cfg_attr(feature = "python", derive(pyo3::FromPyObject))]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

/// The network model's constants, declared in meridian_core (geo.py, rtt.py).
#[derive(Clone, Copy)]
pub struct Network {
    pub earth_radius_km: f64,
    pub rtt_intercept_ms: f64,
    pub rtt_ms_per_km: f64,
}

impl Network {
    pub fn haversine_km(&self, a: LatLon, b: LatLon) -> f64 {
        let (phi1, phi2) = (a.lat.to_radians(), b.lat.to_radians());
        let dphi = phi2 - phi1;
        let dlmb = (b.lon - a.lon).to_radians();
        let h = squared((dphi / 2.0).sin()) + phi1.cos() * phi2.cos() * squared((dlmb / 2.0).sin());
        2.0 * self.earth_radius_km * f64::min(1.0, h.sqrt()).asin()
    }

    pub fn prior_rtt_ms(&self, distance_km: f64) -> f64 {
        self.rtt_intercept_ms + self.rtt_ms_per_km * distance_km
    }
}

/// `base ** exponent` as Python computes it, with libm's pow. The compiler would turn
/// pow(x, 2) into x * x and pow(0.5, y) into exp2(-y), which differ from pow in the last bit
/// now and then; reading the operands at run time keeps it pow, so the scorer gives the
/// same answers whichever language calls it.
pub fn pow_as_python(base: f64, exponent: f64) -> f64 {
    // SAFETY: reads of two initialised locals.
    let (base, exponent) = unsafe {
        (
            std::ptr::read_volatile(&base),
            std::ptr::read_volatile(&exponent),
        )
    };
    base.powf(exponent)
}

fn squared(x: f64) -> f64 {
    pow_as_python(x, 2.0)
}

/// A region's replica speed: meridian_core/replica_model.py's `ReplicaProfile`.
#[derive(Clone, Copy)]
#[cfg_attr(feature = "python", derive(pyo3::FromPyObject))]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct Profile {
    pub prefill_tokens_per_s: f64,
    pub decode_base_s: f64,
    pub decode_per_seq_s: f64,
    pub kv_capacity_tokens: i64,
    pub max_num_seqs: i64,
    pub max_batched_tokens: i64,
}

impl Profile {
    pub fn decode_step_s(&self, batch: f64) -> f64 {
        self.decode_base_s + self.decode_per_seq_s * f64::max(batch, 1.0)
    }

    /// Time to prefill a prompt while `decoding` sequences share every step it rides in.
    pub fn prefill_s(&self, prompt_tokens: f64, decoding: f64) -> f64 {
        let steps = f64::max(prompt_tokens / self.max_batched_tokens as f64, 1.0);
        let decode_share = if decoding > 0.0 {
            self.decode_per_seq_s * decoding
        } else {
            0.0
        };
        prompt_tokens / self.prefill_tokens_per_s + steps * (self.decode_base_s + decode_share)
    }
}

/// The spec's `router.scoring`.
#[derive(Clone, Copy)]
#[cfg_attr(feature = "python", derive(pyo3::FromPyObject))]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct Scoring {
    pub affinity_margin_ms: f64,
    pub hysteresis_ms: f64,
    pub spill_rtt_factor: f64,
    pub mean_rtt_budget: f64,
    pub typical_prompt_tokens: i64,
    pub typical_output_tokens: i64,
    pub max_hold_ms: f64,
}

/// One region as the router sees it at one instant.
#[cfg_attr(feature = "python", derive(pyo3::FromPyObject))]
pub struct RegionLoad {
    pub name: String,
    pub location: LatLon,
    pub ready_replicas: f64,
    pub running: f64,
    pub waiting: f64,
    pub in_flight: f64,
    pub kv_cache_usage: f64,
    pub rtt_correction_ms: f64,
    pub cold_start_ms: f64,
}

impl RegionLoad {
    pub fn cold(&self) -> bool {
        self.ready_replicas == 0.0
    }
}

pub struct RequestFacts {
    pub client: LatLon,
    pub prompt_tokens: i64,
    pub prefix_blocks: Vec<Key>,
    pub tokens_per_block: i64,
    pub session: Option<Key>,
    pub cell: Option<Key>, // a coarse client area, for hysteresis
}

#[derive(Clone)]
pub struct Estimate {
    pub region: String,
    pub rtt_ms: f64,
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub cached_tokens: i64,
}

impl Estimate {
    pub fn ttft_ms(&self) -> f64 {
        self.rtt_ms + self.queue_ms + self.prefill_ms
    }
}

#[derive(Clone)]
pub struct RouteDecision {
    pub ranked: Vec<String>,  // best first: the order to try regions in
    pub reason: &'static str, // nearest | load | affinity | session | hold | spill
    pub estimates: Vec<Estimate>,
    pub home_rtt_ms: f64, // the nearest region's, which a spill's extra RTT is counted from
    pub rtt_allowance_ms: f64, // the extra RTT the answer may add on the mean
}

impl RouteDecision {
    /// The RTT answering from `region` adds over the nearest region's.
    pub fn extra_rtt_ms(&self, region: &str) -> f64 {
        let rtt = self
            .estimates
            .iter()
            .find(|e| e.region == region)
            .map_or(self.home_rtt_ms, |e| e.rtt_ms);
        f64::max(0.0, rtt - self.home_rtt_ms)
    }
}

pub fn estimate(
    region: &RegionLoad,
    request: &RequestFacts,
    cached_tokens: i64,
    profile: &Profile,
    scoring: &Scoring,
    network: &Network,
) -> Estimate {
    let distance = network.haversine_km(request.client, region.location);
    let rtt = f64::max(
        0.0,
        network.prior_rtt_ms(distance) + region.rtt_correction_ms,
    );
    let replicas = f64::max(1.0, region.ready_replicas);
    // Polled counts lag by a poll interval; the router's own count is current. Whichever
    // says more is outstanding is nearer the truth; what is not running waits.
    let outstanding = f64::max(region.running + region.waiting, region.in_flight);
    let running = region.running / replicas;
    let waiting = f64::max(0.0, outstanding - region.running) / replicas;
    let prefill_ahead_s =
        waiting * profile.prefill_s(scoring.typical_prompt_tokens as f64, running);
    let typical_tokens = scoring.typical_prompt_tokens + scoring.typical_output_tokens;
    let slots = i64::max(
        1,
        i64::min(
            profile.max_num_seqs,
            profile.kv_capacity_tokens / typical_tokens,
        ),
    ) as f64;
    let beyond_slots = f64::max(0.0, running + waiting + 1.0 - slots);
    let slot_wait_s =
        beyond_slots * scoring.typical_output_tokens as f64 * profile.decode_step_s(slots) / slots;
    let mut queue = 1000.0 * f64::max(prefill_ahead_s, slot_wait_s);
    if region.cold() {
        queue += region.cold_start_ms;
    }
    // A nearly full KV cache means preemption and recomputation.
    let pressure = if region.kv_cache_usage > 0.9 {
        1.0 / f64::max(0.05, 1.0 - region.kv_cache_usage)
    } else {
        1.0
    };
    let uncached = i64::max(0, request.prompt_tokens - cached_tokens);
    let prefill = 1000.0 * profile.prefill_s(uncached as f64, running) * pressure;
    Estimate {
        region: region.name.clone(),
        rtt_ms: rtt,
        queue_ms: queue,
        prefill_ms: prefill,
        cached_tokens: i64::min(cached_tokens, request.prompt_tokens),
    }
}

fn by_cost_then_name(a: (f64, &str), b: (f64, &str)) -> Ordering {
    a.0.partial_cmp(&b.0)
        .unwrap_or(Ordering::Equal)
        .then_with(|| a.1.cmp(b.1))
}

/// Rank the regions (all able to serve) for `request`; None if there are none.
/// `profiles[i]` is `regions[i]`'s replica profile.
///
/// A cold region (no ready replica yet) is held for when the estimate says waiting for
/// its start is sooner than going elsewhere ("hold"); when the nearest region is cold
/// and another wins, the request spills ("spill").
pub fn choose(
    regions: &[RegionLoad],
    request: &RequestFacts,
    memory: &mut RoutingMemory,
    profiles: &[Profile],
    scoring: &Scoring,
    network: &Network,
) -> Option<RouteDecision> {
    assert_eq!(
        regions.len(),
        profiles.len(),
        "one replica profile per region"
    );
    if regions.is_empty() {
        return None;
    }
    let distance = |r: &RegionLoad| network.haversine_km(request.client, r.location);
    let nearest = regions
        .iter()
        .min_by(|a, b| by_cost_then_name((distance(a), &a.name), (distance(b), &b.name)))?
        .name
        .clone();
    // Cold regions slower to start than a request may wait go last, unless all are.
    let mut too_cold: Vec<bool> = regions
        .iter()
        .map(|r| r.cold() && r.cold_start_ms > scoring.max_hold_ms)
        .collect();
    if too_cold.iter().all(|&c| c) {
        too_cold.iter_mut().for_each(|c| *c = false);
    }
    let estimates: Vec<Estimate> = regions
        .iter()
        .zip(profiles)
        .map(|(r, profile)| {
            let held = memory
                .prefixes
                .cached_blocks(&r.name, &request.prefix_blocks) as i64;
            estimate(
                r,
                request,
                held * request.tokens_per_block,
                profile,
                scoring,
                network,
            )
        })
        .collect();
    let previous: Option<String> = request
        .cell
        .and_then(|cell| memory.last_choice.get(&cell).cloned());
    let home = regions.iter().position(|r| r.name == nearest)?;
    let home_rtt = estimates[home].rtt_ms;

    let ttft = |i: usize| {
        let sticky = previous.as_deref() == Some(estimates[i].region.as_str());
        estimates[i].ttft_ms() - if sticky { scoring.hysteresis_ms } else { 0.0 }
    };
    // Leaving the nearest region costs its extra RTT this many times over: `spill_rtt_factor`,
    // marked up while spills run over the mean RTT budget.
    let factor = scoring.spill_rtt_factor * memory.spill_price.markup;
    let cost = |i: usize| ttft(i) + (factor - 1.0) * f64::max(0.0, estimates[i].rtt_ms - home_rtt);
    let ranked_by_cost = |indices: Vec<usize>| {
        let mut keyed: Vec<(f64, usize)> = indices.into_iter().map(|i| (cost(i), i)).collect();
        keyed.sort_by(|a, b| {
            by_cost_then_name((a.0, &estimates[a.1].region), (b.0, &estimates[b.1].region))
        });
        keyed.into_iter().map(|(_, i)| i).collect::<Vec<usize>>()
    };

    let mut order = ranked_by_cost((0..regions.len()).filter(|&i| !too_cold[i]).collect());
    let mut best = order[0];
    let mut reason = if best == home { "nearest" } else { "load" };
    if let Some((sticky, why)) = sticky_region(request, memory, &estimates, &too_cold) {
        // A session stays where it is while its TTFT is within the margin of the best's; a
        // cached prefix pulls only within the margin of the best's cost, so it does not drag
        // a request away from its nearest region that the spill price would keep home.
        let held = |i: usize| if why == "session" { ttft(i) } else { cost(i) };
        if sticky != best && held(sticky) <= held(best) + scoring.affinity_margin_ms {
            best = sticky;
            reason = why;
            order.retain(|&i| i != sticky);
            order.insert(0, sticky);
        } else if sticky == best && reason == "load" {
            reason = why;
        }
    }
    if regions[best].cold() {
        reason = "hold";
    } else if regions[home].cold() {
        reason = "spill";
    }
    order.extend(ranked_by_cost(
        (0..regions.len()).filter(|&i| too_cold[i]).collect(),
    ));
    Some(RouteDecision {
        ranked: order.iter().map(|&i| estimates[i].region.clone()).collect(),
        reason,
        estimates: order.iter().map(|&i| estimates[i].clone()).collect(),
        home_rtt_ms: home_rtt,
        rtt_allowance_ms: scoring.mean_rtt_budget * home_rtt,
    })
}

/// The region a session or a cached prefix pulls this request towards, and why.
fn sticky_region(
    request: &RequestFacts,
    memory: &mut RoutingMemory,
    estimates: &[Estimate],
    too_cold: &[bool],
) -> Option<(usize, &'static str)> {
    let eligible = |i: &usize| !too_cold[*i];
    if let Some(session) = request.session {
        if let Some(region) = memory.sessions.get(&session) {
            if let Some(i) = (0..estimates.len())
                .filter(eligible)
                .find(|&i| &estimates[i].region == region)
            {
                return Some((i, "session"));
            }
        }
    }
    // The most cached tokens, then the soonest; the first such on a tie.
    let mut holding: Option<usize> = None;
    for i in (0..estimates.len())
        .filter(eligible)
        .filter(|&i| estimates[i].cached_tokens > 0)
    {
        let better = match holding {
            None => true,
            Some(h) => {
                let (e, b) = (&estimates[i], &estimates[h]);
                e.cached_tokens > b.cached_tokens
                    || (e.cached_tokens == b.cached_tokens && -e.ttft_ms() > -b.ttft_ms())
            }
        };
        if better {
            holding = Some(i);
        }
    }
    holding.map(|i| (i, "affinity"))
}

/// `region` answered `request`, routed by `decision`.
pub fn remember(
    memory: &mut RoutingMemory,
    region: &str,
    request: &RequestFacts,
    decision: &RouteDecision,
) {
    memory
        .spill_price
        .observe(decision.extra_rtt_ms(region), decision.rtt_allowance_ms);
    memory.prefixes.record(region, &request.prefix_blocks);
    if let Some(session) = request.session {
        memory.sessions.put(session, region.to_string());
    }
    if let Some(cell) = request.cell {
        memory.last_choice.put(cell, region.to_string());
    }
}
