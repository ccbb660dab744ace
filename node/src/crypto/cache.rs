//! The unwrapped keys of the indexes this node hosts, in memory for a bounded lifetime.
//!
//! The shard reconciler asks [`KeyCache::load`] for every index it hosts on each pass; an
//! entry younger than half its lifetime is kept, an older one is unwrapped again through
//! the root (and, under CMEK, the project's KMS key). An entry whose unwrap keeps failing
//! expires at most the lifetime after the last successful unwrap of the key above it
//! ([`KeyCache::expired`]); the reconciler then stops the index's shard group on this node
//! and evicts the keys, so a revoked root or project key stops the index within the
//! lifetime (plus one reconciler pass). Nothing on disk changes: once the key unwraps
//! again, the group starts and catches up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use conifer_raft::cipher::{CipherError, GroupCiphers, ValueCipher};
use conifer_raft::GroupId;

use super::hierarchy::{self, IndexKeyVersion, IndexKeys, KeySet, ProjectKey};
use super::kms::{Kms, KMS_PROVIDER};
use super::{CryptoError, DataKey, KeyProvider, Unavailability};

/// Default lifetime of an unwrapped key in memory (`serve --key-cache-ttl-ms`): the bound
/// within which a revoked or disabled key stops the indexes under it. AWS's own data-key
/// caching guidance uses the same order (minutes).
pub const DEFAULT_KEY_CACHE_TTL_MS: u64 = 300_000;
/// Least time between two attempts to unwrap an index's keys after a failure, so a refused
/// or unreachable key provider is not asked on every reconciler pass.
pub const KEY_RETRY_INTERVAL_MS: u64 = 1_000;

/// Whether an index's keys can be used on this node now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    /// Unwrapped and in the cache; values are sealed with `version`.
    Available {
        /// The current data key version.
        version: u32,
    },
    /// The last unwrap failed and no unexpired key is cached.
    Unavailable {
        /// The key that failed: a KMS key ARN or the local keyring.
        key: String,
        /// Why, when the provider said (`None`: the wrapped key itself did not unwrap).
        kind: Option<Unavailability>,
        /// The whole reason.
        reason: String,
    },
    /// Not unwrapped on this node (it hosts no replica of the index, or has not yet
    /// reached it).
    NotLoaded,
}

struct CachedProject {
    wrapped: ProjectKey,
    key: Arc<DataKey>,
    expires: Instant,
}

struct CachedIndex {
    keys: IndexKeys,
    set: Arc<KeySet>,
    expires: Instant,
}

/// Unwrapped project and index keys with a bounded lifetime; the ciphers of the shard
/// groups ([`GroupCiphers`]).
pub struct KeyCache {
    root: Arc<dyn KeyProvider>,
    kms: Arc<Kms>,
    ttl: Duration,
    projects: Mutex<HashMap<String, CachedProject>>,
    groups: RwLock<HashMap<GroupId, CachedIndex>>,
    failures: RwLock<HashMap<GroupId, (KeyStatus, Instant)>>,
    /// Groups whose keys are being unwrapped now (one attempt at a time).
    refreshing: Mutex<std::collections::HashSet<GroupId>>,
    /// Groups whose index is gone: an unwrap finishing after [`KeyCache::forget`] does not
    /// put their keys back (group ids are never reused).
    forgotten: Mutex<std::collections::HashSet<GroupId>>,
}

/// The state of keys whose unwrap failed with `e`; `wrapping` names the key that wraps
/// them when the error does not name one.
fn failure(wrapping: String, e: &CryptoError) -> KeyStatus {
    match e {
        CryptoError::Unavailable { key, kind, .. } => KeyStatus::Unavailable {
            key: key.clone(),
            kind: Some(*kind),
            reason: format!("key {key} is unavailable ({})", kind.as_str()),
        },
        _ => KeyStatus::Unavailable {
            reason: format!("the data keys do not unwrap with {wrapping}"),
            key: wrapping,
            kind: None,
        },
    }
}

impl KeyCache {
    /// A cache unwrapping through `root` (and `kms`, for the keys of projects under
    /// customer-managed encryption), keeping keys `ttl`.
    pub fn new(root: Arc<dyn KeyProvider>, kms: Arc<Kms>, ttl: Duration) -> Self {
        Self {
            root,
            kms,
            ttl,
            projects: Mutex::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
            failures: RwLock::new(HashMap::new()),
            refreshing: Mutex::new(std::collections::HashSet::new()),
            forgotten: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The root key provider.
    pub fn root(&self) -> &Arc<dyn KeyProvider> {
        &self.root
    }

    /// The lifetime of an unwrapped key.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new project key wrapped by the root (the proposer of a new project calls this).
    pub async fn new_project_key(&self, project_id: &str) -> Result<ProjectKey, CryptoError> {
        hierarchy::new_project_key(self.root.as_ref(), project_id).await
    }

    /// A new index's data keys (the proposer of a new index calls this): made by the
    /// project's customer-managed KMS key `cmek` (`GenerateDataKey`) when it has one, else
    /// wrapped by its project key.
    pub async fn new_index_keys(
        &self,
        project_id: &str,
        project_key: &ProjectKey,
        cmek: Option<&str>,
        index: &str,
    ) -> Result<IndexKeys, CryptoError> {
        let first = self
            .new_index_key_version(project_id, project_key, cmek, index, 1)
            .await?;
        Ok(IndexKeys {
            current: 1,
            versions: vec![first],
            resealed: Vec::new(),
        })
    }

    /// Version `version` of an index's data key, new (an index created, or its key
    /// rotated): made by the project's customer-managed KMS key `cmek` when it has one,
    /// else wrapped by its project key.
    pub async fn new_index_key_version(
        &self,
        project_id: &str,
        project_key: &ProjectKey,
        cmek: Option<&str>,
        index: &str,
        version: u32,
    ) -> Result<IndexKeyVersion, CryptoError> {
        let Some(arn) = cmek else {
            let (kek, _) = self.project_key(project_id, project_key).await?;
            return Ok(hierarchy::new_index_key_version(
                &kek, project_id, index, version,
            ));
        };
        let context = hierarchy::index_context(project_id, index, version);
        let (_, wrapped) = self.kms.key(arn)?.generate(&context).await?;
        Ok(IndexKeyVersion {
            version,
            wrapped,
            created_at: crate::now_rfc3339(),
        })
    }

    /// A new backup's data key: made by the project's customer-managed KMS key `cmek` when
    /// it has one, else wrapped by its project key; bound to the backup by the owner string
    /// `conifer/backup-key/v1/<project>/<backup>`.
    pub async fn new_backup_key(
        &self,
        project_id: &str,
        project_key: &ProjectKey,
        cmek: Option<&str>,
        backup_id: &str,
    ) -> Result<IndexKeyVersion, CryptoError> {
        let context = hierarchy::backup_context(project_id, backup_id);
        let wrapped = match cmek {
            Some(arn) => self.kms.key(arn)?.generate(&context).await?.1,
            None => {
                let (kek, _) = self.project_key(project_id, project_key).await?;
                hierarchy::new_wrapped_key(&kek, &context)
            }
        };
        Ok(IndexKeyVersion {
            version: 1,
            wrapped,
            created_at: crate::now_rfc3339(),
        })
    }

    /// A backup's data key, unwrapped through what wrapped it (the project key, or the
    /// project's KMS key: a denied or disabled key refuses it). Not cached: a job unwraps
    /// it once.
    pub async fn backup_key(
        &self,
        project_id: &str,
        project_key: &ProjectKey,
        backup_id: &str,
        key: &IndexKeyVersion,
    ) -> Result<DataKey, CryptoError> {
        use super::KeyProvider as _;
        let context = hierarchy::backup_context(project_id, backup_id);
        let secret = if key.wrapped.provider == KMS_PROVIDER {
            self.kms
                .key(&key.wrapped.key_id)?
                .unwrap(&key.wrapped, &context)
                .await?
        } else {
            let (kek, _) = self.project_key(project_id, project_key).await?;
            hierarchy::unwrap_with(&kek, &key.wrapped, &context)?
        };
        Ok(DataKey::from_secret(&secret))
    }

    /// Checks that this node can use the KMS key `arn` (a data key made and unwrapped
    /// again), before a project is set to encrypt with it.
    pub async fn check_kms_key(&self, arn: &str) -> Result<(), CryptoError> {
        use super::KeyProvider as _;
        let key = self.kms.key(arn)?;
        let context = "conifer/cmek-check/v1";
        let (secret, wrapped) = key.generate(context).await?;
        let again = key.unwrap(&wrapped, context).await?;
        if again.as_ref() != secret.as_ref() {
            return Err(CryptoError::Auth(format!(
                "{arn} did not give back the key it wrapped"
            )));
        }
        Ok(())
    }

    /// The unwrapped project key and when it expires; unwrapped again through the root
    /// when it is past half its lifetime or its wrapped form changed.
    async fn project_key(
        &self,
        project_id: &str,
        wrapped: &ProjectKey,
    ) -> Result<(Arc<DataKey>, Instant), CryptoError> {
        let now = Instant::now();
        {
            let projects = self.projects.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(cached) = projects.get(project_id) {
                if cached.wrapped == *wrapped && cached.expires > now + self.ttl / 2 {
                    return Ok((cached.key.clone(), cached.expires));
                }
            }
        }
        let key =
            Arc::new(hierarchy::unwrap_project_key(self.root.as_ref(), project_id, wrapped).await?);
        let expires = now + self.ttl;
        self.projects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                project_id.to_string(),
                CachedProject {
                    wrapped: wrapped.clone(),
                    key: key.clone(),
                    expires,
                },
            );
        Ok((key, expires))
    }

    /// Makes sure `group`'s keys are in the cache and younger than half their lifetime,
    /// unwrapping them again otherwise (at most every [`KEY_RETRY_INTERVAL_MS`] after a
    /// failure). On failure the cached keys (if any) stay until they expire, and the error
    /// is the [`KeyStatus::Unavailable`] that [`KeyCache::status`] then reports.
    pub async fn load(
        &self,
        group: GroupId,
        project_id: &str,
        project_key: &ProjectKey,
        index: &str,
        keys: &IndexKeys,
    ) -> Result<(), KeyStatus> {
        if !self.needs_refresh(group, keys) {
            return match self.status(group) {
                KeyStatus::Available { .. } => Ok(()),
                other => Err(other),
            };
        }
        struct Refreshing<'a>(&'a KeyCache, GroupId);
        impl Drop for Refreshing<'_> {
            fn drop(&mut self) {
                self.0
                    .refreshing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&self.1);
            }
        }
        if !self
            .refreshing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group)
        {
            return match self.status(group) {
                KeyStatus::Available { .. } => Ok(()),
                other => Err(other),
            };
        }
        let _refreshing = Refreshing(self, group);
        let unwrapped = self
            .unwrap_index(project_id, project_key, index, keys)
            .await;
        if self
            .forgotten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&group)
        {
            return Err(KeyStatus::NotLoaded);
        }
        match unwrapped {
            Ok((set, expires)) => {
                self.groups
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        group,
                        CachedIndex {
                            keys: keys.clone(),
                            set: Arc::new(set),
                            expires,
                        },
                    );
                self.failures
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&group);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(group, "unwrapping the keys of index {index}: {e}");
                let status = failure(self.wrapping_key(keys), &e);
                self.failures
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(group, (status.clone(), Instant::now()));
                Err(status)
            }
        }
    }

    /// Every version of an index's data keys, each through what wrapped it (the project key,
    /// or the project's KMS key), and when they expire: a lifetime from now, or sooner when
    /// the project key was unwrapped earlier.
    async fn unwrap_index(
        &self,
        project_id: &str,
        project_key: &ProjectKey,
        index: &str,
        keys: &IndexKeys,
    ) -> Result<(KeySet, Instant), CryptoError> {
        use super::KeyProvider as _;
        let mut expires = Instant::now() + self.ttl;
        let mut kek: Option<Arc<DataKey>> = None;
        let mut set = std::collections::BTreeMap::new();
        for version in &keys.versions {
            let context = hierarchy::index_context(project_id, index, version.version);
            let secret = if version.wrapped.provider == KMS_PROVIDER {
                let key = self.kms.key(&version.wrapped.key_id)?;
                key.unwrap(&version.wrapped, &context).await?
            } else {
                let kek = match &kek {
                    Some(kek) => kek.clone(),
                    None => {
                        let (unwrapped, until) = self.project_key(project_id, project_key).await?;
                        expires = expires.min(until);
                        kek.insert(unwrapped).clone()
                    }
                };
                hierarchy::unwrap_with(&kek, &version.wrapped, &context)?
            };
            set.insert(version.version, DataKey::from_secret(&secret));
        }
        Ok((KeySet::new(keys.current, set)?, expires))
    }

    /// Whether `group`'s keys (`keys` as the control plane has them now) should be unwrapped
    /// again: not cached, changed, or past half their lifetime — unless an unwrap is under
    /// way or the last one failed less than [`KEY_RETRY_INTERVAL_MS`] ago.
    pub fn needs_refresh(&self, group: GroupId, keys: &IndexKeys) -> bool {
        let now = Instant::now();
        let fresh = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .is_some_and(|cached| {
                // `resealed` changes as replicas report during a rotation; the keys do not.
                cached.keys.current == keys.current
                    && cached.keys.versions == keys.versions
                    && cached.expires > now + self.ttl / 2
            });
        if fresh {
            return false;
        }
        let retried_lately = self
            .failures
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .is_some_and(|(_, at)| now < *at + Duration::from_millis(KEY_RETRY_INTERVAL_MS));
        !retried_lately
            && !self
                .refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&group)
    }

    /// Whether `group`'s cached keys outlived their lifetime (the reconciler then stops the
    /// group and calls [`KeyCache::evict`]).
    pub fn expired(&self, group: GroupId) -> bool {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups
            .get(&group)
            .is_some_and(|cached| cached.expires <= Instant::now())
    }

    /// Whether `group` has unexpired keys in the cache.
    pub fn available(&self, group: GroupId) -> bool {
        matches!(self.status(group), KeyStatus::Available { .. })
    }

    /// Drops `group`'s unwrapped keys (their memory is zeroized). A recorded failure stays;
    /// without one (an unwrap still under way), the expiry itself is recorded as the
    /// failure, so the index keeps answering that its key is unavailable, naming it, rather
    /// than that no replica serves it.
    pub fn evict(&self, group: GroupId) {
        let evicted = self
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
        if let Some(cached) = evicted {
            let mut failures = self.failures.write().unwrap_or_else(|p| p.into_inner());
            failures
                .entry(group)
                .or_insert_with(|| (self.expired_status(&cached.keys), Instant::now()));
        }
    }

    /// The state of keys that expired while the key provider has not answered.
    fn expired_status(&self, keys: &IndexKeys) -> KeyStatus {
        let key = self.wrapping_key(keys);
        KeyStatus::Unavailable {
            reason: format!(
                "key {key} is unavailable (unreachable): the data keys it wraps expired from \
                 this node's cache after {} ms and it has not answered since",
                self.ttl.as_millis()
            ),
            key,
            kind: Some(Unavailability::Unreachable),
        }
    }

    /// The key that wraps the current version of `keys`: a customer-managed KMS key (its
    /// ARN), else the root that wraps the project key.
    pub fn wrapping_key(&self, keys: &IndexKeys) -> String {
        keys.versions
            .iter()
            .find(|v| v.version == keys.current)
            .filter(|v| v.wrapped.provider == KMS_PROVIDER)
            .map(|v| v.wrapped.key_id.clone())
            .unwrap_or_else(|| self.root.describe())
    }

    /// Drops everything of `group` (its index is gone), for good.
    pub fn forget(&self, group: GroupId) {
        self.forgotten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group);
        self.evict(group);
        self.failures
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }

    /// Whether `group`'s keys can be used on this node now: available while cached and
    /// unexpired; else the last failure; else, when they expired while an unwrap is still
    /// under way (a provider that does not answer), unavailable as unreachable.
    pub fn status(&self, group: GroupId) -> KeyStatus {
        let now = Instant::now();
        let expired = match self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
        {
            Some(cached) if cached.expires > now => {
                return KeyStatus::Available {
                    version: cached.set.current(),
                }
            }
            Some(cached) => Some(cached.keys.clone()),
            None => None,
        };
        if let Some((status, _)) = self
            .failures
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
        {
            return status.clone();
        }
        match expired {
            Some(keys) => self.expired_status(&keys),
            None => KeyStatus::NotLoaded,
        }
    }
}

impl GroupCiphers for KeyCache {
    /// The cached keys of `group`, even past their lifetime: the reconciler stops a group
    /// before it evicts its keys, so a running group never finds its cipher gone.
    fn cipher(&self, group: GroupId) -> Result<Arc<dyn ValueCipher>, CipherError> {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        match groups.get(&group) {
            Some(cached) => Ok(cached.set.clone()),
            None => Err(CipherError(format!(
                "the data keys of group {group} are not unwrapped on this node"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::LocalKeyring;

    #[tokio::test]
    async fn a_group_cipher_exists_only_while_its_keys_are_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn KeyProvider> =
            Arc::new(LocalKeyring::open_or_create(dir.path()).unwrap());
        let kms = Arc::new(Kms::new(None));
        let cache = KeyCache::new(root, kms, Duration::from_millis(200));
        let project = cache.new_project_key("p1").await.unwrap();
        let keys = cache
            .new_index_keys("p1", &project, None, "docs")
            .await
            .unwrap();
        assert_eq!(cache.status(7), KeyStatus::NotLoaded);
        assert!(cache.cipher(7).is_err());
        cache.load(7, "p1", &project, "docs", &keys).await.unwrap();
        assert_eq!(cache.status(7), KeyStatus::Available { version: 1 });
        let sealed = cache.cipher(7).unwrap().seal(b"a", b"v");
        assert!(!cache.expired(7));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(cache.expired(7));
        assert!(
            matches!(
                cache.status(7),
                KeyStatus::Unavailable {
                    kind: Some(Unavailability::Unreachable),
                    ..
                }
            ),
            "expired keys with no answer yet: {:?}",
            cache.status(7)
        );
        // Past its lifetime the cipher is still there until the reconciler evicts it.
        assert_eq!(cache.cipher(7).unwrap().open(b"a", &sealed).unwrap(), b"v");
        cache.evict(7);
        assert!(cache.cipher(7).is_err());
        // A wrapped key that does not unwrap (the wrong index) is recorded as unavailable,
        // and asked again only after the retry interval.
        let refused = cache.load(8, "p1", &project, "other", &keys).await;
        assert!(matches!(
            refused,
            Err(KeyStatus::Unavailable { kind: None, .. })
        ));
        assert_eq!(cache.status(8), refused.clone().unwrap_err());
        assert_eq!(
            cache.load(8, "p1", &project, "docs", &keys).await,
            refused,
            "within the retry interval the recorded failure answers"
        );
        tokio::time::sleep(Duration::from_millis(KEY_RETRY_INTERVAL_MS + 50)).await;
        cache.load(8, "p1", &project, "docs", &keys).await.unwrap();
        assert!(cache.available(8));
        cache.forget(8);
        assert_eq!(cache.status(8), KeyStatus::NotLoaded);
        // A forgotten group's keys are not put back by a later unwrap.
        assert_eq!(
            cache.load(8, "p1", &project, "docs", &keys).await,
            Err(KeyStatus::NotLoaded)
        );
        assert!(cache.cipher(8).is_err());
    }
}
