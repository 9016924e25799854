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

/// The list price of an item, in cents.
fn list_price(sku: u64) -> u64 {
    100 + sku % 50
}

impl Shop {
    fn price(&self, sku: &str, query: &str) -> (u16, String) {
        let Ok(sku) = sku.parse::<u64>() else {
            return (404, format!(r#"{{"error":"no item {sku}"}}"#));
        };
        let qty = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("qty="))
            .and_then(|q| q.parse::<u64>().ok())
            .unwrap_or(1);
        let mut cents = list_price(sku) * qty;
        if qty >= 5 {
            cents -= cents * DISCOUNT / 100;
        }
        let version = env!("CARGO_PKG_VERSION");
        (
            200,
            format!(r#"{{"sku":{sku},"qty":{qty},"cents":{cents},"version":"{version}"}}"#),
        )
    }

    fn visit(&self, user: &str) -> (u16, String) {
        // The count lives in the host's Vault: it survives every swap.
        let key = format!("shop/visits/{user}");
        match self
            .host
            .vault()
            .update(&key, |n: Option<u64>| n.unwrap_or(0) + 1)
        {
            Ok(n) => (200, format!(r#"{{"user":"{user}","visits":{n}}}"#)),
            Err(e) => (503, format!(r#"{{"error":"{}"}}"#, e.message())),
        }
    }
}

impl http_api::Shop for Shop {
    fn handle(&self, path: &str, user: &str) -> (u16, String) {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        match path.trim_start_matches('/').split('/').collect::<Vec<_>>()[..] {
            ["price", sku] => self.price(sku, query),
            ["visits"] => self.visit(user),
            _ => (404, format!(r#"{{"error":"no route {path}"}}"#)),
        }
    }

    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }
}

swapkit_guest::export_plugin! {
    plugin: Shop,
    name: "shop",
    interfaces: [http_api::Shop],
}
