//! The fleet's keys in etcd, read and written as JSON. Every change to the rollout is a
//! transaction on its revision, so two controllers can never both move it.

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, WatchOptions, WatchStream,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::access::EtcdAccess;
use crate::model::{Release, Report};
use crate::signed::{release_digest, RolloutRecord};
use crate::FleetError;

/// A connection to etcd, scoped to one service's keys.
pub struct Store {
    client: Client,
    prefix: String,
}

impl Store {
    /// Connects through `access`, for `service`.
    pub async fn connect(access: &EtcdAccess, service: &str) -> Result<Store, FleetError> {
        Ok(Store {
            client: access.connect().await?,
            prefix: format!("/swapkit/{service}/"),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The rollout record (not yet verified) and its revision, if there is one.
    pub async fn rollout(&mut self) -> Result<Option<(RolloutRecord, i64)>, FleetError> {
        let key = self.key("rollout");
        let Some((value, revision)) = self.raw(&key).await? else {
            return Ok(None);
        };
        Ok(Some((RolloutRecord::parse(&key, &value)?, revision)))
    }

    /// A published release.
    pub async fn release(&mut self, id: &str) -> Result<Option<Release>, FleetError> {
        Ok(self.release_and_digest(id).await?.map(|(r, _)| r))
    }

    /// A published release, and the SHA-256 of its record as stored.
    pub async fn release_and_digest(
        &mut self,
        id: &str,
    ) -> Result<Option<(Release, String)>, FleetError> {
        let key = self.key(&format!("release/{id}"));
        let Some((value, _)) = self.raw(&key).await? else {
            return Ok(None);
        };
        let release = serde_json::from_slice(&value).map_err(|e| FleetError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some((release, release_digest(&value))))
    }

    /// The bytes at `key` and their revision.
    async fn raw(&mut self, key: &str) -> Result<Option<(Vec<u8>, i64)>, FleetError> {
        let response = self
            .client
            .get(key, None)
            .await
            .map_err(|e| etcd(&format!("read {key}"), e))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// Every published release.
    pub async fn releases(&mut self) -> Result<Vec<Release>, FleetError> {
        self.values("release/").await
    }

    /// Every live host's report.
    pub async fn reports(&mut self) -> Result<Vec<Report>, FleetError> {
        self.values("hosts/").await
    }

    /// The values of every key under `rest`, decoded.
    async fn values<T: DeserializeOwned>(&mut self, rest: &str) -> Result<Vec<T>, FleetError> {
        let key = self.key(rest);
        Ok(self
            .get_all(&key, true)
            .await?
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    /// Publishes `release` under its id, once: the same id again is refused unless it is the
    /// same release.
    pub async fn publish(&mut self, release: &Release) -> Result<(), FleetError> {
        let key = self.key(&format!("release/{}", release.id));
        let value = json(release)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        if self.txn(txn, "publish a release").await? {
            return Ok(());
        }
        match self.release(&release.id).await? {
            Some(existing) if existing == *release => Ok(()),
            _ => Err(FleetError::Conflict(format!(
                "release `{}` is already published with other artifacts; publish this one \
                 under another id",
                release.id
            ))),
        }
    }

    /// Replaces the rollout if its revision is still `revision` (0: if there is none).
    /// False if another writer got there first.
    pub async fn swap_rollout(
        &mut self,
        revision: i64,
        record: &RolloutRecord,
    ) -> Result<bool, FleetError> {
        let key = self.key("rollout");
        let compare = if revision == 0 {
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)
        };
        let txn =
            Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key.as_str(), record.to_json(), None)]);
        self.txn(txn, "write the rollout").await
    }

    /// Writes this host's report, tied to `lease`.
    pub async fn report(&mut self, report: &Report, lease: i64) -> Result<(), FleetError> {
        let key = self.key(&format!("hosts/{}", report.host));
        self.client
            .put(
                key,
                json(report)?,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| etcd("write the host's report", e))?;
        Ok(())
    }

    /// A lease that expires `ttl` seconds after the last keep-alive.
    pub async fn lease(&mut self, ttl: i64) -> Result<i64, FleetError> {
        Ok(self
            .client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| etcd("grant a lease", e))?
            .id())
    }

    /// Ends `lease` now, and with it the keys written under it.
    pub async fn revoke(&mut self, lease: i64) -> Result<(), FleetError> {
        self.client
            .lease_revoke(lease)
            .await
            .map_err(|e| etcd("revoke the lease", e))?;
        Ok(())
    }

    /// The stream that renews `lease`: send on the keeper, read the renewal from the stream.
    pub async fn keeper(
        &mut self,
        lease: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), FleetError> {
        self.client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| etcd("keep the lease alive", e))
    }

    /// Watches the service's rollout from `revision` on (0: from now). Only the rollout:
    /// releases never change once published, and a watch on the hosts' reports would wake
    /// every host at every other host's report, each answering with a report of its own.
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream, FleetError> {
        let options = WatchOptions::new().with_start_revision(revision);
        self.client
            .watch(self.key("rollout"), Some(options))
            .await
            .map_err(|e| etcd("watch the rollout", e))
    }

    async fn txn(&mut self, txn: Txn, doing: &str) -> Result<bool, FleetError> {
        Ok(self
            .client
            .txn(txn)
            .await
            .map_err(|e| etcd(doing, e))?
            .succeeded())
    }

    /// The values under `key` (or every key under it as a prefix), decoded, with their
    /// revisions.
    async fn get_all<T: DeserializeOwned>(
        &mut self,
        key: &str,
        prefix: bool,
    ) -> Result<Vec<(T, i64)>, FleetError> {
        let options = prefix.then(|| GetOptions::new().with_prefix());
        let response = self
            .client
            .get(key, options)
            .await
            .map_err(|e| etcd(&format!("read {key}"), e))?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let value =
                    serde_json::from_slice(kv.value()).map_err(|e| FleetError::Corrupt {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        reason: e.to_string(),
                    })?;
                Ok((value, kv.mod_revision()))
            })
            .collect()
    }
}

fn json(value: &impl Serialize) -> Result<Vec<u8>, FleetError> {
    serde_json::to_vec(value).map_err(|e| FleetError::Corrupt {
        key: "(being written)".into(),
        reason: e.to_string(),
    })
}

/// An etcd error while `doing` something.
pub(crate) fn etcd(doing: &str, source: etcd_client::Error) -> FleetError {
    let text = source.to_string();
    let hint = if text.contains("permission denied") {
        "this user's etcd role does not allow it (a host may write only its own report: \
         swapkit_fleet::grant_host)"
    } else if text.contains("authentication failed") || text.contains("invalid auth") {
        "the etcd user or password is wrong"
    } else if text.contains("user name is empty") || text.contains("token") {
        "this etcd requires a user: give one (EtcdAccess::user, --etcd-user)"
    } else {
        "is etcd running at the endpoints given, and do they take TLS only if a CA is given?"
    };
    FleetError::Etcd {
        doing: doing.to_owned(),
        source,
        hint,
    }
}
