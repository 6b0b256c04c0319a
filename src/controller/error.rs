//! The controller's error: what a pass or the Kubernetes API returned, with its source kept,
//! and a category for logs and metrics.

use std::time::Duration;

use crate::executor::{PassError, SaveError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Deletion cannot finish yet (the status says why); the finalizer stays.
    #[error("cleanup of {key} waits: {reason}")]
    CleanupWaiting {
        key: String,
        reason: String,
        after: Duration,
    },
}

impl Error {
    /// The requeue of a deletion that has to wait, however deep the finalizer helper wrapped it.
    pub(super) fn cleanup_wait(&self) -> Option<Duration> {
        use kube::runtime::finalizer::Error as FinalizerError;
        match self {
            Error::CleanupWaiting { after, .. } => Some(*after),
            Error::Finalizer(inner) => match inner.as_ref() {
                FinalizerError::CleanupFailed(e) | FinalizerError::ApplyFailed(e) => {
                    e.cleanup_wait()
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// What kind of failure this is, for the log line and the errors metric (a small fixed
    /// set of labels, like the condition reasons): a conflict, the status store, the
    /// Kubernetes API, a cleanup the Dynamics API refused, the finalizer, or a cleanup that waits.
    pub fn category(&self) -> &'static str {
        use kube::runtime::finalizer::Error as FinalizerError;
        match self {
            Error::Pass(PassError::Save(SaveError::Conflict)) => "WriteConflict",
            Error::Pass(PassError::Save(_)) => "StatusStore",
            Error::Pass(PassError::Cleanup { .. }) => "CleanupRefused",
            Error::Kube(_) => "KubernetesApi",
            Error::CleanupWaiting { .. } => "CleanupWaiting",
            Error::Finalizer(inner) => match inner.as_ref() {
                FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e.category(),
                _ => "Finalizer",
            },
        }
    }

    /// Another writer changed the object between our read and our status write.
    pub(super) fn is_write_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as FinalizerError;
        let pass = match self {
            Error::Pass(pass) => pass,
            Error::Finalizer(inner) => match inner.as_ref() {
                FinalizerError::ApplyFailed(Error::Pass(pass))
                | FinalizerError::CleanupFailed(Error::Pass(pass)) => pass,
                _ => return false,
            },
            Error::Kube(_) | Error::CleanupWaiting { .. } => return false,
        };
        matches!(pass, PassError::Save(SaveError::Conflict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_see_through_the_finalizer() {
        use kube::runtime::finalizer::Error as FinalizerError;
        let conflict = || Error::Pass(PassError::Save(SaveError::Conflict));
        let rows: Vec<(Error, &str)> = vec![
            (conflict(), "WriteConflict"),
            (
                Error::Pass(PassError::Save(SaveError::Gone("ns/a".into()))),
                "StatusStore",
            ),
            (
                Error::Finalizer(Box::new(FinalizerError::ApplyFailed(conflict()))),
                "WriteConflict",
            ),
            (
                Error::Finalizer(Box::new(FinalizerError::UnnamedObject)),
                "Finalizer",
            ),
            (
                Error::CleanupWaiting {
                    key: "ns/a".into(),
                    reason: "Timeout".into(),
                    after: Duration::from_secs(1),
                },
                "CleanupWaiting",
            ),
        ];
        for (err, category) in rows {
            assert_eq!(err.category(), category, "{err}");
        }
    }

    #[test]
    fn a_store_error_keeps_its_source() {
        let io = std::io::Error::other("disk full");
        let err = Error::Pass(PassError::Save(SaveError::store("writing the state", io)));
        let mut last: &dyn std::error::Error = &err;
        while let Some(source) = last.source() {
            last = source;
        }
        assert_eq!(
            last.to_string(),
            "disk full",
            "the chain ends at the store's own error"
        );
        assert!(
            err.to_string().contains("writing the state: disk full"),
            "{err}"
        );
    }
}
