//! The `AgentDynamics` custom resource: spec, status, the CRD generated from them, and the
//! admission rules applied locally by the file mode.

pub mod ledger;
pub mod spec;
pub mod status;
pub mod validate;

pub use ledger::{
    DynamicsLedger, DynamicsLedgerSpec, GenerateInputs, LedgerHolder, LedgerPurchase, LedgerSpend,
};
pub use spec::{
    AdoptionPolicy, AgentDynamics, AgentDynamicsSpec, BatchResultSpec, DeletionPolicy,
    DynamicsBlock, ManagementPolicy, ModelRefSpec, SecretKeyRef,
};
pub use status::{AgentDynamicsStatus, GenerateOutcome, PendingGeneration};

use kube::CustomResourceExt;

/// Annotation whose every new value asks for one reconcile pass (Argo CD refresh, Flux reconcile).
pub const RECONCILE_REQUESTED_AT: &str = "dynamics.bithuman.ai/reconcile-requested-at";
/// Annotation that resolves a stall about money, once per value: `accept` takes what the API
/// shows as the purchase (nothing is sent), `retry` sends the pending call once more (counted).
/// Anything after an `@` only makes the value new (`dynamics-operator resolve` adds the time).
pub const RESOLVE: &str = "dynamics.bithuman.ai/resolve";
/// Annotation that approves one paid change where approval is required (`--require-approval`):
/// the key of the purchase (`status.generateHash` form) it approves, and no other.
pub const APPROVE: &str = "dynamics.bithuman.ai/approve";
/// Flux's annotation for the same (`reconcile.fluxcd.io/requestedAt`), accepted as well.
pub const FLUX_RECONCILE_REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";

/// The refresh an object asks for, echoed into `status.lastHandledReconcileAt` once handled: the
/// project's annotation, else Flux's. With both set, the project's wins.
pub fn refresh_request(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<&String> {
    annotations
        .get(RECONCILE_REQUESTED_AT)
        .or_else(|| annotations.get(FLUX_RECONCILE_REQUESTED_AT))
}
/// Finalizer that lets the operator disable remote dynamics before the object goes away.
pub const FINALIZER: &str = "dynamics.bithuman.ai/cleanup";

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&AgentDynamics::crd()).expect("the CRD always serializes")
}

/// The purchase ledger's CRD as YAML, exactly as committed under `crds/`.
pub fn ledger_crd_yaml() -> String {
    serde_yaml::to_string(&DynamicsLedger::crd()).expect("the CRD always serializes")
}

/// Label a Secret must carry for the operator to use it through `spec.apiSecretRef`; the
/// operator's Secret watch selects on it, so it neither uses nor caches other Secrets.
pub const API_SECRET_LABEL: &str = "dynamics.bithuman.ai/api-secret";
