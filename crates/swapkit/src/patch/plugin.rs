//! Patches from plugins: a plugin exports replacements for named `#[patchable(plugin)]`
//! functions, and the host applies them, all or nothing, from an artifact.
//!
//! Each replacement is a closure that encodes the call's arguments with the wire encoding,
//! calls the plugin's export, and decodes the result. The closure owns the plugin instance,
//! and the patch slot frees a replacement only once no call is inside it, so a restored
//! plugin patch's code and instance outlive every call still running in them. A failure
//! inside the plugin (a panic caught by its glue, or bytes that do not decode) unwinds in the
//! host, where the patch's [`PanicPolicy`] handles it like a panic in any replacement: the
//! target's error when it returns one, or the original, and the patch is flagged unhealthy.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use swapkit_abi::{wire, PatchDecl, StaticHeader, Status, PATCH_INTERFACE};

use super::target::{AnyTarget, PatchOptions};
use super::{PanicPolicy, PatchError, PatchSet, PatchSetGuard, PatchSource, Pending, Rollout};
use crate::backend::host::Services;
use crate::backend::{statics, Code, Instance};
use crate::error::LoadError;

/// The patches one plugin exports, loaded and ready to apply.
///
/// Make it with [`Swapper::patches_from`](crate::Swapper::patches_from) for an artifact, or
/// [`PluginPatches::from_static`] for a plugin crate linked into the host. Every patch is
/// checked before anything is applied: its target must be linked into this binary, marked
/// `#[patchable(plugin)]`, and have the same signature hash.
///
/// ```no_run
/// # fn demo(swapper: &swapkit::Swapper) -> Result<(), Box<dyn std::error::Error>> {
/// let patches = swapper.patches_from("plugins/libpricing_fix.so")?;
/// for p in patches.exports() {
///     println!("{} {}", p.target, p.signature);
/// }
/// let set = patches
///     .rollout(swapkit::patch::Rollout::percent(10.0))
///     .apply()?; // all or nothing
/// set.set_percent(50.0)?;
/// drop(set); // restored
/// # Ok(()) }
/// ```
#[must_use = "plugin patches do nothing until `.apply()`"]
pub struct PluginPatches {
    instance: Arc<Instance>,
    id: Option<String>,
    rollout: Rollout,
    on_panic: PanicPolicy,
}

impl std::fmt::Debug for PluginPatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginPatches")
            .field("plugin", &self.plugin())
            .field("version", &self.version())
            .field("exports", &self.exports())
            .finish()
    }
}

impl PluginPatches {
    /// The patches of a plugin crate linked into the host: pass its `SWAPKIT_PLUGIN` static.
    pub fn from_static<H: StaticHeader>(header: &'static H) -> Result<PluginPatches, PatchError> {
        let code = statics::code(statics::StaticPlugin::of(header)).map_err(PatchError::load)?;
        PluginPatches::new(code, &Services::detached())
    }

    /// Loads an instance of `code` for its patches.
    pub(crate) fn new(code: Arc<Code>, services: &Services) -> Result<PluginPatches, PatchError> {
        if code.manifest.patches.is_empty() {
            return Err(PatchError::NoPatches {
                plugin: code.name.to_string(),
                origin: code.origin.clone(),
            });
        }
        // A patch set is not the plugin its manifest names: it gets a Vault namespace and
        // grants of its own (`patch:<name>`, a name no plugin can take), never the plugin's.
        let identity = format!("patch:{}", code.name);
        let instance = Instance::load_as(code, services, &identity).map_err(PatchError::load)?;
        instance.init().map_err(PatchError::load)?;
        Ok(PluginPatches {
            instance: Arc::new(instance),
            id: None,
            rollout: Rollout::all(),
            on_panic: PanicPolicy::default(),
        })
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.instance.code.name
    }

    /// The plugin's version.
    pub fn version(&self) -> &str {
        &self.instance.code.version
    }

    /// What the plugin exports: each target and its signature.
    pub fn exports(&self) -> &[PatchDecl] {
        &self.instance.code.manifest.patches
    }

    /// Names the patches. Every patch of the plugin gets this id, so a percentage rollout
    /// admits the same keys to all of them. Default: the plugin's name.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Who the patches apply to. Default: [`Rollout::all`].
    pub fn rollout(mut self, rollout: Rollout) -> Self {
        self.rollout = rollout;
        self
    }

    /// What happens when the plugin panics. Default: [`PanicPolicy::Fallback`].
    pub fn on_panic(mut self, policy: PanicPolicy) -> Self {
        self.on_panic = policy;
        self
    }

    /// Checks every patch against its target, then applies them all as one
    /// [`PatchSet`](super::PatchSet). On an error nothing is applied.
    pub fn apply(self) -> Result<PatchSetGuard, PatchError> {
        let code = &self.instance.code;
        let id = self.id.unwrap_or_else(|| code.name.to_string());
        let source = PatchSource::Plugin {
            plugin: code.name.to_string(),
            version: code.version.to_string(),
            origin: code.origin.clone(),
        };
        let mut set = PatchSet::new();
        for (index, decl) in code.manifest.patches.iter().enumerate() {
            let target = find_target(code, decl)?;
            set.items.push(Box::new(RemotePending {
                target,
                remote: RemoteFn {
                    instance: self.instance.clone(),
                    index: index as u32,
                },
                options: Some(PatchOptions {
                    id: Some(id.clone()),
                    rollout: self.rollout.clone(),
                    on_panic: self.on_panic,
                    source: source.clone(),
                    armed: None,
                }),
            }));
        }
        set.apply()
    }
}

/// The target a plugin's patch names, checked: present, open to plugins, same signature.
fn find_target(code: &Code, decl: &PatchDecl) -> Result<&'static dyn AnyTarget, PatchError> {
    let target = super::__private::TARGETS
        .iter()
        .copied()
        .find(|t| t.info().name == decl.target)
        .ok_or_else(|| PatchError::UnknownTarget {
            target: decl.target.clone(),
            plugin: code.name.to_string(),
        })?;
    let info = target.info();
    if info.signature_hash != decl.hash {
        return Err(PatchError::SignatureMismatch {
            target: info.name,
            plugin: code.name.to_string(),
            expected: info.signature,
            found: decl.signature.clone(),
        });
    }
    if !target.accepts_plugins() {
        return Err(PatchError::NotOpenToPlugins { target: info.name });
    }
    Ok(target)
}

/// A plugin patch waiting in a set.
struct RemotePending {
    target: &'static dyn AnyTarget,
    remote: RemoteFn,
    options: Option<PatchOptions>,
}

impl Pending for RemotePending {
    fn target_name(&self) -> &'static str {
        self.target.info().name
    }

    fn target_id(&self) -> usize {
        self.target as *const dyn AnyTarget as *const () as usize
    }

    fn apply_armed(
        mut self: Box<Self>,
        armed: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<super::PatchGuard, PatchError> {
        let mut options = self.options.take().expect("applied once");
        options.armed = Some(armed);
        self.target.apply_remote(self.remote, options)
    }
}

/// One export of a loaded plugin, callable with typed arguments. Generated code of
/// `#[patchable(plugin)]` wraps it in a closure of the target's signature.
#[doc(hidden)]
pub struct RemoteFn {
    instance: Arc<Instance>,
    index: u32,
}

/// Arguments up to this size are encoded on the stack.
const STACK_ARGS: usize = 256;

impl RemoteFn {
    /// Calls the export. A failure unwinds with a message, for the patch's panic policy.
    #[inline]
    pub fn invoke<A: Serialize, R: DeserializeOwned>(&self, args: &A) -> R {
        let mut input = wire::StackBuf::<STACK_ARGS>::new();
        if let Err(e) = wire::encode_to_stack(args, &mut input) {
            self.fail(format!("encoding the arguments failed: {e}"));
        }
        let outcome = self
            .instance
            .call(PATCH_INTERFACE, self.index, input.as_slice(), |reply| {
                if reply.status == Status::Ok as u32 {
                    wire::from_bytes::<R>(reply.bytes)
                        .map_err(|e| format!("its result did not decode: {e}"))
                } else {
                    let message = String::from_utf8_lossy(reply.bytes).into_owned();
                    let status = Status::from_raw(reply.status)
                        .map(|s| format!("{s:?}"))
                        .unwrap_or_else(|| format!("status {:#x}", reply.status));
                    Err(format!("{status}: {message}"))
                }
            });
        match outcome {
            Ok(r) => r,
            Err(what) => self.fail(what),
        }
    }

    /// Unwinds without running the panic hook: the patch machinery catches it, logs it and
    /// applies the patch's policy.
    #[cold]
    #[inline(never)]
    fn fail(&self, what: String) -> ! {
        let code = &self.instance.code;
        let target = code
            .manifest
            .patches
            .get(self.index as usize)
            .map_or("?", |d| d.target.as_str());
        let message = format!(
            "plugin `{}` {} (patch of `{target}`): {what}",
            code.name, code.version
        );
        std::panic::resume_unwind(Box::new(message))
    }
}

impl PatchError {
    fn load(e: LoadError) -> PatchError {
        PatchError::Load {
            source: Arc::new(e),
        }
    }
}

/// See [`Swapper::patches_from`](crate::Swapper::patches_from).
pub(crate) fn patches_from(
    core: &crate::reload::Reloader,
    path: &std::path::Path,
) -> Result<PluginPatches, PatchError> {
    let code = core.loader.load(path).map_err(PatchError::load)?;
    PluginPatches::new(code, core.services())
}
