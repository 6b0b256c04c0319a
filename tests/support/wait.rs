//! Polling helpers with timeouts.

use std::future::Future;
use std::time::{Duration, Instant};

/// Default poll interval of [`wait_for`] / [`wait_for_blocking`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok(Some(value))`
/// (→ `Ok(value)`), or `timeout` elapses (→ error naming `what`, with the last
/// error `check` returned, if any). `Ok(None)` and `Err(_)` both mean "not
/// yet": errors are treated as transient while polling.
///
/// ```ignore
/// let cm = wait_for("configmap to get data", Duration::from_secs(10), || async {
///     Ok(cms.get_opt("x").await?.filter(|cm| cm.data.is_some()))
/// }).await?;
/// ```
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err: Option<anyhow::Error>;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last_err = None,
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            return Err(timeout_error(what, timeout, last_err));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Blocking variant of [`wait_for`] for synchronous checks.
pub fn wait_for_blocking<T, F>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> anyhow::Result<Option<T>>,
{
    let start = Instant::now();
    let mut last_err: Option<anyhow::Error>;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last_err = None,
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            return Err(timeout_error(what, timeout, last_err));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn timeout_error(what: &str, timeout: Duration, last_err: Option<anyhow::Error>) -> anyhow::Error {
    match last_err {
        Some(e) => {
            anyhow::anyhow!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
        }
        None => anyhow::anyhow!("timed out after {timeout:?} waiting for {what}"),
    }
}
