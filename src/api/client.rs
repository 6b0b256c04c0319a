//! The async HTTP client for the Dynamics API.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use reqwest::{
    header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER},
    Method, Url,
};
use serde::Serialize;
use tracing::debug;

use super::error::{ApiError, ApiErrorKind, Endpoint, RemoteErrorBody};
use super::limit::AccountLimits;
use super::retry::{backoff_delay, parse_retry_after};
use super::secret::ApiSecret;
use dynamics_core::wire::{
    DynamicsState, GenerateReply, GenerateRequest, UpdateReply, UpdateRequest,
};

/// How long a 429 without Retry-After pauses its account.
const ACCOUNT_PAUSE_WITHOUT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Default base URL, from the API document.
pub const DEFAULT_BASE_URL: &str = "https://public.api.bithuman.ai";

/// Connection and retry settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub base_url: String,
    pub connect_timeout: Duration,
    /// Whole-request timeout, body included.
    pub request_timeout: Duration,
    /// Retries after the first attempt, for GET and PUT only.
    pub max_retries: u32,
    pub initial_backoff: Duration,
    /// Cap for one backoff sleep, Retry-After included.
    pub max_backoff: Duration,
    /// CA certificates (PEM) trusted besides the bundled roots and the system's (which
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` replace): a TLS-inspecting proxy's, say.
    pub extra_root_certs_pem: Option<Vec<u8>>,
    /// Calls per second per account, every kind and retries included (0: no limit).
    pub calls_per_second: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_retries: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            extra_root_certs_pem: None,
            calls_per_second: 0,
        }
    }
}

/// Sees every HTTP attempt, for metrics. `status` is `None` when no complete
/// reply arrived (timeout, transport error).
pub trait CallObserver: Send + Sync {
    fn observe(&self, endpoint: Endpoint, status: Option<u16>, elapsed: Duration);
}

/// Typed client. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct DynamicsClient {
    http: reqwest::Client,
    base: Arc<Url>,
    config: Arc<ClientConfig>,
    observer: Option<Arc<dyn CallObserver>>,
    /// Shared by clones, so one process keeps one rate per account.
    limits: Arc<AccountLimits>,
}

impl fmt::Debug for DynamicsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamicsClient")
            .field("base_url", &self.config.base_url)
            .field("request_timeout", &self.config.request_timeout)
            .field("max_retries", &self.config.max_retries)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// One logical call, possibly sent several times.
struct Call<'a> {
    endpoint: Endpoint,
    method: Method,
    url: Url,
    agent: &'a str,
    body: Option<Vec<u8>>,
    idempotency_key: Option<HeaderValue>,
    max_retries: u32,
}

impl DynamicsClient {
    /// Builds a client. An unusable base URL is reported as a `Transport`
    /// error, since no call could ever reach the API with it.
    pub fn new(config: ClientConfig) -> Result<Self, ApiError> {
        let bad_base = |why: String| {
            ApiError::new(ApiErrorKind::Transport, Endpoint::Get)
                .with_detail(format!("invalid base URL {:?}: {why}", config.base_url))
        };
        let base = Url::parse(config.base_url.trim()).map_err(|e| bad_base(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad_base("must be an http(s) URL".into()));
        }
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &config.extra_root_certs_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| bad_base(format!("extra CA certificates: {e}")))?;
            if certs.is_empty() {
                return Err(bad_base(
                    "extra CA certificates: no PEM certificate found".into(),
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // The api-secret is a custom header that reqwest would forward to
            // whatever host a redirect names; never follow redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dynamics-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad_base(e.to_string()))?;
        Ok(DynamicsClient {
            http,
            base: Arc::new(base),
            limits: Arc::new(AccountLimits::new(config.calls_per_second)),
            config: Arc::new(config),
            observer: None,
        })
    }

    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.config.base_url
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Starts a generation. Sent exactly once, never retried: each one costs
    /// credits, and after a timeout only a GET can tell whether it landed.
    pub async fn generate(
        &self,
        secret: &ApiSecret,
        req: &GenerateRequest,
        idempotency_key: Option<&str>,
    ) -> Result<GenerateReply, ApiError> {
        let endpoint = Endpoint::Generate;
        let idempotency_key = match idempotency_key {
            Some(k) => Some(HeaderValue::from_str(k).map_err(|_| {
                ApiError::new(ApiErrorKind::InvalidRequest, endpoint)
                    .with_agent(&req.agent_id)
                    .with_detail("the idempotency key is not a valid HTTP header value")
            })?),
            None => None,
        };
        let call = Call {
            endpoint,
            method: Method::POST,
            url: self.url(endpoint, &["v1", "dynamics", "generate"])?,
            agent: &req.agent_id,
            body: Some(to_json(req, endpoint)?),
            idempotency_key,
            max_retries: 0,
        };
        self.execute(secret, call, super::reply::parse_generate)
            .await
    }

    /// Reads an agent's dynamics; retried on transient failures.
    pub async fn get(&self, secret: &ApiSecret, agent_id: &str) -> Result<DynamicsState, ApiError> {
        let endpoint = Endpoint::Get;
        check_agent(agent_id, endpoint)?;
        let call = Call {
            endpoint,
            method: Method::GET,
            url: self.url(endpoint, &["v1", "dynamics", agent_id])?,
            agent: agent_id,
            body: None,
            idempotency_key: None,
            max_retries: self.config.max_retries,
        };
        self.execute(secret, call, |b| super::reply::parse_state(b, agent_id))
            .await
    }

    /// Updates an agent's dynamics block; retried on transient failures (a
    /// PUT of the same block is idempotent).
    pub async fn update(
        &self,
        secret: &ApiSecret,
        agent_id: &str,
        req: &UpdateRequest,
    ) -> Result<UpdateReply, ApiError> {
        let endpoint = Endpoint::Update;
        check_agent(agent_id, endpoint)?;
        let call = Call {
            endpoint,
            method: Method::PUT,
            url: self.url(endpoint, &["v1", "dynamics", agent_id])?,
            agent: agent_id,
            body: Some(to_json(req, endpoint)?),
            idempotency_key: None,
            max_retries: self.config.max_retries,
        };
        self.execute(secret, call, super::reply::parse_update).await
    }

    /// Base URL plus path segments; segments are percent-encoded, so agent
    /// ids cannot escape their path segment.
    fn url(&self, endpoint: Endpoint, segments: &[&str]) -> Result<Url, ApiError> {
        let mut url = (*self.base).clone();
        url.path_segments_mut()
            .map_err(|_| {
                ApiError::new(ApiErrorKind::Transport, endpoint).with_detail("base URL has no path")
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn execute<T>(
        &self,
        secret: &ApiSecret,
        call: Call<'_>,
        parse: impl Fn(&[u8]) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let header = secret_header(secret, &call)?;
        let account = secret.account();
        let mut attempt = 0u32;
        loop {
            let token = self.limits.take(account).await;
            let result = self.attempt(&call, &header, &parse, attempt).await;
            drop(token);
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e.with_agent(call.agent).redacted(secret),
            };
            if err.http_status() == Some(429) {
                // The API counts the account: every call of it waits, not only this one.
                let wait = err
                    .retry_after()
                    .unwrap_or(ACCOUNT_PAUSE_WITHOUT_RETRY_AFTER);
                self.limits
                    .pause(account, wait.min(self.config.max_backoff));
            }
            if !err.is_retryable() || attempt >= call.max_retries {
                return Err(err.with_attempts(attempt + 1));
            }
            let delay = backoff_delay(
                attempt,
                self.config.initial_backoff,
                self.config.max_backoff,
                err.retry_after(),
            );
            debug!(
                endpoint = call.endpoint.as_str(),
                agent = call.agent,
                attempt = attempt + 1,
                delay_ms = delay.as_millis() as u64,
                reason = err.reason(),
                "retrying Dynamics API call"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One HTTP exchange; returns the parsed 2xx body or a classified error.
    async fn attempt<T>(
        &self,
        call: &Call<'_>,
        secret: &HeaderValue,
        parse: &impl Fn(&[u8]) -> Result<T, ApiError>,
        attempt: u32,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let mut rb = self
            .http
            .request(call.method.clone(), call.url.clone())
            .header("api-secret", secret.clone());
        if let Some(body) = &call.body {
            rb = rb
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if let Some(key) = &call.idempotency_key {
            rb = rb.header("Idempotency-Key", key.clone());
        }
        let outcome = match rb.send().await {
            Err(e) => Err(transport_error(e, call.endpoint)),
            Ok(resp) => {
                if call.endpoint == Endpoint::Generate {
                    crate::failpoint::hit(crate::failpoint::AFTER_GENERATE_SENT);
                }
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                match resp.bytes().await {
                    Err(e) => Err(transport_error(e, call.endpoint).with_http_status(status)),
                    Ok(body) => Ok((status, retry_after, body)),
                }
            }
        };
        let elapsed = started.elapsed();
        let status = outcome.as_ref().ok().map(|(s, _, _)| *s);
        if let Some(obs) = &self.observer {
            obs.observe(call.endpoint, status, elapsed);
        }
        debug!(
            endpoint = call.endpoint.as_str(),
            method = call.endpoint.method(),
            agent = call.agent,
            attempt = attempt + 1,
            status = status.map(i64::from).unwrap_or(-1),
            elapsed_ms = elapsed.as_millis() as u64,
            "Dynamics API call"
        );
        let (status, retry_after, body) = outcome?;
        if (200..300).contains(&status) {
            return parse(&body).map_err(|e| e.with_http_status(status));
        }
        Err(
            ApiError::new(ApiErrorKind::from_http_status(status), call.endpoint)
                .with_http_status(status)
                .with_retry_after(retry_after)
                .with_remote(RemoteErrorBody::parse(&body)),
        )
    }
}

fn check_agent(agent_id: &str, endpoint: Endpoint) -> Result<(), ApiError> {
    if agent_id.trim().is_empty() {
        return Err(ApiError::new(ApiErrorKind::InvalidRequest, endpoint)
            .with_detail("agent id is empty; set spec.agentId"));
    }
    // URL path handling drops these segments, which would address another
    // resource than the agent.
    if matches!(agent_id, "." | "..") {
        return Err(ApiError::new(ApiErrorKind::InvalidRequest, endpoint)
            .with_agent(agent_id)
            .with_detail("agent id cannot be '.' or '..'"));
    }
    Ok(())
}

fn to_json<T: Serialize>(v: &T, endpoint: Endpoint) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| {
        ApiError::new(ApiErrorKind::InvalidRequest, endpoint)
            .with_detail(format!("could not encode the request: {e}"))
    })
}

fn secret_header(secret: &ApiSecret, call: &Call<'_>) -> Result<HeaderValue, ApiError> {
    let refuse = |why: &str| {
        ApiError::new(ApiErrorKind::Unauthorized, call.endpoint)
            .with_agent(call.agent)
            .with_detail(why.to_string())
    };
    if secret.is_empty() {
        return Err(refuse("the api-secret is empty"));
    }
    let mut v = HeaderValue::from_str(secret.expose())
        .map_err(|_| refuse("the api-secret contains characters not allowed in an HTTP header"))?;
    // Keeps the value out of hyper's and reqwest's Debug output.
    v.set_sensitive(true);
    Ok(v)
}

fn transport_error(e: reqwest::Error, endpoint: Endpoint) -> ApiError {
    let kind = if e.is_timeout() {
        ApiErrorKind::Timeout
    } else if e.is_connect() {
        ApiErrorKind::Connect
    } else {
        ApiErrorKind::Transport
    };
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    ApiError::new(kind, endpoint)
        .with_detail(detail)
        .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_matches_the_contract() {
        let c = ClientConfig::default();
        assert_eq!(c.base_url, "https://public.api.bithuman.ai");
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.initial_backoff, Duration::from_millis(200));
        assert_eq!(c.max_backoff, Duration::from_secs(10));
    }

    #[test]
    fn urls_encode_agent_ids_and_keep_base_paths() {
        let c = DynamicsClient::new(ClientConfig {
            base_url: "http://h:1/prefix/".into(),
            ..Default::default()
        })
        .unwrap();
        let u = c
            .url(Endpoint::Get, &["v1", "dynamics", "a b/../c?d#e"])
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://h:1/prefix/v1/dynamics/a%20b%2F..%2Fc%3Fd%23e"
        );
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for base in ["not a url", "ftp://x", "mailto:x@y"] {
            let e = DynamicsClient::new(ClientConfig {
                base_url: base.into(),
                ..Default::default()
            })
            .unwrap_err();
            assert_eq!(e.kind(), ApiErrorKind::Transport, "{base}");
        }
    }
}
