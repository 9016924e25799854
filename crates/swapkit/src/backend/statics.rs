//! The static backend: a plugin crate linked into the host as an ordinary dependency.
//!
//! The plugin's `export_plugin!` defines `pub static SWAPKIT_PLUGIN`; the host registers it
//! with [`SwapperBuilder::static_plugin`](crate::SwapperBuilder::static_plugin). From there it
//! runs through the same entry points, checks and Swapper as a native plugin. This is for
//! debuggers, tests, and platforms without a dynamic loader. Static code cannot change, so a
//! static swapper refuses to reload or roll back.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use swapkit_abi::PluginHeader;

use super::{BackendKind, Code};
use crate::error::LoadError;

/// Checks a linked-in plugin header and reads its manifest.
pub(crate) fn code(header: &'static PluginHeader) -> Result<Arc<Code>, LoadError> {
    let provisional = format!("static plugin at {:p}", header as *const PluginHeader);
    // SAFETY: `header` is a `'static` reference to a header linked into this binary, so it is
    // readable for the life of the process and, being compiled by our own toolchain against
    // swapkit-guest, a valid header whenever its prefix matches.
    let mut code = unsafe { Code::from_header(header, BackendKind::Static, [0; 32], provisional)? };
    let mut hash = Sha256::new();
    hash.update(code.manifest.crate_name.as_bytes());
    hash.update([0]);
    hash.update(code.manifest.version.as_bytes());
    code.content_hash = hash.finalize().into();
    code.origin = format!("static:{}", code.manifest.crate_name);
    Ok(Arc::new(code))
}
