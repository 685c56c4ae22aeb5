//! Meridian's routing scorer, compiled: the one implementation that the live router and
//! the routing simulator both call (through geo_router/policy/scoring.py, with the
//! `python` feature) and that a compiled data plane links directly.

pub mod memory;
pub mod rtt_corrector;
pub mod scoring;

#[cfg(feature = "python")]
mod python;

#[cfg(feature = "front")]
pub mod front;
#[cfg(all(feature = "python", feature = "front"))]
mod python_front;
