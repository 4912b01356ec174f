//! The one error type of the crate.
//!
//! Errors are for misuse and misconfiguration only. A rejected token is a
//! [`Decision`](crate::Decision), never an `Err`.

use std::fmt;

/// What kind of problem an [`Error`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is malformed or inconsistent.
    Config,
    /// The configuration enables a feature this build does not implement yet. No
    /// configuration is refused this way in this release (every Kong field is implemented);
    /// the kind stays for hosts that match on it.
    Unsupported,
}

/// An error naming the configuration field it is about, if any.
///
/// Its message never contains a secret, a token or an authorization server's response text.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.display())]
pub struct Error {
    kind: ErrorKind,
    field: Option<String>,
    message: String,
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Config,
            field: Some(field.into()).filter(|f: &String| !f.is_empty()),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Unsupported, field: Some(field.into()), message: message.into() }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The configuration field path the error is about, e.g. `claim_to_header[0].header`.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The message without the field path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True for configuration errors (including unsupported features).
    pub fn is_config(&self) -> bool {
        matches!(self.kind, ErrorKind::Config | ErrorKind::Unsupported)
    }
}

impl Error {
    fn display(&self) -> String {
        match &self.field {
            Some(field) => format!("{field}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("field", &self.field)
            .field("message", &self.message)
            .finish()
    }
}
