//! The Dynamics API as data: requests, replies, remote statuses and error classes. The HTTP
//! client that sends and parses them lives in the operator crate (`api`).

mod error_kind;
mod status;
mod types;

use std::time::Duration;

pub use error_kind::{ApiErrorKind, Disposition};
pub use status::RemoteStatus;
pub use types::{
    BatchResult, DynamicsConfig, DynamicsState, GenerateReply, GenerateRequest, ModelRef,
    Regeneration, UpdateReply, UpdateRequest,
};

/// The longest wait the remote can impose through Retry-After. A longer value
/// (`18446744073709551615`, a date in the year 9999) is read as this, so a misbehaving or
/// hostile API cannot park an object for years, and no later `Instant + wait` can overflow.
pub const MAX_REMOTE_WAIT: Duration = Duration::from_secs(3600);

/// The account a secret belongs to, for limits kept per account (the generation guard, the
/// rate limit). Made by the client from the secret (`ApiSecret::account`); the number says
/// nothing about the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(u64);

impl AccountId {
    pub fn from_raw(id: u64) -> Self {
        AccountId(id)
    }
}
