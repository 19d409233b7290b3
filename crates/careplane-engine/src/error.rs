//! The engine's error.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] careplane_state::StateError),
    /// A target's own error (see [`Driver`]), kept whole for its causes.
    #[error(transparent)]
    Target(Box<dyn std::error::Error + Send + Sync>),
    /// A resource (planned or recorded) that does not have its kind's shape.
    #[error(transparent)]
    Model(#[from] careplane_model::ModelError),
    #[error("{what}")]
    Unsupported { what: String },
    #[error("{what}")]
    Inconsistent { what: String },
    /// An action failed; earlier actions stay applied and the next apply
    /// resumes from here.
    #[error("{action} failed: {source}")]
    ActionFailed {
        action: String,
        #[source]
        source: Box<EngineError>,
    },
    /// Guards that refused the plan before anything ran; one line each.
    #[error("nothing was changed:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Refused { problems: Vec<String> },
    /// The one authorization check (docs/design/0013) said no: nothing
    /// ran. The reason names the role or the MFA that is needed.
    #[error("refused: {reason}")]
    Denied { reason: String },
    /// access.db (grants in force, role usage for access reviews).
    #[error(transparent)]
    Access(#[from] careplane_identity::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub fn inconsistent(what: impl Into<String>) -> EngineError {
        EngineError::Inconsistent { what: what.into() }
    }
}
