//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): with more than one
//! replica only the holder reconciles. A replica that loses the lease stops its controller and
//! exits; its Deployment restarts it as a follower. That is simpler to reason about than pausing
//! and resuming a controller, and it never leaves two replicas acting at once.

use std::future::Future;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub lease_namespace: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    /// Seconds a lease is valid after its last renewal.
    pub lease_duration: u64,
    /// Seconds before expiry at which the holder renews.
    pub renew_grace: u64,
}

pub struct Leadership {
    state: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
}

/// Wait until this replica holds the lease.
pub async fn acquire(client: Client, config: &LeaderConfig) -> anyhow::Result<Leadership> {
    let manager = LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_duration)
        .with_grace(config.renew_grace)
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(lease = %config.lease_name, namespace = %config.lease_namespace, identity = %config.identity, "waiting for leadership");
    while !*state.borrow_and_update() {
        state.changed().await.map_err(|_| {
            anyhow::anyhow!("the lease manager stopped before this replica became leader")
        })?;
    }
    Ok(Leadership { state, task })
}

impl Leadership {
    /// Resolves when the lease is lost (or its manager stops).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut state = self.state.clone();
        async move {
            while state.changed().await.is_ok() {
                if !*state.borrow_and_update() {
                    return;
                }
            }
        }
    }

    /// Give the lease back so a follower takes over at once instead of after expiry.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("lease released"),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "lease release failed; it expires on its own")
            }
            Err(err) => tracing::warn!(error = %err, "lease task failed"),
        }
    }
}
