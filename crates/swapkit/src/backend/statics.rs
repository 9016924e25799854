//! The static backend: a plugin crate linked into the host as an ordinary dependency.
//!
//! The plugin's `export_plugin!` defines `pub static SWAPKIT_PLUGIN`; the host registers it
//! with [`SwapperBuilder::static_plugin`](crate::SwapperBuilder::static_plugin). From there it
//! runs through the same entry points, checks and Swapper as a native plugin. This is for
//! debuggers, tests, and platforms without a dynamic loader. Static code cannot change, so a
//! static swapper refuses to reload or roll back.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use swapkit_abi::{PluginHeader, StaticHeader};

use super::{BackendKind, Code};
use crate::error::LoadError;

/// A header linked into the host: where it is, and how many bytes its type holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StaticPlugin {
    header: *const PluginHeader,
    room: usize,
}

// SAFETY: the address of an immutable `'static` header.
unsafe impl Send for StaticPlugin {}
// SAFETY: as above.
unsafe impl Sync for StaticPlugin {}

impl StaticPlugin {
    /// The header `header`, a v1 header or one with the lane extension.
    pub fn of<H: StaticHeader>(header: &'static H) -> StaticPlugin {
        StaticPlugin {
            header: header.as_header_ptr(),
            room: std::mem::size_of::<H>(),
        }
    }
}

/// Checks a linked-in plugin header and reads its manifest.
pub(crate) fn code(plugin: StaticPlugin) -> Result<Arc<Code>, LoadError> {
    let provisional = format!("static plugin at {:p}", plugin.header);
    // SAFETY: `header` comes from a `'static` reference to a header linked into this binary,
    // valid for the whole object (`room` bytes), so it is readable for the life of the
    // process and, being compiled by our own toolchain against swapkit-guest, a valid header
    // whenever its prefix matches.
    let mut code = unsafe {
        Code::from_header(
            plugin.header,
            Some(plugin.room),
            BackendKind::Static,
            [0; 32],
            provisional,
        )?
    };
    let mut hash = Sha256::new();
    hash.update(code.manifest.crate_name.as_bytes());
    hash.update([0]);
    hash.update(code.manifest.version.as_bytes());
    code.content_hash = hash.finalize().into();
    code.origin = format!("static:{}", code.manifest.crate_name);
    Ok(Arc::new(code))
}
