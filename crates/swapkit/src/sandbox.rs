//! What a plugin may reach through the host: its part of the Vault, the host functions granted
//! to it, how much it may store, and how deep plugin → host → plugin calls may nest.
//!
//! The same rules hold on both backends, so a plugin behaves alike native and in wasm. They are
//! a security boundary only for wasm plugins: native code runs in the host's address space and
//! could go around them.

use std::collections::HashMap;

/// The rules every plugin's requests to the host are checked against. The default confines
/// each plugin to its own part of the Vault (keys starting with `<plugin name>/`) under
/// [`Quota::default`], grants no host function, and lets calls nest 4 deep.
///
/// The host's own [`Vault`](crate::Vault) API is not affected: the host reads and writes every
/// key, and its writes are never refused (they count towards the namespaces' usage).
///
/// ```
/// use swapkit::{Grant, Quota, Sandbox};
/// let sandbox = Sandbox::new()
///     // `store` may also read and write `count/...`, and call the host's `add`.
///     .grant("store", Grant::VaultWrite("count/".into()))
///     .grant("store", Grant::HostFn("add".into()))
///     // `report` may read what `store` counted.
///     .grant("report", Grant::VaultRead("count/".into()))
///     .quota_for("store", Quota { keys: 1_000_000, ..Quota::default() })
///     .max_nesting(6);
/// let swapper = swapkit::Swapper::builder().sandbox(sandbox).build().unwrap();
/// # drop(swapper);
/// ```
#[derive(Debug, Clone)]
pub struct Sandbox {
    quota: Quota,
    plugins: HashMap<String, Rules>,
    max_nesting: usize,
}

/// How much a plugin may keep in one Vault namespace it writes: its own (`<plugin>/`) or a
/// prefix granted with [`Grant::VaultWrite`]. A write that would go past a quota fails with an
/// error naming it; the Vault is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Keys in the namespace (default 100,000).
    pub keys: usize,
    /// Bytes in the namespace, keys and encoded values together (default 64 MiB).
    pub bytes: usize,
    /// Bytes of one encoded value (default 4 MiB).
    pub largest_value: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            keys: 100_000,
            bytes: 64 << 20,
            largest_value: 4 << 20,
        }
    }
}

/// Something the host lets one plugin do beyond its own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Read the Vault keys that start with this prefix (get and list).
    VaultRead(String),
    /// Read and write (put, compare-and-swap, delete) the keys that start with this prefix.
    /// The plugin's quota applies to the prefix as to its own namespace.
    VaultWrite(String),
    /// Call the host function of this name ([`Vault::provide`](crate::Vault::provide)).
    HostFn(String),
    /// Call every host function, present and future.
    AllHostFns,
}

/// One plugin's grants and quota.
#[derive(Debug, Clone, Default)]
struct Rules {
    grants: Vec<Grant>,
    quota: Option<Quota>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            quota: Quota::default(),
            plugins: HashMap::new(),
            max_nesting: 4,
        }
    }
}

impl Sandbox {
    /// The default rules: see [`Sandbox`].
    pub fn new() -> Sandbox {
        Sandbox::default()
    }

    /// Lets plugin `plugin` (by its manifest name, in every version) do what `grant` says.
    pub fn grant(mut self, plugin: &str, grant: Grant) -> Sandbox {
        self.plugins
            .entry(plugin.to_owned())
            .or_default()
            .grants
            .push(grant);
        self
    }

    /// The quota of every plugin not given one with [`Sandbox::quota_for`].
    pub fn quota(mut self, quota: Quota) -> Sandbox {
        self.quota = quota;
        self
    }

    /// The quota of plugin `plugin`.
    pub fn quota_for(mut self, plugin: &str, quota: Quota) -> Sandbox {
        self.plugins.entry(plugin.to_owned()).or_default().quota = Some(quota);
        self
    }

    /// How many plugin → host → plugin calls may be open at once on one thread (default 4):
    /// a dependency call, a live-type constructor or a host function each opens one. Past it,
    /// the request fails (a wasm caller traps), and the host's call returns
    /// [`CallError::Nesting`](crate::CallError::Nesting). At least 1.
    pub fn max_nesting(mut self, depth: usize) -> Sandbox {
        self.max_nesting = depth.max(1);
        self
    }

    /// The rules of plugin `plugin`, resolved once per instance.
    pub(crate) fn policy(&self, plugin: &str) -> Policy {
        let rules = self.plugins.get(plugin);
        let grants = rules.map(|r| r.grants.as_slice()).unwrap_or_default();
        let prefixes = |write_only: bool| {
            grants
                .iter()
                .filter_map(|g| match g {
                    Grant::VaultWrite(p) => Some(p.clone()),
                    Grant::VaultRead(p) if !write_only => Some(p.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        Policy {
            own: format!("{plugin}/"),
            reads: prefixes(false),
            writes: prefixes(true),
            all_host_fns: grants.contains(&Grant::AllHostFns),
            host_fns: grants
                .iter()
                .filter_map(|g| match g {
                    Grant::HostFn(name) => Some(name.clone()),
                    _ => None,
                })
                .collect(),
            quota: rules.and_then(|r| r.quota).unwrap_or(self.quota),
            max_nesting: self.max_nesting,
        }
    }
}

/// One plugin's rules, as its requests are checked.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Its own namespace: `<plugin>/`.
    pub own: String,
    /// Granted prefixes it may read, writable ones included.
    pub reads: Vec<String>,
    /// Granted prefixes it may write.
    pub writes: Vec<String>,
    pub host_fns: Vec<String>,
    pub all_host_fns: bool,
    pub quota: Quota,
    pub max_nesting: usize,
}

impl Policy {
    /// Whether the plugin may read `key`.
    pub fn may_read(&self, key: &str) -> bool {
        key.starts_with(&self.own) || self.reads.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// The namespace through which the plugin may write `key`: its own, or the longest
    /// granted prefix of it. `None` if it may not.
    pub fn namespace_for_write(&self, key: &str) -> Option<&str> {
        if key.starts_with(&self.own) {
            return Some(&self.own);
        }
        self.writes
            .iter()
            .filter(|p| key.starts_with(p.as_str()))
            .max_by_key(|p| p.len())
            .map(String::as_str)
    }

    /// Whether the plugin may call host function `name`.
    pub fn may_call(&self, name: &str) -> bool {
        self.all_host_fns || self.host_fns.iter().any(|f| f == name)
    }

    /// The namespaces whose usage its quota is checked against.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.own.as_str()).chain(self.writes.iter().map(String::as_str))
    }

    /// Whom the host grants this policy to: the plugin's name, or the identity the host loaded
    /// it as (`patch:<name>` for a patch set).
    pub fn identity(&self) -> &str {
        self.own.strip_suffix('/').unwrap_or(&self.own)
    }

    /// What a refused read or write says.
    pub fn refusal(&self, plugin: &str, what: &str, key: &str) -> String {
        let identity = self.identity();
        let granted: Vec<&str> = if what == "write" {
            self.writes.iter().map(String::as_str).collect()
        } else {
            self.reads.iter().map(String::as_str).collect()
        };
        format!(
            "plugin `{plugin}` may not {what} Vault key `{key}`: it may {what} only its own \
             namespace `{}`{}; grant more with Sandbox::grant(\"{identity}\", Grant::Vault{}(..))",
            self.own,
            if granted.is_empty() {
                String::new()
            } else {
                format!(" and {}", granted.join(", "))
            },
            if what == "write" { "Write" } else { "Read" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_reaches_its_own_namespace_and_its_grants_only() {
        let sandbox = Sandbox::new()
            .grant("a", Grant::VaultRead("shared/".into()))
            .grant("a", Grant::VaultWrite("shared/a-out/".into()))
            .grant("a", Grant::HostFn("add".into()));
        let a = sandbox.policy("a");
        assert!(a.may_read("a/x") && a.may_read("shared/b") && !a.may_read("b/x"));
        assert!(
            !a.may_read("a") && !a.may_read("ab/x"),
            "the prefix ends with a slash"
        );
        assert_eq!(a.namespace_for_write("a/x"), Some("a/"));
        assert_eq!(
            a.namespace_for_write("shared/a-out/1"),
            Some("shared/a-out/")
        );
        assert_eq!(a.namespace_for_write("shared/b"), None);
        assert!(a.may_call("add") && !a.may_call("sub"));
        let b = sandbox.policy("b");
        assert!(!b.may_read("shared/x") && !b.may_call("add"));
        assert!(b.refusal("b", "read", "a/x").contains("`b/`"));
    }
}
