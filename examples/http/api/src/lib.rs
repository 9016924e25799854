//! The interface the http example's server and its shop plugins share: the server owns the
//! sockets and HTTP, the plugins own the business logic (routing rules, pricing, the page).

/// Answers the shop's requests.
#[swapkit_abi::interface]
pub trait Shop {
    /// Answers `GET path` for `user`: the status code and the JSON body.
    fn handle(&self, path: &str, user: &str) -> (u16, String);
    /// The version of the plugin answering.
    fn version(&self) -> String;
}
