//! Meridian's routing scorer, compiled: the one implementation that the live router and
//! the routing simulator both call (through geo_router/policy/scoring.py, with the
//! `python` feature) and that a compiled data plane links directly.

pub mod limits;
pub mod memory;
pub mod rtt_corrector;
pub mod scoring;

#[cfg(feature = "python")]
mod python;

#[cfg(feature = "front")]
pub mod front;
#[cfg(all(feature = "python", feature = "front"))]
mod python_front;

#[cfg(any(feature = "python", feature = "front"))]
use std::sync::{Mutex, MutexGuard};

/// A mutex's value, whether or not a thread panicked holding it: what is kept behind one
/// here (memory, corrector, counts) stays usable.
#[cfg(any(feature = "python", feature = "front"))]
pub(crate) fn held<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The Python module `routing_core`: the scorer's face, and the front's when built with it.
#[cfg(feature = "python")]
#[pyo3::pymodule]
fn routing_core(_py: pyo3::Python, module: &pyo3::types::PyModule) -> pyo3::PyResult<()> {
    python::register(module)?;
    #[cfg(feature = "front")]
    python_front::register(module)?;
    Ok(())
}
