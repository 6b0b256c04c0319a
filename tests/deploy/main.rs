//! deploy/ against a real API server (the control plane of tests/controlplane, always a local
//! one: these tests install cluster-scoped RBAC and run an operator that watches every namespace,
//! which they must not do to a cluster of yours). One module per concern:
//!
//! * [`manifests`]: the CRD is the committed one, the Deployment is hardened and wired to the
//!   binary's real flags, overlays do what they say, the example Secret is only an example.
//! * [`dry_run`]: `kubectl apply --dry-run=server -k` of the base and every overlay, with no Pod
//!   Security warning (the operator's namespace enforces "restricted").
//! * [`rbac`]: least privilege, proven. The operator binary runs as the deploy's ServiceAccount
//!   (a token from the TokenRequest API) with the Deployment's own configuration through create,
//!   spec update and delete with leader election; the API server's audit log shows every verb
//!   the roles grant was used and none was refused. Then each granted verb is removed in turn and
//!   the operator fails without it (refused in the audit log, and "forbidden" in its log or the
//!   scenario does not complete).
//! * [`managed_fields`]: the operator writes only status and its finalizer (managedFields), never
//!   spec, labels or annotations: what Argo CD compares stays as applied.
//! * [`argocd`]: the Application's sync waves; deploy/argocd/health.lua on a live object.
//!
//! The harness: [`render`] (what the tests read in rendered documents), [`audit`] (control
//! planes with an audit log), [`grants`] (the RBAC of deploy/ installed verb by verb) and
//! [`deployed`] (the operator started as its Deployment runs it, and the scenario it must get
//! through).

#[path = "../support/mod.rs"]
mod support;

mod argocd;
mod audit;
mod deployed;
mod dry_run;
mod grants;
mod managed_fields;
mod manifests;
mod rbac;
mod render;

use std::time::Duration;

const OPERATOR_NS: &str = "dynamics-operator";
const SERVICE_ACCOUNT: &str = "dynamics-operator";
const OPERATOR_SECRET: &str = "deploy-test-operator-secret";
const TEAM_SECRET: &str = "deploy-test-team-secret";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
