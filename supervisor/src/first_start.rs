//! Fail fast on a worker that never serves.
//!
//! Recovery with backoff is right for a worker that served and then died:
//! the connections are held and the next one takes them over. It is wrong
//! for a first start that can never succeed (a feed unreachable, a bad URL,
//! a build that exits at once): restarting it forever hides the cause. So
//! until a worker of this supervisor has said `Serving` (every feed open),
//! each exit is a failed start; after [`FirstStart::attempts`] of them the
//! supervisor gives up, exits non-zero and says why in the worker's own
//! words (its `Failed` message: for a feed, the address and the OS, TLS or
//! HTTP reason), or by its exit status. Once a worker has served, crashes
//! are recovered as before.

/// The first start's progress. See the module docs.
#[derive(Debug, Clone)]
pub struct FirstStart {
    /// Failed starts allowed before giving up (at least 1).
    pub attempts: u32,
    served: bool,
    failures: u32,
    /// What the active worker said before it went (`Failed`).
    last_words: Option<String>,
}

/// What to do after a worker exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterExit {
    /// Recover (with the usual backoff).
    Retry,
    /// Give up: this is why.
    GiveUp(String),
}

impl FirstStart {
    pub fn new(attempts: u32) -> Self {
        FirstStart {
            attempts: attempts.max(1),
            served: false,
            failures: 0,
            last_words: None,
        }
    }

    /// A worker serves (it said `Serving`, or was adopted serving, or took
    /// over in a completed handoff): from now on exits are crashes.
    pub fn served(&mut self) {
        self.served = true;
        self.failures = 0;
    }

    pub fn has_served(&self) -> bool {
        self.served
    }

    /// The active worker's `Failed` message.
    pub fn last_words(&mut self, reason: String) {
        self.last_words = Some(reason);
    }

    /// What the worker that just exited said before it went, if anything.
    pub fn last_words_of_exit(&self) -> Option<&str> {
        self.last_words.as_deref()
    }

    /// The active worker exited with `status` (as the kernel reported it).
    pub fn on_exit(&mut self, status: &str) -> AfterExit {
        let words = self.last_words.take();
        if self.served {
            return AfterExit::Retry;
        }
        self.failures += 1;
        if self.failures < self.attempts {
            return AfterExit::Retry;
        }
        let why = match words {
            Some(w) => format!("{w} ({status})"),
            None => status.to_owned(),
        };
        AfterExit::GiveUp(format!(
            "the worker failed {} time{} before it ever served; last: {why}",
            self.failures,
            if self.failures == 1 { "" } else { "s" }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_after_the_attempts_with_the_workers_own_words() {
        let mut f = FirstStart::new(3);
        f.last_words("feed feed-0: cannot connect to 127.0.0.1:1: refused".into());
        assert_eq!(f.on_exit("exit status: 1"), AfterExit::Retry);
        assert_eq!(f.on_exit("exit status: 1"), AfterExit::Retry);
        f.last_words("feed feed-0: cannot connect to 127.0.0.1:1: refused".into());
        let AfterExit::GiveUp(why) = f.on_exit("exit status: 1") else {
            panic!("should give up");
        };
        assert!(why.contains("3 times"), "{why}");
        assert!(
            why.contains("127.0.0.1:1: refused (exit status: 1)"),
            "{why}"
        );
    }

    #[test]
    fn after_serving_exits_are_crashes_to_recover() {
        let mut f = FirstStart::new(1);
        f.served();
        for _ in 0..10 {
            assert_eq!(f.on_exit("signal: 9 (SIGKILL)"), AfterExit::Retry);
        }
    }

    #[test]
    fn words_belong_to_one_exit() {
        let mut f = FirstStart::new(2);
        f.last_words("first".into());
        assert_eq!(f.on_exit("exit status: 1"), AfterExit::Retry);
        let AfterExit::GiveUp(why) = f.on_exit("exit status: 2") else {
            panic!("should give up");
        };
        assert!(!why.contains("first"), "{why}");
        assert!(why.ends_with("last: exit status: 2"), "{why}");
    }
}
