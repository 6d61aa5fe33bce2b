//! The supervisor's recent history for `supervisorctl log`: each upgrade's
//! phases and outcome, crashes, recoveries and automatic rollbacks. A ring
//! of [`HISTORY_LINES`] lines, in memory only (the log has the rest).

use std::collections::VecDeque;

use handoff_protocol::ctl::LogLine;

/// Lines kept.
pub const HISTORY_LINES: usize = 500;

/// A bounded, time-stamped event list.
#[derive(Debug, Default)]
pub struct History {
    lines: VecDeque<LogLine>,
}

impl History {
    pub fn push(&mut self, line: impl Into<String>) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if self.lines.len() == HISTORY_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(LogLine {
            unix_ms,
            line: line.into(),
        });
    }

    /// The newest `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<LogLine> {
        self.lines
            .iter()
            .skip(self.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_in_order() {
        let mut h = History::default();
        for i in 0..HISTORY_LINES + 10 {
            h.push(format!("event {i}"));
        }
        let last = h.last(3);
        let text: Vec<_> = last.iter().map(|l| l.line.as_str()).collect();
        let n = HISTORY_LINES + 10;
        assert_eq!(
            text,
            [
                format!("event {}", n - 3),
                format!("event {}", n - 2),
                format!("event {}", n - 1)
            ]
        );
        assert_eq!(h.last(10_000).len(), HISTORY_LINES);
    }
}
