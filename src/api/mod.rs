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
mod status;
mod types;

pub use client::{CallObserver, ClientConfig, DynamicsClient, DEFAULT_BASE_URL};
pub use error::{ApiError, ApiErrorKind, Endpoint, RemoteErrorBody};
pub use limit::{with_priority, Priority};
pub use retry::{parse_retry_after, MAX_REMOTE_WAIT};
pub use secret::{AccountId, ApiSecret};
pub use status::RemoteStatus;
pub use types::{
    BatchResult, DynamicsConfig, DynamicsState, GenerateReply, GenerateRequest, ModelRef,
    Regeneration, UpdateReply, UpdateRequest,
};
