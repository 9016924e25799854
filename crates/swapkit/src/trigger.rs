//! What started a load, reload or rollback.

use std::fmt;

/// What started a load, reload or rollback. Probation and metrics read it as a type: a
/// rollback of any origin is never put on probation, and the metrics label is one of a fixed
/// set of words, never a peer's pid.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// The first load ([`Swapper::load_dir`](crate::Swapper::load_dir) and friends).
    Load,
    /// [`Swapper::reload`](crate::Swapper::reload).
    ApiReload,
    /// [`Swapper::rollback`](crate::Swapper::rollback) or
    /// [`rollback_to`](crate::Swapper::rollback_to).
    ApiRollback,
    /// Auto-rollback of a release that failed its probation.
    AutoRollback,
    /// The file watcher saw the plugin directory settle after a change.
    Watcher,
    /// The configured reload signal arrived.
    Signal {
        /// The signal's name without `SIG`, such as `HUP`.
        name: String,
    },
    /// A reload asked for on the admin socket.
    AdminReload {
        /// The peer's uid.
        uid: u32,
        /// The peer's pid, where the kernel reports it.
        pid: Option<i32>,
    },
    /// [`Swapper::downgrade`](crate::Swapper::downgrade): a load the operator allowed to
    /// go to a lower version.
    Downgrade,
    /// A canary's generation, before it is published (the `before_publish` check sees it).
    CanaryStart,
    /// A canary promoted to the only version of its plugin, by an operator or its gate.
    CanaryPromote,
    /// A rollback asked for on the admin socket.
    AdminRollback {
        /// The peer's uid.
        uid: u32,
        /// The peer's pid, where the kernel reports it.
        pid: Option<i32>,
    },
}

impl Trigger {
    /// Whether this goes back to an earlier selection: such a swap is known-good at once and
    /// never judged on probation.
    pub fn is_rollback(&self) -> bool {
        matches!(
            self,
            Trigger::ApiRollback | Trigger::AutoRollback | Trigger::AdminRollback { .. }
        )
    }

    /// A short fixed word for metrics labels and logs: bounded, whatever the peer.
    pub fn label(&self) -> &'static str {
        match self {
            Trigger::Load => "load",
            Trigger::ApiReload => "reload",
            Trigger::ApiRollback => "rollback",
            Trigger::AutoRollback => "auto-rollback",
            Trigger::Downgrade => "downgrade",
            Trigger::CanaryStart => "canary-start",
            Trigger::CanaryPromote => "canary-promote",
            Trigger::Watcher => "watch",
            Trigger::Signal { .. } => "signal",
            Trigger::AdminReload { .. } => "admin-reload",
            Trigger::AdminRollback { .. } => "admin-rollback",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = |f: &mut fmt::Formatter<'_>, what: &str, uid: u32, pid: Option<i32>| match pid {
            Some(pid) => write!(f, "admin {what} (uid {uid}, pid {pid})"),
            None => write!(f, "admin {what} (uid {uid})"),
        };
        match self {
            Trigger::Signal { name } => write!(f, "signal SIG{name}"),
            Trigger::AdminReload { uid, pid } => peer(f, "reload", *uid, *pid),
            Trigger::AdminRollback { uid, pid } => peer(f, "rollback", *uid, *pid),
            other => f.write_str(other.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollbacks_of_every_origin_are_rollbacks_and_labels_never_carry_a_pid() {
        let admin = Trigger::AdminRollback {
            uid: 1000,
            pid: Some(4242),
        };
        assert!(admin.is_rollback() && Trigger::AutoRollback.is_rollback());
        assert!(!Trigger::AdminReload { uid: 0, pid: None }.is_rollback());
        assert!(!Trigger::Watcher.is_rollback());
        assert_eq!(admin.label(), "admin-rollback");
        assert_eq!(admin.to_string(), "admin rollback (uid 1000, pid 4242)");
        assert_eq!(
            Trigger::Signal { name: "HUP".into() }.to_string(),
            "signal SIGHUP"
        );
    }
}
