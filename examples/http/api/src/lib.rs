//! The interface the http example's server and its shop plugins share: the server owns the
//! sockets, HTTP and the database connections, the plugins own the business logic (routing
//! rules, pricing, carts, the page), awaiting the database through services the server offers.

pub mod page;

/// Answers the shop's requests. A request is two calls, with a database query of the server's
/// between them: [`handle`](Shop::handle), then [`render`](Shop::render).
#[swapkit_abi::interface]
pub trait Shop {
    /// The first half of `GET path` for `user`: records the visit in the database (awaiting
    /// the server's `db.visit`) and answers it, awaiting more of the database where the route
    /// needs it (`db.visits`, `db.add_to_cart`). Returns the status, the answer (a JSON value),
    /// the id of the visit's row (negative if none was written) and the version answering.
    async fn handle(&self, path: String, user: String) -> (u16, String, i64, String);
    /// The second half: the page for `answer`, given the version that handled it and the
    /// version its visit's row records (see [`page`]).
    async fn render(&self, answer: String, handled: String, row: String) -> String;
    /// The version of the plugin answering.
    fn version(&self) -> String;
}
