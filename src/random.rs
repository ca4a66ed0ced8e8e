//! Random numbers for tokens, names and jitter: unique per call, never secrets.

/// A fresh random number. Every `RandomState` is seeded afresh from the process's random keys,
/// so hashing nothing still gives a new number each time.
pub fn rand_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_do_not_repeat() {
        let tokens: std::collections::HashSet<u64> = (0..10_000).map(|_| super::rand_u64()).collect();
        assert_eq!(tokens.len(), 10_000);
    }
}
