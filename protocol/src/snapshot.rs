//! The snapshot envelope: a worker's state as opaque bytes, labelled with the
//! app that wrote it and the schema version of those bytes, and checksummed.
//!
//! The supervisor never looks inside `bytes`; it stores the newest envelope and
//! hands it to the next worker, which checks [`Snapshot::verify`] and the schema
//! before it decodes anything.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A checksummed, versioned state blob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Name of the app that wrote it (a worker refuses another app's state).
    pub app: String,
    /// Schema version of `bytes`, as declared by the writing app.
    pub schema: u32,
    /// CRC-32 (IEEE) of `bytes`.
    pub checksum: u32,
    /// The app's serialized state. Reference-counted: the supervisor hands
    /// the same bytes to the successor, the stored checkpoint and the
    /// checkpoint file without copying them. In a message on a
    /// [`crate::Channel`] they are not encoded with the envelope
    /// ([`envelope`]) but follow it as the frame's blob, written from (and
    /// read into) their own buffer ([`crate::frame`]); elsewhere (the
    /// checkpoint file) they are encoded as `Bytes` encodes.
    pub bytes: Bytes,
}

/// `#[serde(with = "envelope")]` for a [`Snapshot`] inside a message on a
/// channel: the envelope (app, schema, checksum) without the bytes, which
/// travel as the frame's blob ([`crate::frame::Message`]). Decoded, the
/// bytes are empty until the frame's blob is put in.
pub mod envelope {
    use super::{Bytes, Snapshot};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    pub(super) struct HeadRef<'a> {
        app: &'a str,
        schema: u32,
        checksum: u32,
    }

    #[derive(Deserialize)]
    pub(super) struct Head {
        app: String,
        schema: u32,
        checksum: u32,
    }

    impl<'a> From<&'a Snapshot> for HeadRef<'a> {
        fn from(s: &'a Snapshot) -> Self {
            HeadRef {
                app: &s.app,
                schema: s.schema,
                checksum: s.checksum,
            }
        }
    }

    impl From<Head> for Snapshot {
        fn from(h: Head) -> Self {
            Snapshot {
                app: h.app,
                schema: h.schema,
                checksum: h.checksum,
                bytes: Bytes::new(),
            }
        }
    }

    pub fn serialize<S: Serializer>(s: &Snapshot, ser: S) -> Result<S::Ok, S::Error> {
        HeadRef::from(s).serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Snapshot, D::Error> {
        Head::deserialize(d).map(Snapshot::from)
    }
}

/// [`envelope`] for an `Option<Snapshot>`.
pub mod envelope_opt {
    use super::envelope::{Head, HeadRef};
    use super::Snapshot;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(s: &Option<Snapshot>, ser: S) -> Result<S::Ok, S::Error> {
        s.as_ref().map(HeadRef::from).serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Snapshot>, D::Error> {
        Option::<Head>::deserialize(d).map(|h| h.map(Snapshot::from))
    }
}

/// Why an envelope cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error(
        "snapshot checksum mismatch: envelope says {expected:08x}, bytes hash to {actual:08x}"
    )]
    Checksum { expected: u32, actual: u32 },
    #[error("snapshot was written by app {found:?}, this worker is {expected:?}")]
    WrongApp { expected: String, found: String },
    #[error("snapshot schema {found} is not one this build reads (reads {readable:?})")]
    Schema { found: u32, readable: Vec<u32> },
}

impl Snapshot {
    /// Wrap `bytes`, computing the checksum.
    pub fn seal(app: impl Into<String>, schema: u32, bytes: Vec<u8>) -> Self {
        let checksum = crc32fast::hash(&bytes);
        Snapshot {
            app: app.into(),
            schema,
            checksum,
            bytes: Bytes::from(bytes),
        }
    }

    /// Check the checksum, the app name and that `schema` is one of `readable`.
    pub fn verify(&self, app: &str, readable: &[u32]) -> Result<(), SnapshotError> {
        let actual = crc32fast::hash(&self.bytes);
        if actual != self.checksum {
            return Err(SnapshotError::Checksum {
                expected: self.checksum,
                actual,
            });
        }
        if self.app != app {
            return Err(SnapshotError::WrongApp {
                expected: app.into(),
                found: self.app.clone(),
            });
        }
        if !readable.contains(&self.schema) {
            return Err(SnapshotError::Schema {
                found: self.schema,
                readable: readable.to_vec(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipped_bit_is_caught() {
        let mut s = Snapshot::seal("bot", 1, vec![1, 2, 3]);
        assert!(s.verify("bot", &[1]).is_ok());
        let mut flipped = s.bytes.to_vec();
        flipped[1] ^= 0x10;
        s.bytes = Bytes::from(flipped);
        assert!(matches!(
            s.verify("bot", &[1]),
            Err(SnapshotError::Checksum { .. })
        ));
    }

    #[test]
    fn wrong_app_and_schema_are_refused() {
        let s = Snapshot::seal("bot", 2, vec![]);
        assert!(matches!(
            s.verify("other", &[2]),
            Err(SnapshotError::WrongApp { .. })
        ));
        assert!(matches!(
            s.verify("bot", &[1]),
            Err(SnapshotError::Schema { found: 2, .. })
        ));
    }
}
