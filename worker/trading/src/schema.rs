//! Snapshot schemas of the trading worker, and how to move between them.
//!
//! - **Schema 1**: [`State`] (cursors, books, open orders, order sequence).
//! - **Schema 2**: schema 1 plus `traded_notional` per book (Σ |qty × price|
//!   of its fills), added by a later build.
//!
//! A schema-2 build reads both (a v1 snapshot migrates with the notional
//! starting at zero: the history it would need is gone) and, for a rollback
//! to a schema-1 build, writes schema 1 by dropping the new field. Like
//! Erlang/OTP's `code_change`, the old codec stays in the code for as long as
//! an older build may be running.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::state::State;

/// Why a snapshot could not be written or read.
#[derive(Debug, Error)]
pub enum SchemaError {
    #[error("schema {0} is not one this build knows")]
    Unknown(u32),
    #[error("schema {schema} state does not decode: {source}")]
    Decode {
        schema: u32,
        #[source]
        source: bincode::Error,
    },
    #[error("cannot encode state: {0}")]
    Encode(#[source] bincode::Error),
}

/// The state in memory: schema 1 fields plus the schema 2 addition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FullState {
    pub base: State,
    /// Σ |qty × price| of each book's fills (schema 2).
    pub notional: BTreeMap<String, Decimal>,
}

#[derive(Serialize, Deserialize)]
struct V2 {
    base: State,
    #[serde(with = "notional_str")]
    notional: BTreeMap<String, Decimal>,
}

mod notional_str {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Decimal>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let as_str: BTreeMap<&String, String> = m.iter().map(|(k, v)| (k, v.to_string())).collect();
        as_str.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Decimal>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| v.parse().map(|v| (k, v)).map_err(serde::de::Error::custom))
            .collect()
    }
}

fn codec() -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new().reject_trailing_bytes()
}

/// Write `state` in `schema`.
pub fn encode(state: &FullState, schema: u32) -> Result<Vec<u8>, SchemaError> {
    use bincode::Options;
    match schema {
        1 => codec().serialize(&state.base).map_err(SchemaError::Encode),
        2 => codec()
            .serialize(&V2 {
                base: state.base.clone(),
                notional: state.notional.clone(),
            })
            .map_err(SchemaError::Encode),
        other => Err(SchemaError::Unknown(other)),
    }
}

/// Read a state of `schema`.
pub fn decode(bytes: &[u8], schema: u32) -> Result<FullState, SchemaError> {
    use bincode::Options;
    let err = |source| SchemaError::Decode { schema, source };
    match schema {
        1 => Ok(FullState {
            base: codec().deserialize(bytes).map_err(err)?,
            notional: BTreeMap::new(),
        }),
        2 => {
            let v2: V2 = codec().deserialize(bytes).map_err(err)?;
            Ok(FullState {
                base: v2.base,
                notional: v2.notional,
            })
        }
        other => Err(SchemaError::Unknown(other)),
    }
}

/// CRC-32 of the schema-1 encoding: equal digests mean equal schema-1 state,
/// field for field, whichever build holds it.
pub fn digest(state: &FullState) -> String {
    match encode(state, 1) {
        Ok(bytes) => format!("{:08x}", crc32fast::hash(&bytes)),
        Err(e) => format!("unencodable: {e}"),
    }
}
