//! Errors of the Dynamics API client, classified so the reconciler can choose
//! between "stall and tell the user" and "back off and retry".

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::secret::{redact, ApiSecret};
pub use dynamics_core::wire::{ApiErrorKind, Disposition};

/// The three remote endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Generate,
    Get,
    Update,
}

impl Endpoint {
    pub fn as_str(&self) -> &'static str {
        match self {
            Endpoint::Generate => "generate",
            Endpoint::Get => "get",
            Endpoint::Update => "update",
        }
    }

    /// The HTTP method the endpoint uses.
    pub fn method(&self) -> &'static str {
        match self {
            Endpoint::Generate => "POST",
            Endpoint::Get => "GET",
            Endpoint::Update => "PUT",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The documented error body `{error, code, details}`; every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteErrorBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl RemoteErrorBody {
    /// Reads an error body leniently: non-string fields are kept as JSON text,
    /// `message` stands in for a missing `error`. `None` when the body is not a
    /// JSON object or carries none of the fields.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(body).ok()?;
        Self::from_value(&v)
    }

    pub(crate) fn from_value(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        let text = |k: &str| -> Option<String> {
            match obj.get(k)? {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        };
        let body = RemoteErrorBody {
            error: text("error").or_else(|| text("message")),
            code: text("code"),
            details: text("details"),
        };
        if body.error.is_none() && body.code.is_none() && body.details.is_none() {
            None
        } else {
            Some(body)
        }
    }

    fn summary(&self) -> Option<String> {
        let parts: Vec<&str> = [&self.error, &self.details]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            self.code.clone()
        } else {
            Some(parts.join(": "))
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed call to the Dynamics API. Never contains the api-secret: remote
/// text is redacted before it is stored here. Boxed so `Result`s stay small.
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    kind: ApiErrorKind,
    endpoint: Endpoint,
    http_status: Option<u16>,
    retry_after: Option<Duration>,
    remote: Option<RemoteErrorBody>,
    agent_id: Option<String>,
    detail: Option<String>,
    attempts: u32,
    source: Option<BoxError>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl ApiError {
    /// A bare error; the `with_*` builders add context. Public so that other
    /// modules can fabricate errors in their tests.
    pub fn new(kind: ApiErrorKind, endpoint: Endpoint) -> Self {
        ApiError(Box::new(Inner {
            kind,
            endpoint,
            http_status: None,
            retry_after: None,
            remote: None,
            agent_id: None,
            detail: None,
            attempts: 1,
            source: None,
        }))
    }

    pub fn with_http_status(mut self, status: u16) -> Self {
        self.0.http_status = Some(status);
        self
    }

    /// Capped at [`super::MAX_REMOTE_WAIT`], whoever built the value.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.0.retry_after = retry_after.map(|d| d.min(super::retry::MAX_REMOTE_WAIT));
        self
    }

    pub fn with_remote(mut self, remote: Option<RemoteErrorBody>) -> Self {
        self.0.remote = remote;
        self
    }

    pub fn with_agent(mut self, agent_id: impl Into<String>) -> Self {
        self.0.agent_id = Some(agent_id.into());
        self
    }

    /// Free-text context (for example why a reply did not parse).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.0.attempts = attempts;
        self
    }

    /// Removes the secret from everything the remote or the transport said.
    pub(crate) fn redacted(mut self, secret: &ApiSecret) -> Self {
        let r = |s: &mut Option<String>| {
            if let Some(v) = s.as_mut() {
                *v = redact(v, secret);
            }
        };
        if let Some(body) = self.0.remote.as_mut() {
            r(&mut body.error);
            r(&mut body.code);
            r(&mut body.details);
        }
        r(&mut self.0.detail);
        r(&mut self.0.agent_id);
        self
    }

    pub fn kind(&self) -> ApiErrorKind {
        self.0.kind
    }

    pub fn http_status(&self) -> Option<u16> {
        self.0.http_status
    }

    /// The remote's Retry-After, as sent (not capped).
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    pub fn remote(&self) -> Option<&RemoteErrorBody> {
        self.0.remote.as_ref()
    }

    pub fn endpoint(&self) -> Endpoint {
        self.0.endpoint
    }

    pub fn agent_id(&self) -> Option<&str> {
        self.0.agent_id.as_deref()
    }

    pub fn detail(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }

    /// How many HTTP attempts were made before giving up.
    pub fn attempts(&self) -> u32 {
        self.0.attempts
    }

    /// Whether this failed call certainly bought nothing: a refusal by its kind, or a 500 that
    /// carries the API's documented error body (`{error, code, details}`): the API itself
    /// answered that it failed. A 5xx without that body (a proxy, a crash mid-request) may have
    /// been processed.
    pub fn refused_before_processing(&self) -> bool {
        self.0.kind.disposition().bought_nothing()
            || (self.0.kind == ApiErrorKind::Server
                && self.0.http_status == Some(500)
                && self
                    .0
                    .remote
                    .as_ref()
                    .is_some_and(|b| b.code.is_some() && b.error.is_some()))
    }

    pub fn is_retryable(&self) -> bool {
        self.0.kind.disposition().retried_by_client()
    }

    /// Shorthand for `kind().reason()`.
    pub fn reason(&self) -> &'static str {
        self.0.kind.reason()
    }

    fn render(&self) -> String {
        let ep = self.0.endpoint.as_str();
        let agent = self.0.agent_id.as_deref().unwrap_or("?");
        let code = self
            .0
            .http_status
            .map(|s| format!("HTTP {s}"))
            .unwrap_or_else(|| "no HTTP status".to_string());
        let remote = self
            .0
            .remote
            .as_ref()
            .and_then(RemoteErrorBody::summary)
            .or_else(|| self.0.detail.clone());
        let remote_sfx = remote
            .as_deref()
            .map(|r| format!(" (remote said: {r})"))
            .unwrap_or_default();
        let retry = match self.0.retry_after {
            Some(d) => format!(
                "retry after {} as the remote asked",
                humantime::format_duration(d)
            ),
            None => "no Retry-After was given, retrying with backoff".to_string(),
        };
        let unsure_generate = if self.0.endpoint == Endpoint::Generate
            && !self.refused_before_processing()
        {
            "; the generation may have started anyway, so check with GET before generating again"
        } else {
            ""
        };
        let mut msg = match self.0.kind {
            ApiErrorKind::InvalidRequest => format!(
                "the Dynamics API refused the {ep} request for agent {agent} as invalid ({code}): {}; fix the spec field it names",
                remote.as_deref().unwrap_or("no details given")
            ),
            ApiErrorKind::Unauthorized => format!(
                "the Dynamics API refused the api-secret on {ep} for agent {agent} ({code}){remote_sfx}: check the api-secret in the referenced Secret (or the operator's default secret) is a valid bitHuman API secret"
            ),
            ApiErrorKind::InsufficientCredits => format!(
                "the bitHuman account has insufficient credits to generate dynamics for agent {agent} ({code}){remote_sfx}: add credits to the bitHuman account, then the generation is retried"
            ),
            ApiErrorKind::NotFound => format!(
                "agent {agent} was not found by the Dynamics API on {ep} ({code}){remote_sfx}: check spec.agentId names an existing agent of the account that owns the api-secret"
            ),
            ApiErrorKind::RateLimited => format!(
                "the Dynamics API rate-limited the {ep} call for agent {agent} ({code}){remote_sfx}; {retry}"
            ),
            ApiErrorKind::Unavailable => format!(
                "the Dynamics API is unavailable, its workers are busy, on {ep} for agent {agent} ({code}){remote_sfx}; {retry}"
            ),
            ApiErrorKind::Server => format!(
                "the Dynamics API failed the {ep} call for agent {agent} ({code}){remote_sfx}; retrying with backoff{unsure_generate}"
            ),
            ApiErrorKind::Timeout => format!(
                "the {ep} call for agent {agent} timed out{remote_sfx}; retrying with backoff{unsure_generate}"
            ),
            ApiErrorKind::Connect => format!(
                "could not connect to the Dynamics API for the {ep} call for agent {agent}{remote_sfx}; nothing was sent: check the network path to the API and its base URL"
            ),
            ApiErrorKind::Transport => format!(
                "could not complete the {ep} call for agent {agent}{remote_sfx}; check the network path to the Dynamics API and its base URL{unsure_generate}"
            ),
            ApiErrorKind::Decode => format!(
                "the Dynamics API sent a {ep} reply for agent {agent} that could not be understood ({code}){remote_sfx}; not retrying it automatically"
            ),
        };
        if self.0.attempts > 1 {
            msg.push_str(&format!(" [after {} attempts]", self.0.attempts));
        }
        msg
    }
}

/// What the reconcile core needs of a failed call.
impl From<&ApiError> for dynamics_core::reconcile::RemoteError {
    fn from(err: &ApiError) -> Self {
        dynamics_core::reconcile::RemoteError {
            kind: err.kind(),
            message: err.to_string(),
            retry_after: err.retry_after(),
            refused: err.refused_before_processing(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_500_is_a_refusal_only_with_the_apis_own_error_body() {
        let documented = RemoteErrorBody::parse(
            br#"{"error":"generation backend failed","code":"INTERNAL_ERROR","details":null}"#,
        );
        let cases = [
            (500, documented.clone(), true),
            (500, None, false),
            // A gateway's JSON without the API's code is not the API's answer.
            (
                500,
                RemoteErrorBody::parse(br#"{"message":"Internal Server Error"}"#),
                false,
            ),
            (502, documented.clone(), false),
            (503, None, true),
        ];
        for (status, body, refused) in cases {
            let err = ApiError::new(ApiErrorKind::from_http_status(status), Endpoint::Generate)
                .with_http_status(status)
                .with_remote(body.clone());
            assert_eq!(
                err.refused_before_processing(),
                refused,
                "{status} {body:?}"
            );
        }
    }

    #[test]
    fn error_body_is_lenient() {
        let b = RemoteErrorBody::parse(br#"{"message":"m","code":42,"details":{"f":1}}"#).unwrap();
        assert_eq!(b.error.as_deref(), Some("m"));
        assert_eq!(b.code.as_deref(), Some("42"));
        assert_eq!(b.details.as_deref(), Some(r#"{"f":1}"#));
        assert!(RemoteErrorBody::parse(b"<html>oops</html>").is_none());
        assert!(RemoteErrorBody::parse(br#"{"other":1}"#).is_none());
    }

    #[test]
    fn messages_tell_the_user_what_to_do() {
        let e = ApiError::new(ApiErrorKind::Unauthorized, Endpoint::Get).with_http_status(401);
        assert!(e.to_string().contains("check the api-secret"));
        let e = ApiError::new(ApiErrorKind::InsufficientCredits, Endpoint::Generate);
        assert!(e
            .to_string()
            .contains("add credits to the bitHuman account"));
        let e = ApiError::new(ApiErrorKind::NotFound, Endpoint::Get).with_agent("A1");
        assert!(e.to_string().contains("check spec.agentId"));
        assert!(e.to_string().contains("A1"));
        let e = ApiError::new(ApiErrorKind::InvalidRequest, Endpoint::Generate).with_remote(Some(
            RemoteErrorBody {
                error: Some("Invalid request".into()),
                code: None,
                details: Some("duration must be 1..10".into()),
            },
        ));
        assert!(e.to_string().contains("duration must be 1..10"));
        let e = ApiError::new(ApiErrorKind::RateLimited, Endpoint::Get)
            .with_retry_after(Some(Duration::from_secs(7)));
        assert!(e.to_string().contains("retry after 7s"), "{e}");
        let e = ApiError::new(ApiErrorKind::Unavailable, Endpoint::Update);
        assert!(e.to_string().contains("Retry-After"), "{e}");
        let e = ApiError::new(ApiErrorKind::Timeout, Endpoint::Generate);
        assert!(e.to_string().contains("check with GET"), "{e}");
    }
}
