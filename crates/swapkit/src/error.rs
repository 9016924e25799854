//! Typed errors. Each message says what was wrong, with which artifact or plugin, and what to
//! do about it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use swapkit_abi::Status;

/// An underlying error, kept as a [`LoadError`]'s `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a load, reload or rollback did not happen. When one is returned, nothing changed: the
/// current generation keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The artifact could not be read.
    #[error(
        "cannot read plugin artifact {path}: {source}; check that the file exists and is readable"
    )]
    Read {
        /// The artifact.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The artifact is not a regular file: a FIFO, a device, a socket, a directory.
    #[error("{path} is {kind}, not a plugin artifact; point swapkit at a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The artifact is larger than any plugin swapkit reads.
    #[error(
        "{path} is {size} bytes, larger than the {limit} bytes swapkit reads for one artifact"
    )]
    TooLarge {
        /// The artifact.
        path: PathBuf,
        /// Its size, or what was read of it.
        size: u64,
        /// The cap (`MAX_ARTIFACT`).
        limit: u64,
    },
    /// The plugin directory could not be listed.
    #[error("cannot list plugin directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no artifacts.
    #[error("no plugin artifacts (*.{ext}) in {path}; build the plugins and put them there")]
    NoArtifacts {
        /// The directory.
        path: PathBuf,
        /// The extension looked for.
        ext: &'static str,
    },
    /// A plugin on a load list ([`Swapper::load_dir_only`](crate::Swapper::load_dir_only)) is
    /// not in the directory as itself.
    #[error("plugin `{plugin}` is on the load list, but {dir} has {reason}")]
    Unlisted {
        /// The directory.
        dir: PathBuf,
        /// The listed plugin.
        plugin: String,
        /// What was found instead.
        reason: String,
    },
    /// The artifact is an empty file.
    #[error(
        "plugin artifact {path} is empty; it may have been caught mid-write: publish artifacts by \
         writing a temporary file and renaming it into place"
    )]
    Empty {
        /// The artifact.
        path: PathBuf,
    },
    /// The host's trust policy refuses the artifact: unsigned, signed by a key it does not
    /// trust or revoked, a signature that does not verify, or signed as something else.
    #[error("{path} is not trusted: {source}")]
    Untrusted {
        /// The artifact.
        path: PathBuf,
        /// Why.
        #[source]
        source: swapkit_trust::TrustError,
    },
    /// A kept artifact in the state directory is not the content recorded for it: it was
    /// replaced or corrupted after it was kept.
    #[error(
        "the kept artifact {path} was changed after it was kept: its SHA-256 is {found}, the \
         state directory recorded {expected}; it is not loaded"
    )]
    KeptChanged {
        /// The kept file.
        path: PathBuf,
        /// The recorded SHA-256.
        expected: String,
        /// What the file hashes to now.
        found: String,
    },
    /// Under a trust policy, a plugin's version is not semver, so rollback protection could
    /// not order it against the versions published before.
    #[error(
        "refusing plugin `{plugin}` at version `{version}`: under a trust policy a version must \
         be semver (MAJOR.MINOR.PATCH, as in `1.4.2` or `2.0.0-rc.1`) so that an older release \
         can be told from a newer one ({reason}); set it in the plugin's Cargo.toml or \
         export_plugin!"
    )]
    Unversioned {
        /// The plugin.
        plugin: String,
        /// Its version, as its manifest says.
        version: String,
        /// What the semver parser said.
        reason: String,
    },
    /// Under a trust policy, a load or reload would move a plugin to a lower version than the
    /// highest this host has published; only a rollback or an explicit downgrade may.
    #[error(
        "refusing to move plugin `{plugin}` down to {version}: this host has run {highest}, and a \
         release never goes backwards by itself; use Swapper::rollback or rollback_to (or the \
         admin rollback), or Swapper::downgrade if you mean it"
    )]
    Downgrade {
        /// The plugin.
        plugin: String,
        /// The version that would be loaded.
        version: String,
        /// The highest version published so far.
        highest: String,
    },
    /// The artifact is for a backend this build of swapkit leaves out.
    #[error(
        "{path} is a {backend} plugin, but this host was built without swapkit's `{feature}` \
         feature; enable it in the host's Cargo.toml"
    )]
    BackendDisabled {
        /// The artifact.
        path: PathBuf,
        /// The backend it is for.
        backend: crate::BackendKind,
        /// The cargo feature that enables that backend.
        feature: &'static str,
    },
    /// The artifact is not a shared library, or is damaged.
    #[error(
        "{path} is not a loadable shared library ({source}); it may be truncated or not a plugin: \
         rebuild the plugin crate with crate-type = [\"cdylib\"]"
    )]
    NotALibrary {
        /// The artifact.
        path: PathBuf,
        /// What the parser or the dynamic loader said.
        #[source]
        source: BoxError,
    },
    /// A thread swapkit needs could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The wasm engine could not be set up.
    #[error("the wasm engine could not start: {source}")]
    WasmEngine {
        /// What wasmtime said.
        #[source]
        source: BoxError,
    },
    /// A `.wasm` artifact is not a valid module, or did not compile.
    #[error(
        "{path} is not a valid wasm module ({source}); rebuild the plugin for \
         wasm32-unknown-unknown"
    )]
    WasmCompile {
        /// The artifact.
        path: PathBuf,
        /// What the validator or compiler said.
        #[source]
        source: BoxError,
    },
    /// [`inspect_checked`](crate::inspect_checked) was given a native library: reading its
    /// manifest runs its code, which it never does.
    #[error(
        "{path} is a native library: its manifest is produced by its code, which \
         inspect_checked never runs; read it with `swapkit::inspect` in a process you can lose \
         (as `swapkit inspect` does), or use its claims (FileCheck::claims)"
    )]
    WouldRun {
        /// The artifact.
        path: PathBuf,
    },
    /// A wasm module would cost more to compile than [`WasmLimits`](crate::WasmLimits)
    /// allows: too big a module or function, or a compile that overran `max_compile_time`.
    /// The message names the bound; the current generation keeps serving.
    #[error("{path} was not compiled: {reason}")]
    WasmTooCostly {
        /// The artifact.
        path: PathBuf,
        /// The bound it crossed, and by how much.
        reason: String,
    },
    /// A wasm module does not speak the ABI: a missing export, or a forbidden import.
    #[error("{path} is not a swapkit wasm plugin: {reason}")]
    WasmShape {
        /// The artifact.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The library exports no plugin header.
    #[error(
        "{path} exports no swapkit plugin header (no symbol starting with `{prefix}`); call \
         swapkit_guest::export_plugin! in the plugin crate"
    )]
    NoEntrySymbol {
        /// The artifact.
        path: PathBuf,
        /// The symbol prefix looked for.
        prefix: &'static str,
    },
    /// The library exports more than one plugin header.
    #[error(
        "{path} exports several swapkit plugin headers ({symbols}); build one plugin per library"
    )]
    ManyEntrySymbols {
        /// The artifact.
        path: PathBuf,
        /// The symbols found.
        symbols: String,
    },
    /// The header does not start with the swapkit magic.
    #[error(
        "{origin}: the plugin header is corrupt (bad magic); rebuild the plugin with swapkit-guest"
    )]
    BadMagic {
        /// The artifact or static plugin.
        origin: String,
    },
    /// The plugin speaks another ABI version.
    #[error(
        "{origin} was built for swapkit ABI v{found}, but this host speaks v{expected}; rebuild the \
         plugin against the swapkit-guest version the host uses"
    )]
    AbiVersion {
        /// The artifact or static plugin.
        origin: String,
        /// The plugin's ABI version.
        found: u32,
        /// The host's ABI version.
        expected: u32,
    },
    /// The plugin was built by another toolchain, for another target or ABI crate.
    #[error(
        "{origin} was built with another {field}: plugin `{found}`, host `{expected}`; rebuild the \
         plugin with the host's toolchain and swapkit version"
    )]
    Fingerprint {
        /// The artifact or static plugin.
        origin: String,
        /// Which part differs.
        field: &'static str,
        /// The plugin's value.
        found: String,
        /// The host's value.
        expected: String,
    },
    /// The plugin was built with `panic = "abort"`.
    #[error(
        "{origin} was built with panic = \"abort\", so a panic in it would abort the host; build it \
         with panic = \"unwind\""
    )]
    PanicAbort {
        /// The artifact or static plugin.
        origin: String,
    },
    /// The manifest could not be read.
    #[error("{origin}: the plugin manifest is unreadable ({source}); rebuild the plugin with swapkit-guest")]
    Manifest {
        /// The artifact or static plugin.
        origin: String,
        /// What went wrong: the decoder's error, or what the plugin replied.
        #[source]
        source: BoxError,
    },
    /// A plugin exports an interface whose hash differs from the host's.
    #[error(transparent)]
    InterfaceHash(Box<InterfaceMismatch>),
    /// Two artifacts carry the same plugin name.
    #[error("two plugins are named `{name}`: {first} and {second}; plugin names must be unique")]
    DuplicatePlugin {
        /// The name.
        name: String,
        /// The first artifact.
        first: String,
        /// The second artifact.
        second: String,
    },
    /// Two plugins export a live function, or a live type's factory, of the same name: a
    /// lookup by name would reach whichever came first.
    #[error(
        "plugins `{first}` and `{second}` both export {kind} `{name}`; a {kind} is found by \
         name, so names must be unique across the plugins loaded together: rename one"
    )]
    DuplicateLive {
        /// `live function` or `live type`.
        kind: &'static str,
        /// The name.
        name: String,
        /// The first plugin that exports it.
        first: String,
        /// The second.
        second: String,
    },
    /// A plugin depends on one that is not being loaded.
    #[error(
        "plugin `{plugin}` depends on `{dependency}`, which is not among the plugins being loaded; \
         add its artifact or remove the dependency"
    )]
    UnknownDependency {
        /// The dependent plugin.
        plugin: String,
        /// The missing dependency.
        dependency: String,
    },
    /// A plugin uses an interface of a dependency that the dependency does not export, or
    /// exports with another hash.
    #[error(
        "plugin `{plugin}` uses interface `{interface}` of `{dependency}`, but {reason}; rebuild \
         both against one interface crate"
    )]
    DependencyInterface {
        /// The dependent plugin.
        plugin: String,
        /// The dependency.
        dependency: String,
        /// The interface.
        interface: String,
        /// What is wrong.
        reason: String,
    },
    /// Plugins depend on each other in a cycle.
    #[error("plugin dependencies form a cycle: {}; break it", cycle.join(" -> "))]
    DependencyCycle {
        /// The plugins on the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    /// A hook returned an error.
    #[error(
        "plugin `{plugin}` {version}: {hook} failed: {message}; the reload was aborted and the \
         current generation keeps serving"
    )]
    Hook {
        /// The plugin.
        plugin: String,
        /// Its version.
        version: String,
        /// `on_load`, `save`, `migrate` or `on_init`.
        hook: &'static str,
        /// The plugin's message.
        message: String,
    },
    /// A hook panicked.
    #[error(
        "plugin `{plugin}` {version}: {hook} panicked: {message}; the reload was aborted and the \
         current generation keeps serving"
    )]
    HookPanic {
        /// The plugin.
        plugin: String,
        /// Its version.
        version: String,
        /// `on_load` or `on_init`.
        hook: &'static str,
        /// The panic message.
        message: String,
    },
    /// A static swapper was asked to reload or roll back.
    #[error(
        "this swapper runs static plugins, which are linked into the host and cannot be reloaded \
         or rolled back; use native plugins to swap code at runtime"
    )]
    StaticMode,
    /// A rollback was asked for with no earlier generation in the history.
    #[error("nothing to roll back to: the history holds no generation before the current one")]
    NoHistory,
    /// No kept selection matches what a rollback asked for.
    #[error("no kept selection has {wanted}; the history holds: {kept}")]
    NoMatch {
        /// What was asked for.
        wanted: String,
        /// The kept selections, newest first.
        kept: String,
    },
    /// A rollback target did not parse.
    #[error(
        "`{text}` is not a rollback target: {reason} (or VERSION, PLUGIN@VERSION, generation:N)"
    )]
    BadRollbackTarget {
        /// The text.
        text: String,
        /// What was wrong.
        reason: String,
    },
    /// A background facility (admin socket, file watcher, signal handler, or an
    /// [`Extension`](crate::Extension) such as a fleet agent) could not start.
    #[error("cannot start the {what} ({at}): {source}")]
    Ops {
        /// The facility.
        what: &'static str,
        /// Its socket, directory or signal.
        at: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// Nothing has been loaded yet, so there is nothing to reload.
    #[error("nothing to reload: call load_dir or load_files first")]
    NoSource,
    /// The host's [`before_publish`](crate::SwapperBuilder::before_publish) check refused the
    /// new generation; nothing was published and the current generation keeps serving.
    #[error(
        "the before_publish check vetoed generation {generation} ({trigger}): {reason}; the \
         current generation keeps serving"
    )]
    Vetoed {
        /// The generation that was refused.
        generation: u64,
        /// What asked for it, as a word (`reload`, `canary-start`, ...).
        trigger: &'static str,
        /// The check's error.
        reason: String,
    },
    /// A reload, rollback or canary would replace or remove a plugin that declares itself not
    /// reloadable (`reloadable: false` in its `export_plugin!`).
    #[error(
        "plugin `{plugin}` {version} declares itself not reloadable (`reloadable: false` in its \
         export_plugin!), so it stays loaded for the life of the process; this {change}. \
         Leave its artifact as it is (or restart the process to change it); the current \
         generation keeps serving"
    )]
    NotReloadable {
        /// The plugin.
        plugin: String,
        /// The version running.
        version: String,
        /// What the refused step would have done to it, in words.
        change: String,
    },
    /// A value given to `SwapperBuilder::load_data` could not be encoded.
    #[error(
        "the load data for {plugin} does not encode in the wire encoding (postcard): {reason}; \
         give a plain serde type (no `#[serde(flatten)]`, no untagged enums)"
    )]
    LoadData {
        /// Which plugin the value was for (`every plugin` for `load_data`).
        plugin: String,
        /// The encoder's error.
        reason: String,
    },
    /// A canary operation was asked for with no canary running.
    #[error("no canary is running; start one with Swapper::canary (or `swapkit canary start`)")]
    NoCanary,
    /// A canary was asked for while another runs: one at a time.
    #[error(
        "a canary of plugin `{plugin}` {version} is running already; promote or abort it \
         before starting another"
    )]
    CanaryRunning {
        /// The plugin of the running canary.
        plugin: String,
        /// The canary's version.
        version: String,
    },
    /// The artifact cannot be a canary of a plugin of the current generation.
    #[error("cannot start a canary of plugin `{plugin}` {version}: {reason}")]
    Canary {
        /// The artifact's plugin.
        plugin: String,
        /// The artifact's version.
        version: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The scratch directory for library copies could not be made.
    #[error(
        "cannot make a scratch directory for private copies of native libraries in {scratch}: \
         {source}; point SwapperBuilder::scratch_dir at a writable directory"
    )]
    ScratchDir {
        /// Where it was to be made.
        scratch: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The scratch directory for library copies could not be used.
    #[error("cannot write the private copy of {path} to {scratch}: {source}")]
    Scratch {
        /// The artifact.
        path: PathBuf,
        /// The scratch directory.
        scratch: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl LoadError {
    /// The file or directory the error is about, if it is about one: the artifact that did
    /// not read, parse, check or compile, or the directory that did not list.
    pub fn path(&self) -> Option<&Path> {
        use LoadError::*;
        match self {
            Read { path, .. }
            | NotAFile { path, .. }
            | TooLarge { path, .. }
            | ReadDir { path, .. }
            | Unlisted { dir: path, .. }
            | NoArtifacts { path, .. }
            | Empty { path }
            | Untrusted { path, .. }
            | KeptChanged { path, .. }
            | BackendDisabled { path, .. }
            | NotALibrary { path, .. }
            | WasmCompile { path, .. }
            | WasmTooCostly { path, .. }
            | WouldRun { path }
            | WasmShape { path, .. }
            | NoEntrySymbol { path, .. }
            | ManyEntrySymbols { path, .. }
            | Scratch { path, .. } => Some(path),
            BadMagic { origin }
            | AbiVersion { origin, .. }
            | Fingerprint { origin, .. }
            | PanicAbort { origin }
            | Manifest { origin, .. } => {
                (!origin.starts_with("static:")).then(|| Path::new(origin.as_str()))
            }
            _ => None,
        }
    }

    /// The plugin the error is about, by the name its manifest gives, if it got that far.
    pub fn plugin(&self) -> Option<&str> {
        use LoadError::*;
        match self {
            Downgrade { plugin, .. }
            | CanaryRunning { plugin, .. }
            | Canary { plugin, .. }
            | NotReloadable { plugin, .. }
            | Hook { plugin, .. }
            | HookPanic { plugin, .. }
            | UnknownDependency { plugin, .. }
            | DependencyInterface { plugin, .. } => Some(plugin),
            DuplicatePlugin { name, .. } => Some(name),
            InterfaceHash(mismatch) => Some(&mismatch.plugin),
            _ => None,
        }
    }

    /// The version of [`plugin`](Self::plugin), where the error names one.
    pub fn version(&self) -> Option<&str> {
        use LoadError::*;
        match self {
            Hook { version, .. }
            | HookPanic { version, .. }
            | Downgrade { version, .. }
            | CanaryRunning { version, .. }
            | NotReloadable { version, .. }
            | Canary { version, .. } => Some(version),
            InterfaceHash(mismatch) => Some(&mismatch.version),
            _ => None,
        }
    }

    /// The hook that failed (`on_load`, `save`, `migrate`, `on_init`), for a hook's error.
    pub fn hook(&self) -> Option<&'static str> {
        match self {
            LoadError::Hook { hook, .. } | LoadError::HookPanic { hook, .. } => Some(hook),
            _ => None,
        }
    }
}

/// An interface a plugin exports under the host's name but with another hash.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "plugin `{plugin}` {version} exports interface `{interface}` with hash {found:#018x}, but the \
     host expects {expected:#018x}; rebuild the plugin against the host's interface crate\n  \
     plugin: {found_signature}\n  host:   {expected_signature}{hint}",
    hint = same_text_hint(.found_signature, .expected_signature)
)]
pub struct InterfaceMismatch {
    /// The plugin.
    pub plugin: String,
    /// Its version.
    pub version: String,
    /// The interface name.
    pub interface: String,
    /// The plugin's hash.
    pub found: u64,
    /// The host's hash.
    pub expected: u64,
    /// The plugin's signature text.
    pub found_signature: String,
    /// The host's signature text.
    pub expected_signature: String,
}

/// What to say when two interfaces hash differently but read the same: their texts cover
/// names and types, the hash also covers the layouts of the plain structs they list.
fn same_text_hint(found: &str, expected: &str) -> &'static str {
    if found == expected {
        "\n  the signatures read the same, so a plain struct the interface lists (`plain = [..]`) \
         has another layout (fields added, removed, renamed, retyped or reordered) in one of them"
    } else {
        ""
    }
}

/// Why a call through a typed client failed. The host keeps serving; the next call may work.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No plugin of the generation exports the interface.
    #[error(
        "no plugin in generation {generation} exports interface `{interface}`; load one that does"
    )]
    NotExported {
        /// The interface.
        interface: &'static str,
        /// The generation the call was pinned to.
        generation: u64,
    },
    /// More than one plugin exports the interface and the client names none.
    #[error(
        "plugins {plugins} in generation {generation} all export `{interface}`; bind the client to \
         one with Swapper::client_of"
    )]
    Ambiguous {
        /// The interface.
        interface: &'static str,
        /// The exporters.
        plugins: String,
        /// The generation.
        generation: u64,
    },
    /// The plugin panicked; the panic was caught at the boundary.
    #[error("plugin `{}` {} panicked in {}: {message}", .site.plugin, .site.version, .site.method())]
    Panic {
        /// The call.
        site: CallSite,
        /// The panic message.
        message: String,
    },
    /// The plugin refused the call (bad input, unknown method, unencodable result).
    #[error("plugin `{}` {} failed {} ({status:?}): {message}", .site.plugin, .site.version, .site.method())]
    Guest {
        /// The call.
        site: CallSite,
        /// The status the plugin returned.
        status: Status,
        /// The plugin's message.
        message: String,
    },
    /// The plugin returned a status code this ABI does not define.
    #[error("plugin `{}` {} returned unknown status {raw} from {}", .site.plugin, .site.version, .site.method())]
    UnknownStatus {
        /// The call.
        site: CallSite,
        /// The raw code.
        raw: u32,
    },
    /// A wasm plugin trapped (unreachable, an out-of-bounds access, a stack overflow, a
    /// division by zero). The instance that trapped was thrown away; the next call gets
    /// another.
    #[error("wasm plugin `{}` {} trapped in {}: {message}", .site.plugin, .site.version, .site.method())]
    Trap {
        /// The call.
        site: CallSite,
        /// The trap.
        message: String,
    },
    /// A wasm call ran past its CPU-time limit (`WasmLimits::call_timeout`) and was
    /// interrupted; the instance was thrown away.
    #[error(
        "wasm plugin `{}` {} ran past its CPU-time limit in {} and was interrupted; raise \
         WasmLimits::call_timeout if the work is legitimate",
        .site.plugin, .site.version, .site.method()
    )]
    Timeout {
        /// The call.
        site: CallSite,
    },
    /// A wasm call hit its memory or table cap; the instance was thrown away.
    #[error(
        "wasm plugin `{}` {} hit a resource limit in {}: {message}; raise WasmLimits::max_memory \
         if the plugin needs more",
        .site.plugin, .site.version, .site.method()
    )]
    ResourceLimit {
        /// The call.
        site: CallSite,
        /// Which limit.
        message: String,
    },
    /// Every wasm instance of the plugin was busy, and the pool's policy is to fail (or the
    /// wait ran out).
    #[error("wasm plugin `{}` {} is at capacity: {message}", .site.plugin, .site.version)]
    PoolExhausted {
        /// The call.
        site: CallSite,
        /// The detail.
        message: String,
    },
    /// A call re-entered a plugin this thread is already inside, and was refused: made while
    /// the thread was still decoding an earlier result of the same native plugin (from a
    /// `Deserialize` impl that calls plugins: the plugin writes every result into one
    /// per-thread buffer, which the call would overwrite), or into a wasm plugin from a host
    /// function that plugin called (on its own stack the plugin would wait for itself, or nest
    /// a second instance). `message` says which.
    #[error("{} of plugin `{}` {}: {message}", .site.method(), .site.plugin, .site.version)]
    Reentrant {
        /// The call.
        site: CallSite,
        /// What the call re-entered, and what to do instead.
        message: String,
    },
    /// Below this call, a plugin → host → plugin call went past the sandbox's bounds: nested
    /// deeper than [`Sandbox::max_nesting`](crate::Sandbox::max_nesting), with too little
    /// native stack left for another guest, or re-entering a plugin already running on the
    /// thread. The message says which. Every wasm guest in the chain trapped and was thrown
    /// away.
    #[error("plugin `{}` {} was stopped in {}: {message}", .site.plugin, .site.version, .site.method())]
    Nesting {
        /// The host's call, at the bottom of the chain.
        site: CallSite,
        /// Which bound, where.
        message: String,
    },
    /// The result did not decode as the host's return type.
    #[error(
        "plugin `{}` {} returned a result from {} that does not decode as the host's type \
         ({reason}); rebuild host and plugin against one interface crate",
        .site.plugin, .site.version, .site.method()
    )]
    Decode {
        /// The call.
        site: CallSite,
        /// The decoder's message.
        reason: String,
    },
    /// A live function or live type is not in the generation the call ran in: the plugin is
    /// gone, or its current version no longer exports the name.
    #[error(
        "generation {generation} has no live {kind} `{name}`{}; it may have been removed in \
         the current version",
        plugin.as_deref().map(|p| format!(" in plugin `{p}`")).unwrap_or_default()
    )]
    LiveNotFound {
        /// `function` or `type`.
        kind: &'static str,
        /// The plugin asked for, if any.
        plugin: Option<String>,
        /// The function or type name.
        name: String,
        /// The generation searched.
        generation: u64,
    },
    /// An async call could not go on: the plugin's reply broke the async protocol, or its
    /// backend cannot hold an async call across an await. The message says which.
    #[error("async {} of plugin `{}` {}: {message}", .site.method(), .site.plugin, .site.version)]
    Async {
        /// The call.
        site: CallSite,
        /// What went wrong.
        message: String,
    },
    /// The arguments did not encode.
    #[error("the arguments of {interface}::{method} did not encode: {reason}")]
    Encode {
        /// The interface.
        interface: &'static str,
        /// The method.
        method: &'static str,
        /// The encoder's message.
        reason: String,
    },
}

/// Which call failed: the plugin and version it reached, and the interface method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSite {
    /// The plugin.
    pub plugin: Arc<str>,
    /// Its version.
    pub version: Arc<str>,
    /// The interface.
    pub interface: &'static str,
    /// The method.
    pub method: &'static str,
}

impl CallSite {
    /// `Interface::method`, as messages print it.
    pub fn method(&self) -> String {
        format!("{}::{}", self.interface, self.method)
    }
}

impl std::fmt::Display for CallSite {
    /// `` `plugin` version, Interface::method ``
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` {}, {}::{}",
            self.plugin, self.version, self.interface, self.method
        )
    }
}

impl CallError {
    /// The call that failed inside a plugin; `None` for a failure before any plugin was
    /// reached (no exporter, ambiguous, arguments that did not encode, a live name not found).
    pub fn site(&self) -> Option<&CallSite> {
        match self {
            CallError::Panic { site, .. }
            | CallError::Guest { site, .. }
            | CallError::UnknownStatus { site, .. }
            | CallError::Trap { site, .. }
            | CallError::Timeout { site }
            | CallError::ResourceLimit { site, .. }
            | CallError::PoolExhausted { site, .. }
            | CallError::Reentrant { site, .. }
            | CallError::Nesting { site, .. }
            | CallError::Decode { site, .. }
            | CallError::Async { site, .. } => Some(site),
            _ => None,
        }
    }

    /// The plugin the call reached, if it reached one.
    pub fn plugin(&self) -> Option<&str> {
        self.site().map(|s| &*s.plugin)
    }

    /// Whether the plugin's instance was thrown away (a wasm trap, timeout, resource limit
    /// or nesting bound): the next call runs in a fresh one.
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            CallError::Trap { .. }
                | CallError::Timeout { .. }
                | CallError::ResourceLimit { .. }
                | CallError::Nesting { .. }
        )
    }
}

/// Old generations still held when a drain wait ran out.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} generation(s) still held after {waited:?}: {}", held.len(), describe(held))]
pub struct DrainTimeout {
    /// How long the wait lasted.
    pub waited: Duration,
    /// The generations still alive, with who holds them.
    pub held: Vec<crate::GenerationStatus>,
}

fn describe(held: &[crate::GenerationStatus]) -> String {
    held.iter()
        .map(|g| {
            let labels: Vec<&str> = g.pins.iter().map(|p| p.label.as_str()).collect();
            format!(
                "generation {} ({} calls in flight, {} pins, labelled: [{}])",
                g.id,
                g.calls,
                g.pin_count,
                labels.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a typed Vault operation failed. The Vault is unchanged.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The entry holds a value of another type.
    #[error("vault key `{key}` holds a `{stored}`, not a `{wanted}`; read it with the matching type or get_versioned")]
    TypeMismatch {
        /// The key.
        key: String,
        /// The stored value's type name.
        stored: String,
        /// The type asked for.
        wanted: &'static str,
    },
    /// The entry's bytes did not decode as the type asked for.
    #[error("vault key `{key}` did not decode: {reason}; migrate the value or add #[serde(default)] to new fields")]
    Decode {
        /// The key.
        key: String,
        /// The decoder's message.
        reason: String,
    },
    /// The value did not encode.
    #[error("the value for vault key `{key}` did not encode: {reason}")]
    Encode {
        /// The key.
        key: String,
        /// The encoder's message.
        reason: String,
    },
}

/// The message of a caught panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
