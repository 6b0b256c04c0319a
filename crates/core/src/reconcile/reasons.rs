//! Every reason the operator writes, spelled once, with what it means, what the operator does
//! meanwhile and what fixes it. `TABLE` is the one list: docs/troubleshooting.md is generated from
//! it (`dynamics-operator reasons`), and tests/troubleshooting.rs fails when the page drifts or a
//! reason written anywhere in the code is missing here. Remote errors carry their reasons in
//! `ApiErrorKind::reason`, spelled as the table spells them.

use std::fmt::Write as _;

pub const READY: &str = "Ready";
/// The agent already had dynamics and no purchase was on record: adopted, nothing bought.
pub const ADOPTED: &str = "Adopted";
pub const SUSPENDED: &str = "Suspended";
/// `spec.managementPolicy: Observe`: what the API shows is reported, nothing is written or paid.
pub const OBSERVED: &str = "Observed";
pub const GENERATING: &str = "Generating";
pub const GENERATION_STARTED: &str = "GenerationStarted";
pub const REGENERATING: &str = "Regenerating";
/// Accepted; GET does not show the job yet.
pub const AWAITING_GENERATION: &str = "AwaitingGeneration";
/// No definite answer to a generate call yet; GET is watched for evidence.
pub const GENERATION_OUTCOME_PENDING: &str = "GenerationOutcomePending";
/// A generate call of unknown outcome that GET since showed: followed, not sent again.
pub const GENERATION_ADOPTED: &str = "GenerationAdopted";
pub const WAITING_FOR_GENERATION_SLOT: &str = "WaitingForGenerationSlot";
pub const GENERATION_BUDGET_EXHAUSTED: &str = "GenerationBudgetExhausted";
/// Approval of paid changes is required (`--require-approval`) and this key is not approved.
pub const APPROVAL_REQUIRED: &str = "ApprovalRequired";
/// A budget (`--budget`) has no room for one more generation in its period.
pub const BUDGET_EXCEEDED: &str = "BudgetExceeded";
/// Event: a generation took a budget to its warning threshold.
pub const BUDGET_WARNING: &str = "BudgetWarning";
pub const CONFLICT: &str = "Conflict";
pub const UNKNOWN_SPEC_FIELD: &str = "UnknownSpecField";
pub const GENERATION_FAILED: &str = "GenerationFailed";
pub const GENERATION_NOT_VISIBLE: &str = "GenerationNotVisible";
pub const GENERATION_OUTCOME_UNKNOWN: &str = "GenerationOutcomeUnknown";
pub const REMOTE_DYNAMICS_MISSING: &str = "RemoteDynamicsMissing";
/// The spec went back to generate inputs this object bought before.
pub const INPUTS_ALREADY_BOUGHT: &str = "InputsAlreadyBought";
/// The API reports a status this operator does not know, for longer than the visibility window.
pub const REMOTE_STATUS_UNKNOWN: &str = "RemoteStatusUnknown";
/// The record of purchases (status or state file) is older than what the API shows.
pub const STATE_OUTDATED: &str = "StateOutdated";
pub const NO_API_SECRET: &str = "NoApiSecret";
pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
/// The agent's last purchase (by another object, or before this object's status was lost) is
/// younger than the visibility window: its job may still be invisible, so a new call waits.
pub const WAITING_FOR_PREVIOUS_GENERATION: &str = "WaitingForPreviousGeneration";
/// The purchase ledger could not be read; nothing is bought until it can.
pub const LEDGER_UNAVAILABLE: &str = "LedgerUnavailable";
/// Event: a stall about money resolved by the user with `accept` (nothing sent).
pub const RESOLVED: &str = "Resolved";
pub const SECRET_UNREADABLE: &str = "SecretUnreadable";
pub const SECRET_NOT_LABELED: &str = "SecretNotLabeled";
pub const SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
/// The object's namespace is not one where the operator may read Secrets.
pub const SECRET_NOT_PERMITTED: &str = "SecretNotPermitted";
/// Event: a PUT made the API regenerate the agent's movements (counted).
pub const REGENERATION_STARTED: &str = "RegenerationStarted";
/// Event: the dynamics were switched off before the object was deleted.
pub const DYNAMICS_DISABLED: &str = "DynamicsDisabled";
/// Event: at deletion the agent no longer existed remotely.
pub const REMOTE_GONE: &str = "RemoteGone";

/// Where docs/troubleshooting.md is published; alert `runbook_url`s point into it.
pub const PAGE_URL: &str =
    "https://github.com/bithuman/dynamics-operator/blob/main/docs/troubleshooting.md";

/// How a reason shows on the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Ready=True`.
    Ready,
    /// `Reconciling=True`: work under way, nothing for the user to do.
    Reconciling,
    /// `Stalled=True`: nothing moves until something outside changes. Also sent as a Warning
    /// Event when the object stalls.
    Stalled,
    /// `Ready=True` with reason Suspended: the user asked the operator to keep away.
    Suspended,
    /// An Event only (`kubectl get events`), no condition.
    Event,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ready => "Ready",
            Kind::Reconciling => "Reconciling",
            Kind::Stalled => "Stalled",
            Kind::Suspended => "Suspended",
            Kind::Event => "Event",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Kind::Ready => "Ready: converged",
            Kind::Reconciling => "Reconciling: under way, nothing to do",
            Kind::Stalled => "Stalled: waiting for you",
            Kind::Suspended => "Suspended: hands off",
            Kind::Event => "Events",
        }
    }

    fn condition(self) -> &'static str {
        match self {
            Kind::Ready => "`Ready=True`",
            Kind::Reconciling => "`Reconciling=True`, `Ready=False`",
            Kind::Stalled => "`Stalled=True`, `Ready=False`; a Warning Event when it stalls",
            Kind::Suspended => {
                "`Ready=True` with reason `Suspended`, `Reconciling` and `Stalled` `False`"
            }
            Kind::Event => "an Event on the object, no condition",
        }
    }
}

/// One reason: what it means, what the operator does meanwhile, and the user's fix.
#[derive(Clone, Copy, Debug)]
pub struct Reason {
    pub name: &'static str,
    pub kind: Kind,
    /// Also sent as an Event (besides the Warning Event every Stalled reason gets).
    pub also_event: bool,
    pub meaning: &'static str,
    pub meanwhile: &'static str,
    pub fix: &'static str,
}

/// The two ways out of a stall over money, the same for all of them.
macro_rules! resolve_fix {
    () => {
        "Look at the agent in the bitHuman dashboard, then choose: `dynamics-operator resolve NAMESPACE/NAME --accept` takes what the API shows as the purchase (nothing is sent), or `dynamics-operator resolve NAMESPACE/NAME --retry` sends the pending call once more (250 credits, counted). Both set the annotation `dynamics.bithuman.ai/resolve` (`accept` or `retry`), which you may also set yourself."
    };
}

/// What a money stall does meanwhile.
macro_rules! money_meanwhile {
    () => {
        "Nothing is bought or sent automatically. The object is looked at again every `--stalled-retry` (5m) and at once when its spec or annotations change, so an API that catches up clears the stall by itself."
    };
}

/// What a stall on the spec or a Secret does meanwhile.
macro_rules! stalled_meanwhile {
    () => {
        "Nothing is sent. Retried every `--stalled-retry` (5m), and at once when the object's spec or its Secret changes."
    };
}

/// What a transient remote failure does meanwhile.
macro_rules! transient_meanwhile {
    () => {
        "Retried with exponential backoff and jitter, or after the `Retry-After` the API gave (capped at an hour). A generate call is never retried: one that ends this way is `GenerationOutcomePending` instead."
    };
}

const fn reason(
    name: &'static str,
    kind: Kind,
    meaning: &'static str,
    meanwhile: &'static str,
    fix: &'static str,
) -> Reason {
    Reason {
        name,
        kind,
        also_event: false,
        meaning,
        meanwhile,
        fix,
    }
}

const fn with_event(r: Reason) -> Reason {
    Reason {
        also_event: true,
        ..r
    }
}

/// Every reason, grouped by kind in the order of the page.
pub const TABLE: &[Reason] = &[
    // ---- Ready ----
    reason(
        READY,
        Kind::Ready,
        "The agent's dynamics are generated for the current spec and the `dynamics` block is applied.",
        "Looks at the agent again every `--resync` (10m) for remote drift; a spec change is handled at once.",
        "Nothing to fix.",
    ),
    reason(
        ADOPTED,
        Kind::Ready,
        "The agent already had dynamics and no purchase was on record for this object, so they were adopted as they are and nothing was bought.",
        "As for `Ready`.",
        "Nothing to fix. To buy new dynamics on purpose, set `spec.regenerate` to a new value or run `dynamics-operator resolve NAMESPACE/NAME --retry` (250 credits).",
    ),
    // ---- Suspended ----
    reason(
        SUSPENDED,
        Kind::Suspended,
        "`spec.suspend` is true. `Ready` is `True` so that tools waiting for every object to be done (kstatus: Flux `wait: true`, kpt, Config Sync; `kubectl wait`) finish: nothing is pending. It says nothing about the agent's dynamics, which are neither read nor changed. Argo CD shows the object as Suspended.",
        "Nothing is read or changed remotely; the object is looked at again every `--resync`.",
        "Set `spec.suspend: false` to resume.",
    ),
    // ---- Reconciling ----
    reason(
        GENERATING,
        Kind::Reconciling,
        "A generation bought for this object runs remotely (the API reports it in progress). If the spec changed meanwhile, the message says one more generation follows.",
        "Looks at the job when the account's generations usually end (between `--poll-min` and `--poll-max`); edits made meanwhile are coalesced into one more generation.",
        "Nothing to fix; wait. A generation takes minutes.",
    ),
    reason(
        WAITING_FOR_PREVIOUS_GENERATION,
        Kind::Reconciling,
        "The agent's last purchase was made by another object (or by this one before its status was lost) less than `--visibility-window` ago. Its job may still be running unseen, and a new call's job could not be told apart from it, so the new purchase waits.",
        "Nothing is sent until the window since that purchase has passed; then the change is bought once.",
        "Nothing to fix; wait (at most `--visibility-window`, 15m).",
    ),
    with_event(reason(
        GENERATION_STARTED,
        Kind::Reconciling,
        "One generate call is being sent for the current generate inputs, or was just accepted (250 credits, counted in `status.generations`).",
        "Waits for the API to show the job; nothing more is sent for these inputs.",
        "Nothing to fix.",
    )),
    reason(
        REGENERATING,
        Kind::Reconciling,
        "The `dynamics` block was applied and the API answered that it is regenerating the agent's movements.",
        "Looks again from `--poll-min` on until the API reports the regeneration done.",
        "Nothing to fix.",
    ),
    reason(
        AWAITING_GENERATION,
        Kind::Reconciling,
        "The API accepted the generate call but GET does not show the job yet (APIs lag).",
        "Waits up to `--visibility-window` (15m) for the job to show; nothing more is sent. After that the object is `GenerationNotVisible`.",
        "Nothing to fix yet.",
    ),
    with_event(reason(
        GENERATION_OUTCOME_PENDING,
        Kind::Reconciling,
        "The generate call got no definite answer (a timeout, a dropped connection, a 5xx, an unreadable reply, a crash): it may have been charged, and is counted as if it was.",
        "Watches GET for a sign that the call landed, up to `--visibility-window` (15m); the call is never sent again automatically. Seen, it is followed (`GenerationAdopted`); never seen, the object is `GenerationOutcomeUnknown`.",
        "Nothing to fix yet.",
    )),
    reason(
        WAITING_FOR_GENERATION_SLOT,
        Kind::Reconciling,
        "The account already runs as many generations as `--max-concurrent-generations` allows (objects whose Secrets hold the same api-secret share an account).",
        "Waits in arrival order and is woken as soon as a slot frees; no polling.",
        "Nothing to fix. To run more at once, raise `--max-concurrent-generations` (chart value `operator.maxConcurrentGenerations`).",
    ),
    reason(
        GENERATION_BUDGET_EXHAUSTED,
        Kind::Reconciling,
        "The account started `--generations-per-hour` generations within the last hour.",
        "Waits until the oldest of them is an hour old (the message says when), then starts.",
        "Nothing to fix, or raise `--generations-per-hour` (chart value `operator.generationsPerHour`).",
    ),
    reason(
        OBSERVED,
        Kind::Ready,
        "`spec.managementPolicy: Observe`: the object reports what the API shows for the agent (`status.remoteStatus`, `modelUrl`, `gestures`) and the message says it.",
        "Reads the agent at the resync interval; sends no generate call and no PUT, pays nothing, holds no claim on the agent, and deleting the object sends nothing.",
        "Nothing to fix. To manage the agent, set `managementPolicy: Manage` (or remove it): the existing dynamics are adopted for the spec, nothing is bought.",
    ),
    reason(
        APPROVAL_REQUIRED,
        Kind::Reconciling,
        "Paid changes in this namespace need approval (`--require-approval`, chart value `operator.requireApproval`), and this change would buy a generation (250 credits) whose key is not approved; the message names the key.",
        "Sends nothing; acts at once when the approval annotation is set (and looks again every `--stalled-retry`).",
        "Review the change, then `dynamics-operator approve NAMESPACE/NAME` (it sets `dynamics.bithuman.ai/approve` to the key of the spec as it stands). An approval for one key never approves another: a later edit needs its own.",
    ),
    reason(
        BUDGET_EXCEEDED,
        Kind::Reconciling,
        "One more generation (250 credits) would take a budget set with `--budget` (chart value `operator.budgets`) past its credits for the current hour, day or month (UTC); the message names the budget, its spend and when it frees.",
        "Sends nothing for this object; looks again when the period ends and then buys, one object at a time within the account's limits. Other objects' work that costs nothing goes on.",
        "Nothing to fix if the spend is expected. Otherwise find what spent it (`kubectl get dynledger`, the `BudgetWarning` and `GenerationStarted` Events, `status.generations`), or raise the budget and restart the operator.",
    ),
    reason(
        BUDGET_WARNING,
        Kind::Event,
        "A generation took a budget to its warning threshold (80% unless the budget says `@N%`).",
        "Goes on buying until the budget is reached.",
        "Nothing to fix if the spend is expected; otherwise look for objects whose inputs keep changing.",
    ),
    reason(
        "RateLimited",
        Kind::Reconciling,
        "The API answered 429 Too Many Requests.",
        transient_meanwhile!(),
        "Nothing to fix if it passes. If it lasts, fewer operators or tools on the same account, or a longer `--resync`.",
    ),
    reason(
        "RemoteUnavailable",
        Kind::Reconciling,
        "The API answered 503: its workers are busy.",
        transient_meanwhile!(),
        "Nothing to fix if it passes; otherwise check the bitHuman status page.",
    ),
    reason(
        "RemoteError",
        Kind::Reconciling,
        "The API answered with a 5xx other than 503, or a status it does not document.",
        transient_meanwhile!(),
        "Nothing to fix if it passes; the message holds what the API said.",
    ),
    reason(
        "Timeout",
        Kind::Reconciling,
        "A request to the API took longer than `--api-timeout` (30s).",
        transient_meanwhile!(),
        "If it lasts: check egress to the API host (proxy, NetworkPolicy), or raise `--api-timeout`.",
    ),
    reason(
        "ConnectFailed",
        Kind::Reconciling,
        "The connection to the API never opened (refused, DNS, TLS handshake): nothing was sent.",
        transient_meanwhile!(),
        "Check `--api-url`, DNS and egress to the API host. Behind a TLS-inspecting proxy, give the operator the proxy's CA (chart value `caBundle`, or `SSL_CERT_FILE`).",
    ),
    reason(
        "TransportError",
        Kind::Reconciling,
        "The connection was reset or closed before a reply: the request may have been processed.",
        transient_meanwhile!(),
        "Nothing to fix if it passes; if it lasts, check proxies between the operator and the API.",
    ),
    reason(
        "BadReply",
        Kind::Reconciling,
        "A reply from the API could not be understood (the message says why).",
        transient_meanwhile!(),
        "If it lasts, the API changed its replies: report it with the message.",
    ),
    // ---- Stalled ----
    reason(
        CONFLICT,
        Kind::Stalled,
        "Another AgentDynamics (named in the message) already manages the same `agentId`.",
        "Nothing is sent for this object; the owner carries on.",
        "Delete one of the two objects (`kubectl get agdyn -A --field-selector spec.agentId=<agentId>` lists every object naming the agent).",
    ),
    reason(
        UNKNOWN_SPEC_FIELD,
        Kind::Stalled,
        "The spec holds a field this operator does not know (named in the message), likely written for a newer version of the CRD.",
        stalled_meanwhile!(),
        "Upgrade the operator, or remove the field.",
    ),
    reason(
        "InvalidRequest",
        Kind::Stalled,
        "The API refused a request's parameters (400 or 422); the message holds what it said.",
        stalled_meanwhile!(),
        "Fix the spec field the message names.",
    ),
    reason(
        "Unauthorized",
        Kind::Stalled,
        "The API refused the api-secret (401 or 403).",
        stalled_meanwhile!(),
        "Put a valid bitHuman API secret in the Secret named by `spec.apiSecretRef`, or in the operator's own (chart value `apiSecret`).",
    ),
    reason(
        "InsufficientCredits",
        Kind::Stalled,
        "The account has too few credits (402); nothing was bought.",
        stalled_meanwhile!(),
        "Add credits to the account; the object retries within `--stalled-retry`.",
    ),
    reason(
        "AgentNotFound",
        Kind::Stalled,
        "The agent `spec.agentId` does not exist for this account (404).",
        stalled_meanwhile!(),
        "Check the agent id and that the api-secret belongs to the agent's account. `agentId` cannot change: delete the object and create it with the right id.",
    ),
    reason(
        GENERATION_FAILED,
        Kind::Stalled,
        "The API reports that the generation failed (its reason is in the message).",
        "Nothing is bought again automatically; looked at again every `--stalled-retry` (5m).",
        "Fix what the API's reason names (often `imageUrl` or `motionPrompts`), then set `spec.regenerate` to a new value to buy once more (250 credits).",
    ),
    reason(
        GENERATION_NOT_VISIBLE,
        Kind::Stalled,
        "The API accepted a generate call (250 credits) but has not shown its job within `--visibility-window` (15m).",
        money_meanwhile!(),
        resolve_fix!(),
    ),
    reason(
        GENERATION_OUTCOME_UNKNOWN,
        Kind::Stalled,
        "A generate call got no definite answer and the API has shown no sign of it within `--visibility-window` (15m); it may have been charged and is counted.",
        money_meanwhile!(),
        resolve_fix!(),
    ),
    reason(
        REMOTE_DYNAMICS_MISSING,
        Kind::Stalled,
        "The API no longer shows dynamics for the agent although this object bought them for the current spec.",
        money_meanwhile!(),
        resolve_fix!(),
    ),
    reason(
        INPUTS_ALREADY_BOUGHT,
        Kind::Stalled,
        "The generate inputs went back to ones this object bought before (an edit reverted, two tools fighting over the spec), and the API holds a later generation.",
        money_meanwhile!(),
        concat!(
            resolve_fix!(),
            " A new `spec.regenerate` value also buys once for the current inputs."
        ),
    ),
    reason(
        REMOTE_STATUS_UNKNOWN,
        Kind::Stalled,
        "The API reports a status this operator does not know, for longer than `--visibility-window`, with no generation of ours in flight.",
        money_meanwhile!(),
        resolve_fix!(),
    ),
    reason(
        STATE_OUTDATED,
        Kind::Stalled,
        "The record of purchases (the object's status, or the file mode's state file) is older than what the API shows: restored from a backup or a CI cache, for example.",
        money_meanwhile!(),
        resolve_fix!(),
    ),
    reason(
        LEDGER_UNAVAILABLE,
        Kind::Reconciling,
        "The agent's purchase record (a cluster-scoped `DynamicsLedger`) could not be read or written: its CRD is not installed, the operator may not read it, or the API server did not answer. Nothing is bought without it.",
        "Nothing is bought. Retried with exponential backoff and jitter.",
        "Install `crds/dynamicsledgers.yaml` (the chart and `kubectl apply -k deploy/` do) and check that the operator's ClusterRole grants get, create and update on `dynamicsledgers`.",
    ),
    reason(
        NO_API_SECRET,
        Kind::Stalled,
        "The object has no `spec.apiSecretRef` and the operator has no secret of its own.",
        stalled_meanwhile!(),
        "Set `spec.apiSecretRef`, or give the operator a secret (chart value `apiSecret`; `BITHUMAN_API_SECRET` or `--api-secret-file`).",
    ),
    reason(
        SECRET_NOT_FOUND,
        Kind::Stalled,
        "The Secret named by `spec.apiSecretRef` does not exist in the object's namespace (file mode: is not among the manifests given with `-f`).",
        stalled_meanwhile!(),
        "Create it, with the key `spec.apiSecretRef.key` holding the bitHuman API secret and the label `dynamics.bithuman.ai/api-secret=true`.",
    ),
    reason(
        SECRET_NOT_PERMITTED,
        Kind::Stalled,
        "The object names a Secret in a namespace where the operator may not read Secrets: it reads them only in its own namespace, the one it watches (`--namespace`), and those listed in `--secret-namespaces`. Nothing is requested from the API server.",
        "Nothing is sent; the Secret is not read. Retried every `--stalled-retry` (5m).",
        "Add the namespace to the chart value `secretNamespaces` (the chart makes a Role and RoleBinding there). Without Helm: a RoleBinding in that namespace to the ClusterRole `dynamics-operator-secrets`, and the namespace in `SECRET_NAMESPACES` (`--secret-namespaces`). Or drop `spec.apiSecretRef` to use the operator's own secret.",
    ),
    reason(
        SECRET_UNREADABLE,
        Kind::Stalled,
        "Reading the Secret failed (the API server refused or did not answer); the message holds the error.",
        stalled_meanwhile!(),
        "Check the operator's RBAC in that namespace and the API server's health.",
    ),
    reason(
        SECRET_NOT_LABELED,
        Kind::Stalled,
        "The Secret lacks the label `dynamics.bithuman.ai/api-secret=true`, which marks the Secrets this operator may use.",
        stalled_meanwhile!(),
        "`kubectl -n NAMESPACE label secret NAME dynamics.bithuman.ai/api-secret=true`",
    ),
    reason(
        SECRET_KEY_NOT_FOUND,
        Kind::Stalled,
        "The Secret has no key `spec.apiSecretRef.key`, or it is empty.",
        stalled_meanwhile!(),
        "Put the API secret under that key, or set `spec.apiSecretRef.key` to the key that holds it.",
    ),
    // ---- Events ----
    reason(
        GENERATION_ADOPTED,
        Kind::Event,
        "A generate call of unknown outcome did land: the API shows its job. It is followed and counted once, never sent again.",
        "Carries on as `Generating`.",
        "Nothing to fix.",
    ),
    reason(
        RESOLVED,
        Kind::Event,
        "The user resolved a stall about money with `accept` (the `dynamics.bithuman.ai/resolve` annotation, or `dynamics-operator resolve --accept`): what the API shows was taken as the purchase of the current inputs. Nothing was sent.",
        "Carries on as usual: the dynamics block is applied if needed, then `Ready`.",
        "Nothing to fix.",
    ),
    reason(
        REGENERATION_STARTED,
        Kind::Event,
        "Applying the `dynamics` block made the API regenerate the agent's movements; counted in `status.regenerations` and the `regenerations_started` metric.",
        "Carries on as `Regenerating`.",
        "Nothing to fix.",
    ),
    reason(
        DYNAMICS_DISABLED,
        Kind::Event,
        "The object was deleted with `deletionPolicy: Disable`: the agent's dynamics were switched off (PUT enabled=false).",
        "Releases the finalizer; the object goes.",
        "Nothing to fix.",
    ),
    reason(
        REMOTE_GONE,
        Kind::Event,
        "The object was deleted and the agent no longer exists remotely: there was nothing to switch off.",
        "Releases the finalizer; the object goes.",
        "Nothing to fix.",
    ),
];

/// One alert of the chart's PrometheusRule, whose `runbook_url` points at its section.
#[derive(Clone, Copy, Debug)]
pub struct Alert {
    pub name: &'static str,
    pub meaning: &'static str,
    pub fix: &'static str,
}

/// The alerts, in the order of the rule file.
pub const ALERTS: &[Alert] = &[
    Alert {
        name: "AgentDynamicsStalled",
        meaning: "Objects in the namespace the alert names (label `namespace`) have been Stalled for `stalledFor` (15m).",
        fix: "`kubectl -n NAMESPACE get agdyn` shows which objects and their reasons; find each reason on this page. Stalls over money (`GenerationNotVisible`, `GenerationOutcomeUnknown`, `RemoteDynamicsMissing`, `InputsAlreadyBought`, `RemoteStatusUnknown`, `StateOutdated`) need a decision: `dynamics-operator resolve NAMESPACE/NAME --accept` or `--retry`.",
    },
    Alert {
        name: "AgentDynamicsGenerationOutcomeUnknown",
        meaning: "An install (labels `namespace`, `job`) sent a generate call in the last hour that got no definite answer: it may have been charged.",
        fix: "Nothing is sent again automatically. Look at the objects with reason `GenerationOutcomePending` or `GenerationOutcomeUnknown`, the account's credits in the bitHuman dashboard, and the operator's egress to the API.",
    },
    Alert {
        name: "AgentDynamicsCreditsPerHourHigh",
        meaning: "An install spent more credits on generations in the last hour than `creditsPerHourThreshold`.",
        fix: "Look for objects whose generate inputs keep changing (two tools writing one spec, a template that stamps `spec.regenerate`): `status.generations` counts each object's purchases. `--generations-per-hour` caps the spending.",
    },
    Alert {
        name: "DynamicsOperatorNotReady",
        meaning: "An install that exported metrics within the last hour has had no replica answering `/readyz` for 10 minutes (or no operator is scraped at all): nothing is reconciled.",
        fix: "`kubectl -n NAMESPACE get pods` and the operator's logs: a crash, an image that cannot be pulled, RBAC refused (the log names the request), a Kubernetes API it cannot reach. An install removed on purpose stops alerting within the hour.",
    },
    Alert {
        name: "DynamicsOperatorNoLeader",
        meaning: "Replicas of an install answer `/readyz` but none has reconciled (`dynamics_operator_leader`) for 10 minutes: none holds the Lease.",
        fix: "`kubectl -n NAMESPACE get lease` and the replicas' logs: the Lease's holder, and whether the replicas may get and patch it (RBAC).",
    },
];

/// The entry for `name`.
pub fn lookup(name: &str) -> Option<&'static Reason> {
    TABLE.iter().find(|r| r.name == name)
}

/// The anchor of a reason's section in the page (`#generationnotvisible`).
pub fn anchor(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Where a reason is explained, for alerts and messages.
pub fn runbook_url(name: &str) -> String {
    format!("{PAGE_URL}#{}", anchor(name))
}

const KINDS: [Kind; 5] = [
    Kind::Ready,
    Kind::Reconciling,
    Kind::Stalled,
    Kind::Suspended,
    Kind::Event,
];

/// docs/troubleshooting.md.
pub fn troubleshooting_markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "<!-- Generated from crates/core/src/reconcile/reasons.rs by `dynamics-operator reasons`; edit the table there,\n     then: cargo run -- reasons > docs/troubleshooting.md (tests/troubleshooting.rs checks they agree). -->\n\n",
    );
    out.push_str("# Troubleshooting\n\n");
    out.push_str(
        "Every condition and Event reason the operator writes, what it means, what the operator does \
meanwhile, and what fixes it. `kubectl get agdyn` shows the reason (REASON column), \
`kubectl get agdyn -o wide` the message, `kubectl describe agdyn NAME` both with the object's \
Events. Each alert's `runbook_url` links to a section of this page.\n\n\
Status follows kstatus: exactly one of `Ready`, `Reconciling` and `Stalled` is `True` (`Ready` \
while suspended, with reason `Suspended`), and all three carry the same reason and message. Every Stalled reason is also sent \
as a Warning Event when the object stalls.\n\n",
    );
    out.push_str("| Reason | Kind | Meaning |\n| --- | --- | --- |\n");
    for r in TABLE {
        let event = if r.also_event { ", Event" } else { "" };
        let _ = writeln!(
            out,
            "| [`{}`](#{}) | {}{event} | {} |",
            r.name,
            anchor(r.name),
            r.kind.as_str(),
            r.meaning.replace('|', "\\|")
        );
    }
    out.push_str(
        "\nThe conditions' `Ready` status is what health checks should decide on; the reason says why. \
The metric `dynamics_operator_object_states{namespace,state}` counts objects per namespace and state.\n",
    );
    for kind in KINDS {
        let _ = write!(out, "\n## {}\n", kind.heading());
        for r in TABLE.iter().filter(|r| r.kind == kind) {
            let event = if r.also_event {
                "; also sent as an Event"
            } else {
                ""
            };
            let _ = write!(
                out,
                "\n### {}\n\nShows as: {}{event}.\n\n- **Meaning:** {}\n- **Meanwhile:** {}\n- **Fix:** {}\n",
                r.name,
                r.kind.condition(),
                r.meaning,
                r.meanwhile,
                r.fix
            );
        }
    }
    out.push_str("\n## Alerts\n\nThe chart's PrometheusRule (and deploy/monitoring/alerts.yaml); each alert's `runbook_url` points here.\n");
    for a in ALERTS {
        let _ = write!(
            out,
            "\n### {}\n\n- **Meaning:** {}\n- **Fix:** {}\n",
            a.name, a.meaning, a.fix
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ApiErrorKind;

    #[test]
    fn every_reason_is_listed_once() {
        let mut seen = std::collections::BTreeSet::new();
        for r in TABLE {
            assert!(seen.insert(r.name), "{} is listed twice", r.name);
            assert!(
                !r.meaning.is_empty() && !r.meanwhile.is_empty() && !r.fix.is_empty(),
                "{} lacks an explanation",
                r.name
            );
        }
    }

    #[test]
    fn remote_error_reasons_are_listed_with_the_kind_they_report() {
        for kind in ApiErrorKind::ALL {
            let entry = lookup(kind.reason())
                .unwrap_or_else(|| panic!("{} is not in reasons::TABLE", kind.reason()));
            // plan::report_error: user action stalls, everything else backs off.
            let expected = if kind.disposition().needs_user() {
                Kind::Stalled
            } else {
                Kind::Reconciling
            };
            assert_eq!(entry.kind, expected, "{}", kind.reason());
        }
    }

    #[test]
    fn anchors_are_the_headings_github_makes() {
        assert_eq!(
            runbook_url(GENERATION_NOT_VISIBLE),
            format!("{PAGE_URL}#generationnotvisible")
        );
        let page = troubleshooting_markdown();
        let headings: Vec<String> = page
            .lines()
            .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
            .map(|h| h.to_ascii_lowercase().replace([' ', ':'], "-"))
            .collect();
        for name in TABLE
            .iter()
            .map(|r| r.name)
            .chain(ALERTS.iter().map(|a| a.name))
        {
            let anchor = anchor(name);
            let same = headings.iter().filter(|h| **h == anchor).count();
            assert_eq!(same, 1, "#{anchor} must name exactly one heading");
        }
    }
}
