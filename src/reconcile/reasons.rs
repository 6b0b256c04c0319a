//! Condition reasons the core decides, spelled once. Remote errors carry their own reasons
//! (`ApiErrorKind::reason`), and the generation guard its waiting reasons.

pub const READY: &str = "Ready";
pub const SUSPENDED: &str = "Suspended";
pub const GENERATING: &str = "Generating";
pub const GENERATION_STARTED: &str = "GenerationStarted";
pub const REGENERATING: &str = "Regenerating";
/// Accepted; GET does not show the job yet.
pub const AWAITING_GENERATION: &str = "AwaitingGeneration";
/// No definite answer to a generate call yet; GET is watched for evidence.
pub const GENERATION_OUTCOME_PENDING: &str = "GenerationOutcomePending";
/// A generate call of unknown outcome that GET since showed: followed, not sent again.
pub const GENERATION_ADOPTED: &str = "GenerationAdopted";
pub const CONFLICT: &str = "Conflict";
pub const UNKNOWN_SPEC_FIELD: &str = "UnknownSpecField";
pub const GENERATION_FAILED: &str = "GenerationFailed";
pub const GENERATION_NOT_VISIBLE: &str = "GenerationNotVisible";
pub const GENERATION_OUTCOME_UNKNOWN: &str = "GenerationOutcomeUnknown";
pub const REMOTE_DYNAMICS_MISSING: &str = "RemoteDynamicsMissing";
/// The spec went back to generate inputs this object bought before.
pub const INPUTS_ALREADY_BOUGHT: &str = "InputsAlreadyBought";
pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
/// Ready: the agent's dynamics were there before this object and nothing was bought.
pub const ADOPTED: &str = "Adopted";
/// The purchase ledger could not be read; nothing is bought until it can.
pub const LEDGER_UNAVAILABLE: &str = "LedgerUnavailable";
/// The API reports a status this operator does not know, for longer than the visibility window.
pub const REMOTE_STATUS_UNKNOWN: &str = "RemoteStatusUnknown";
/// The stored record of purchases is older than what the API shows (a restored copy).
pub const STATE_OUTDATED: &str = "StateOutdated";
/// Event: a stall about money resolved by the user with `accept` (nothing sent).
pub const RESOLVED: &str = "Resolved";
/// A PUT made the API regenerate the agent's movements (counted like a generation).
pub const REGENERATION_STARTED: &str = "RegenerationStarted";
