//! How the Dynamics API's failures are classified: the kind (one per condition reason) and,
//! from it, what the failure means (`Disposition`). Shared by the client, which retries, and the
//! reconcile core, which decides the condition and whether a generate call may have been charged.

use std::fmt;

/// What a failed call means. Each kind has exactly one (see [`ApiErrorKind::disposition`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Refused, and only the user can change that (the spec, the Secret, the account): the
    /// object stalls. Nothing was bought.
    NeedsUser,
    /// Refused before processing (429, 503 "workers busy") or never sent (the connection did
    /// not open): nothing was bought, and trying later may succeed.
    Refused,
    /// Sent and perhaps processed (a timeout, a dropped connection, a 5xx): trying later may
    /// succeed, and a generate call's outcome is unknown.
    MaybeProcessed,
    /// A reply that cannot be read: perhaps processed. The client does not repeat the call at
    /// once (it would repeat the failure and, for generate, the bill); the object's next pass
    /// tries again after a backoff.
    Unreadable,
}

impl Disposition {
    /// Whether the client repeats an idempotent call at once (with backoff, within one pass).
    pub fn retried_by_client(self) -> bool {
        matches!(self, Disposition::Refused | Disposition::MaybeProcessed)
    }

    /// Whether a generate call that failed so certainly bought nothing. A 500 with the API's
    /// own error body is a refusal too (`ApiError::refused_before_processing` in the client).
    pub fn bought_nothing(self) -> bool {
        matches!(self, Disposition::NeedsUser | Disposition::Refused)
    }

    /// Whether the user must change something before trying again can succeed.
    pub fn needs_user(self) -> bool {
        self == Disposition::NeedsUser
    }
}

/// Error classes. Each maps to one Kubernetes condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiErrorKind {
    /// 400: the request's parameters were refused.
    InvalidRequest,
    /// 401 or 403: the api-secret was refused.
    Unauthorized,
    /// 402: the account has too few credits.
    InsufficientCredits,
    /// 404: the agent does not exist for this account.
    NotFound,
    /// 429.
    RateLimited,
    /// 503: the remote's workers are busy.
    Unavailable,
    /// Other 5xx, and status codes the API does not document.
    Server,
    /// Connect or request timeout.
    Timeout,
    /// The connection never opened (refused, DNS, TLS handshake): nothing was sent.
    Connect,
    /// Connection reset or closed before a reply: the request may have been processed.
    Transport,
    /// A reply that could not be understood.
    Decode,
}

impl ApiErrorKind {
    /// CamelCase reason for a Kubernetes condition.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiErrorKind::InvalidRequest => "InvalidRequest",
            ApiErrorKind::Unauthorized => "Unauthorized",
            ApiErrorKind::InsufficientCredits => "InsufficientCredits",
            ApiErrorKind::NotFound => "AgentNotFound",
            ApiErrorKind::RateLimited => "RateLimited",
            ApiErrorKind::Unavailable => "RemoteUnavailable",
            ApiErrorKind::Server => "RemoteError",
            ApiErrorKind::Timeout => "Timeout",
            ApiErrorKind::Connect => "ConnectFailed",
            ApiErrorKind::Transport => "TransportError",
            ApiErrorKind::Decode => "BadReply",
        }
    }

    /// Every kind, for tables that must cover them all.
    pub const ALL: [ApiErrorKind; 11] = [
        ApiErrorKind::InvalidRequest,
        ApiErrorKind::Unauthorized,
        ApiErrorKind::InsufficientCredits,
        ApiErrorKind::NotFound,
        ApiErrorKind::RateLimited,
        ApiErrorKind::Unavailable,
        ApiErrorKind::Server,
        ApiErrorKind::Timeout,
        ApiErrorKind::Connect,
        ApiErrorKind::Transport,
        ApiErrorKind::Decode,
    ];

    /// What a failure of this kind means for the call and for what comes next: the one place
    /// the client's retries, the generate call's outcome and the object's condition are decided.
    pub fn disposition(&self) -> Disposition {
        match self {
            ApiErrorKind::InvalidRequest
            | ApiErrorKind::Unauthorized
            | ApiErrorKind::InsufficientCredits
            | ApiErrorKind::NotFound => Disposition::NeedsUser,
            ApiErrorKind::RateLimited | ApiErrorKind::Unavailable | ApiErrorKind::Connect => {
                Disposition::Refused
            }
            ApiErrorKind::Server | ApiErrorKind::Timeout | ApiErrorKind::Transport => {
                Disposition::MaybeProcessed
            }
            ApiErrorKind::Decode => Disposition::Unreadable,
        }
    }

    /// Classifies a non-2xx HTTP status.
    pub fn from_http_status(status: u16) -> Self {
        match status {
            400 | 422 => ApiErrorKind::InvalidRequest,
            401 | 403 => ApiErrorKind::Unauthorized,
            402 => ApiErrorKind::InsufficientCredits,
            404 => ApiErrorKind::NotFound,
            429 => ApiErrorKind::RateLimited,
            503 => ApiErrorKind::Unavailable,
            _ => ApiErrorKind::Server,
        }
    }

    /// Classifies an error `code` from a reply body (used for `success: false`
    /// replies that arrive with HTTP 200). Unrecognised codes give `None`.
    pub fn from_remote_code(code: &str) -> Option<Self> {
        let c = code.trim().to_ascii_uppercase().replace(['-', ' '], "_");
        let kind = match c.as_str() {
            "INVALID_REQUEST" | "BAD_REQUEST" | "INVALID_PARAMETERS" | "VALIDATION_ERROR" => {
                ApiErrorKind::InvalidRequest
            }
            "UNAUTHORIZED" | "INVALID_API_SECRET" | "FORBIDDEN" => ApiErrorKind::Unauthorized,
            "INSUFFICIENT_CREDITS" | "PAYMENT_REQUIRED" => ApiErrorKind::InsufficientCredits,
            "NOT_FOUND" | "AGENT_NOT_FOUND" => ApiErrorKind::NotFound,
            "RATE_LIMITED" | "TOO_MANY_REQUESTS" => ApiErrorKind::RateLimited,
            "SERVICE_UNAVAILABLE" | "UNAVAILABLE" | "WORKERS_BUSY" => ApiErrorKind::Unavailable,
            "INTERNAL_ERROR" | "SERVER_ERROR" => ApiErrorKind::Server,
            _ => return None,
        };
        Some(kind)
    }
}

impl fmt::Display for ApiErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        use ApiErrorKind::*;
        let cases = [
            (400, InvalidRequest),
            (422, InvalidRequest),
            (401, Unauthorized),
            (403, Unauthorized),
            (402, InsufficientCredits),
            (404, NotFound),
            (429, RateLimited),
            (503, Unavailable),
            (500, Server),
            (502, Server),
            (409, Server),
            (302, Server),
        ];
        for (s, k) in cases {
            assert_eq!(ApiErrorKind::from_http_status(s), k, "{s}");
        }
    }

    /// Every kind's reason and disposition, and what each disposition means, in one table.
    #[test]
    fn reasons_and_dispositions() {
        use ApiErrorKind::*;
        let table = [
            (InvalidRequest, "InvalidRequest", Disposition::NeedsUser),
            (Unauthorized, "Unauthorized", Disposition::NeedsUser),
            (
                InsufficientCredits,
                "InsufficientCredits",
                Disposition::NeedsUser,
            ),
            (NotFound, "AgentNotFound", Disposition::NeedsUser),
            (RateLimited, "RateLimited", Disposition::Refused),
            (Unavailable, "RemoteUnavailable", Disposition::Refused),
            (Server, "RemoteError", Disposition::MaybeProcessed),
            (Timeout, "Timeout", Disposition::MaybeProcessed),
            (Connect, "ConnectFailed", Disposition::Refused),
            (Transport, "TransportError", Disposition::MaybeProcessed),
            (Decode, "BadReply", Disposition::Unreadable),
        ];
        assert_eq!(
            table.map(|(k, _, _)| k),
            ApiErrorKind::ALL,
            "the table covers every kind"
        );
        for (kind, reason, disposition) in table {
            assert_eq!(kind.reason(), reason);
            assert_eq!(kind.disposition(), disposition, "{reason}");
        }
        // (retried by the client, bought nothing, needs the user)
        let meanings = [
            (Disposition::NeedsUser, (false, true, true)),
            (Disposition::Refused, (true, true, false)),
            (Disposition::MaybeProcessed, (true, false, false)),
            (Disposition::Unreadable, (false, false, false)),
        ];
        for (d, want) in meanings {
            assert_eq!(
                (d.retried_by_client(), d.bought_nothing(), d.needs_user()),
                want,
                "{d:?}"
            );
        }
    }

    #[test]
    fn remote_codes() {
        assert_eq!(
            ApiErrorKind::from_remote_code("insufficient-credits"),
            Some(ApiErrorKind::InsufficientCredits)
        );
        assert_eq!(
            ApiErrorKind::from_remote_code("AGENT_NOT_FOUND"),
            Some(ApiErrorKind::NotFound)
        );
        assert_eq!(ApiErrorKind::from_remote_code("WHATEVER"), None);
    }
}
