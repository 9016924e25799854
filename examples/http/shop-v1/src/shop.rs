// The shop's business logic, shared by both versions' crates; `DISCOUNT` (percent off from
// five items) is what a release changes.

use swapkit_guest::{Error, Host, Plugin};

/// The plugin instance.
pub struct Shop {
    host: Host,
}

impl Plugin for Shop {
    fn on_load(host: &Host) -> Result<Self, Error> {
        Ok(Shop { host: *host })
    }
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The list price of an item, in cents.
fn list_price(sku: u64) -> u64 {
    100 + sku % 50
}

/// The `qty=` of a query string (1 if none).
fn quantity(query: &str) -> u64 {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("qty="))
        .and_then(|q| q.parse::<u64>().ok())
        .unwrap_or(1)
}

/// An error answer, as JSON.
fn error(message: &str) -> String {
    format!(r#"{{"error":"{}"}}"#, message.replace(['"', '\\'], "'"))
}

impl Shop {
    /// Awaits one of the host's database services: its answer, or a 503 answer.
    async fn db<A: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        service: &str,
        args: &A,
    ) -> Result<R, (u16, String)> {
        let answer: Result<Result<R, String>, Error> =
            self.host.call_async(service, args).await;
        match answer {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err((503, error(&e))),
            Err(e) => Err((503, error(e.message()))),
        }
    }

    fn price(&self, sku: &str, query: &str) -> (u16, String) {
        let Ok(sku) = sku.parse::<u64>() else {
            return (404, error(&format!("no item {sku}")));
        };
        let qty = quantity(query);
        let mut cents = list_price(sku) * qty;
        if qty >= 5 {
            cents -= cents * DISCOUNT / 100;
        }
        (200, format!(r#"{{"sku":{sku},"qty":{qty},"cents":{cents}}}"#))
    }

    async fn route(&self, path: &str, query: &str, user: &str) -> Result<(u16, String), (u16, String)> {
        match path.trim_start_matches('/').split('/').collect::<Vec<_>>()[..] {
            ["price", sku] => Ok(self.price(sku, query)),
            // Every request is a visit, this one included.
            ["visits"] => {
                let n: u64 = self.db("db.visits", &(user,)).await?;
                Ok((200, format!(r#"{{"user":"{user}","visits":{n}}}"#)))
            }
            ["cart", sku] => {
                let Ok(sku) = sku.parse::<u64>() else {
                    return Ok((404, error(&format!("no item {sku}"))));
                };
                let qty = quantity(query);
                let in_cart: u64 = self.db("db.add_to_cart", &(user, sku, qty, VERSION)).await?;
                Ok((200, format!(r#"{{"sku":{sku},"added":{qty},"in_cart":{in_cart}}}"#)))
            }
            _ => Ok((404, error(&format!("no route {path}")))),
        }
    }
}

impl http_api::Shop for Shop {
    async fn handle(&self, path: String, user: String) -> (u16, String, i64, String) {
        let (route, query) = path.split_once('?').unwrap_or((&path, ""));
        let visit: Result<i64, (u16, String)> =
            self.db("db.visit", &(&user, &path, VERSION)).await;
        let answered = match visit {
            Ok(id) => self.route(route, query, &user).await.map(|a| (a, id)),
            Err(e) => Err(e),
        };
        match answered {
            Ok(((status, answer), id)) => (status, answer, id, VERSION.to_owned()),
            Err((status, answer)) => (status, answer, -1, VERSION.to_owned()),
        }
    }

    async fn render(&self, answer: String, handled: String, row: String) -> String {
        http_api::page::render(&answer, [&handled, &row, VERSION])
    }

    fn version(&self) -> String {
        VERSION.to_owned()
    }
}

swapkit_guest::export_plugin! {
    plugin: Shop,
    name: "shop",
    interfaces: [http_api::Shop],
}
