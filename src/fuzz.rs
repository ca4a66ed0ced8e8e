//! The fuzz targets' bodies (`fuzz/fuzz_targets/`, run with `cargo fuzz` on nightly): each takes
//! arbitrary bytes, must never panic, and checks a property of what it accepts. The stable test
//! below runs each over its seed corpus (`fuzz/corpus/<target>/`) and thousands of mutations of
//! it, so that `bin/test` keeps a bounded run of every target.

use serde_json::Value;

use crate::feed::cursor::CursorKey;
use crate::feed::hub::Offset;

/// A webhook body, as the worker reads it: parsed, classified, its chat's turn named; what a
/// recording keeps of it has the same chat for the same chat.
pub fn update(data: &[u8]) {
    if let Ok(update) = crate::bot::read_update(data) {
        let kind = crate::bot::kind_name(&update);
        assert!(!kind.is_empty());
        assert!(!crate::bot::turn_key(&update).is_empty());
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let recorded = crate::replay::Recorded { at_ms: 0, bot: None, update: value.clone() };
        let anonymous =
            crate::replay::Recorded { update: crate::replay::anonymise(&value, b"key"), ..recorded.clone() };
        assert_eq!(recorded.chat().is_some(), anonymous.chat().is_some(), "anonymising keeps a chat a chat");
        assert_eq!(recorded.update_id(), anonymous.update_id());
    }
}

/// A feed cursor from a query string: what opens seals back to itself.
pub fn cursor(data: &[u8]) {
    let key = CursorKey::new(b"fuzz".to_vec());
    if let Ok(token) = std::str::from_utf8(data)
        && let Ok(cursor) = key.open(token)
    {
        assert_eq!(key.open(&key.seal(cursor)), Ok(cursor));
    }
}

/// A `Last-Event-ID`, where an SSE stream resumes: what parses prints back to itself, and
/// offsets order as the stream does.
pub fn resume(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (first, second) = text.split_once('\n').unwrap_or((text, ""));
    if let Some(offset) = Offset::parse(first) {
        assert_eq!(Offset::parse(&offset.to_string()), Some(offset));
        if let Some(other) = Offset::parse(second) {
            let by_text = {
                let parts = |o: Offset| {
                    let s = o.to_string();
                    let (ms, seq) =
                        s.split_once('-').map(|(a, b)| (a.to_owned(), b.to_owned())).unwrap_or_default();
                    (ms.parse::<u64>().unwrap_or(0), seq.parse::<u64>().unwrap_or(0))
                };
                parts(offset).cmp(&parts(other))
            };
            assert_eq!(offset.cmp(&other), by_text, "offsets order by milliseconds, then sequence");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Bytes that matter to the formats under test.
    const ALPHABET: &[u8] = b"{}[]\",:-0123456789.\\u\xff\n";

    /// Mutations of `seed`: bytes flipped, cut, doubled and spliced, from a fixed seed.
    fn mutations(seed: &[u8], count: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed.len() as u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count).map(move |_| {
            let mut data = seed.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = if data.is_empty() { 0 } else { (next() % data.len() as u64) as usize };
                match next() % 5 {
                    0 if !data.is_empty() => data[at] ^= 1 << (next() % 8),
                    1 => data.truncate(at),
                    2 => data.insert(at, ALPHABET[(next() % ALPHABET.len() as u64) as usize]),
                    3 if !data.is_empty() => {
                        let end = (at + 1 + (next() % 16) as usize).min(data.len());
                        let piece = data[at..end].to_vec();
                        data.splice(at..at, piece);
                    }
                    _ if !data.is_empty() => {
                        data.remove(at);
                    }
                    _ => {}
                }
            }
            data
        })
    }

    fn run(target: &str, body: fn(&[u8]), per_seed: usize) {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        let mut seeds = 0;
        for entry in std::fs::read_dir(&corpus).unwrap_or_else(|e| panic!("{}: {e}", corpus.display())) {
            let seed = std::fs::read(entry.map(|e| e.path()).unwrap_or_default()).unwrap_or_default();
            body(&seed);
            mutations(&seed, per_seed).for_each(|data| body(&data));
            seeds += 1;
        }
        assert!(seeds > 0, "no seeds in {}", corpus.display());
    }

    #[test]
    fn update_target_survives_its_corpus_and_mutations() {
        run("update", super::update, 300);
    }

    #[test]
    fn cursor_target_survives_its_corpus_and_mutations() {
        run("cursor", super::cursor, 5_000);
    }

    #[test]
    fn resume_target_survives_its_corpus_and_mutations() {
        run("resume", super::resume, 5_000);
    }
}
