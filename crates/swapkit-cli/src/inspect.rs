//! `swapkit inspect`: what a load would check, in words.

use std::path::Path;

use swapkit::abi::LiveKind;

use crate::Error;

pub(crate) fn run(path: &Path, json: bool) -> Result<(), Error> {
    let artifact = match swapkit::inspect(path) {
        Ok(artifact) => artifact,
        Err(e) if json => {
            // A script asked for JSON: it gets JSON on stdout for a bad artifact too, and the
            // exit status says it failed.
            println!("{}", serde_json::to_string_pretty(&error_json(path, &e))?);
            return Err(Reported(e).into());
        }
        Err(e) => return Err(e.into()),
    };
    let m = &artifact.manifest;
    if json {
        let value = serde_json::json!({
            "path": artifact.path,
            "backend": artifact.backend.to_string(),
            "sha256": artifact.sha256,
            "size": artifact.size,
            "signature": "unsigned",
            "manifest": m,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("{}", artifact.path.display());
    println!("  plugin       {} {}", m.name, m.version);
    println!("  crate        {}", m.crate_name);
    println!("  backend      {}", artifact.backend);
    println!("  sha256       {}", artifact.sha256);
    println!("  size         {} bytes", artifact.size);
    println!(
        "  abi          v{} (this swapkit speaks v{})",
        m.abi_version,
        swapkit::abi::ABI_VERSION
    );
    println!(
        "  fingerprint  {} | {} | swapkit-abi {} (matches this build)",
        m.fingerprint[0], m.fingerprint[1], m.fingerprint[2]
    );
    println!("  signature    none: the artifact is unsigned (swapkit checks content hashes, not signatures)");
    println!(
        "  interfaces   {}",
        if m.interfaces.is_empty() { "none" } else { "" }
    );
    for i in &m.interfaces {
        println!("    {} (hash {:016x})", i.name, i.hash);
        // The text the hash is taken over: compare it with the host's to explain a mismatch.
        println!("      signature: {}", i.signature);
        for method in &i.methods {
            println!("      {method}");
        }
    }
    if !m.dependencies.is_empty() {
        println!("  dependencies");
        for d in &m.dependencies {
            let uses: Vec<&str> = d.interfaces.iter().map(|(n, _)| n.as_str()).collect();
            println!(
                "    {} (uses {})",
                d.plugin,
                if uses.is_empty() {
                    "-".into()
                } else {
                    uses.join(", ")
                }
            );
        }
    }
    if !m.live.is_empty() {
        println!("  live exports");
        for l in &m.live {
            let kind = match l.kind {
                LiveKind::Function => "fn",
                LiveKind::Factory => "factory",
            };
            println!("    {kind} {} {}", l.name, l.signature);
        }
    }
    if !m.patches.is_empty() {
        println!("  patches");
        for p in &m.patches {
            println!("    {} {}", p.target, p.signature);
        }
    }
    Ok(())
}

/// `{"path", "error": {"kind", "message", "causes"}}` for an artifact that did not inspect.
fn error_json(path: &Path, e: &swapkit::LoadError) -> serde_json::Value {
    let debug = format!("{e:?}");
    let kind: String = debug.chars().take_while(|c| c.is_alphanumeric()).collect();
    let mut causes = vec![];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    serde_json::json!({
        "path": path,
        "error": { "kind": kind, "message": e.to_string(), "causes": causes },
    })
}

/// An error already reported on stdout as JSON; the CLI still prints it to stderr and fails.
#[derive(Debug)]
struct Reported(swapkit::LoadError);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Reported {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
