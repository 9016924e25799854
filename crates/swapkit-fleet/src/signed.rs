//! The rollout as a signed, numbered instruction, in the manner of The Update Framework's
//! signed, versioned metadata: the controller signs each rollout it writes with the
//! operator's key, numbers it above every one before, and binds it to the exact release
//! records it names; a host that trusts the operator's key runs only what such a record says,
//! and never one numbered below what it has already followed.
//!
//! What an etcd writer without the key can do is therefore limited to withholding: deleting
//! or freezing the rollout leaves every host running what it runs. Writing a rollout
//! (forged), writing back an old one (replayed), or changing a release it names is refused by
//! every host and reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use swapkit::trust::{KeyId, PublicKey, RecordSignature, SecretKey};

use crate::fetch::{create_private, hex, io};
use crate::model::{now_ms, Rollout};
use crate::FleetError;

/// The kind a rollout is signed as (see [`SecretKey::sign_record`]).
pub const ROLLOUT_KIND: &str = "swapkit-fleet rollout v1";

/// What the controller signs: the rollout of one service, numbered, bound to the release
/// records it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instruction {
    /// The service it is for: a record copied from another service's keys is refused.
    pub service: String,
    /// Above every instruction written before it: `max(previous + 1, now in ms)`, so that it
    /// stays above them even if the rollout key was deleted in between.
    pub seq: u64,
    /// What every host should run.
    pub rollout: Rollout,
    /// The SHA-256 (hex) of each release record the rollout names (its release and its
    /// stable release), as stored in etcd: a release rewritten after it is refused.
    pub releases: BTreeMap<String, String>,
}

/// The rollout key's value in etcd: the instruction's exact bytes, and their signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The instruction as JSON: what is signed, byte for byte.
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A rollout record as read from etcd: the instruction, and who signed it, not yet checked.
#[derive(Debug, Clone)]
pub struct RolloutRecord {
    /// What it says.
    pub instruction: Instruction,
    /// The key that signed it, if any.
    pub signer: Option<KeyId>,
    pub(crate) envelope: Envelope,
}

impl RolloutRecord {
    /// Reads the value of the rollout key.
    pub(crate) fn parse(key: &str, value: &[u8]) -> Result<RolloutRecord, FleetError> {
        let corrupt = |reason: String| FleetError::Corrupt {
            key: key.to_owned(),
            reason,
        };
        let envelope: Envelope =
            serde_json::from_slice(value).map_err(|e| corrupt(e.to_string()))?;
        let instruction: Instruction =
            serde_json::from_str(&envelope.body).map_err(|e| corrupt(e.to_string()))?;
        let signer = match &envelope.key {
            Some(k) => Some(k.parse().map_err(|e| corrupt(format!("{e}")))?),
            None => None,
        };
        Ok(RolloutRecord {
            instruction,
            signer,
            envelope,
        })
    }

    /// Makes the record of `instruction`, signed by `key` if there is one.
    pub(crate) fn seal(
        instruction: Instruction,
        key: Option<&SecretKey>,
    ) -> Result<RolloutRecord, FleetError> {
        let body = serde_json::to_string(&instruction).map_err(|e| FleetError::Corrupt {
            key: "(rollout being written)".into(),
            reason: e.to_string(),
        })?;
        let signature = match key {
            Some(key) => Some(
                key.sign_record(ROLLOUT_KIND, body.as_bytes())
                    .map_err(|e| FleetError::BadRelease(format!("cannot sign the rollout: {e}")))?,
            ),
            None => None,
        };
        Ok(RolloutRecord {
            signer: signature.map(|s| s.key),
            envelope: Envelope {
                body,
                key: signature.map(|s| s.key.to_string()),
                signature: signature.map(|s| hex(&s.bytes)),
            },
            instruction,
        })
    }

    /// The value written to etcd.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.envelope).expect("an envelope of strings serializes")
    }

    /// SHA-256 of the signed bytes: what tells two records of one number apart.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(self.envelope.body.as_bytes()))
    }

    /// Checks that `key` signed this record for `service`.
    pub fn verify(&self, key: &PublicKey, service: &str) -> Result<(), Refusal> {
        let (Some(id), Some(signature)) = (&self.envelope.key, &self.envelope.signature) else {
            return Err(Refusal::Unsigned);
        };
        let bytes = unhex64(signature).ok_or(Refusal::Forged {
            reason: "its signature is not 128 hex digits".into(),
        })?;
        let key_id: KeyId = id.parse().map_err(|_| Refusal::Forged {
            reason: format!("its key id `{id}` does not read"),
        })?;
        key.verify_record(
            ROLLOUT_KIND,
            self.envelope.body.as_bytes(),
            &RecordSignature { key: key_id, bytes },
        )
        .map_err(|e| Refusal::Forged {
            reason: e.to_string(),
        })?;
        if self.instruction.service != service {
            return Err(Refusal::OtherService {
                service: self.instruction.service.clone(),
            });
        }
        Ok(())
    }
}

fn unhex64(text: &str) -> Option<[u8; 64]> {
    if text.len() != 128 {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The number of the next instruction after one numbered `previous`.
pub(crate) fn next_seq(previous: Option<u64>) -> Result<u64, FleetError> {
    let after = match previous {
        Some(p) => p.checked_add(1).ok_or_else(|| {
            FleetError::Conflict("the rollout's sequence number is at its largest".into())
        })?,
        None => 1,
    };
    Ok(after.max(now_ms()))
}

/// Why a host did not follow a rollout record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// It carries no signature, and the host trusts only the operator's.
    #[error("the rollout record is unsigned, and this host follows only rollouts signed by its operator key; was it written by something other than `swapkit fleet` with --operator-key?")]
    Unsigned,
    /// Its signature does not verify with the operator's key.
    #[error("the rollout record is forged: {reason}")]
    Forged {
        /// What did not verify.
        reason: String,
    },
    /// It was signed for another service.
    #[error("the rollout record was signed for service `{service}`, not this one")]
    OtherService {
        /// The service it names.
        service: String,
    },
    /// It is numbered below one the host already followed: an old record written back.
    #[error("the rollout record is a replay: its number {seq} is below {highest}, which this host already followed")]
    Replayed {
        /// Its number.
        seq: u64,
        /// The highest the host followed.
        highest: u64,
    },
    /// It has the number of one the host followed, with other content.
    #[error(
        "the rollout record numbered {seq} differs from the one of that number this host followed"
    )]
    Conflicting {
        /// Its number.
        seq: u64,
    },
    /// A release it names is not the record it was signed with.
    #[error("release `{release}` in etcd is not the one the rollout was signed with (its record changed after the rollout was signed)")]
    ReleaseChanged {
        /// The release's id.
        release: String,
    },
}

/// The highest instruction a host followed, kept in its private fleet directory so that a
/// restart does not forget it.
pub(crate) struct Highest {
    path: PathBuf,
    /// Its number and digest.
    pub seen: Option<(u64, String)>,
}

impl Highest {
    pub fn load(dir: &Path) -> Result<Highest, FleetError> {
        let path = dir.join("rollout-seq");
        let seen = match swapkit::read_artifact(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let mut it = text.split_whitespace();
                match (it.next().and_then(|s| s.parse().ok()), it.next()) {
                    (Some(seq), Some(digest)) => Some((seq, digest.to_owned())),
                    _ => {
                        return Err(FleetError::Corrupt {
                            key: path.display().to_string(),
                            reason: "not `SEQ SHA256`".into(),
                        })
                    }
                }
            }
            Err(swapkit::LoadError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => {
                return Err(FleetError::Corrupt {
                    key: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        Ok(Highest { path, seen })
    }

    /// Whether `record` may be followed: numbered above what was followed, or the same one.
    pub fn admits(&self, record: &RolloutRecord) -> Result<(), Refusal> {
        let seq = record.instruction.seq;
        match &self.seen {
            Some((highest, _)) if seq < *highest => Err(Refusal::Replayed {
                seq,
                highest: *highest,
            }),
            Some((highest, digest)) if seq == *highest && *digest != record.digest() => {
                Err(Refusal::Conflicting { seq })
            }
            _ => Ok(()),
        }
    }

    /// Records that `record` is followed, before the host acts on it.
    pub fn advance(&mut self, record: &RolloutRecord) -> Result<(), FleetError> {
        let seen = (record.instruction.seq, record.digest());
        if self.seen.as_ref() == Some(&seen) {
            return Ok(());
        }
        let partial = self.path.with_file_name(".rollout-seq.partial");
        let mut file = create_private(&partial)?;
        std::io::Write::write_all(&mut file, format!("{} {}\n", seen.0, seen.1).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io(&partial, e))?;
        std::fs::rename(&partial, &self.path).map_err(|e| io(&self.path, e))?;
        self.seen = Some(seen);
        Ok(())
    }
}

/// SHA-256 (hex) of a release record's bytes.
pub(crate) fn release_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Phase, Plan};

    fn instruction(seq: u64) -> Instruction {
        Instruction {
            service: "svc".into(),
            seq,
            rollout: Rollout {
                id: 1,
                release: "v2".into(),
                stable: None,
                plan: Plan {
                    steps: Plan::parse_steps("all", 0).unwrap(),
                    deadline_ms: 1000,
                    failure_margin: 0.01,
                    min_calls: 1,
                },
                step: 0,
                targets: None,
                phase: Phase::Running,
                reason: None,
                step_started_ms: 0,
            },
            releases: BTreeMap::from([("v2".into(), "ab".repeat(32))]),
        }
    }

    #[test]
    fn the_highest_record_followed_survives_a_restart_and_refuses_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let seal = |seq| RolloutRecord::seal(instruction(seq), Some(&key)).unwrap();
        let mut highest = Highest::load(dir.path()).unwrap();
        assert_eq!(highest.admits(&seal(5)), Ok(()));
        highest.advance(&seal(5)).unwrap();
        let again = Highest::load(dir.path()).unwrap();
        assert_eq!(again.admits(&seal(5)), Ok(()), "the same record again");
        assert_eq!(
            again.admits(&seal(4)),
            Err(Refusal::Replayed { seq: 4, highest: 5 })
        );
        let mut other = instruction(5);
        other.rollout.phase = Phase::Aborted;
        let other = RolloutRecord::seal(other, Some(&key)).unwrap();
        assert_eq!(again.admits(&other), Err(Refusal::Conflicting { seq: 5 }));
        assert_eq!(again.admits(&seal(6)), Ok(()));

        // Planted by another hand: a link is not followed, junk does not read.
        let planted = tempfile::tempdir().unwrap();
        std::fs::write(planted.path().join("target"), "1 00").unwrap();
        std::os::unix::fs::symlink(
            planted.path().join("target"),
            planted.path().join("rollout-seq"),
        )
        .unwrap();
        assert!(Highest::load(planted.path()).is_err());
        std::fs::remove_file(planted.path().join("rollout-seq")).unwrap();
        std::fs::write(planted.path().join("rollout-seq"), "junk").unwrap();
        assert!(Highest::load(planted.path()).is_err());
    }

    #[test]
    fn a_record_verifies_only_with_its_key_for_its_service() {
        let key = SecretKey::generate().unwrap();
        let record = RolloutRecord::seal(instruction(1), Some(&key)).unwrap();
        let read = RolloutRecord::parse("k", &record.to_json()).unwrap();
        assert_eq!(read.verify(&key.public(), "svc"), Ok(()));
        assert_eq!(read.signer, Some(key.public().id()));
        assert!(matches!(
            read.verify(&key.public(), "other"),
            Err(Refusal::OtherService { .. })
        ));
        let stranger = SecretKey::generate().unwrap();
        assert!(matches!(
            read.verify(&stranger.public(), "svc"),
            Err(Refusal::Forged { .. })
        ));
        let unsigned = RolloutRecord::seal(instruction(1), None).unwrap();
        assert_eq!(
            unsigned.verify(&key.public(), "svc"),
            Err(Refusal::Unsigned)
        );
        // Numbers only go up, even from a record numbered in the future.
        assert!(next_seq(None).unwrap() >= now_ms());
        assert_eq!(next_seq(Some(u64::MAX - 1)).unwrap(), u64::MAX);
        assert!(next_seq(Some(u64::MAX)).is_err());
    }
}
