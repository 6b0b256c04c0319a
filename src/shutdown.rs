//! The signals that end a long-running command (`run`, `sim`): Ctrl-C or SIGTERM (what a
//! kubelet sends before it kills a pod).
//!
//! `run` stops gracefully on the first signal (in-flight passes finish, the Lease is given back),
//! but a graceful stop needs the API server: when it hangs, the kubelet would wait out the whole
//! grace period and then SIGKILL the process. [`install`] bounds the stop instead: past a
//! deadline inside the pod's grace period, or on a second signal, the process exits at once.

use std::time::Duration;

use tokio::sync::watch;

/// How long `run` may take to stop after the first signal: well inside the chart's 30 s grace
/// period, so the operator exits on its own (and says so) before the kubelet kills it.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Exit status when the deadline passes before the graceful stop finished.
pub const EXIT_DEADLINE: i32 = 1;
/// Exit status on a second signal (as shells report an interrupted command).
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Resolves on SIGINT or SIGTERM and names the signal.
pub async fn signal() -> &'static str {
    let mut signals = Signals::register();
    signals.next().await
}

/// SIGINT and SIGTERM, registered when made: a signal that arrives before the first `next`
/// is not lost.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.interrupt) => "SIGINT",
                _ = recv(&mut self.terminate) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// A stop request shared by every part of `run` that waits on something.
#[derive(Clone)]
pub struct Stop(watch::Receiver<Option<&'static str>>);

impl Stop {
    /// Resolves once a stop was requested, with the signal's name.
    pub async fn requested(&self) -> &'static str {
        let mut rx = self.0.clone();
        let signal = rx.wait_for(Option::is_some).await.map(|signal| *signal);
        match signal {
            Ok(signal) => signal.unwrap_or("signal"),
            // The watcher task is gone (the runtime is shutting down): never resolve.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Listen for SIGTERM and SIGINT from now on. The first asks for a graceful stop ([`Stop`]);
/// if the process is still running `deadline` later, or a second signal arrives, it exits at
/// once. Call once, inside the runtime, before anything that may wait on the API server.
pub fn install(deadline: Duration) -> Stop {
    let (tx, rx) = watch::channel(None);
    let mut signals = Signals::register();
    tokio::spawn(async move {
        let first = signals.next().await;
        tracing::info!(
            signal = first,
            deadline_seconds = deadline.as_secs(),
            "shutting down; a second signal stops at once"
        );
        let _ = tx.send(Some(first));
        tokio::select! {
            _ = tokio::time::sleep(deadline) => {
                tracing::error!(
                    deadline_seconds = deadline.as_secs(),
                    "graceful shutdown did not finish in time (is the API server reachable?); exiting"
                );
                std::process::exit(EXIT_DEADLINE);
            }
            second = signals.next() => {
                tracing::warn!(signal = second, "second signal; exiting at once");
                std::process::exit(EXIT_SECOND_SIGNAL);
            }
        }
    });
    Stop(rx)
}
