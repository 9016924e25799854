//! `jobs` v2: the bodies of the example's jobs, exported as live functions. The plugin counts
//! the reminders it sent, and hands the count to the next version as live data.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use swapkit_guest::{Error, Host, LiveData, Plugin};

/// The live data of this plugin: schema 2 adds `last_user`. It has a default, so v2 reads
/// v1's count with no migration code, and v1 reads v2's after a rollback.
#[derive(Serialize, Deserialize, Default)]
struct Sent {
    total: u64,
    #[serde(default)]
    last_user: u64,
}

/// The plugin's own state. Each loaded copy of the plugin (each version) has its own; `save`
/// and `migrate` carry it from one to the next.
static SENT: Mutex<Sent> = Mutex::new(Sent {
    total: 0,
    last_user: 0,
});

/// The plugin instance.
pub struct Jobs;

impl Plugin for Jobs {
    fn on_load(_: &Host) -> Result<Self, Error> {
        Ok(Jobs)
    }

    fn save(&self, _: &Host) -> Result<Option<LiveData>, Error> {
        Ok(Some(LiveData::encode("Sent", 2, &*SENT.lock().unwrap())?))
    }

    fn migrate(&self, _: &Host, from: LiveData) -> Result<(), Error> {
        *SENT.lock().unwrap() = from.decode()?;
        Ok(())
    }
}

/// A job body: reminds `user`.
#[swapkit_guest::live]
pub fn send_reminder(user: u64) -> String {
    let mut sent = SENT.lock().unwrap();
    sent.total += 1;
    sent.last_user = user;
    format!(
        "v2 reminded user {user}, with a link this time (reminder #{})",
        sent.total
    )
}

swapkit_guest::export_plugin! {
    plugin: Jobs,
    name: "jobs",
    live: [send_reminder],
}
