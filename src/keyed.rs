//! Per-key values shared inside a process — a notifier per chat, a lock per user, a page being
//! loaded (single-flight) — that live
//! only while someone holds them: the map keeps weak references and sheds the dead ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Dead entries are swept once the map grows past this.
const SWEEP_AT: usize = 1024;

pub struct Keyed<V> {
    map: Mutex<HashMap<String, Weak<V>>>,
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Self { map: Mutex::new(HashMap::new()) }
    }
}

impl<V: Default> Keyed<V> {
    /// The value of `key`, created if nobody holds one.
    pub fn acquire(&self, key: &str) -> Arc<V> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(value) = map.get(key).and_then(Weak::upgrade) {
            return value;
        }
        if map.len() > SWEEP_AT {
            map.retain(|_, value| value.strong_count() > 0);
        }
        let value = Arc::new(V::default());
        map.insert(key.to_owned(), Arc::downgrade(&value));
        value
    }

    /// The value of `key`, if someone holds it.
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(key).and_then(Weak::upgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_share_a_value_that_dies_with_the_last_of_them() {
        let keyed: Keyed<Mutex<u32>> = Keyed::default();
        let a = keyed.acquire("chat");
        *keyed.acquire("chat").lock().unwrap() += 1;
        assert_eq!(*a.lock().unwrap(), 1, "both holders see one value");
        assert!(keyed.get("other").is_none());
        drop(a);
        assert!(keyed.get("chat").is_none(), "nobody holds it any more");
    }
}
