//! Telegram's send limits, as the fake enforces them when asked: about 30 messages per second
//! per bot, besides those sent with `allow_paid_broadcast` (which Telegram charges for), up to
//! 1,000 per second in all; 1 per second per private chat, 20 per minute per group. Sliding
//! windows.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// (messages, window) per bot (free, and in all with paid broadcasts), per private chat and per
/// group.
const PER_BOT: (usize, Duration) = (30, Duration::from_secs(1));
const PER_BOT_IN_ALL: (usize, Duration) = (1000, Duration::from_secs(1));
const PER_PRIVATE_CHAT: (usize, Duration) = (1, Duration::from_secs(1));
const PER_GROUP: (usize, Duration) = (20, Duration::from_secs(60));

/// The chat that stands for all of a bot's sends.
const ALL: i64 = i64::MIN;

#[derive(Debug, Default)]
pub struct Limits {
    enabled: bool,
    /// Times of the sends still inside each window, by (bot, chat); chat 0 is the bot's free
    /// sends, [`ALL`] all of them.
    sent: HashMap<(i64, i64), VecDeque<Instant>>,
}

impl Limits {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, sent: HashMap::new() }
    }

    pub fn clear(&mut self) {
        self.sent.clear();
    }

    /// Admits a send of `bot` to `chat` at `now`, `paid` if it allows a paid broadcast, or
    /// returns how many whole seconds to wait.
    pub fn admit(&mut self, bot: i64, chat: i64, paid: bool, now: Instant) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let chat_rule = if chat > 0 { PER_PRIVATE_CHAT } else { PER_GROUP };
        let free = (!paid).then_some(((bot, 0), PER_BOT));
        let checks = [free, Some(((bot, ALL), PER_BOT_IN_ALL)), Some(((bot, chat), chat_rule))];
        let mut wait = Duration::ZERO;
        for &(key, (max, window)) in checks.iter().flatten() {
            let sent = self.sent.entry(key).or_default();
            while sent.front().is_some_and(|t| now.duration_since(*t) >= window) {
                sent.pop_front();
            }
            if sent.len() >= max
                && let Some(oldest) = sent.front()
            {
                wait = wait.max(window - now.duration_since(*oldest));
            }
        }
        if wait > Duration::ZERO {
            // Telegram rounds up and never says 0.
            return Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        }
        for (key, _) in checks.into_iter().flatten() {
            self.sent.entry(key).or_default().push_back(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_chat_gets_one_per_second() {
        let mut limits = Limits::new(true);
        let t0 = Instant::now();
        assert_eq!(limits.admit(1, 7, false, t0), Ok(()));
        assert_eq!(limits.admit(1, 7, false, t0 + Duration::from_millis(400)), Err(1));
        assert_eq!(limits.admit(1, 8, false, t0 + Duration::from_millis(400)), Ok(()));
        assert_eq!(limits.admit(1, 7, false, t0 + Duration::from_millis(1000)), Ok(()));
    }

    #[test]
    fn bot_gets_thirty_per_second_and_groups_twenty_per_minute() {
        let mut limits = Limits::new(true);
        let t0 = Instant::now();
        for chat in 1..=30 {
            assert_eq!(limits.admit(1, chat, false, t0), Ok(()), "send {chat} of 30");
        }
        assert_eq!(limits.admit(1, 31, false, t0), Err(1));
        assert_eq!(limits.admit(2, 31, false, t0), Ok(()), "another bot has its own budget");
        for n in 0..20 {
            assert_eq!(limits.admit(3, -100, false, t0 + Duration::from_secs(n)), Ok(()));
        }
        assert_eq!(limits.admit(3, -100, false, t0 + Duration::from_secs(20)), Err(40));
    }

    #[test]
    fn paid_broadcasts_get_a_thousand_per_second_and_still_one_per_chat() {
        let mut limits = Limits::new(true);
        let t0 = Instant::now();
        for chat in 1..=1000 {
            assert_eq!(limits.admit(1, chat, true, t0), Ok(()), "paid send {chat} of 1000");
        }
        assert_eq!(limits.admit(1, 1001, true, t0), Err(1), "past the paid rate");
        assert_eq!(limits.admit(1, 1001, false, t0), Err(1), "past 1,000 in all");
        assert_eq!(limits.admit(1, 1001, false, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(limits.admit(2, 7, true, t0), Ok(()));
        assert_eq!(limits.admit(2, 7, true, t0 + Duration::from_millis(400)), Err(1), "one per chat");
        for chat in 10..40 {
            assert_eq!(limits.admit(2, chat, false, t0), Ok(()), "paid sends leave the free rate be");
        }
        assert_eq!(limits.admit(2, 40, false, t0), Err(1));
    }

    #[test]
    fn disabled_admits_everything() {
        let mut limits = Limits::new(false);
        let t0 = Instant::now();
        assert!((0..100).all(|_| limits.admit(1, 7, false, t0).is_ok()));
    }
}
