//! From specs to the resources careplane must hold: the typed model lives
//! in `careplane-model`; this re-exports it where the engine's modules
//! look for it.

pub use careplane_model::*;
