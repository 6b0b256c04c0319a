//! The bitHuman API secret, kept out of logs, Debug output and error messages.

use std::fmt;

use dynamics_core::wire::AccountId;

/// An `api-secret` value. Deliberately not `Serialize`, and both `Debug` and
/// `Display` print a placeholder, so the secret cannot leak through logging,
/// status writes or error messages by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiSecret(String);

impl ApiSecret {
    /// Wraps a secret. Trailing whitespace is dropped because secrets usually
    /// come from files or Kubernetes Secrets that end in a newline.
    pub fn new(secret: impl Into<String>) -> Self {
        let mut s = secret.into();
        let keep = s.trim_end().len();
        s.truncate(keep);
        ApiSecret(s)
    }

    /// The raw value, for the `api-secret` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiSecret(***)")
    }
}

impl fmt::Display for ApiSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl ApiSecret {
    /// A secret as a Secret's key holds it, read the same way by the controller and the file
    /// mode: lossy text, trailing whitespace dropped; empty means there is none.
    pub fn from_key_bytes(bytes: &[u8]) -> Option<ApiSecret> {
        Some(ApiSecret::new(String::from_utf8_lossy(bytes).into_owned())).filter(|s| !s.is_empty())
    }
}

impl From<String> for ApiSecret {
    fn from(s: String) -> Self {
        ApiSecret::new(s)
    }
}

impl From<&str> for ApiSecret {
    fn from(s: &str) -> Self {
        ApiSecret::new(s)
    }
}

impl ApiSecret {
    /// A stable name for the account, kept in the purchase ledger for budgets: the first 16
    /// hex digits of the key's SHA-256. It names the account across restarts and replicas;
    /// it does not give the key back (API keys are long random strings).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.0.as_bytes()))[..16].to_string()
    }

    /// The account this secret belongs to, for limits kept per account: a keyed hash of the
    /// secret, keyed by a value drawn once per process, so it says nothing about the secret and
    /// differs from run to run. Two Secrets holding the same value are one account.
    pub fn account(&self) -> AccountId {
        use std::hash::BuildHasher;
        static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        AccountId::from_raw(KEY.get_or_init(Default::default).hash_one(&self.0))
    }
}

/// Replaces every occurrence of the secret in `text`, for strings that came
/// from the remote or from transport errors and might echo it back.
pub(crate) fn redact(text: &str, secret: &ApiSecret) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret.expose(), "***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_account_per_secret_value() {
        let a = ApiSecret::new("key-a");
        assert_eq!(a.account(), ApiSecret::new("key-a\n").account());
        assert_ne!(a.account(), ApiSecret::new("key-b").account());
        assert!(!format!("{:?}", a.account()).contains("key-a"));
    }

    #[test]
    fn trims_trailing_whitespace_only() {
        let s = ApiSecret::new("  abc123\r\n\t ");
        assert_eq!(s.expose(), "  abc123");
    }

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = ApiSecret::new("topsecret-value");
        assert_eq!(format!("{s:?}"), "ApiSecret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(ApiSecret(***))");
    }

    #[test]
    fn redact_replaces_every_occurrence() {
        let s = ApiSecret::new("k3y");
        assert_eq!(redact("a k3y b k3y", &s), "a *** b ***");
        assert_eq!(redact("nothing", &ApiSecret::new("")), "nothing");
    }
}
