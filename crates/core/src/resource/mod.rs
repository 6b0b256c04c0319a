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
    to_yaml(&AgentDynamics::crd()).expect("the CRD always serializes")
}

/// The purchase ledger's CRD as YAML, exactly as committed under `crds/`.
pub fn ledger_crd_yaml() -> String {
    to_yaml(&DynamicsLedger::crd()).expect("the CRD always serializes")
}

/// YAML as the project writes it (the CRDs, `-o yaml`, generated files): long strings stay
/// on one line each instead of being folded at 80 columns, so that a changed string is a
/// one-line diff and a search finds it whole; multi-line strings are literal blocks.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    serde_saphyr::to_string_with_options(value, options)
}

/// Label a Secret must carry for the operator to use it through `spec.apiSecretRef`; the
/// operator's Secret watch selects on it, so it neither uses nor caches other Secrets.
pub const API_SECRET_LABEL: &str = "dynamics.bithuman.ai/api-secret";
