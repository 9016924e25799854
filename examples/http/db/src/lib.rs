//! The http example's database, shared by its service (`http-host`) and its load bench
//! (`http-bench`): a throw-away PostgreSQL cluster ([`Cluster`]), the shop's tables and the
//! queries the host offers its plugins as async services ([`Db`]).
//!
//! The cluster is PostgreSQL from the machine (Debian's `postgresql` package; the README's
//! test command installs it), started for one run in a private temporary directory, listening
//! on 127.0.0.1 only with a random password, and run as an unprivileged user (`nobody` when
//! this process is root, as PostgreSQL refuses to run as root). It is stopped and deleted when
//! the [`Cluster`] is dropped.

mod cluster;

use std::sync::atomic::{AtomicUsize, Ordering};

pub use cluster::Cluster;
use tokio_postgres::{Client, NoTls, Statement};

/// The shop's tables. Every request is a visit, recorded with the version of the shop that
/// handled it; a cart line keeps the version that last changed it.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS visits (
    id bigserial PRIMARY KEY,
    user_name text NOT NULL,
    path text NOT NULL,
    version text NOT NULL
);
CREATE INDEX IF NOT EXISTS visits_by_user ON visits (user_name);
CREATE TABLE IF NOT EXISTS carts (
    user_name text NOT NULL,
    sku bigint NOT NULL,
    qty bigint NOT NULL,
    version text NOT NULL,
    PRIMARY KEY (user_name, sku)
);
";

/// Connections to the shop's database: a few, used in turn (each pipelines the queries of
/// every task that uses it), each with the shop's queries prepared once.
pub struct Db {
    clients: Vec<(Client, Queries)>,
    next: AtomicUsize,
}

/// The shop's queries, prepared on one connection: a query then takes one round trip, not a
/// parse and an execute.
struct Queries {
    visit: Statement,
    visit_version: Statement,
    visits: Statement,
    add_to_cart: Statement,
}

impl Queries {
    async fn prepare(client: &Client) -> Result<Queries, tokio_postgres::Error> {
        Ok(Queries {
            visit: client
                .prepare(
                    "INSERT INTO visits (user_name, path, version) VALUES ($1, $2, $3) \
                     RETURNING id",
                )
                .await?,
            visit_version: client
                .prepare("SELECT version FROM visits WHERE id = $1")
                .await?,
            visits: client
                .prepare("SELECT count(*) FROM visits WHERE user_name = $1")
                .await?,
            add_to_cart: client
                .prepare(
                    "INSERT INTO carts (user_name, sku, qty, version) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (user_name, sku) \
                     DO UPDATE SET qty = carts.qty + EXCLUDED.qty, version = EXCLUDED.version \
                     RETURNING qty",
                )
                .await?,
        })
    }
}

impl Db {
    /// Connects `connections` times to the database `config` names (a libpq-style string such
    /// as [`Cluster::config`]) and creates the shop's tables if they are missing. Must run on a
    /// tokio runtime: each connection is a task on it.
    pub async fn connect(config: &str, connections: usize) -> Result<Db, String> {
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            let (client, connection) = tokio_postgres::connect(config, NoTls)
                .await
                .map_err(|e| format!("cannot connect to the database: {e}"))?;
            tokio::spawn(async move {
                // A connection the server closed (it stopped) shows in the queries that
                // meet it; others are worth a line.
                if let Err(e) = connection.await.map_err(|e| (e.is_closed(), e)) {
                    if !e.0 {
                        eprintln!("http-db: a database connection failed: {}", e.1);
                    }
                }
            });
            if clients.is_empty() {
                client
                    .batch_execute(SCHEMA)
                    .await
                    .map_err(|e| format!("cannot create the shop's tables: {e}"))?;
            }
            let queries = Queries::prepare(&client)
                .await
                .map_err(|e| format!("cannot prepare the shop's queries: {e}"))?;
            clients.push((client, queries));
        }
        Ok(Db {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// The next connection, and its prepared queries.
    fn client(&self) -> (&Client, &Queries) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let (client, queries) = &self.clients[i];
        (client, queries)
    }

    /// Records a visit of `user` to `path`, handled by shop `version`; the visit's id.
    pub async fn visit(&self, user: &str, path: &str, version: &str) -> Result<i64, String> {
        let (client, q) = self.client();
        let row = client
            .query_one(&q.visit, &[&user, &path, &version])
            .await
            .map_err(|e| format!("cannot record the visit: {e}"))?;
        Ok(row.get(0))
    }

    /// The version of the shop that recorded visit `id`.
    pub async fn visit_version(&self, id: i64) -> Result<String, String> {
        let (client, q) = self.client();
        let row = client
            .query_opt(&q.visit_version, &[&id])
            .await
            .map_err(|e| format!("cannot read visit {id}: {e}"))?;
        row.map(|r| r.get(0))
            .ok_or_else(|| format!("no visit {id} in the database"))
    }

    /// How many visits `user` made.
    pub async fn visits(&self, user: &str) -> Result<u64, String> {
        let (client, q) = self.client();
        let row = client
            .query_one(&q.visits, &[&user])
            .await
            .map_err(|e| format!("cannot count the visits: {e}"))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Adds `qty` of item `sku` to `user`'s cart, as shop `version`; how many are in it now.
    pub async fn add_to_cart(
        &self,
        user: &str,
        sku: u64,
        qty: u64,
        version: &str,
    ) -> Result<u64, String> {
        let (sku, qty) = (sku as i64, qty as i64);
        let (client, q) = self.client();
        let row = client
            .query_one(&q.add_to_cart, &[&user, &sku, &qty, &version])
            .await
            .map_err(|e| format!("cannot add to the cart: {e}"))?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}
