//! The remote's generation status, open-ended: values we do not know are kept.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Status of an agent's dynamics as the remote reports it.
///
/// Only `Ready` and `Failed` are terminal. `Completed` is transitional in
/// bitHuman's API (post-processing still runs), so it is treated as in
/// progress. Unknown values are kept verbatim and are neither terminal nor in
/// progress, so callers can surface them without crashing or assuming ready.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RemoteStatus {
    Processing,
    Generating,
    Completed,
    Ready,
    Failed,
    Unknown(String),
}

impl RemoteStatus {
    /// Parses case-insensitively; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Self {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "processing" => RemoteStatus::Processing,
            "generating" => RemoteStatus::Generating,
            "completed" => RemoteStatus::Completed,
            "ready" => RemoteStatus::Ready,
            "failed" => RemoteStatus::Failed,
            _ => RemoteStatus::Unknown(s.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RemoteStatus::Processing => "processing",
            RemoteStatus::Generating => "generating",
            RemoteStatus::Completed => "completed",
            RemoteStatus::Ready => "ready",
            RemoteStatus::Failed => "failed",
            RemoteStatus::Unknown(s) => s,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, RemoteStatus::Ready | RemoteStatus::Failed)
    }

    /// Everything that is not terminal, unknown values included: a status this client does not
    /// know (`queued`, ...) is treated as work under way, never as "nothing there".
    pub fn is_in_progress(&self) -> bool {
        !self.is_terminal()
    }
}

impl std::str::FromStr for RemoteStatus {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(RemoteStatus::parse(s))
    }
}

impl From<&str> for RemoteStatus {
    fn from(s: &str) -> Self {
        RemoteStatus::parse(s)
    }
}

impl fmt::Display for RemoteStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RemoteStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RemoteStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(RemoteStatus::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_values_case_insensitively() {
        assert_eq!(RemoteStatus::parse("READY"), RemoteStatus::Ready);
        assert_eq!(
            RemoteStatus::parse(" Generating "),
            RemoteStatus::Generating
        );
        assert_eq!(RemoteStatus::parse("processing"), RemoteStatus::Processing);
        assert_eq!(RemoteStatus::parse("Completed"), RemoteStatus::Completed);
        assert_eq!(RemoteStatus::parse("failed"), RemoteStatus::Failed);
    }

    #[test]
    fn unknown_values_are_kept_verbatim_and_not_ready() {
        let s = RemoteStatus::parse("Queued-ish");
        assert_eq!(s, RemoteStatus::Unknown("Queued-ish".into()));
        assert_eq!(s.as_str(), "Queued-ish");
        assert!(!s.is_terminal());
        assert!(
            s.is_in_progress(),
            "an unknown status counts as work under way"
        );
    }

    #[test]
    fn terminal_and_in_progress_partition_known_values() {
        use RemoteStatus::*;
        for s in [Processing, Generating, Completed] {
            assert!(s.is_in_progress() && !s.is_terminal(), "{s}");
        }
        for s in [Ready, Failed] {
            assert!(s.is_terminal() && !s.is_in_progress(), "{s}");
        }
    }

    #[test]
    fn serde_round_trips_as_a_plain_string() {
        let v = serde_json::to_string(&RemoteStatus::Generating).unwrap();
        assert_eq!(v, "\"generating\"");
        let back: RemoteStatus = serde_json::from_str("\"Weird\"").unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), "\"Weird\"");
    }
}
