use std::path::PathBuf;

/// Everything this crate refuses, each naming where and what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value (SLO, calendar entry, percentage) is unusable.
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
    /// A time-zone name the bundled IANA database does not know.
    #[error(
        "{at}: unknown time zone {zone:?} (an IANA name such as \"Europe/Berlin\" is expected)"
    )]
    UnknownZone { at: String, zone: String },
    /// Date arithmetic left jiff's supported range or hit an impossible local time.
    #[error("{at}: {source}")]
    Time {
        at: String,
        #[source]
        source: jiff::Error,
    },
    /// An incident action that does not fit the incident's state.
    #[error("incident {incident}: {message}")]
    Incident { incident: String, message: String },
    /// Reading or writing the result store.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored month file that does not decode.
    #[error("{path}: corrupt at byte {offset}: {message}")]
    Corrupt {
        path: PathBuf,
        offset: usize,
        message: String,
    },
}

impl Error {
    pub(crate) fn invalid(at: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            at: at.into(),
            message: message.into(),
        }
    }
    pub(crate) fn time(at: impl Into<String>, source: jiff::Error) -> Self {
        Error::Time {
            at: at.into(),
            source,
        }
    }
}
