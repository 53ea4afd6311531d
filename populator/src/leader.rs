//! Leader election with a `coordination.k8s.io/v1` Lease: only the holder reconciles.
//!
//! The lease is taken when it is free or expired, with the API server's optimistic
//! concurrency (a stale resourceVersion loses the race), and renewed well within its
//! duration. A leader that cannot renew before the lease would expire steps down: another
//! populator may hold it by then.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// How long a lease holds without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews, and how often others try to take over.
pub const RETRY: Duration = Duration::from_secs(3);
/// Writes of the lease refused with a conflict, each after a fresh read, before giving up
/// for this round.
const CONFLICT_RETRIES: usize = 3;

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease: String,
    /// Who we are (the pod name; unique among populators).
    pub identity: String,
}

/// Holds a lease for as long as it can renew it.
#[derive(Debug)]
pub struct Leadership {
    api: Api<Lease>,
    cfg: LeaderConfig,
}

impl Leadership {
    pub fn new(client: kube::Client, cfg: LeaderConfig) -> Leadership {
        Leadership { api: Api::namespaced(client, &cfg.namespace), cfg }
    }

    /// Waits until this process holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.cfg.lease, identity = %self.cfg.identity, "acquired leadership");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews until a renewal fails for longer than the lease lasts; then returns (the
    /// caller must stop acting as leader).
    pub async fn keep(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RETRY).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.cfg.lease, "another populator holds the lease now");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the lease"),
            }
            // Stop before the lease can expire under us.
            if last_ok.elapsed() + RETRY >= LEASE_DURATION {
                tracing::error!(lease = %self.cfg.lease, "could not renew the lease in time");
                return;
            }
        }
    }

    /// Takes or renews the lease if it is free, expired or ours. `Ok(false)`: someone else
    /// holds it.
    async fn try_acquire(&self) -> Result<bool, kube::Error> {
        // A conflict says only that the lease changed between our read and our write (an
        // earlier write of ours whose answer was lost, anyone touching the object): read it
        // again before concluding that someone else holds it. Taking every 409 for a lost
        // lease, a leader would step down (and its process exit) over one conflict.
        for _ in 0..CONFLICT_RETRIES {
            match self.write_lease().await {
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                other => return other,
            }
        }
        Ok(false)
    }

    /// One read and write of the lease; a lost race is a 409 error.
    async fn write_lease(&self) -> Result<bool, kube::Error> {
        let now = jiff::Timestamp::now();
        let spec = |acquire: Option<MicroTime>, transitions: Option<i32>| LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquire.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: transitions,
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.cfg.lease).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.cfg.lease.clone()), ..Default::default() },
                spec: Some(spec(None, Some(0))),
            };
            return self.api.create(&PostParams::default(), &lease).await.map(|_| true);
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(self.cfg.identity.as_str());
        let expired = match (&current.renew_time, current.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => {
                now.duration_since(*renewed) > jiff::SignedDuration::from_secs(secs.into())
            }
            _ => true,
        };
        if !ours && !expired && current.holder_identity.is_some() {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 };
        let acquired = if ours { current.acquire_time } else { None };
        lease.spec = Some(spec(acquired, Some(transitions)));
        // `replace` carries the resourceVersion we read: a concurrent taker makes it 409.
        self.api.replace(&self.cfg.lease, &PostParams::default(), &lease).await.map(|_| true)
    }
}
