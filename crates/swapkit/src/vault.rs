//! The Vault: typed key/value state that the host owns, that the host and every generation
//! share, and that outlives every swap and rollback. It also carries the host's own functions
//! for plugins.
//!
//! Values are [`LiveData`]: a type name, a schema version and a self-describing encoding, so a
//! plugin version reads what another version wrote. Every write gives its entry a new version,
//! unique across the Vault (a key deleted and written again never reuses one), which makes
//! [`Vault::compare_and_swap`] safe from ABA.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use swapkit_abi::service::Versioned;
use swapkit_abi::{wire, LiveData, LiveType};

use crate::error::VaultError;
use crate::sandbox::Quota;

/// A host function offered to plugins: encoded arguments in, encoded result or message out.
pub(crate) type HostFn = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// A running async host service: the encoded result or a message when it completes.
pub(crate) type ServiceFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send>>;

/// An async service offered to plugins: encoded arguments in, its future out.
pub(crate) type AsyncHostFn = Arc<dyn Fn(&[u8]) -> Result<ServiceFuture, String> + Send + Sync>;

/// Host-owned state shared with every generation. Cloning it is cheap and shares the state.
///
/// ```
/// let vault = swapkit::Vault::new();
/// vault.put("hits", &1u64).unwrap();
/// vault.update("hits", |n: Option<u64>| n.unwrap_or(0) + 1).unwrap();
/// assert_eq!(vault.get::<u64>("hits").unwrap(), Some(2));
/// ```
#[derive(Clone, Default)]
pub struct Vault {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: RwLock<Entries>,
    functions: RwLock<HashMap<String, HostFn>>,
    services: RwLock<HashMap<String, AsyncHostFn>>,
}

#[derive(Default)]
struct Entries {
    map: BTreeMap<String, Versioned>,
    /// The last version given out.
    version: u64,
    /// What each namespace a plugin writes through holds, kept up to date by every write (the
    /// host's too), so that checking a quota costs no scan.
    usage: Vec<(String, Usage)>,
}

/// Keys and bytes under one namespace.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub keys: usize,
    pub bytes: usize,
}

/// What one entry counts for against a quota: its key and its encoded value.
fn size(key: &str, value: &LiveData) -> usize {
    key.len() + value.type_name.len() + value.bytes.len()
}

impl Entries {
    /// Writes (`Some`) or deletes (`None`) the entry under `key`, keeping the usage counts;
    /// the last version given out.
    fn set(&mut self, key: &str, value: Option<LiveData>) -> u64 {
        let new = value.as_ref().map(|v| size(key, v));
        let old = match value {
            Some(value) => {
                self.version += 1;
                let version = self.version;
                self.map
                    .insert(key.to_owned(), Versioned { value, version })
            }
            None => self.map.remove(key),
        };
        let old = old.map(|v| size(key, &v.value));
        let keys = isize::from(new.is_some()) - isize::from(old.is_some());
        let bytes = new.unwrap_or(0) as isize - old.unwrap_or(0) as isize;
        for (_, u) in self
            .usage
            .iter_mut()
            .filter(|(ns, _)| key.starts_with(ns.as_str()))
        {
            u.keys = u.keys.saturating_add_signed(keys);
            u.bytes = u.bytes.saturating_add_signed(bytes);
        }
        self.version
    }

    /// Refuses a write of `value` under `key`, through namespace `ns`, that would take the
    /// namespace past `quota`.
    fn admits(
        &self,
        key: &str,
        value: Option<&LiveData>,
        ns: &str,
        quota: &Quota,
    ) -> Result<(), String> {
        let Some(value) = value else {
            return Ok(());
        };
        if value.bytes.len() > quota.largest_value {
            return Err(format!(
                "the value for `{key}` is {} bytes, past the quota's largest value of {} bytes                  (Quota::largest_value)",
                value.bytes.len(),
                quota.largest_value
            ));
        }
        let used = self
            .usage
            .iter()
            .find(|(n, _)| n == ns)
            .map(|(_, u)| *u)
            .unwrap_or_default();
        let old = self.map.get(key).map(|v| size(key, &v.value));
        let keys = used.keys + usize::from(old.is_none());
        let bytes = used.bytes - old.unwrap_or(0) + size(key, value);
        if keys > quota.keys {
            return Err(format!(
                "namespace `{ns}` holds {} keys, its quota (Quota::keys); writing `{key}` would                  add one",
                used.keys
            ));
        }
        if bytes > quota.bytes {
            return Err(format!(
                "writing `{key}` would bring namespace `{ns}` to {bytes} bytes, past its quota                  of {} bytes (Quota::bytes)",
                quota.bytes
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("entries", &self.read().map.len())
            .field("functions", &self.functions().len())
            .finish()
    }
}

impl Vault {
    /// An empty Vault. A [`Swapper`](crate::Swapper) makes its own unless given one with
    /// [`SwapperBuilder::vault`](crate::SwapperBuilder::vault).
    pub fn new() -> Vault {
        Vault::default()
    }

    /// The value under `key`, decoded as `T`; `None` if there is none. A value of another
    /// type name is an error, not a silent misread.
    pub fn get<T: LiveType>(&self, key: &str) -> Result<Option<T>, VaultError> {
        match self.get_versioned(key) {
            Some(v) => Ok(Some(decode(key, &v.value)?)),
            None => Ok(None),
        }
    }

    /// The raw entry under `key`: its live data and version.
    pub fn get_versioned(&self, key: &str) -> Option<Versioned> {
        self.read().map.get(key).cloned()
    }

    /// Stores `value` under `key`, and returns the entry's new version.
    pub fn put<T: LiveType>(&self, key: &str, value: &T) -> Result<u64, VaultError> {
        Ok(self.put_raw(key, encode(key, value)?))
    }

    /// Stores live data under `key`, and returns the entry's new version.
    pub fn put_raw(&self, key: &str, value: LiveData) -> u64 {
        self.write().set(key, Some(value))
    }

    /// Replaces the entry under `key` with `value` (or deletes it, for `None`) if its version
    /// is `expected`, where 0 means there must be no entry. `Ok(version)` when written;
    /// `Err(current)` with what the entry holds when another write came first.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Option<LiveData>,
    ) -> Result<u64, Option<Versioned>> {
        let mut entries = self.write();
        let current = entries.map.get(key).map_or(0, |v| v.version);
        if current != expected {
            return Err(entries.map.get(key).cloned());
        }
        let deleting = value.is_none();
        let version = entries.set(key, value);
        Ok(if deleting { 0 } else { version })
    }

    /// Applies `f` to the value under `key` atomically: when another writer comes first, `f`
    /// runs again on the newer value. Returns the value stored.
    pub fn update<T: LiveType>(
        &self,
        key: &str,
        mut f: impl FnMut(Option<T>) -> T,
    ) -> Result<T, VaultError> {
        let mut current = self.get_versioned(key);
        loop {
            let (old, expected) = match &current {
                Some(v) => (Some(decode(key, &v.value)?), v.version),
                None => (None, 0),
            };
            let new = f(old);
            match self.compare_and_swap(key, expected, Some(encode(key, &new)?)) {
                Ok(_) => return Ok(new),
                Err(now) => current = now,
            }
        }
    }

    /// Deletes the entry under `key`; whether there was one.
    pub fn delete(&self, key: &str) -> bool {
        let mut entries = self.write();
        let found = entries.map.contains_key(key);
        if found {
            entries.set(key, None);
        }
        found
    }

    /// Starts keeping the usage of namespace `ns` (a key prefix), counting what it holds now.
    pub(crate) fn track(&self, ns: &str) {
        let mut entries = self.write();
        if entries.usage.iter().any(|(n, _)| n == ns) {
            return;
        }
        let mut usage = Usage::default();
        for (k, v) in entries
            .map
            .range(ns.to_owned()..)
            .take_while(|(k, _)| k.starts_with(ns))
        {
            usage.keys += 1;
            usage.bytes += size(k, &v.value);
        }
        entries.usage.push((ns.to_owned(), usage));
    }

    /// What namespace `ns` holds, if it is tracked.
    #[cfg(test)]
    pub(crate) fn usage(&self, ns: &str) -> Option<Usage> {
        let entries = self.read();
        entries.usage.iter().find(|(n, _)| n == ns).map(|(_, u)| *u)
    }

    /// [`Vault::compare_and_swap`] for a plugin, writing through namespace `ns` under
    /// `quota` (`expected` of `None`: a plain put). `Err` says which quota refused it; the
    /// Vault is then unchanged.
    pub(crate) fn write_within(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Option<LiveData>,
        ns: &str,
        quota: &Quota,
    ) -> Result<Result<u64, Option<Versioned>>, String> {
        let mut entries = self.write();
        if let Some(expected) = expected {
            let current = entries.map.get(key).map_or(0, |v| v.version);
            if current != expected {
                return Ok(Err(entries.map.get(key).cloned()));
            }
        }
        entries.admits(key, value.as_ref(), ns, quota)?;
        let deleting = value.is_none();
        let version = entries.set(key, value);
        Ok(Ok(if deleting { 0 } else { version }))
    }

    /// The keys that start with `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.read()
            .map
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Offers `f` to plugins as host function `name`; they call it with
    /// `host.call_host::<A, R>(name, &args)`. Arguments and result cross in the wire encoding,
    /// so both sides must agree on `A` and `R`, as for an interface method. Replaces any
    /// function of the same name; calls already running finish with the old one.
    pub fn provide<A, R, F>(&self, name: &str, f: F)
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let name_owned = name.to_owned();
        let raw: HostFn = Arc::new(move |input: &[u8]| {
            let args: A = wire::from_bytes(input).map_err(|e| {
                format!("the arguments did not decode as host function `{name_owned}`'s: {e}")
            })?;
            wire::to_vec(&f(args)).map_err(|e| format!("the result did not encode: {e}"))
        });
        crate::lock::write(&self.inner.functions).insert(name.to_owned(), raw);
    }

    /// Offers the async function `f` to plugins as service `name`; an async method awaits it
    /// with `host.call_async::<A, R>(name, &args).await`. It runs on the host's runtime (the
    /// one polling the call), so it may await the host's I/O: a database, another service.
    /// Arguments and result cross in the wire encoding, as for [`provide`](Self::provide);
    /// a plugin needs the same grant (`Grant::HostFn(name)`) to call it. Replaces any service
    /// of the same name; calls already awaiting it finish with the old one.
    ///
    /// ```
    /// let vault = swapkit::Vault::new();
    /// vault.provide_async("orders.count", |(customer,): (u64,)| async move {
    ///     // ... await a database here ...
    ///     customer % 7
    /// });
    /// ```
    pub fn provide_async<A, R, F, Fut>(&self, name: &str, f: F)
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = R> + Send + 'static,
    {
        let name_owned = name.to_owned();
        let raw: AsyncHostFn = Arc::new(move |input: &[u8]| {
            let args: A = wire::from_bytes(input).map_err(|e| {
                format!("the arguments did not decode as host service `{name_owned}`'s: {e}")
            })?;
            let future = f(args);
            Ok(Box::pin(async move {
                wire::to_vec(&future.await).map_err(|e| format!("the result did not encode: {e}"))
            }) as ServiceFuture)
        });
        crate::lock::write(&self.inner.services).insert(name.to_owned(), raw);
    }

    /// The async service `name`, if offered.
    pub(crate) fn service(&self, name: &str) -> Option<AsyncHostFn> {
        crate::lock::read(&self.inner.services).get(name).cloned()
    }

    /// Withdraws host function or async service `name`; whether it was offered.
    pub fn withdraw(&self, name: &str) -> bool {
        let function = crate::lock::write(&self.inner.functions).remove(name);
        let service = crate::lock::write(&self.inner.services).remove(name);
        function.is_some() || service.is_some()
    }

    /// The host function `name`, if offered.
    pub(crate) fn function(&self, name: &str) -> Option<HostFn> {
        self.functions().get(name).cloned()
    }

    fn functions(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, HostFn>> {
        crate::lock::read(&self.inner.functions)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        crate::lock::read(&self.inner.entries)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        crate::lock::write(&self.inner.entries)
    }
}

fn encode<T: LiveType>(key: &str, value: &T) -> Result<LiveData, VaultError> {
    LiveData::of(value).map_err(|e| VaultError::Encode {
        key: key.to_owned(),
        reason: e.0,
    })
}

fn decode<T: LiveType>(key: &str, value: &LiveData) -> Result<T, VaultError> {
    if value.type_name != T::TYPE_NAME {
        return Err(VaultError::TypeMismatch {
            key: key.to_owned(),
            stored: value.type_name.clone(),
            wanted: T::TYPE_NAME,
        });
    }
    value.decode().map_err(|e| VaultError::Decode {
        key: key.to_owned(),
        reason: e.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_never_reused() {
        let v = Vault::new();
        let first = v.put("k", &1u64).unwrap();
        assert!(v.delete("k"));
        let second = v.put("k", &1u64).unwrap();
        assert!(second > first);
        assert_eq!(
            v.compare_and_swap("k", first, None)
                .unwrap_err()
                .unwrap()
                .version,
            second
        );
    }

    #[test]
    fn list_is_by_prefix_and_sorted() {
        let v = Vault::new();
        for k in ["job/2", "job/1", "jobs", "other"] {
            v.put(k, &0u32).unwrap();
        }
        assert_eq!(v.list("job/"), ["job/1", "job/2"]);
        assert!(v.list("zzz").is_empty());
    }

    #[test]
    fn usage_follows_every_write_and_quotas_refuse_without_writing() {
        let v = Vault::new();
        v.put("p/old", &1u64).unwrap();
        v.track("p/");
        let one = v.usage("p/").unwrap();
        assert_eq!(
            one.keys, 1,
            "what the namespace held before tracking counts"
        );
        let quota = Quota {
            keys: 2,
            bytes: 1 << 20,
            largest_value: 64,
        };
        let value = |n: usize| LiveData {
            type_name: "t".into(),
            schema: 1,
            bytes: vec![0; n],
        };
        v.write_within("p/a", None, Some(value(8)), "p/", &quota)
            .unwrap()
            .unwrap();
        assert_eq!(v.usage("p/").unwrap().keys, 2);
        let e = v
            .write_within("p/b", None, Some(value(8)), "p/", &quota)
            .unwrap_err();
        assert!(e.contains("Quota::keys"), "{e}");
        assert!(
            v.get_versioned("p/b").is_none(),
            "a refused write changes nothing"
        );
        let e = v
            .write_within("p/a", None, Some(value(65)), "p/", &quota)
            .unwrap_err();
        assert!(e.contains("largest value"), "{e}");
        // Overwriting and deleting, by the host too, keep the counts.
        v.put_raw("p/a", value(16));
        assert!(v.delete("p/old"));
        v.put_raw("other", value(100));
        let now = v.usage("p/").unwrap();
        assert_eq!((now.keys, now.bytes), (1, "p/a".len() + 1 + 16));
        v.write_within("p/a", Some(0), None, "p/", &quota)
            .unwrap()
            .unwrap_err();
        let version = v.get_versioned("p/a").unwrap().version;
        v.write_within("p/a", Some(version), None, "p/", &quota)
            .unwrap()
            .unwrap();
        assert_eq!(v.usage("p/").unwrap(), Usage::default());
    }

    #[test]
    fn a_wrong_type_is_an_error() {
        let v = Vault::new();
        v.put("k", &"text".to_string()).unwrap();
        let e = v.get::<u64>("k").unwrap_err();
        assert!(matches!(e, VaultError::TypeMismatch { .. }), "{e}");
        assert!(e.to_string().contains("String"), "{e}");
    }
}
