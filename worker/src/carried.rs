//! What the library carries beside the app's snapshot: its own state, which
//! the app does not have to snapshot (the protocol's `Carried`, opaque to
//! the supervisor). JSON, every field defaulted, so that a later build can
//! add to it and still read what an earlier one wrote, and the other way
//! round.

use handoff_protocol::worker::Carried;
use serde::{Deserialize, Serialize};

use crate::timers::Timers;

/// The library's state, as carried.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CarriedState {
    /// Pending timers: (key, due in ms since the Unix epoch).
    #[serde(default)]
    pub timers: Vec<(String, u64)>,
    /// The feeds the writing build was configured with: (name, URL).
    #[serde(default)]
    pub feeds: Vec<(String, String)>,
    /// Connections the app opened at run time: (name, URL).
    #[serde(default)]
    pub opened: Vec<(String, String)>,
    /// When each connection was opened: (name, ms since the Unix epoch).
    #[serde(default)]
    pub since: Vec<(String, u64)>,
}

impl CarriedState {
    pub(crate) fn of(
        timers: &Timers,
        feeds: &[crate::Feed],
        opened: &crate::opened::Opened,
    ) -> CarriedState {
        let pairs =
            |fs: &[crate::Feed]| fs.iter().map(|f| (f.name.clone(), f.url.clone())).collect();
        CarriedState {
            timers: timers.pairs(),
            feeds: pairs(feeds),
            opened: pairs(&opened.feeds),
            since: opened.since.iter().map(|(n, &t)| (n.clone(), t)).collect(),
        }
    }

    pub(crate) fn encode(&self) -> Carried {
        // Strings and integers only: serialising cannot fail.
        Carried(serde_json::to_vec(self).unwrap_or_default())
    }

    /// An empty blob (a build without a library state, a crash before the
    /// first checkpoint) is the empty state.
    pub(crate) fn decode(c: &Carried) -> Result<CarriedState, String> {
        if c.0.is_empty() {
            return Ok(CarriedState::default());
        }
        serde_json::from_slice(&c.0)
            .map_err(|e| format!("the library state carried with the snapshot is unreadable: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_round_trips_and_unknown_or_missing_fields_are_fine() {
        let s = CarriedState {
            timers: vec![("a".into(), 5)],
            feeds: vec![("market".into(), "ws://x/ws".into())],
            opened: vec![("user".into(), "ws://x/ws/key".into())],
            since: vec![("market".into(), 42)],
        };
        let back = CarriedState::decode(&s.encode()).unwrap();
        assert_eq!(back.timers, s.timers);
        assert_eq!(back.feeds, s.feeds);
        assert_eq!((back.opened, back.since), (s.opened, s.since));
        let later = Carried(br#"{"timers":[["b",7]],"from_a_later_build":1}"#.to_vec());
        assert_eq!(
            CarriedState::decode(&later).unwrap().timers,
            vec![("b".into(), 7)]
        );
        assert!(CarriedState::decode(&Carried(Vec::new()))
            .unwrap()
            .timers
            .is_empty());
        assert!(CarriedState::decode(&Carried(b"{nope".to_vec())).is_err());
    }
}
