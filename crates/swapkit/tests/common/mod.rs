//! Shared test support: real fixture plugins, built once per test binary, and a log sink
//! that records what each plugin's hooks said.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use swapkit::{ExtendedHeader, LoadError, Swapper, SwapperBuilder};

#[cfg(feature = "wasm")]
pub mod wat;

/// A fixture plugin crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    GreeterV1,
    GreeterV2,
    BadLoad,
    BadInit,
    Drift,
    CycleA,
    CycleB,
    ChainBase,
    ChainTop,
    PlainCdylib,
    Handmade,
    Patches,
    PatchesBad,
    PatchesClosed,
    /// Wasm only.
    Hostile,
    StateV1,
    StateV2,
    /// The plugins of `examples/trine`.
    TrineStore,
    TrineLogicV1,
    TrineLogicV2,
    TrineFront,
    DepWrong,
    DepStray,
    /// `greet` panics.
    GreeterFaulty,
    /// Native only: leaves a thread logging through its `Host` after `on_free`.
    Lingering,
    /// Exports a live function named `job`, as `state` does.
    LiveClash,
    /// `fixed` 1.0.0: not reloadable, greets with the host's load data.
    FixedV1,
    /// `fixed` 2.0.0.
    FixedV2,
    /// Exports `Lanes` and `Greeter`, with direct lanes.
    Lanes,
    /// `shop` 1.0.0: async methods that await host services.
    ShopV1,
    /// `shop` 2.0.0.
    ShopV2,
    /// `storefront`: awaits `shop`, its dependency.
    ShopFront,
}

const ALL: [Fixture; 31] = [
    Fixture::GreeterV1,
    Fixture::GreeterV2,
    Fixture::BadLoad,
    Fixture::BadInit,
    Fixture::Drift,
    Fixture::CycleA,
    Fixture::CycleB,
    Fixture::ChainBase,
    Fixture::ChainTop,
    Fixture::PlainCdylib,
    Fixture::Handmade,
    Fixture::Patches,
    Fixture::PatchesBad,
    Fixture::PatchesClosed,
    Fixture::StateV1,
    Fixture::StateV2,
    Fixture::TrineStore,
    Fixture::TrineLogicV1,
    Fixture::TrineLogicV2,
    Fixture::TrineFront,
    Fixture::DepWrong,
    Fixture::DepStray,
    Fixture::GreeterFaulty,
    Fixture::Lingering,
    Fixture::LiveClash,
    Fixture::FixedV1,
    Fixture::FixedV2,
    Fixture::Lanes,
    Fixture::ShopV1,
    Fixture::ShopV2,
    Fixture::ShopFront,
];

impl Fixture {
    pub fn package(self) -> &'static str {
        match self {
            Fixture::GreeterV1 => "fixture-greeter-v1",
            Fixture::GreeterV2 => "fixture-greeter-v2",
            Fixture::BadLoad => "fixture-bad-load",
            Fixture::BadInit => "fixture-bad-init",
            Fixture::Drift => "fixture-drift",
            Fixture::CycleA => "fixture-cycle-a",
            Fixture::CycleB => "fixture-cycle-b",
            Fixture::ChainBase => "fixture-chain-base",
            Fixture::ChainTop => "fixture-chain-top",
            Fixture::PlainCdylib => "fixture-plain-cdylib",
            Fixture::Handmade => "fixture-handmade",
            Fixture::Patches => "fixture-patches",
            Fixture::PatchesBad => "fixture-patches-bad",
            Fixture::PatchesClosed => "fixture-patches-closed",
            Fixture::Hostile => "fixture-hostile",
            Fixture::StateV1 => "fixture-state-v1",
            Fixture::StateV2 => "fixture-state-v2",
            Fixture::TrineStore => "trine-store",
            Fixture::TrineLogicV1 => "trine-logic-v1",
            Fixture::TrineLogicV2 => "trine-logic-v2",
            Fixture::TrineFront => "trine-front",
            Fixture::DepWrong => "fixture-dep-wrong",
            Fixture::DepStray => "fixture-dep-stray",
            Fixture::GreeterFaulty => "fixture-greeter-faulty",
            Fixture::Lingering => "fixture-lingering",
            Fixture::LiveClash => "fixture-live-clash",
            Fixture::FixedV1 => "fixture-fixed-v1",
            Fixture::FixedV2 => "fixture-fixed-v2",
            Fixture::Lanes => "fixture-lanes",
            Fixture::ShopV1 => "fixture-shop-v1",
            Fixture::ShopV2 => "fixture-shop-v2",
            Fixture::ShopFront => "fixture-shop-front",
        }
    }

    /// The built native artifact.
    pub fn path(self) -> PathBuf {
        let i = ALL.iter().position(|f| *f == self).unwrap();
        built()[i].clone()
    }

    /// The built wasm module (release build, for wasm32-unknown-unknown).
    pub fn wasm_path(self) -> PathBuf {
        let i = WASM
            .iter()
            .position(|f| *f == self)
            .unwrap_or_else(|| panic!("{self:?} is not built for wasm"));
        built_wasm()[i].clone()
    }

    /// The artifact for `backend` (static plugins have none).
    pub fn artifact(self, backend: Backend) -> PathBuf {
        match backend {
            Backend::Wasm => self.wasm_path(),
            _ => self.path(),
        }
    }

    /// The plugin header, for the static backend.
    pub fn header(self) -> &'static ExtendedHeader {
        match self {
            Fixture::GreeterV1 => &fixture_greeter_v1::SWAPKIT_PLUGIN,
            Fixture::GreeterV2 => &fixture_greeter_v2::SWAPKIT_PLUGIN,
            Fixture::BadLoad => &fixture_bad_load::SWAPKIT_PLUGIN,
            Fixture::BadInit => &fixture_bad_init::SWAPKIT_PLUGIN,
            Fixture::Drift => &fixture_drift::SWAPKIT_PLUGIN,
            Fixture::CycleA => &fixture_cycle_a::SWAPKIT_PLUGIN,
            Fixture::CycleB => &fixture_cycle_b::SWAPKIT_PLUGIN,
            Fixture::ChainBase => &fixture_chain_base::SWAPKIT_PLUGIN,
            Fixture::ChainTop => &fixture_chain_top::SWAPKIT_PLUGIN,
            Fixture::Patches => &fixture_patches::SWAPKIT_PLUGIN,
            Fixture::PatchesBad => &fixture_patches_bad::SWAPKIT_PLUGIN,
            Fixture::PatchesClosed => &fixture_patches_closed::SWAPKIT_PLUGIN,
            Fixture::StateV1 => &fixture_state_v1::SWAPKIT_PLUGIN,
            Fixture::DepWrong => &fixture_dep_wrong::SWAPKIT_PLUGIN,
            Fixture::DepStray => &fixture_dep_stray::SWAPKIT_PLUGIN,
            Fixture::FixedV1 => &fixture_fixed_v1::SWAPKIT_PLUGIN,
            Fixture::Lanes => &fixture_lanes::SWAPKIT_PLUGIN,
            Fixture::ShopV1 => &fixture_shop_v1::SWAPKIT_PLUGIN,
            _ => panic!("{self:?} is not linked statically"),
        }
    }
}

/// Builds every fixture once per test process, with the same profile as the tests.
fn built() -> &'static [PathBuf] {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let artifacts = swapkit_build::PluginBuild::new(workspace)
            .packages(ALL.iter().map(|f| f.package()))
            .run()
            .expect("building the fixture plugins");
        artifacts.into_iter().map(|a| a.path).collect()
    })
}

/// The fixtures that also build for wasm32 (the hand-made ones are native by nature).
const WASM: [Fixture; 28] = [
    Fixture::GreeterV1,
    Fixture::GreeterV2,
    Fixture::BadLoad,
    Fixture::BadInit,
    Fixture::Drift,
    Fixture::CycleA,
    Fixture::CycleB,
    Fixture::ChainBase,
    Fixture::ChainTop,
    Fixture::Patches,
    Fixture::PatchesBad,
    Fixture::PatchesClosed,
    Fixture::Hostile,
    Fixture::StateV1,
    Fixture::StateV2,
    Fixture::TrineStore,
    Fixture::TrineLogicV1,
    Fixture::TrineLogicV2,
    Fixture::TrineFront,
    Fixture::DepWrong,
    Fixture::DepStray,
    Fixture::GreeterFaulty,
    Fixture::FixedV1,
    Fixture::FixedV2,
    Fixture::Lanes,
    Fixture::ShopV1,
    Fixture::ShopV2,
    Fixture::ShopFront,
];

/// Builds the wasm fixtures once per test process, in release: smaller modules compile faster.
fn built_wasm() -> &'static [PathBuf] {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let artifacts = swapkit_build::PluginBuild::new(workspace)
            .packages(WASM.iter().map(|f| f.package()))
            .wasm()
            .release(true)
            .run()
            .expect("building the wasm fixture plugins");
        artifacts.into_iter().map(|a| a.path).collect()
    })
}

/// A wasm compile cache shared by the tests of one build, so most loads skip compiling.
pub fn wasm_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("swapkit-wasm-cache")
}

/// The private copies of plugins mapped executable in this process, by name (Linux: from
/// `/proc/self/maps`).
pub fn mapped_copies() -> std::collections::BTreeSet<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("r-xp"))
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.contains("swapkit-"))
        .map(str::to_owned)
        .collect()
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Copies `fixture`'s artifact into `dir` under `name`.
pub fn place(dir: &Path, fixture: Fixture, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(fixture.path(), &to).expect("copy artifact");
    to
}

/// What plugins logged: `(plugin, version, message)`, in order.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<(String, String, String)>>>);

impl Logs {
    pub fn builder(&self) -> SwapperBuilder {
        let logs = self.0.clone();
        Swapper::builder().log_sink(move |line| {
            logs.lock().unwrap().push((
                line.plugin.into(),
                line.version.into(),
                line.message.into(),
            ))
        })
    }

    pub fn all(&self) -> Vec<(String, String, String)> {
        self.0.lock().unwrap().clone()
    }

    /// `plugin message` lines, for order checks.
    pub fn lines(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .map(|(p, _, m)| format!("{p} {m}"))
            .collect()
    }

    /// How many times `plugin` at `version` logged `message`.
    pub fn count(&self, plugin: &str, version: &str, message: &str) -> usize {
        self.all()
            .iter()
            .filter(|(p, v, m)| p == plugin && v == version && m == message)
            .count()
    }
}

/// The backends the behavioural tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Native,
    Static,
    Wasm,
}

/// A swapper with `set` loaded through `backend`, declaring the fixture interfaces first.
pub fn start(backend: Backend, logs: &Logs, set: &[Fixture]) -> Result<Swapper, LoadError> {
    start_with(backend, logs, set, swapkit::Sandbox::default())
}

/// [`start`], with the plugins under `sandbox`.
pub fn start_with(
    backend: Backend,
    logs: &Logs,
    set: &[Fixture],
    sandbox: swapkit::Sandbox,
) -> Result<Swapper, LoadError> {
    start_configured(backend, logs, set, |b| b.sandbox(sandbox))
}

/// [`start`], with the builder set up by `configure` first.
pub fn start_configured(
    backend: Backend,
    logs: &Logs,
    set: &[Fixture],
    configure: impl FnOnce(swapkit::SwapperBuilder) -> swapkit::SwapperBuilder,
) -> Result<Swapper, LoadError> {
    let builder = configure(logs.builder());
    #[cfg(feature = "wasm")]
    let builder = builder.wasm_cache_dir(wasm_cache());
    let builder = builder
        .interface::<dyn fixture_api::Greeter>()
        .interface::<dyn fixture_api::Probe>()
        .interface::<dyn fixture_api::Counter>()
        .interface::<dyn fixture_api::Lanes>()
        .interface::<dyn fixture_api::Shop>()
        .interface::<dyn fixture_api::Storefront>();
    match backend {
        Backend::Native | Backend::Wasm => {
            let swapper = builder.build()?;
            swapper.load_files(set.iter().map(|f| f.artifact(backend)))?;
            Ok(swapper)
        }
        Backend::Static => set
            .iter()
            .fold(builder, |b, f| b.static_plugin(f.header()))
            .build(),
    }
}

/// Runs a behavioural test on both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod native {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Native) })*
        }
        mod statics {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Static) })*
        }
        #[cfg(feature = "wasm")]
        mod wasm {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Wasm) })*
        }
    };
}

/// Runs a test on the backends that can swap: native and wasm.
#[macro_export]
macro_rules! on_swappable_backends {
    ($($name:ident),* $(,)?) => {
        mod native {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Native) })*
        }
        #[cfg(feature = "wasm")]
        mod wasm {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Wasm) })*
        }
    };
}
