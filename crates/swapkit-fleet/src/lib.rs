//! Fleet rollout for swapkit hosts, coordinated through etcd.
//!
//! A service that runs as many processes on many hosts is updated by one rollout, not one
//! `swapkit reload` per host. Each host runs an **agent** ([`FleetExt::fleet`]); a
//! **controller** ([`Controller`], behind `swapkit fleet ...`) publishes releases and moves
//! a rollout through its steps: a canary host, then shares of the hosts and of their traffic,
//! each held for an analysis window and gated on what the hosts report. Because each host
//! swaps in about a millisecond, a gated rollout across a fleet takes seconds, and a
//! fleet-wide rollback well under one.
//!
//! Everything lives in etcd under `/swapkit/<service>/`:
//!
//! | key | value |
//! |---|---|
//! | `release/<id>` | a [`Release`]: per plugin its version, SHA-256, signature and URL |
//! | `rollout` | the [`Rollout`]: release, stable release, [`Plan`], step, hosts, phase |
//! | `hosts/<host>` | each host's [`Report`], under a lease: gone when the host is |
//!
//! ```no_run
//! use swapkit_fleet::{FleetConfig, FleetExt};
//! let swapper = swapkit::Swapper::builder()
//!     .state_dir("/var/lib/pricing/swapkit")
//!     .fleet(FleetConfig::new(["127.0.0.1:2379"], "pricing", "host-1").label("zone", "a"))
//!     .build()?;
//! swapper.resume("/opt/pricing/plugins")?; // its known-good, then what the fleet asks
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod access;
mod agent;
mod controller;
mod fetch;
mod model;
mod signed;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use access::{controller_role, grant_controller, grant_host, host_role, EtcdAccess};
pub use controller::{Controller, Progress};
pub use fetch::{
    serve, sha256_file, Deadlines, Server, MAX_CONNECTIONS, SERVE_DEADLINE, SERVE_IO_DEADLINE,
};
pub use model::{
    Artifact, CanaryCounts, Desire, Hosts, Phase, Plan, Release, Report, Rollout, Serving, Step,
};
pub use signed::{Instruction, Refusal, RolloutRecord, ROLLOUT_KIND};

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// etcd could not be reached or refused a request.
    #[error("etcd: cannot {doing}: {source}; {hint}")]
    Etcd {
        doing: String,
        #[source]
        source: etcd_client::Error,
        /// What to check, from what etcd said.
        hint: &'static str,
    },
    /// A value in etcd is not what this version of swapkit-fleet writes.
    #[error("the value at {key} in etcd does not read as swapkit-fleet's: {reason}")]
    Corrupt { key: String, reason: String },
    /// Another writer got there first, or the request does not fit the rollout's state.
    #[error("{0}")]
    Conflict(String),
    /// A release that cannot be run as published.
    #[error("{0}")]
    BadRelease(String),
    /// An artifact could not be fetched.
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    /// A fetched artifact is not the one published. `found` is the digest of what was
    /// downloaded; it is `None` for a local file, whose digest is never disclosed.
    #[error(
        "{url} is not the artifact published: {}, the release says {expected}; nothing was loaded",
        .found.as_deref().map_or("its content differs".to_owned(), |f| format!("its SHA-256 is {f}"))
    )]
    HashMismatch {
        url: String,
        expected: String,
        found: Option<String>,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The host refused to load the release.
    #[error(transparent)]
    Load(#[from] swapkit::LoadError),
    /// The rollout in etcd is not one the operator's key signed, or is older than one
    /// already followed. A host keeps what it runs; a controller acts on it only by starting
    /// a new rollout over it.
    #[error(
        "{refusal}; nothing was changed (start a new rollout with the operator key to replace it)"
    )]
    Refused {
        /// Why.
        refusal: Refusal,
    },
}

/// How a host joins its service's fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub(crate) access: EtcdAccess,
    pub(crate) operator: Option<swapkit::trust::PublicKey>,
    pub(crate) service: String,
    pub(crate) host: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) cache_dir: Option<PathBuf>,
    pub(crate) local_root: Option<PathBuf>,
    pub(crate) deadlines: Deadlines,
    pub(crate) report_every: Duration,
    pub(crate) lease_ttl_s: i64,
}

impl FleetConfig {
    /// Joins `service` as `host` (unique in the service), through the etcd cluster at
    /// `endpoints` (`127.0.0.1:2379` or `http://...`).
    pub fn new<E: Into<String>>(
        endpoints: impl IntoIterator<Item = E>,
        service: &str,
        host: &str,
    ) -> FleetConfig {
        FleetConfig {
            access: EtcdAccess::new(endpoints),
            operator: None,
            service: service.to_owned(),
            host: host.to_owned(),
            labels: BTreeMap::new(),
            cache_dir: None,
            local_root: None,
            deadlines: Deadlines::default(),
            report_every: Duration::from_millis(200),
            lease_ttl_s: 2,
        }
    }

    /// Reaches etcd through `access` (its endpoints replace those given to
    /// [`new`](Self::new)): a user of the host's own role ([`grant_host`]), and TLS.
    pub fn etcd(mut self, access: EtcdAccess) -> FleetConfig {
        self.access = access;
        self
    }

    /// Follows only rollouts the operator's `key` signed (`swapkit fleet ... --operator-key`),
    /// each numbered above the last this host followed (kept in its fleet cache directory, so
    /// a restart does not forget it). A rollout record that is unsigned, forged, signed for
    /// another service, older than one followed, or whose release records changed after it was
    /// signed is refused and reported, and the host keeps what it runs. Such a signed rollout
    /// is also what lets the host move down to an older release (a rollback); without an
    /// operator key the host loads releases under its rollback protection, so no etcd writer
    /// can take it back to an older version.
    pub fn operator_key(mut self, key: swapkit::trust::PublicKey) -> FleetConfig {
        self.operator = Some(key);
        self
    }

    /// A label reported with the host (`zone`, `rack`, ...).
    pub fn label(mut self, key: &str, value: &str) -> FleetConfig {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Where fetched artifacts are kept, one directory per content. It must be private to
    /// the host's user (made 0700; refused if it is a link, another user's, or writable by
    /// others): what it holds becomes code. By default `fleet-cache` in the swapper's state
    /// directory, or without one `$XDG_CACHE_HOME/swapkit/fleet/<service>-<host>` (or under
    /// `~/.cache`). Each cached file is hashed again before it is used.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> FleetConfig {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Allows releases whose artifact URLs are local paths (`fleet publish` without
    /// `--base-url`), for those under `root` only, after links are resolved. Without it a
    /// local path is refused: a release could otherwise make the host read any file it can.
    pub fn local_artifacts(mut self, root: impl Into<PathBuf>) -> FleetConfig {
        self.local_root = Some(root.into());
        self
    }

    /// How long an artifact download may take ([`Deadlines`]: 10 s to connect, 30 s without
    /// a byte, 300 s in all, by default).
    pub fn fetch_deadlines(mut self, deadlines: Deadlines) -> FleetConfig {
        self.deadlines = deadlines;
        self
    }

    /// How often the host reports (and renews its lease); 200 ms by default.
    pub fn report_every(mut self, every: Duration) -> FleetConfig {
        self.report_every = every;
        self
    }

    /// How long a host that stops reporting stays listed: its lease's time to live, in
    /// seconds (2 by default).
    pub fn lease_ttl(mut self, seconds: i64) -> FleetConfig {
        self.lease_ttl_s = seconds.max(1);
        self
    }
}

/// Adds [`fleet`](FleetExt::fleet) to [`swapkit::SwapperBuilder`].
pub trait FleetExt {
    /// Runs a fleet agent in this host: it follows the service's rollout in etcd, fetches,
    /// checks (hash, then the host's trust policy) and loads the release the host should
    /// run, and reports what it serves. Load the host's own selection as usual (`resume`
    /// from its state directory is best); the agent starts from there.
    fn fleet(self, config: FleetConfig) -> Self;
}

impl FleetExt for swapkit::SwapperBuilder {
    fn fleet(self, config: FleetConfig) -> Self {
        self.extend(agent::Agent { config })
    }
}
