//! Typed async client for bitHuman's Dynamics API.
//!
//! `generate` is sent once and never retried (it costs credits); `get` and
//! `update` retry transient failures with jittered exponential backoff.
//! Replies are parsed tolerantly (see `reply`), errors are classified into
//! [`ApiErrorKind`]s that map to Kubernetes condition reasons, and the
//! api-secret never appears in logs, Debug output or error messages.

mod client;
mod error;
mod limit;
mod reply;
mod retry;
mod secret;

pub use client::{CallObserver, ClientConfig, DynamicsClient, DEFAULT_BASE_URL};
pub use error::{ApiError, ApiErrorKind, Disposition, Endpoint, RemoteErrorBody};
pub use limit::{with_priority, Priority};
pub use reply::{parse_generate, parse_state, parse_update};
pub use retry::parse_retry_after;
pub use secret::ApiSecret;
// The wire types are the core's: the reconcile decisions read them too.
pub use dynamics_core::wire::{
    AccountId, BatchResult, DynamicsConfig, DynamicsState, GenerateReply, GenerateRequest,
    ModelRef, Regeneration, RemoteStatus, UpdateReply, UpdateRequest, MAX_REMOTE_WAIT,
};
