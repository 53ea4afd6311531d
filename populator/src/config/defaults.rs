//! The read side of the configuration, for the controllers that size and lay out volumes
//! (the populate flow, DataVolumes): CDIConfig's effective filesystem overhead and
//! preallocation default, and the claim properties of a StorageClass's profile. Answers
//! come from watch-fed caches, so asking costs nothing.
//!
//! They read `status`, what the configuration controllers resolved (as KubeVirt does); until
//! that exists the fallback is `--filesystem-overhead` and no preallocation.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt as _;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

use super::cdiconfig::parse_overhead;
use crate::api::names::singletons;
use crate::api::{CDIConfig, ClaimPropertySet, StorageProfile};

/// Longest wait for the caches before answering from the fallbacks.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// Cached answers to "what does the configuration say"; cheap to clone.
#[derive(Clone)]
pub struct Defaults {
    config: Store<CDIConfig>,
    profiles: Store<StorageProfile>,
    fallback_overhead: f64,
    ready_wait: Duration,
}

impl std::fmt::Debug for Defaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Defaults").field("fallback_overhead", &self.fallback_overhead).finish()
    }
}

impl Defaults {
    /// The caches, and the future that fills them (run it for as long as they are used).
    pub fn new(client: kube::Client, fallback_overhead: f64) -> (Defaults, impl Future<Output = ()> + Send + 'static) {
        let (config, config_writer) = reflector::store();
        let (profiles, profiles_writer) = reflector::store();
        let only = watcher::Config::default().fields(&format!("metadata.name={}", singletons::CDI_CONFIG));
        let configs = watcher(Api::<CDIConfig>::all(client.clone()), only).default_backoff();
        let profile_events = watcher(Api::<StorageProfile>::all(client), watcher::Config::default()).default_backoff();
        let fill = async move {
            let configs = reflector::reflector(config_writer, configs).for_each(|e| log_error("the CDIConfig", e));
            let profiles =
                reflector::reflector(profiles_writer, profile_events).for_each(|e| log_error("StorageProfiles", e));
            futures_util::future::join(configs, profiles).await;
        };
        (Defaults { config, profiles, fallback_overhead, ready_wait: READY_WAIT }, fill)
    }

    /// Fixed answers, for tests of the code that asks.
    pub fn fixed(config: Option<CDIConfig>, profiles: Vec<StorageProfile>, fallback_overhead: f64) -> Defaults {
        let (config_store, mut config_writer) = reflector::store();
        let (profile_store, mut profile_writer) = reflector::store();
        config_writer.apply_watcher_event(&watcher::Event::Init);
        if let Some(c) = config {
            config_writer.apply_watcher_event(&watcher::Event::InitApply(c));
        }
        config_writer.apply_watcher_event(&watcher::Event::InitDone);
        profile_writer.apply_watcher_event(&watcher::Event::Init);
        for p in profiles {
            profile_writer.apply_watcher_event(&watcher::Event::InitApply(p));
        }
        profile_writer.apply_watcher_event(&watcher::Event::InitDone);
        // The writers may go: the stores keep what they were given.
        Defaults { config: config_store, profiles: profile_store, fallback_overhead, ready_wait: READY_WAIT }
    }

    /// Waits until both caches have been filled once (immediately after that), or for
    /// [`READY_WAIT`] at most: a cache that cannot fill (kind not installed, access refused)
    /// must not hold imports up; the fallbacks answer meanwhile, and the watch error is logged.
    pub async fn wait_ready(&self) {
        let both = async {
            // Fails only when the filling future was dropped; the fallbacks answer then.
            let _ = self.config.wait_until_ready().await;
            let _ = self.profiles.wait_until_ready().await;
        };
        if tokio::time::timeout(self.ready_wait, both).await.is_err() {
            tracing::warn!("CDIConfig and StorageProfiles not read yet: using the default overhead and preallocation");
        }
    }

    fn config(&self) -> Option<std::sync::Arc<CDIConfig>> {
        self.config.get(&ObjectRef::new(singletons::CDI_CONFIG))
    }

    /// The filesystem overhead for claims of `storage_class` (`""`: none named): CDIConfig's
    /// per-class value, else its global one, else the fallback.
    pub fn filesystem_overhead(&self, storage_class: &str) -> f64 {
        let config = self.config();
        let overhead = config.as_ref().and_then(|c| c.status.as_ref()?.filesystem_overhead.as_ref());
        let per_class = overhead.and_then(|o| o.storage_class.get(storage_class)).and_then(|v| parse_overhead(v));
        let global = || overhead.and_then(|o| o.global.as_deref()).and_then(parse_overhead);
        per_class.or_else(global).unwrap_or(self.fallback_overhead)
    }

    /// Whether to preallocate when a source does not say (CDIConfig's `preallocation`).
    pub fn default_preallocation(&self) -> bool {
        self.config().and_then(|c| c.status.as_ref().map(|s| s.preallocation)).unwrap_or(false)
    }

    /// The proxies imports go through (CDIConfig's `status.importProxy`, which CDI's
    /// importers read too).
    pub fn import_proxy(&self) -> Option<crate::api::ImportProxy> {
        self.config().and_then(|c| c.status.as_ref()?.import_proxy.clone())
    }

    /// Registries reached without TLS verification (CDIConfig's spec: CDI keeps no status copy).
    pub fn insecure_registries(&self) -> Vec<String> {
        self.config().map(|c| c.spec.insecure_registries.clone()).unwrap_or_default()
    }

    /// The resolved claim property sets of a class's profile, preferred first; empty when
    /// the profile is missing or knows none.
    pub fn claim_property_sets(&self, storage_class: &str) -> Vec<ClaimPropertySet> {
        self.profiles
            .get(&ObjectRef::new(storage_class))
            .and_then(|p| p.status.as_ref().map(|s| s.claim_property_sets.clone()))
            .unwrap_or_default()
    }

    /// The clone strategy and snapshot class of `storage_class`'s StorageProfile.
    pub fn clone_profile(&self, storage_class: &str) -> (Option<String>, Option<String>) {
        let profile = self.profiles.get(&ObjectRef::new(storage_class));
        let status = profile.as_ref().and_then(|p| p.status.as_ref());
        let strategy = status.and_then(|s| s.clone_strategy.clone()).filter(|s| !s.is_empty());
        (strategy, status.and_then(|s| s.snapshot_class.clone()).filter(|c| !c.is_empty()))
    }

    /// The access modes and volume mode a claim of `storage_class` gets when it says
    /// nothing: the profile's first complete set (as CDI renders `spec.storage`).
    pub fn claim_properties(&self, storage_class: &str) -> Option<(Vec<String>, String)> {
        self.claim_properties_for(storage_class, None)
    }

    /// As [`Self::claim_properties`], for a claim that asks for `volume_mode`: the first set
    /// of that mode.
    pub fn claim_properties_for(
        &self,
        storage_class: &str,
        volume_mode: Option<&str>,
    ) -> Option<(Vec<String>, String)> {
        first_complete(&self.claim_property_sets(storage_class), volume_mode)
    }
}

/// The first set with access modes and a volume mode (of `volume_mode`, if given).
pub fn first_complete(sets: &[ClaimPropertySet], volume_mode: Option<&str>) -> Option<(Vec<String>, String)> {
    sets.iter()
        .filter(|s| !s.access_modes.is_empty())
        .filter_map(|s| Some((s.access_modes.clone(), s.volume_mode.clone()?)))
        .find(|(_, mode)| volume_mode.is_none_or(|want| want == mode))
}

fn log_error<T>(what: &'static str, event: Result<T, watcher::Error>) -> futures_util::future::Ready<()> {
    if let Err(e) = event {
        tracing::warn!(error = %e, "watching {what}");
    }
    futures_util::future::ready(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::{CDIConfigSpec, CDIConfigStatus, FilesystemOverhead, StorageProfileSpec, StorageProfileStatus};
    use crate::config::capabilities::property_set;

    fn config(global: &str, per_class: &[(&str, &str)], preallocation: bool) -> CDIConfig {
        let mut c = CDIConfig::new(singletons::CDI_CONFIG, CDIConfigSpec::default());
        c.status = Some(CDIConfigStatus {
            filesystem_overhead: Some(FilesystemOverhead {
                global: Some(global.into()),
                storage_class: per_class
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            }),
            preallocation,
            ..Default::default()
        });
        c
    }

    fn profile(name: &str, sets: Vec<ClaimPropertySet>) -> StorageProfile {
        let mut p = StorageProfile::new(name, StorageProfileSpec::default());
        p.status = Some(StorageProfileStatus { claim_property_sets: sets, ..Default::default() });
        p
    }

    #[test]
    fn overhead_per_class_then_global_then_fallback() {
        let d = Defaults::fixed(Some(config("0.1", &[("fast", "0.2"), ("broken", "2")], true)), vec![], 0.06);
        assert_eq!(d.filesystem_overhead("fast"), 0.2);
        assert_eq!(d.filesystem_overhead("slow"), 0.1);
        assert_eq!(d.filesystem_overhead("broken"), 0.1, "an invalid value never gets through");
        assert_eq!(d.filesystem_overhead(""), 0.1);
        assert!(d.default_preallocation());

        let none = Defaults::fixed(None, vec![], 0.06);
        assert_eq!(none.filesystem_overhead("fast"), 0.06);
        assert!(!none.default_preallocation());
    }

    #[tokio::test]
    async fn a_cache_that_never_fills_does_not_hold_answers_up() {
        let (config, _config_writer) = reflector::store::<CDIConfig>();
        let (profiles, _profiles_writer) = reflector::store::<StorageProfile>();
        let d = Defaults { config, profiles, fallback_overhead: 0.06, ready_wait: Duration::from_millis(50) };
        d.wait_ready().await;
        assert_eq!(d.filesystem_overhead("any"), 0.06);
    }

    #[test]
    fn claim_properties_come_from_the_profile() {
        let d = Defaults::fixed(
            None,
            vec![profile(
                "ceph",
                vec![
                    ClaimPropertySet { access_modes: vec![], volume_mode: Some("Block".into()) },
                    property_set("ReadWriteMany", "Block"),
                    property_set("ReadWriteOnce", "Filesystem"),
                ],
            )],
            0.06,
        );
        assert_eq!(d.claim_properties("ceph"), Some((vec!["ReadWriteMany".into()], "Block".into())));
        assert_eq!(
            d.claim_properties_for("ceph", Some("Filesystem")),
            Some((vec!["ReadWriteOnce".into()], "Filesystem".into()))
        );
        assert_eq!(d.claim_properties("missing"), None);
        assert!(d.claim_property_sets("missing").is_empty());
    }
}
