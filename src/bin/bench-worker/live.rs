//! What a pre-copy asks of the bench worker (`--precopy replay|delta`): a
//! digest of the whole state kept up to date as it changes (an XOR of one
//! hash per counter, per position and per 8-byte word of ballast, so that
//! a change costs two hashes, not a pass over 64 MiB), and, for `delta`,
//! the keys changed since a mark and the delta they make.
//!
//! Every change of the state goes through [`Live::counter`],
//! [`Live::position`] and [`Live::word`], which keep both.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{positions_bin, Counter, Position, State};

/// The digest and the changes since the mark.
#[derive(Debug, Default)]
pub struct Live {
    /// The state's digest, when kept (`None`: computed when asked).
    pub digest: Option<u64>,
    /// Keys changed since [`Live::mark`], while marked.
    dirty: Option<Dirty>,
}

#[derive(Debug, Default)]
struct Dirty {
    counters: BTreeSet<String>,
    positions: BTreeSet<u64>,
    words: BTreeSet<u32>,
}

/// What changed, with the new values.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Delta {
    pub counters: Vec<(String, Counter)>,
    /// [`positions_bin`]'s packing of the changed positions.
    #[serde(with = "serde_bytes")]
    pub positions: Vec<u8>,
    pub words: Vec<(u32, u64)>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn h_bytes(seed: u64, bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(mix(seed), |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        mix(h ^ u64::from_le_bytes(w))
    })
}

fn h_counter(key: &str, c: &Counter) -> u64 {
    mix(h_bytes(1, key.as_bytes()) ^ mix(c.trades) ^ mix(c.last_id).rotate_left(17))
}

fn h_position(k: u64, p: &Position) -> u64 {
    let mut b = [0u8; 48];
    b[..16].copy_from_slice(&p.qty.serialize());
    b[16..32].copy_from_slice(&p.avg_price.serialize());
    b[32..].copy_from_slice(&p.realized_pnl.serialize());
    h_bytes(2 ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15), &b)
}

fn h_word(i: u32, w: u64) -> u64 {
    mix(3 ^ (u64::from(i) << 8) ^ mix(w))
}

/// The word `i` of the ballast.
pub fn word(ballast: &[u8], i: u32) -> u64 {
    let at = i as usize * 8;
    ballast
        .get(at..at + 8)
        .and_then(|w| w.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The digest of `state`, from scratch.
pub fn full(state: &State) -> u64 {
    let mut d = 0;
    for (k, c) in &state.counters {
        d ^= h_counter(k, c);
    }
    for (k, p) in &state.positions {
        d ^= h_position(*k, p);
    }
    for i in 0..(state.ballast.len() / 8) as u32 {
        d ^= h_word(i, word(&state.ballast, i));
    }
    d
}

impl Live {
    /// Keep the digest of `state` from now on.
    pub fn keep(&mut self, state: &State) {
        self.digest = Some(full(state));
    }

    pub fn mark(&mut self) {
        self.dirty = Some(Dirty::default());
    }

    pub fn unmark(&mut self) {
        self.dirty = None;
    }

    /// Set counter `key` to `new`.
    pub fn counter(&mut self, state: &mut State, key: &str, new: Counter) {
        let old = state.counters.insert(key.to_owned(), new.clone());
        if let Some(d) = self.digest.as_mut() {
            *d ^= old.map_or(0, |o| h_counter(key, &o)) ^ h_counter(key, &new);
        }
        if let Some(dirty) = self.dirty.as_mut() {
            dirty.counters.insert(key.to_owned());
        }
    }

    /// Set position `k` to `new`.
    pub fn position(&mut self, state: &mut State, k: u64, new: Position) {
        let old = state.positions.insert(k, new);
        if let Some(d) = self.digest.as_mut() {
            *d ^= old.map_or(0, |o| h_position(k, &o)) ^ h_position(k, &new);
        }
        if let Some(dirty) = self.dirty.as_mut() {
            dirty.positions.insert(k);
        }
    }

    /// Set ballast word `i` to `new`.
    pub fn word(&mut self, state: &mut State, i: u32, new: u64) {
        let at = i as usize * 8;
        let Some(slot) = state.ballast.get_mut(at..at + 8) else {
            return;
        };
        let old = u64::from_le_bytes(slot.try_into().unwrap_or([0; 8]));
        slot.copy_from_slice(&new.to_le_bytes());
        if let Some(d) = self.digest.as_mut() {
            *d ^= h_word(i, old) ^ h_word(i, new);
        }
        if let Some(dirty) = self.dirty.as_mut() {
            dirty.words.insert(i);
        }
    }

    /// What changed since the mark; marks anew.
    pub fn delta(&mut self, state: &State) -> Delta {
        let dirty = self.dirty.replace(Dirty::default()).unwrap_or_default();
        let positions: BTreeMap<u64, Position> = dirty
            .positions
            .iter()
            .filter_map(|k| state.positions.get(k).map(|p| (*k, *p)))
            .collect();
        Delta {
            counters: dirty
                .counters
                .into_iter()
                .filter_map(|k| state.counters.get(&k).cloned().map(|c| (k, c)))
                .collect(),
            positions: positions_bin::pack(&positions),
            words: dirty
                .words
                .into_iter()
                .map(|i| (i, word(&state.ballast, i)))
                .collect(),
        }
    }

    /// Apply `delta` to `state`.
    pub fn apply(&mut self, state: &mut State, delta: Delta) -> Result<(), String> {
        for (k, c) in delta.counters {
            self.counter(state, &k, c);
        }
        for (k, p) in positions_bin::unpack(&delta.positions)? {
            self.position(state, k, p);
        }
        let words = (state.ballast.len() / 8) as u32;
        for (i, w) in delta.words {
            if i >= words {
                return Err(format!("the delta names ballast word {i} of {words}"));
            }
            self.word(state, i, w);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_digest_is_the_digest_from_scratch_and_a_delta_brings_a_copy_level() {
        let mut a = State {
            seeded: true,
            ballast: super::super::ballast(800),
            positions: super::super::positions(50),
            ..State::default()
        };
        let mut b = State {
            seeded: true,
            ballast: a.ballast.clone(),
            positions: a.positions.clone(),
            ..State::default()
        };
        let (mut la, mut lb) = (Live::default(), Live::default());
        la.keep(&a);
        lb.keep(&b);
        la.mark();
        for id in 0..40u64 {
            super::super::trade(&mut la, &mut a, "feed-0/btcusdt@trade", id);
        }
        assert_eq!(la.digest, Some(full(&a)));
        assert_ne!(la.digest, lb.digest);
        let delta = la.delta(&a);
        lb.apply(&mut b, delta).unwrap();
        assert_eq!(a, b);
        assert_eq!(lb.digest, la.digest);
        assert_eq!(la.delta(&a).words.len(), 0, "marked anew");
    }
}
