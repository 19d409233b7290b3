//! From specs to the resources careplane must hold: the typed model lives
//! in `careplane-model`; this re-exports it where the engine's modules
//! look for it.

pub use careplane_model::*;

#[cfg(test)]
mod tests {
    /// `validate` refuses exactly the settings the runtime refuses.
    #[test]
    fn protected_postgres_settings_agree() {
        assert_eq!(
            careplane_spec::PROTECTED_PG_SETTINGS,
            careplane_local::pg::PROTECTED_SETTINGS
        );
    }
}
