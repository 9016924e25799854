//! The guest's handle on the host functions of ABI v1: logging, the Vault, the host's own
//! functions, dependencies and live types.

use core::ffi::c_void;

use serde::de::DeserializeOwned;
use serde::Serialize;
use swapkit_abi::service::{self, Cas, CasReply, DependencyCall, Invoke, Key, Put, Versioned};
use swapkit_abi::{
    level, wire, HostApi, Interface, LiveData, LiveType, RawSlice, ServiceFn, Status, Transport,
};

use crate::Error;

/// A log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// An error.
    Error,
    /// A warning.
    Warn,
    /// Information.
    Info,
    /// Debugging detail.
    Debug,
    /// Tracing detail.
    Trace,
}

/// The host functions this instance may call. It is `Copy`: keep one in the plugin type to
/// log from methods.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    ctx: *const c_void,
    log: LogFn,
    /// `None` when the host's table ends before `service`: a host older than services.
    service: Option<ServiceFn>,
}

// SAFETY: as for `HostApi`: `ctx` points to host data that is `Sync` and outlives every
// instance given it, and the functions may be called from any thread.
unsafe impl Send for Host {}
// SAFETY: see `Send`.
unsafe impl Sync for Host {}

type LogFn = unsafe extern "C" fn(ctx: *const c_void, level: u32, msg: *const u8, len: usize);

impl Host {
    /// Copies the fields of the host's table that it has, so the host may free its own.
    ///
    /// The table may be shorter than this plugin's [`HostApi`] (an older host): only the
    /// fields within its `size` are read.
    ///
    /// # Safety
    /// `api` must point to a valid table of at least `size` bytes, and at least the fields of
    /// ABI v1's first table (`size`, `ctx`, `log`), whose context outlives the instance.
    pub(crate) unsafe fn from_raw(api: *const HostApi) -> Host {
        const WITH_SERVICE: usize =
            core::mem::offset_of!(HostApi, service) + core::mem::size_of::<ServiceFn>();
        // SAFETY: upheld by the caller. Each read is of one field, so none reads past the end
        // of a shorter table.
        unsafe {
            Host {
                ctx: (*api).ctx,
                log: (*api).log,
                service: ((*api).size >= WITH_SERVICE).then(|| (*api).service),
            }
        }
    }

    /// Writes a log line through the host, attributed to this plugin and its version.
    pub fn log(&self, level: Level, message: &str) {
        let raw = match level {
            Level::Error => level::ERROR,
            Level::Warn => level::WARN,
            Level::Info => level::INFO,
            Level::Debug => level::DEBUG,
            Level::Trace => level::TRACE,
        };
        // SAFETY: the host guarantees `log` and `ctx` stay valid for the instance's lifetime,
        // and `message` is valid UTF-8 for the length passed.
        unsafe { (self.log)(self.ctx, raw, message.as_ptr(), message.len()) }
    }

    /// Logs at [`Level::Error`].
    pub fn error(&self, message: &str) {
        self.log(Level::Error, message)
    }

    /// Logs at [`Level::Warn`].
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    /// Logs at [`Level::Info`].
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    /// Logs at [`Level::Debug`].
    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message)
    }

    /// The value the host gave this plugin for `on_load` (`SwapperBuilder::load_data` or
    /// `load_data_for`), decoded as `T`: `Ok(None)` when it gave none. An error when it does
    /// not decode as `T`, or when the host predates load data.
    ///
    /// ```no_run
    /// # use swapkit_guest::{Host, Error};
    /// #[derive(serde::Deserialize)]
    /// struct Settings { region: String, shards: u32 }
    ///
    /// # fn on_load(host: &Host) -> Result<(), Error> {
    /// let settings: Settings = host.load_data()?.ok_or_else(|| Error::msg("no settings"))?;
    /// # let _ = (settings.region, settings.shards);
    /// # Ok(()) }
    /// ```
    pub fn load_data<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        let bytes: Option<Vec<u8>> = self.service(service::LOAD_DATA, &())?;
        bytes
            .map(|b| {
                wire::from_bytes(&b).map_err(|e| {
                    Error::msg(format!(
                        "the host's load data does not decode as {}: {e}",
                        core::any::type_name::<T>()
                    ))
                })
            })
            .transpose()
    }

    /// The host's Vault: state that outlives every swap.
    pub fn vault(&self) -> Vault {
        Vault { host: *self }
    }

    /// Calls the function the host registered as `name` with the argument tuple `args`.
    pub fn call_host<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        name: &str,
        args: &A,
    ) -> Result<R, Error> {
        let args = wire::to_vec(args).map_err(|e| {
            Error::msg(format!(
                "arguments of host function `{name}` did not encode: {e}"
            ))
        })?;
        let bytes = self.service_raw(
            service::HOST_FN,
            &Invoke {
                name: name.into(),
                args,
            },
        )?;
        wire::from_bytes(&bytes).map_err(|e| {
            Error::msg(format!(
                "the result of host function `{name}` did not decode: {e}"
            ))
        })
    }

    /// A typed client for interface `I` of plugin `plugin`, which this plugin must list in
    /// `dependencies` of `export_plugin!`. Each call reaches the instance of `plugin` in the
    /// caller's own generation, so a pinned request never crosses into another generation.
    ///
    /// Call it on a thread the host called in on (a method or a hook): the host finds the
    /// caller's generation from that call.
    pub fn dependency<I: Interface + ?Sized>(&self, plugin: &str) -> I::Client<Dependency> {
        I::client(Dependency {
            host: *self,
            plugin: plugin.into(),
            interface: I::NAME,
            methods: I::METHODS,
            hash: I::HASH,
        })
    }

    /// Creates a value of live type `type_name` with its factory in the caller's generation,
    /// exported by a plugin this one lists in `dependencies` of `export_plugin!`. A plugin
    /// builds its own live types directly: the host refuses to call back into the caller.
    pub fn new_live<A: Serialize + ?Sized>(
        &self,
        type_name: &str,
        args: &A,
    ) -> Result<LiveData, Error> {
        let args = wire::to_vec(args)
            .map_err(|e| Error::msg(format!("arguments of `{type_name}` did not encode: {e}")))?;
        self.service(
            service::LIVE_NEW,
            &Invoke {
                name: type_name.into(),
                args,
            },
        )
    }

    /// Runs a host service and decodes its reply.
    fn service<Q: Serialize, R: DeserializeOwned>(&self, op: u32, request: &Q) -> Result<R, Error> {
        let bytes = self.service_raw(op, request)?;
        wire::from_bytes(&bytes)
            .map_err(|e| Error::msg(format!("a host service reply did not decode: {e}")))
    }

    /// Runs a host service and copies its encoded reply.
    pub(crate) fn service_raw<Q: Serialize>(&self, op: u32, request: &Q) -> Result<Vec<u8>, Error> {
        let input = wire::to_vec(request)
            .map_err(|e| Error::msg(format!("a host service request did not encode: {e}")))?;
        self.service_bytes(op, &input)
    }

    /// Runs a host service on `input` as it is, and copies its reply.
    pub(crate) fn service_bytes(&self, op: u32, input: &[u8]) -> Result<Vec<u8>, Error> {
        let Some(service) = self.service else {
            return Err(Error::msg("the host is older than this plugin and offers no services; rebuild the host against this swapkit"));
        };
        let mut out = RawSlice::EMPTY;
        // SAFETY: the host's table had `service`, valid with `ctx` for the instance's lifetime;
        // `input` is valid for the call and `out` is writable.
        let status = unsafe { service(self.ctx, op, input.as_ptr(), input.len(), &mut out) };
        // SAFETY: the reply stays valid until the next service call on this thread; it is
        // copied before any other.
        let bytes = unsafe { out.as_slice() }.to_vec();
        if status == Status::Ok as u32 {
            Ok(bytes)
        } else {
            Err(Error::msg(String::from_utf8_lossy(&bytes)))
        }
    }
}

/// The host's Vault, seen from a plugin: typed key/value state that the host owns and that
/// outlives every swap and rollback. Values are live data (see [`LiveType`]), so a newer or
/// older version of the plugin reads what this one wrote.
///
/// A plugin reaches only its own namespace, the keys that start with `<plugin name>/`, plus
/// the prefixes the host grants it (`swapkit::Sandbox`), within a quota of keys and bytes;
/// anything else fails with an error saying which grant or quota was missing.
#[derive(Debug, Clone, Copy)]
pub struct Vault {
    host: Host,
}

impl Vault {
    /// The value under `key`, decoded as `T`; `None` if there is none.
    pub fn get<T: LiveType>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get_versioned(key)? {
            Some(v) => {
                Ok(Some(v.value.decode_as::<T>().map_err(|e| {
                    Error::msg(format!("vault key `{key}`: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    /// The raw entry under `key`, with its type name, schema and version.
    pub fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, Error> {
        self.host
            .service(service::VAULT_GET, &Key { key: key.into() })
    }

    /// Stores `value` under `key`, and returns the entry's new version.
    pub fn put<T: LiveType>(&self, key: &str, value: &T) -> Result<u64, Error> {
        let value = LiveData::of(value).map_err(Error::msg)?;
        self.host.service(
            service::VAULT_PUT,
            &Put {
                key: key.into(),
                value,
            },
        )
    }

    /// Replaces the entry under `key` if its version is `expected` (0: if there is none).
    /// `Ok(Ok(version))` when written; `Ok(Err(current))` when another write came first.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Option<LiveData>,
    ) -> Result<Result<u64, Option<Versioned>>, Error> {
        let reply: CasReply = self.host.service(
            service::VAULT_CAS,
            &Cas {
                key: key.into(),
                expected,
                value,
            },
        )?;
        Ok(match reply {
            CasReply::Done(v) => Ok(v),
            CasReply::Conflict(current) => Err(current),
        })
    }

    /// Applies `f` to the value under `key` atomically, retrying when another writer came
    /// first, and returns the value stored.
    pub fn update<T: LiveType>(
        &self,
        key: &str,
        mut f: impl FnMut(Option<T>) -> T,
    ) -> Result<T, Error> {
        let mut current = self.get_versioned(key)?;
        loop {
            let (old, expected) = match &current {
                Some(v) => (
                    Some(
                        v.value
                            .decode_as::<T>()
                            .map_err(|e| Error::msg(format!("vault key `{key}`: {e}")))?,
                    ),
                    v.version,
                ),
                None => (None, 0),
            };
            let new = f(old);
            let data = LiveData::of(&new).map_err(Error::msg)?;
            match self.compare_and_swap(key, expected, Some(data))? {
                Ok(_) => return Ok(new),
                Err(now) => current = now,
            }
        }
    }

    /// Deletes the entry under `key`; whether there was one.
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        self.host
            .service(service::VAULT_DELETE, &Key { key: key.into() })
    }

    /// The keys that start with `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        self.host
            .service(service::VAULT_LIST, &Key { key: prefix.into() })
    }
}

/// The transport of a dependency client made by [`Host::dependency`].
#[derive(Debug, Clone)]
pub struct Dependency {
    host: Host,
    plugin: String,
    interface: &'static str,
    methods: &'static [&'static str],
    hash: u64,
}

impl Dependency {
    /// How its messages name method number `method`: `` `plugin` Interface::method ``.
    fn site(&self, method: u32) -> String {
        match self.methods.get(method as usize) {
            Some(name) => format!("`{}` {}::{name}", self.plugin, self.interface),
            None => format!("`{}` {}::#{method}", self.plugin, self.interface),
        }
    }
}

impl Transport for Dependency {
    type Error = Error;

    fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: u32,
        args: &A,
    ) -> Result<R, Error> {
        let args = wire::to_vec(args).map_err(|e| {
            Error::msg(format!(
                "arguments to `{}` did not encode: {e}",
                self.plugin
            ))
        })?;
        let bytes = self.host.service_raw(
            service::DEPENDENCY,
            &DependencyCall {
                plugin: self.plugin.clone(),
                interface: self.interface.into(),
                hash: self.hash,
                method,
                args,
            },
        )?;
        wire::from_bytes(&bytes).map_err(|e| {
            Error::msg(format!(
                "the result from {} did not decode: {e}",
                self.site(method)
            ))
        })
    }

    /// Awaits async method `method` of the dependency, in the caller's generation: polled by
    /// the host within the polls of the caller's own async call.
    fn call_async<A, R>(
        &self,
        method: u32,
        args: A,
    ) -> impl core::future::Future<Output = Result<R, Error>> + Send
    where
        A: Serialize + Send,
        R: DeserializeOwned + Send,
    {
        let request = wire::to_vec(&args)
            .map_err(|e| {
                Error::msg(format!(
                    "arguments to `{}` did not encode: {e}",
                    self.plugin
                ))
            })
            .and_then(|args| {
                wire::to_vec(&DependencyCall {
                    plugin: self.plugin.clone(),
                    interface: self.interface.into(),
                    hash: self.hash,
                    method,
                    args,
                })
                .map_err(|e| Error::msg(format!("a service request did not encode: {e}")))
            });
        crate::future::HostCall::<R>::new(
            self.host,
            self.site(method),
            service::ASYNC_DEPENDENCY,
            request,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first host table of ABI v1, from before services: it ends after `log`.
    #[repr(C)]
    struct OldHostApi {
        size: usize,
        ctx: *const c_void,
        log: LogFn,
    }

    /// A host `log` that drops every line.
    ///
    /// # Safety
    ///
    /// None: it reads nothing.
    unsafe extern "C" fn log_nothing(_: *const c_void, _: u32, _: *const u8, _: usize) {}

    #[test]
    fn a_host_older_than_services_gets_a_clear_error_and_no_read_past_its_table() {
        let old = OldHostApi {
            size: core::mem::size_of::<OldHostApi>(),
            ctx: core::ptr::null(),
            log: log_nothing,
        };
        // SAFETY: a valid table of `size` bytes with the first table's fields.
        let host = unsafe { Host::from_raw((&old as *const OldHostApi).cast::<HostApi>()) };
        assert!(host.service.is_none());
        let err = host.vault().get::<u64>("k").expect_err("no services");
        assert!(err.message().contains("older than this plugin"), "{err:?}");
        host.info("logging still works");
    }
}
