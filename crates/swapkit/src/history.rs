//! The selections a swapper keeps for rollback, and how a rollback names one.

use std::str::FromStr;
use std::sync::Arc;

use crate::backend::Code;
use crate::error::LoadError;

/// The artifacts one generation was published with. Holding the loaded code (not paths)
/// is what lets a rollback work after the files on disk were replaced.
#[derive(Clone, Default)]
pub(crate) struct Selection {
    pub generation: u64,
    pub codes: Vec<Arc<Code>>,
}

impl Selection {
    pub fn kept(&self) -> KeptSelection {
        KeptSelection {
            generation: self.generation,
            plugins: self
                .codes
                .iter()
                .map(|c| (c.name.to_string(), c.version.to_string()))
                .collect(),
        }
    }

    fn matches(&self, target: &RollbackTarget) -> bool {
        match target {
            RollbackTarget::Previous => true,
            RollbackTarget::Generation(g) => self.generation == *g,
            RollbackTarget::Version { plugin, version } => self.codes.iter().any(|c| {
                *c.version == **version && plugin.as_deref().is_none_or(|p| *c.name == *p)
            }),
        }
    }
}

/// Finds the newest kept selection that `target` names, as an index into `history`.
pub(crate) fn find(history: &[&Selection], target: &RollbackTarget) -> Result<usize, LoadError> {
    history
        .iter()
        .rposition(|s| s.matches(target))
        .ok_or_else(|| {
            if history.is_empty() {
                return LoadError::NoHistory;
            }
            let kept = history
                .iter()
                .rev()
                .map(|s| s.kept().to_string())
                .collect::<Vec<_>>()
                .join("; ");
            LoadError::NoMatch {
                wanted: target.to_string(),
                kept,
            }
        })
}

/// A selection kept for rollback: the generation it was published as, and its plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSelection {
    /// The generation it was published as.
    pub generation: u64,
    /// Its plugins, as `(name, version)`, dependencies first.
    pub plugins: Vec<(String, String)>,
}

impl std::fmt::Display for KeptSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {}:", self.generation)?;
        for (name, version) in &self.plugins {
            write!(f, " {name}@{version}")?;
        }
        Ok(())
    }
}

/// Which kept selection [`Swapper::rollback_to`](crate::Swapper::rollback_to) returns to.
///
/// Parsed from text, as the CLI's `rollback --to` takes it:
///
/// ```
/// use swapkit::RollbackTarget;
/// let parse = |s: &str| s.parse::<RollbackTarget>().unwrap();
/// assert_eq!(parse("generation:4"), RollbackTarget::Generation(4));
/// assert_eq!(
///     parse("greeter@1.0.0"),
///     RollbackTarget::Version { plugin: Some("greeter".into()), version: "1.0.0".into() }
/// );
/// assert_eq!(
///     parse("1.0.0"),
///     RollbackTarget::Version { plugin: None, version: "1.0.0".into() }
/// );
/// assert!("generation:four".parse::<RollbackTarget>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTarget {
    /// The selection before the current one.
    Previous,
    /// The selection published as this generation.
    Generation(u64),
    /// The newest selection with a plugin of this version (and name, if given).
    Version {
        /// The plugin's name; any plugin if `None`.
        plugin: Option<String>,
        /// The version.
        version: String,
    },
}

impl FromStr for RollbackTarget {
    type Err = LoadError;

    fn from_str(text: &str) -> Result<RollbackTarget, LoadError> {
        let bad = |reason: &str| LoadError::BadRollbackTarget {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let text_ = text.trim();
        if text_.is_empty() || text_ == "previous" {
            return Ok(RollbackTarget::Previous);
        }
        if let Some(n) = text_.strip_prefix("generation:") {
            return n
                .parse()
                .map(RollbackTarget::Generation)
                .map_err(|_| bad("a generation is a number, as in generation:4"));
        }
        match text_.split_once('@') {
            Some((plugin, version)) if !plugin.is_empty() && !version.is_empty() => {
                Ok(RollbackTarget::Version {
                    plugin: Some(plugin.to_owned()),
                    version: version.to_owned(),
                })
            }
            Some(_) => Err(bad("write PLUGIN@VERSION, with both parts")),
            None => Ok(RollbackTarget::Version {
                plugin: None,
                version: text_.to_owned(),
            }),
        }
    }
}

impl std::fmt::Display for RollbackTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RollbackTarget::Previous => f.write_str("the previous selection"),
            RollbackTarget::Generation(g) => write!(f, "generation:{g}"),
            RollbackTarget::Version {
                plugin: Some(p),
                version,
            } => write!(f, "{p}@{version}"),
            RollbackTarget::Version {
                plugin: None,
                version,
            } => write!(f, "version {version}"),
        }
    }
}
