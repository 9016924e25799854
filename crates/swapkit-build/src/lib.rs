//! Builds swapkit plugin crates with cargo and reports where the artifacts went.
//!
//! Cargo's own progress goes to stderr as usual; the artifact paths are read from its JSON
//! messages, so they are right whatever the target directory or profile.
//!
//! Example:
//!
//! ```no_run
//! let built = swapkit_build::PluginBuild::new("Cargo.toml")
//!     .package("greeter-v1")
//!     .release(true)
//!     .run()?;
//! println!("{}", built[0].path.display());
//! # Ok::<(), swapkit_build::BuildError>(())
//! ```

#![deny(missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a build did not produce its artifacts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// cargo could not be started.
    #[error("cannot run `{cargo}`: {source}; is cargo installed and on PATH (or in $CARGO)?")]
    Spawn {
        /// The cargo binary.
        cargo: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// cargo ran and failed; its diagnostics were printed to stderr.
    #[error("`cargo build` failed for {packages} ({status}); see the compiler output above{hint}")]
    Failed {
        /// The packages asked for.
        packages: String,
        /// cargo's exit status.
        status: std::process::ExitStatus,
        /// What to try, if anything.
        hint: String,
    },
    /// cargo succeeded but produced no `cdylib` for a package.
    #[error("package `{package}` built no cdylib; add crate-type = [\"cdylib\", \"rlib\"] to its [lib] section")]
    NoArtifact {
        /// The package.
        package: String,
    },
}

/// One built plugin library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltArtifact {
    /// The package it was built from.
    pub package: String,
    /// The library file.
    pub path: PathBuf,
}

/// The target triple of wasm plugins.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// The cargo profile of wasm release builds. It is defined on cargo's command line, so it
/// needs nothing in the workspace: the workspace's `release`, plus fat LTO and one codegen
/// unit.
pub const WASM_RELEASE_PROFILE: &str = "swapkit-wasm";

/// A `cargo build` of one or more plugin packages.
#[derive(Debug, Clone)]
pub struct PluginBuild {
    manifest: PathBuf,
    packages: Vec<String>,
    release: bool,
    target_dir: Option<PathBuf>,
    quiet: bool,
    cargo: Option<PathBuf>,
    target: Option<String>,
    progress: Option<Progress>,
}

impl PluginBuild {
    /// A build of packages from the workspace or package at `manifest` (a `Cargo.toml`).
    pub fn new(manifest: impl AsRef<Path>) -> Self {
        PluginBuild {
            manifest: manifest.as_ref().to_owned(),
            packages: vec![],
            release: false,
            target_dir: None,
            quiet: false,
            cargo: None,
            target: None,
            progress: None,
        }
    }

    /// Adds a package to build.
    pub fn package(mut self, name: impl Into<String>) -> Self {
        self.packages.push(name.into());
        self
    }

    /// Adds several packages.
    pub fn packages<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.packages.extend(names.into_iter().map(Into::into));
        self
    }

    /// Builds with the release profile (default: dev).
    ///
    /// For wasm, a release build uses the profile [`WASM_RELEASE_PROFILE`]: the workspace's
    /// `release` with fat LTO and one codegen unit. Cranelift compiles a module function by
    /// function, so inlining across crates (the glue, serde, postcard) has to happen here; it
    /// takes a quarter off the guest's share of a call. Its output lands in
    /// `<target-dir>/wasm32-unknown-unknown/swapkit-wasm/`.
    pub fn release(mut self, release: bool) -> Self {
        self.release = release;
        self
    }

    /// Uses this target directory (default: cargo's).
    pub fn target_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.target_dir = Some(dir.into());
        self
    }

    /// Builds for this target triple (default: the host's). `wasm32-unknown-unknown` makes
    /// plugins for the wasm backend; install it first with
    /// `rustup target add wasm32-unknown-unknown`.
    pub fn target(mut self, triple: impl Into<String>) -> Self {
        self.target = Some(triple.into());
        self
    }

    /// Shorthand for `.target("wasm32-unknown-unknown")`.
    pub fn wasm(self) -> Self {
        self.target(WASM_TARGET)
    }

    /// Silences cargo's progress output.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Uses this cargo binary (default: `$CARGO`, else `cargo` on `PATH`).
    pub fn cargo(mut self, cargo: impl Into<PathBuf>) -> Self {
        self.cargo = Some(cargo.into());
        self
    }

    /// Calls `f` with each crate's name as cargo finishes compiling it, for a progress
    /// display. Cargo's own output is then held back, and printed only if the build fails.
    pub fn on_progress(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.progress = Some(Progress(std::sync::Arc::new(f)));
        self
    }

    /// Runs the build, and returns one artifact per package, in the order they were added.
    pub fn run(&self) -> Result<Vec<BuiltArtifact>, BuildError> {
        let cargo = match &self.cargo {
            Some(c) => c.display().to_string(),
            None => std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        };
        let mut cmd = Command::new(&cargo);
        cmd.arg("build").arg("--manifest-path").arg(&self.manifest);
        cmd.arg("--message-format=json-render-diagnostics");
        for p in &self.packages {
            cmd.arg("-p").arg(p);
        }
        let wasm = self
            .target
            .as_deref()
            .is_some_and(|t| t.starts_with("wasm32"));
        match (self.release, wasm) {
            (true, true) => {
                let p = WASM_RELEASE_PROFILE;
                for setting in [
                    format!("profile.{p}.inherits=\"release\""),
                    format!("profile.{p}.lto=\"fat\""),
                    format!("profile.{p}.codegen-units=1"),
                ] {
                    cmd.arg("--config").arg(setting);
                }
                cmd.arg("--profile").arg(p);
            }
            (true, false) => {
                cmd.arg("--release");
            }
            (false, _) => {}
        }
        if let Some(dir) = &self.target_dir {
            cmd.arg("--target-dir").arg(dir);
        }
        if let Some(target) = &self.target {
            cmd.arg("--target").arg(target);
        }
        if self.quiet {
            cmd.arg("--quiet");
        }
        cmd.stdout(Stdio::piped()).stderr(if self.quiet {
            Stdio::null()
        } else if self.progress.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
        let mut child = cmd.spawn().map_err(|source| BuildError::Spawn {
            cargo: cargo.clone(),
            source,
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        // Held-back diagnostics, printed if the build fails.
        let held = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
                text
            })
        });
        let mut found: Vec<(String, PathBuf)> = vec![];
        let ext = if wasm {
            ".wasm".to_owned()
        } else {
            format!(".{}", std::env::consts::DLL_EXTENSION)
        };
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let (Some(progress), Some(name)) = (&self.progress, compiled_crate(&line)) {
                (progress.0)(&name);
            }
            if let Some(hit) = cdylib_of(&line, &ext) {
                found.push(hit);
            }
        }
        let status = child
            .wait()
            .map_err(|source| BuildError::Spawn { cargo, source })?;
        let held = held.and_then(|t| t.join().ok()).unwrap_or_default();
        if !status.success() {
            eprint!("{held}");
            return Err(BuildError::Failed {
                packages: self.packages.join(", "),
                status,
                hint: match self.target.as_deref() {
                    Some(t) => format!("; if the target is missing, run `rustup target add {t}`"),
                    None => String::new(),
                },
            });
        }
        self.packages
            .iter()
            .map(|package| {
                let lib = package.replace('-', "_");
                found
                    .iter()
                    .rev()
                    .find(|(name, _)| *name == lib)
                    .map(|(_, path)| BuiltArtifact {
                        package: package.clone(),
                        path: path.clone(),
                    })
                    .ok_or_else(|| BuildError::NoArtifact {
                        package: package.clone(),
                    })
            })
            .collect()
    }
}

/// A progress callback.
#[derive(Clone)]
struct Progress(std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

/// The crate name of a `compiler-artifact` message.
fn compiled_crate(line: &str) -> Option<String> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    Some(msg.get("target")?.get("name")?.as_str()?.to_owned())
}

/// The library name and cdylib path of a `compiler-artifact` message, if it has one.
fn cdylib_of(line: &str, ext: &str) -> Option<(String, PathBuf)> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let target = msg.get("target")?;
    let is_cdylib = target
        .get("kind")?
        .as_array()?
        .iter()
        .any(|k| k.as_str() == Some("cdylib"));
    if !is_cdylib {
        return None;
    }
    let name = target.get("name")?.as_str()?.replace('-', "_");
    let path = msg
        .get("filenames")?
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str())
        .find(|f| f.ends_with(ext))?;
    Some((name, PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cdylib_messages_only() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["cdylib","rlib"],"name":"greeter-v1"},"filenames":["/t/libgreeter_v1.rlib","/t/libgreeter_v1.so"]}"#;
        let (name, path) =
            cdylib_of(line, &format!(".{}", std::env::consts::DLL_EXTENSION)).expect("a cdylib");
        assert_eq!(name, "greeter_v1");
        assert!(
            path.to_str()
                .unwrap()
                .ends_with(&format!(".{}", std::env::consts::DLL_EXTENSION))
                || cfg!(not(target_os = "linux"))
        );
        let rlib_only = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"serde"},"filenames":["/t/libserde.rlib"]}"#;
        assert_eq!(cdylib_of(rlib_only, ".so"), None);
        assert_eq!(cdylib_of("not json", ".so"), None);
        assert_eq!(
            cdylib_of(r#"{"reason":"build-finished","success":true}"#, ".so"),
            None
        );
    }
}
