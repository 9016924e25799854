//! The swapkit admin protocol, and a blocking client for it.
//!
//! A host that enables its admin endpoint (`SwapperBuilder::admin_socket`) listens on a Unix
//! socket made with mode 0600, and serves only peers whose uid is on its allow list. The
//! protocol is JSON lines: each request is one line, each reply is one line, and both carry
//! the protocol version `v`, so that a client and a host of different releases refuse each
//! other clearly instead of misreading each other.
//!
//! ```text
//! → {"v":1,"op":"status"}
//! ← {"v":1,"ok":{"status":{"generation":3, ...}}}
//! → {"v":1,"op":"rollback","to":"greeter@1.0.0"}
//! ← {"v":1,"error":{"kind":"load","message":"no kept generation has ..."}}
//! ```
//!
//! The client is what the `swapkit` CLI uses:
//!
//! ```no_run
//! use swapkit_admin::{Client, Request, Outcome};
//! let mut client = Client::connect("/run/my-service/admin.sock")?;
//! if let Outcome::Status(status) = client.request(&Request::Status)? {
//!     println!("generation {}", status.generation);
//! }
//! # Ok::<(), swapkit_admin::ClientError>(())
//! ```

#![deny(missing_docs)]

mod client;
mod proto;

pub use client::{Client, ClientError};
pub use proto::*;
