//! Building the instances of a new generation: the reload transaction before publication.
//!
//! Plugins whose artifact is unchanged keep their instance. The others are loaded in
//! dependency order (`on_load`), receive their predecessor's live data (`save`, then
//! `migrate`), and are initialised (`on_init`). Any failure frees what was built, in reverse
//! order, and leaves the current generation untouched.

use std::sync::Arc;

use crate::backend::host as services;
use crate::backend::host::Services;
use crate::backend::{Code, Instance};
use crate::error::LoadError;
use crate::generation::Generation;

/// The instances of a generation being built. Dropped unfinished, it frees them in reverse
/// dependency order (reused instances are only released).
#[derive(Default)]
pub(crate) struct Built {
    pub instances: Vec<Arc<Instance>>,
    /// `(name, version)` of the plugins given a new instance.
    pub loaded: Vec<(String, String)>,
    /// `(name, version)` of the plugins carried over.
    pub reused: Vec<(String, String)>,
}

impl Drop for Built {
    fn drop(&mut self) {
        while let Some(instance) = self.instances.pop() {
            drop(instance);
        }
    }
}

impl Built {
    /// Takes the instances out, for the generation that will own them.
    pub fn take_instances(&mut self) -> Vec<Arc<Instance>> {
        std::mem::take(&mut self.instances)
    }
}

/// Refuses a selection that would replace or remove a plugin of `current` that declares
/// itself not reloadable. Its own unchanged artifact keeps its instance, so a reload of the
/// other plugins goes ahead.
pub(crate) fn keeps_fixed(current: &Generation, codes: &[Arc<Code>]) -> Result<(), LoadError> {
    for running in &current.plugins {
        let code = &running.code;
        if code.manifest.options.reloadable {
            continue;
        }
        let change = match codes.iter().find(|c| c.name == code.name) {
            Some(next) if next.content_hash == code.content_hash => continue,
            Some(next) if next.version == code.version => format!(
                "reload would replace it with another build of {} ({})",
                next.version, next.origin
            ),
            Some(next) => format!("reload would replace it with {}", next.version),
            None => "reload would remove it".to_owned(),
        };
        return Err(LoadError::NotReloadable {
            plugin: code.name.to_string(),
            version: code.version.to_string(),
            change,
        });
    }
    Ok(())
}

/// Builds generation `id` from `codes` (in dependency order), next to `current`.
pub(crate) fn build(
    codes: &[Arc<Code>],
    current: &Generation,
    id: u64,
    services: &Services,
) -> Result<Built, LoadError> {
    let mut built = Built::default();
    let mut fresh = vec![];
    for code in codes {
        let named = (code.name.to_string(), code.version.to_string());
        let same = current
            .plugins
            .iter()
            .find(|p| p.code.content_hash == code.content_hash && p.code.name == code.name);
        if let Some(existing) = same {
            built.instances.push(existing.clone());
            built.reused.push(named);
            continue;
        }
        fresh.push(built.instances.len());
        // Hooks see the plugins loaded so far (their dependencies) as their generation.
        let loaded = {
            let _scope = services::enter(&built.instances, id);
            Instance::load(code.clone(), services)?
        };
        built.instances.push(Arc::new(loaded));
        built.loaded.push(named);
    }
    // Live data: each new instance receives what its predecessor saves, between on_load and
    // on_init. The predecessor keeps its own state and keeps serving.
    for &i in &fresh {
        let name = &built.instances[i].code.name;
        let Some(old) = current.plugins.iter().find(|p| p.code.name == *name) else {
            continue;
        };
        let saved = {
            let _scope = services::enter(&current.plugins, current.id);
            old.save()?
        };
        if let Some(data) = saved {
            let _scope = services::enter(&built.instances, id);
            built.instances[i].migrate(&data)?;
        }
    }
    for &i in &fresh {
        let _scope = services::enter(&built.instances, id);
        built.instances[i].init()?;
    }
    Ok(built)
}

/// Builds a canary of `code` for generation `id`, beside `current`, whose plugin at `stable`
/// is the version it is compared with: `on_load`, the stable version's live data (`save`,
/// then `migrate`), `on_init`. The stable version keeps its own state and keeps serving. On a
/// failure the canary is freed.
pub(crate) fn canary(
    code: &Arc<Code>,
    current: &Generation,
    stable: usize,
    id: u64,
    services: &Services,
) -> Result<Arc<Instance>, LoadError> {
    let instance = {
        let _scope = services::enter(&current.plugins, id);
        Instance::load(code.clone(), services)?
    };
    let saved = {
        let _scope = services::enter(&current.plugins, current.id);
        current.plugins[stable].save()?
    };
    let _scope = services::enter(&current.plugins, id);
    if let Some(data) = saved {
        instance.migrate(&data)?;
    }
    instance.init()?;
    Ok(Arc::new(instance))
}
