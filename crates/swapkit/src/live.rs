//! Live functions and live types: plugin exports found by name in the current generation at
//! every call, so a handle stored before a swap reaches the new code after it.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use swapkit_abi::{wire, LiveData, LiveKind, Status, LIVE_INTERFACE};

use crate::backend::host as services;
use crate::call::{decode_error, failure};
use crate::error::CallError;
use crate::generation::Generation;

/// A serializable handle to a live function: a plugin name and a function name, typed on the
/// host side by its argument tuple `A` and result `R`.
///
/// A timer, a job queue, a file or a database can store it (it serializes as
/// `{"plugin": .., "name": ..}`), and every [`call`](Self::call) resolves it in the generation
/// current at that moment: a job scheduled under v1 runs v2's code after a swap. A function
/// that the current version no longer exports is [`CallError::LiveNotFound`], never a panic.
///
/// The plugin exports the function with `#[swapkit_guest::live]`. As with interface methods,
/// the arguments and result cross in the wire encoding, so `A` and `R` must match the
/// function's parameters (as a tuple) and return type.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let swapper = swapkit::Swapper::new()?;
/// swapper.load_dir("plugins/")?;
/// let remind: swapkit::LiveFn<(u64,), String> = swapkit::LiveFn::new("jobs", "reminder");
/// let stored = serde_json::to_string(&remind)?;  // into the job queue
/// // ... a swap later ...
/// let remind: swapkit::LiveFn<(u64,), String> = serde_json::from_str(&stored)?;
/// println!("{}", remind.call(&swapper, &(7,))?);
/// # Ok(()) }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct LiveFn<A, R> {
    plugin: String,
    name: String,
    #[serde(skip)]
    types: PhantomData<fn(A) -> R>,
}

impl<A, R> LiveFn<A, R> {
    /// A handle to function `name` of plugin `plugin`. Nothing is checked until a call.
    pub fn new(plugin: impl Into<String>, name: impl Into<String>) -> Self {
        LiveFn {
            plugin: plugin.into(),
            name: name.into(),
            types: PhantomData,
        }
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<A: Serialize, R: DeserializeOwned> LiveFn<A, R> {
    /// Calls the function in `generation` (see [`LiveFn::call`]).
    pub(crate) fn call_in(&self, generation: &Generation, args: &A) -> Result<R, CallError> {
        call_live(
            generation,
            Some(&self.plugin),
            &self.name,
            LiveKind::Function,
            args,
        )
    }
}

impl<A, R> Clone for LiveFn<A, R> {
    fn clone(&self) -> Self {
        LiveFn::new(self.plugin.clone(), self.name.clone())
    }
}

impl<A, R> PartialEq for LiveFn<A, R> {
    fn eq(&self, other: &Self) -> bool {
        self.plugin == other.plugin && self.name == other.name
    }
}

impl<A, R> Eq for LiveFn<A, R> {}

impl<A, R> std::fmt::Debug for LiveFn<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveFn({}::{})", self.plugin, self.name)
    }
}

/// Makes a value of live type `type_name` with the factory `generation` has for it (see
/// [`Swapper::new_live`](crate::Swapper::new_live)).
pub(crate) fn new_live<A: Serialize + ?Sized>(
    generation: &Generation,
    type_name: &str,
    args: &A,
) -> Result<LiveData, CallError> {
    call_live(generation, None, type_name, LiveKind::Factory, args)
}

/// Calls live export `name` of `kind` in `generation`.
fn call_live<A: Serialize + ?Sized, R: DeserializeOwned>(
    generation: &Generation,
    plugin: Option<&str>,
    name: &str,
    kind: LiveKind,
    args: &A,
) -> Result<R, CallError> {
    let what = match kind {
        LiveKind::Function => "function",
        LiveKind::Factory => "type",
    };
    let Some((instance, index)) = services::find_live(&generation.plugins, plugin, name, kind)
    else {
        return Err(CallError::LiveNotFound {
            kind: what,
            plugin: plugin.map(Into::into),
            name: name.to_owned(),
            generation: generation.id,
        });
    };
    let _scope = instance
        .scoped
        .then(|| services::enter(&generation.plugins, generation.id));
    let input = wire::to_vec(args).map_err(|e| CallError::Encode {
        interface: "live",
        method: what,
        reason: format!("`{name}`: {e}"),
    })?;
    instance.call(LIVE_INTERFACE, index, &input, |reply| {
        if reply.status == Status::Ok as u32 {
            wire::from_bytes(reply.bytes).map_err(|e| decode_error(instance, "live", what, e))
        } else {
            let message = format!("`{name}`: {}", String::from_utf8_lossy(reply.bytes));
            Err(failure(instance, ("live", what), reply.status, message))
        }
    })
}
