//! The REST side of depth: `GET /api/v3/depth` (Binance's snapshot) and
//! `GET /api/v3/depth/digest` (simulator-only: the CRC-32 of the whole book).

use crate::error::ApiError;
use crate::params::{self, query_pairs};
use crate::state::Shared;

/// Binance's snapshot endpoint.
pub const DEPTH_PATH: &str = "/api/v3/depth";
/// The book digest (simulator-only).
pub const DIGEST_PATH: &str = "/api/v3/depth/digest";
/// Levels per side when `limit` is not sent.
pub const DEFAULT_LIMIT: usize = 100;
/// Most levels per side a snapshot gives; a larger `limit` is cut to it.
pub const MAX_LIMIT: usize = 5_000;

/// The served symbol named by `symbol` in `pairs`.
fn symbol_index(shared: &Shared, pairs: &[(String, String)]) -> Result<usize, ApiError> {
    let symbol = params::symbol(params::single(pairs, "symbol")?)?;
    shared
        .depth
        .index_of_symbol(&symbol)
        .ok_or(ApiError::InvalidSymbol)
}

/// Parse `limit`: digits only (`-1100` otherwise), at least 1, and at most
/// [`MAX_LIMIT`] levels are given whatever is asked.
pub fn limit(value: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = value else {
        return Ok(DEFAULT_LIMIT);
    };
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::IllegalChars {
            name: "limit",
            legal: "^[0-9]{1,20}$",
        });
    }
    match text.parse::<u128>() {
        Ok(0) => Err(ApiError::param("limit", "must be at least 1")),
        Ok(n) => Ok(usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)),
        Err(_) => Err(ApiError::IllegalChars {
            name: "limit",
            legal: "^[0-9]{1,20}$",
        }),
    }
}

/// `GET /api/v3/depth?symbol=S[&limit=N]`.
pub fn snapshot(shared: &Shared, query: &str) -> Result<String, ApiError> {
    let pairs = query_pairs(query);
    let index = symbol_index(shared, &pairs)?;
    let limit = limit(params::single(&pairs, "limit")?)?;
    let snap = shared
        .depth
        .snapshot(index, limit)
        .ok_or(ApiError::InvalidSymbol)?;
    Ok(snap.to_json())
}

/// `GET /api/v3/depth/digest?symbol=S`.
pub fn digest(shared: &Shared, query: &str) -> Result<String, ApiError> {
    let pairs = query_pairs(query);
    let index = symbol_index(shared, &pairs)?;
    let (last, crc) = shared.depth.digest(index).ok_or(ApiError::InvalidSymbol)?;
    Ok(format!(
        "{{\"lastUpdateId\":{last},\"digest\":\"{crc:08x}\"}}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(limit(None), Ok(100));
        assert_eq!(limit(Some("5")), Ok(5));
        assert_eq!(limit(Some("5000")), Ok(5000));
        assert_eq!(limit(Some("99999999999999999999")), Ok(5000));
        assert_eq!(limit(Some("0")).map_err(|e| e.code()), Err(-1102));
        for bad in ["", "-1", "1.5", "ten", "999999999999999999999", " 5"] {
            assert_eq!(
                limit(Some(bad)).map_err(|e| e.code()),
                Err(-1100),
                "{bad:?}"
            );
        }
    }
}
