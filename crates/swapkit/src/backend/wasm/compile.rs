//! Compiling a module under a deadline.
//!
//! Cranelift cannot be stopped part way, and what a module costs it grows with the module's
//! size and shape: within [`WasmLimits`](super::WasmLimits)' default size bounds, a hostile
//! module still takes about 2 s a MiB of code, over a minute for a whole module
//! (`examples/compile_cost.rs`). So a compile runs on a thread of its own and the load
//! waits for it at most `max_compile_time`; past that the load is refused, and the compile
//! runs on to its end, its result dropped. Until an overrunning compile ends, another load's
//! compile waits for it (within its own deadline) before starting, so a stream of hostile
//! modules keeps at most one core per loading thread busy, never one per module.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Module};

use crate::error::LoadError;

/// What a compile's thread sends back.
type Compiled = Result<Module, wasmtime::Error>;

/// Runs compiles under a deadline, remembering those that overran it.
#[derive(Default)]
pub(super) struct Compiler {
    /// Compiles that overran their deadline and may still run.
    overrun: Mutex<Vec<Receiver<Compiled>>>,
}

/// Why a module was not compiled.
#[derive(Debug)]
pub(super) enum Failed {
    /// wasmtime refused it: its words.
    Invalid(String),
    /// It took longer than the deadline: `max_compile_time`.
    Overran(Duration),
    /// A compile that overran earlier still ran when the deadline passed.
    Busy(Duration),
    /// No thread could be started for it.
    Thread(std::io::Error),
}

impl Failed {
    /// The load's error, naming the bound it hit.
    pub fn into_error(self, path: &Path) -> LoadError {
        let path = path.into();
        let reason = match self {
            Failed::Invalid(words) => {
                return LoadError::WasmCompile {
                    path,
                    source: words.into(),
                }
            }
            Failed::Overran(limit) => format!(
                "compiling it took longer than {limit:?}, the most \
                 WasmLimits::max_compile_time allows; the compile runs on to its end in the \
                 background and is dropped (raise the limit if this plugin is trusted and big)"
            ),
            Failed::Busy(limit) => format!(
                "an earlier module's compile that overran WasmLimits::max_compile_time still \
                 ran after {limit:?}, so this one was not started; load it again when that \
                 one ends"
            ),
            Failed::Thread(e) => format!("no thread could be started to compile it: {e}"),
        };
        LoadError::WasmTooCostly { path, reason }
    }
}

impl Compiler {
    /// Compiles `bytes`, waiting at most `within` in all: for an overrunning compile before it,
    /// then for its own.
    pub fn compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        within: Duration,
    ) -> Result<Module, Failed> {
        let deadline = Instant::now() + within;
        self.wait_for_overrun(deadline, within)?;
        let (tx, rx) = mpsc::sync_channel::<Compiled>(1);
        let engine = engine.clone();
        let bytes = bytes.to_vec();
        std::thread::Builder::new()
            .name("swapkit-compile".into())
            .spawn(move || {
                // The receiver is gone when no one waits any more: the result is dropped.
                let _ = tx.send(Module::from_binary(&engine, &bytes));
            })
            .map_err(Failed::Thread)?;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(compiled) => compiled.map_err(|e| Failed::Invalid(format!("{e:#}"))),
            Err(RecvTimeoutError::Timeout) => {
                self.overrun
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(rx);
                Err(Failed::Overran(within))
            }
            Err(RecvTimeoutError::Disconnected) => Err(Failed::Invalid(
                "the compiler panicked on this module".into(),
            )),
        }
    }

    /// Forgets the overrunning compiles that ended, and waits until `deadline` for the others.
    fn wait_for_overrun(&self, deadline: Instant, within: Duration) -> Result<(), Failed> {
        let mut overrun = self.overrun.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(rx) = overrun.last() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(_) | Err(RecvTimeoutError::Disconnected) => {
                    overrun.pop();
                }
                Err(RecvTimeoutError::Timeout) => return Err(Failed::Busy(within)),
            }
        }
        Ok(())
    }
}
