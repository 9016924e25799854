//! Checks a set of plugins as a whole and puts it in dependency order.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::Code;
use crate::error::LoadError;

/// Checks that `dependency` exports each interface `code` says it uses from it, with the
/// same hash.
fn check_uses(
    code: &Code,
    uses: &swapkit_abi::Dependency,
    dependency: &Code,
) -> Result<(), LoadError> {
    for (name, hash) in &uses.interfaces {
        let exported = dependency
            .manifest
            .interfaces
            .iter()
            .find(|i| i.name == *name);
        let reason = match exported {
            Some(i) if i.hash == *hash => continue,
            Some(i) => format!(
                "`{}` {} exports it with hash {:#018x}, not {hash:#018x}",
                dependency.name, dependency.version, i.hash
            ),
            None => format!(
                "`{}` {} does not export it",
                dependency.name, dependency.version
            ),
        };
        return Err(LoadError::DependencyInterface {
            plugin: code.name.to_string(),
            dependency: dependency.name.to_string(),
            interface: name.clone(),
            reason,
        });
    }
    Ok(())
}

/// Refuses two plugins exporting a live function, or a live type, of the same name.
fn check_live_names(codes: &[Arc<Code>]) -> Result<(), LoadError> {
    let mut seen: HashMap<(swapkit_abi::LiveKind, &str), &Code> = HashMap::new();
    for code in codes {
        for live in &code.manifest.live {
            if let Some(first) = seen.insert((live.kind, &live.name), code) {
                return Err(LoadError::DuplicateLive {
                    kind: match live.kind {
                        swapkit_abi::LiveKind::Function => "live function",
                        swapkit_abi::LiveKind::Factory => "live type",
                    },
                    name: live.name.clone(),
                    first: first.name.to_string(),
                    second: code.name.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Refuses duplicate plugin and live names, unknown dependencies and cycles, and returns `codes` ordered so
/// that every plugin comes after the plugins it depends on. Ties keep their given order.
pub(crate) fn order(codes: Vec<Arc<Code>>) -> Result<Vec<Arc<Code>>, LoadError> {
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, c) in codes.iter().enumerate() {
        if let Some(&j) = by_name.get(&*c.name) {
            return Err(LoadError::DuplicatePlugin {
                name: c.name.to_string(),
                first: codes[j].origin.clone(),
                second: c.origin.clone(),
            });
        }
        by_name.insert(&c.name, i);
    }
    check_live_names(&codes)?;
    let mut deps: Vec<Vec<usize>> = vec![];
    for c in &codes {
        let mut list = vec![];
        for d in &c.manifest.dependencies {
            match by_name.get(d.plugin.as_str()) {
                Some(&j) => {
                    check_uses(c, d, &codes[j])?;
                    list.push(j)
                }
                None => {
                    return Err(LoadError::UnknownDependency {
                        plugin: c.name.to_string(),
                        dependency: d.plugin.clone(),
                    })
                }
            }
        }
        deps.push(list);
    }

    // Depth-first, with the path kept so a cycle can be named.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        out: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::OnPath => {
                let start = path.iter().position(|&p| p == i).expect("on path");
                let mut cycle = path[start..].to_vec();
                cycle.push(i);
                return Err(cycle);
            }
            Mark::New => {}
        }
        marks[i] = Mark::OnPath;
        path.push(i);
        for &d in &deps[i] {
            visit(d, deps, marks, path, out)?;
        }
        path.pop();
        marks[i] = Mark::Done;
        out.push(i);
        Ok(())
    }

    let mut marks = vec![Mark::New; codes.len()];
    let mut ordered = Vec::with_capacity(codes.len());
    for i in 0..codes.len() {
        visit(i, &deps, &mut marks, &mut vec![], &mut ordered).map_err(|cycle| {
            LoadError::DependencyCycle {
                cycle: cycle.iter().map(|&c| codes[c].name.to_string()).collect(),
            }
        })?;
    }
    Ok(ordered.into_iter().map(|i| codes[i].clone()).collect())
}
