//! Rollback protection, as The Update Framework defines it: under a trust policy, a release
//! never moves a plugin to a lower version than the highest one this host has published,
//! unless the operator asks for it (a rollback, a resume of the known-good selection, or
//! [`Swapper::downgrade`](crate::Swapper::downgrade)). Otherwise an attacker holding an old,
//! validly signed release with a known bug could put it back by dropping it in the plugin
//! directory. The highest versions are kept in the state directory, so a restart remembers
//! them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use semver::Version;

use crate::backend::Code;
use crate::error::LoadError;
use crate::persist::StateDir;

const FILE: &str = "highest-versions.json";

/// The highest version of each plugin this host has published.
#[derive(Default)]
pub(crate) struct Highest {
    seen: BTreeMap<String, Version>,
    file: Option<PathBuf>,
}

impl Highest {
    /// What the state directory remembers, if there is one.
    pub fn open(dir: Option<&StateDir>) -> Highest {
        let file = dir.map(|d| d.path().join(FILE));
        let seen = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|text| serde_json::from_slice::<BTreeMap<String, String>>(&text).ok())
            .map(|m| {
                m.into_iter()
                    .filter_map(|(k, v)| Some((k, Version::parse(&v).ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        Highest { seen, file }
    }

    /// Refuses the first plugin of `codes` whose version is not semver (it could not be
    /// ordered, so it would pass rollback protection whatever it is), or, unless `downgrade`,
    /// is lower than the highest seen. Semver's order: numbers compare as numbers, and a
    /// pre-release (`2.0.0-rc.1`) sits below its release; build metadata (`+abc`) is ignored,
    /// so `1.0.0+b` is neither above nor below `1.0.0`.
    pub fn check(&self, codes: &[Arc<Code>], downgrade: bool) -> Result<(), LoadError> {
        for code in codes {
            let version = Version::parse(&code.version).map_err(|e| LoadError::Unversioned {
                plugin: code.name.to_string(),
                version: code.version.to_string(),
                reason: e.to_string(),
            })?;
            let Some(highest) = self.seen.get(&*code.name).filter(|_| !downgrade) else {
                continue;
            };
            if version.cmp_precedence(highest).is_lt() {
                return Err(LoadError::Downgrade {
                    plugin: code.name.to_string(),
                    version: code.version.to_string(),
                    highest: highest.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Raises the highest versions to those of `codes`, just published, and saves them.
    pub fn record(&mut self, codes: &[Arc<Code>]) {
        let mut changed = false;
        for code in codes {
            let Ok(version) = Version::parse(&code.version) else {
                continue;
            };
            let higher = self
                .seen
                .get(&*code.name)
                .is_none_or(|h| version.cmp_precedence(h).is_gt());
            if higher {
                self.seen.insert(code.name.to_string(), version);
                changed = true;
            }
        }
        let Some(file) = self.file.as_ref().filter(|_| changed) else {
            return;
        };
        let text: BTreeMap<&str, String> = self
            .seen
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect();
        let written = serde_json::to_vec_pretty(&text)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::persist::write_atomic(file, &bytes));
        if let Err(e) = written {
            tracing::error!(error = %e, file = %file.display(), "cannot save the highest versions published; a restart may accept an older release");
        }
    }
}
