//! The exactly-once audit of a replay: every acknowledged update had exactly one effect.
//!
//! The bot quotes each message it answers in its first reply, so a reply is attributed to the
//! message it answers: an acknowledged message with no quoting reply in the fake Telegram's log
//! lost its effect; one with two was handled twice. A callback query must have exactly one
//! answer. Posts are counted by `update_id` in Postgres (their uniqueness is a constraint, so a
//! second post would be a broken schema). Other updates (edits, kinds the bot ignores) are
//! acknowledged without a reply and are not audited.
//!
//! Replies also show order: within a chat, the first reply to each message must come in
//! `update_id` order, or the chat's effects were applied out of order.
//!
//! One kind of second copy no system can rule out: Telegram took the first, and its sender died
//! or froze before it could record so (a `kill -9`, or a `SIGSTOP` past its lease, between the
//! two). The Bot API has no idempotency key, so the redelivery cannot know, and must send again
//! rather than risk saying nothing. Such a copy is counted apart, as *in doubt*, when the process
//! that sent the one before it (the fake's log names each call's process by its `User-Agent`)
//! fell silent right after it: no call at all until the second copy, or none for [`FROZEN_MS`]
//! (under load a working process calls many times a second) from a moment within
//! [`SETTLING_MS`] of the copy (calls it had under way when it stopped may still go out). It was
//! gone, or stopped while holding the update; it may have come back before the redelivery, which then found it had
//! lost the update. A copy whose first sender went on working meanwhile is a duplicate, and fails
//! the audit.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Audit {
    pub acknowledged: u64,
    /// Acknowledged updates whose effect the audit can see (messages and callback queries).
    pub audited: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Second copies whose first sender died right after sending it (see above).
    pub in_doubt: u64,
    /// Messages whose reply went out before the reply to an earlier update of their chat: a
    /// chat's effects must follow `update_id` order (invariant 3).
    pub out_of_order: u64,
    /// Acknowledged updates that were dead-lettered after failing every attempt: kept whole in
    /// `dead_letters` (invariant 10), so neither lost nor audited.
    pub dead_lettered: u64,
    /// Posts made by the replayed updates.
    pub posts: u64,
    /// The first few second copies, duplicated or in doubt, with the calls that made them.
    pub examples: Vec<String>,
}

impl Audit {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

/// How many examples an audit keeps.
const EXAMPLES: usize = 5;
/// A process that makes no call for this long right after a copy was stopped or gone.
pub const FROZEN_MS: u64 = 5000;
/// How soon after a copy such a silence must begin.
pub const SETTLING_MS: u64 = 1000;

/// One successful call that was an update's effect: its place in the log and its process.
struct Copy<'a> {
    seq: u64,
    at_ms: u64,
    client: &'a str,
}

/// The fake Telegram's log, indexed: each reply by the message it quotes, each callback answer
/// by its query, and every call of each process in order.
#[derive(Default)]
struct Log<'a> {
    replies: HashMap<(i64, i64), Vec<Copy<'a>>>,
    answers: HashMap<&'a str, Vec<Copy<'a>>>,
    /// Each process's calls: their places in the log and times.
    calls_of: HashMap<&'a str, Vec<(u64, u64)>>,
    /// When the log's last call was made.
    end_ms: u64,
}

impl<'a> Log<'a> {
    fn index(calls: &'a [Value]) -> Self {
        let mut log = Log::default();
        for call in calls {
            let copy = Copy {
                seq: call["seq"].as_u64().unwrap_or_default(),
                at_ms: call["at_ms"].as_u64().unwrap_or_default(),
                client: call["client"].as_str().unwrap_or_default(),
            };
            log.calls_of.entry(copy.client).or_default().push((copy.seq, copy.at_ms));
            log.end_ms = log.end_ms.max(copy.at_ms);
            if call["status"] != 200 {
                continue;
            }
            let params = &call["params"];
            match call["method"].as_str() {
                Some("sendMessage" | "sendPhoto") => {
                    if let (Some(chat), Some(message)) =
                        (params["chat_id"].as_i64(), params["reply_parameters"]["message_id"].as_i64())
                    {
                        log.replies.entry((chat, message)).or_default().push(copy);
                    }
                }
                Some("answerCallbackQuery") => {
                    if let Some(id) = params["callback_query_id"].as_str() {
                        log.answers.entry(id).or_default().push(copy);
                    }
                }
                _ => {}
            }
        }
        log
    }
}

/// Whether `first`'s process fell silent right after it: no call until `again`, or a silence of
/// `FROZEN_MS` (to its next call, or to the log's end `end_ms`) from a call within `SETTLING_MS`
/// of `first`. It was gone, or stopped.
fn silent_after(log: &Log, first: &Copy, again: &Copy) -> bool {
    log.calls_of.get(first.client).is_some_and(|calls| {
        let at = calls.partition_point(|&(seq, _)| seq < first.seq);
        let until_again = calls.get(at + 1).is_none_or(|&(seq, _)| seq > again.seq);
        let frozen_from = |i: usize| {
            let next = calls.get(i + 1).map_or(log.end_ms, |&(_, at_ms)| at_ms);
            next >= calls[i].1 + FROZEN_MS
        };
        until_again
            || (at..calls.len())
                .take_while(|&i| calls[i].0 < again.seq && calls[i].1 <= first.at_ms + SETTLING_MS)
                .any(frozen_from)
    })
}

/// `updates`: each replayed update and whether it was acknowledged; `calls`: the fake
/// Telegram's log of the run; `stored`: posts per `update_id`, and the updates dead-lettered.
pub fn audit(
    updates: &[(&Value, bool)],
    calls: &[Value],
    (posts, dead): (&HashMap<i64, i64>, &HashSet<i64>),
) -> Audit {
    let mut log = Log::index(calls);
    let (mut replies, mut answers) = (std::mem::take(&mut log.replies), std::mem::take(&mut log.answers));
    let mut audit = Audit::default();
    // Per chat, each replied message's update id and where its first reply is in the log.
    let mut firsts: HashMap<i64, Vec<(i64, u64)>> = HashMap::new();
    for (update, _) in updates.iter().filter(|(_, acknowledged)| *acknowledged) {
        audit.acknowledged += 1;
        if update["update_id"].as_i64().is_some_and(|id| dead.contains(&id)) {
            audit.dead_lettered += 1;
            continue;
        }
        let message = &update["message"];
        let copies = if let (Some(chat), Some(id)) =
            (message["chat"]["id"].as_i64(), message["message_id"].as_i64())
        {
            replies.get_mut(&(chat, id))
        } else if let Some(id) = update["callback_query"]["id"].as_str() {
            answers.get_mut(id)
        } else {
            continue;
        };
        audit.audited += 1;
        let Some(copies) = copies else {
            audit.lost += 1;
            continue;
        };
        copies.sort_by_key(|c| c.seq);
        if let (Some(chat), Some(update_id)) = (message["chat"]["id"].as_i64(), update["update_id"].as_i64())
        {
            firsts.entry(chat).or_default().push((update_id, copies[0].seq));
        }
        for pair in copies.windows(2) {
            let (first, again) = (&pair[0], &pair[1]);
            let kind = if silent_after(&log, first, again) {
                audit.in_doubt += 1;
                "in doubt"
            } else {
                audit.duplicated += 1;
                "duplicated"
            };
            if audit.examples.len() < EXAMPLES {
                audit.examples.push(format!(
                    "update {}, {kind}: calls #{} ({}) and #{} ({})",
                    update["update_id"], first.seq, first.client, again.seq, again.client
                ));
            }
        }
    }
    audit.out_of_order = firsts.into_values().map(out_of_order).sum();
    for count in posts.values() {
        audit.posts += *count as u64;
        audit.duplicated += (*count as u64).saturating_sub(1);
    }
    audit
}

/// Of one chat's replied messages (update id, where the first reply is in the log), how many
/// were answered before an earlier update of the chat.
fn out_of_order(mut replies: Vec<(i64, u64)>) -> u64 {
    replies.sort_unstable();
    let mut latest = 0;
    let mut late = 0;
    for (_, seq) in replies {
        if seq < latest {
            late += 1;
        }
        latest = latest.max(seq);
    }
    late
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(update_id: i64, chat: i64) -> Value {
        json!({"update_id": update_id, "message": {"message_id": update_id, "chat": {"id": chat}, "text": "hello"}})
    }

    fn reply(client: &str, chat: i64, message_id: i64) -> Value {
        json!({"method": "sendMessage", "status": 200, "client": client,
               "params": {"chat_id": chat, "text": "ok", "reply_parameters": {"message_id": message_id}}})
    }

    fn answer(client: &str) -> Value {
        json!({"method": "answerCallbackQuery", "status": 200, "client": client, "params": {"callback_query_id": "cb4"}})
    }

    /// The calls in this order, numbered as the fake numbers them, 10 ms apart (unless a call
    /// says when it was made).
    fn log(calls: &[Value]) -> Vec<Value> {
        let mut calls = calls.to_vec();
        for (seq, call) in calls.iter_mut().enumerate() {
            call["seq"] = json!(seq + 1);
            if call["at_ms"].is_null() {
                call["at_ms"] = json!(10 * seq);
            }
        }
        calls
    }

    #[test]
    fn the_audit_catches_a_loss_and_a_duplicate_injected_on_purpose() {
        let updates = [
            message(1, 10),
            message(2, 10),
            message(3, 20),
            json!({"update_id": 4, "callback_query": {"id": "cb4", "from": {"id": 20}}}),
            json!({"update_id": 5, "edited_message": {"message_id": 1, "chat": {"id": 10}}}),
        ];
        let acknowledged: Vec<(&Value, bool)> = updates.iter().map(|u| (u, true)).collect();
        let mut calls = vec![
            reply("a", 10, 1),
            reply("a", 10, 2),
            reply("b", 20, 3),
            answer("b"),
            // Not a reply to anything replayed, and a failed call: neither counts.
            json!({"method": "sendMessage", "status": 200, "client": "a", "params": {"chat_id": 10, "text": "notice"}}),
            json!({"method": "sendMessage", "status": 429, "client": "b", "params": {"chat_id": 20, "text": "ok", "reply_parameters": {"message_id": 3}}}),
        ];
        let posts = HashMap::from([(1, 1), (2, 1)]);
        let clean = audit(&acknowledged, &log(&calls), (&posts, &HashSet::new()));
        assert_eq!(
            clean,
            Audit {
                acknowledged: 5,
                audited: 4,
                lost: 0,
                duplicated: 0,
                in_doubt: 0,
                out_of_order: 0,
                dead_lettered: 0,
                posts: 2,
                examples: vec![]
            }
        );
        assert!(clean.passed());
        // A second post of one update is a duplicate whatever the replies say.
        assert_eq!(
            audit(&acknowledged, &log(&calls), (&HashMap::from([(1, 2), (2, 1)]), &HashSet::new()))
                .duplicated,
            1
        );
        // An update given up (not acknowledged) is not expected to have an effect.
        let given_up: Vec<(&Value, bool)> = updates.iter().map(|u| (u, u["update_id"] != 2)).collect();
        let mut without_2 = calls.clone();
        without_2.remove(1);
        assert!(audit(&given_up, &log(&without_2), (&posts, &HashSet::new())).passed());

        // A loss: the reply to update 2 never went out.
        let lost = audit(&acknowledged, &log(&without_2), (&posts, &HashSet::new()));
        // Unless it was dead-lettered: kept whole, and neither lost nor audited.
        let dead = audit(&acknowledged, &log(&without_2), (&posts, &HashSet::from([2])));
        assert_eq!((dead.lost, dead.dead_lettered, dead.audited), (0, 1, 3));
        assert_eq!((lost.lost, lost.duplicated), (1, 0));
        assert!(!lost.passed());
        // Duplicates: update 2 answered twice by one process, update 3 and the callback a second
        // time by another while the first lived on.
        calls.insert(2, reply("a", 10, 2));
        calls.push(reply("a", 20, 3));
        calls.push(answer("a"));
        calls.push(reply("b", 20, 99));
        let doubled = audit(&acknowledged, &log(&calls), (&posts, &HashSet::new()));
        assert_eq!((doubled.lost, doubled.duplicated, doubled.in_doubt), (0, 3, 0));
        assert_eq!(doubled.examples[0], "update 2, duplicated: calls #2 (a) and #3 (a)");
        assert!(!doubled.passed());
    }

    #[test]
    fn the_audit_catches_a_chat_answered_out_of_update_id_order() {
        let updates = [message(1, 10), message(2, 10), message(3, 20)];
        let acknowledged: Vec<(&Value, bool)> = updates.iter().map(|u| (u, true)).collect();
        let posts = HashMap::new();
        let in_order = log(&[reply("a", 20, 3), reply("a", 10, 1), reply("b", 10, 2)]);
        assert!(audit(&acknowledged, &in_order, (&posts, &HashSet::new())).passed(), "chats are independent");
        // Update 2 of chat 10 was answered before update 1 (which had failed and came back).
        let swapped = audit(
            &acknowledged,
            &log(&[reply("b", 10, 2), reply("a", 20, 3), reply("a", 10, 1)]),
            (&posts, &HashSet::new()),
        );
        assert_eq!((swapped.lost, swapped.out_of_order), (0, 1));
        assert!(!swapped.passed());
    }

    #[test]
    fn a_second_copy_is_in_doubt_only_when_the_first_sender_fell_silent_right_after_the_first() {
        let updates = [message(1, 10), message(2, 10)];
        let acknowledged: Vec<(&Value, bool)> = updates.iter().map(|u| (u, true)).collect();
        let stored = (&HashMap::new(), &HashSet::new());
        // Process "a" replied to update 1 and died; "b" handled the redelivery and replied again.
        let died = log(&[reply("a", 10, 1), reply("b", 10, 2), reply("b", 10, 1)]);
        let after_death = audit(&acknowledged, &died, stored);
        assert_eq!((after_death.duplicated, after_death.in_doubt), (0, 1));
        assert!(after_death.passed());
        assert_eq!(after_death.examples, ["update 1, in doubt: calls #1 (a) and #3 (b)"]);
        // "a" was stopped instead, and went on once continued: still in doubt.
        let stopped = log(&[reply("a", 10, 1), reply("b", 10, 2), reply("b", 10, 1), reply("a", 10, 7)]);
        assert_eq!(audit(&acknowledged, &stopped, stored).in_doubt, 1);
        // "a" was stopped holding the update, came back (its next call 20 s later) before the
        // redelivery, and "b" then replied again: in doubt too.
        let mut back = reply("a", 10, 7);
        back["at_ms"] = json!(20_000);
        let mut late = reply("b", 10, 1);
        late["at_ms"] = json!(30_000);
        let came_back = log(&[reply("a", 10, 1), reply("b", 10, 2), back, late]);
        assert_eq!(
            (
                audit(&acknowledged, &came_back, stored).in_doubt,
                audit(&acknowledged, &came_back, stored).duplicated
            ),
            (1, 0)
        );
        // "a" still sent a call it had under way (50 ms later) as it was stopped: in doubt too.
        let mut under_way = reply("a", 20, 1);
        under_way["at_ms"] = json!(50);
        let mut back = reply("a", 10, 7);
        back["at_ms"] = json!(20_000);
        let mut late = reply("b", 10, 1);
        late["at_ms"] = json!(30_000);
        let stopped_busy = log(&[reply("a", 10, 1), under_way, back, late]);
        assert_eq!(audit(&acknowledged, &stopped_busy, stored).in_doubt, 1);
        // The same copies, but "a" made a call between them: it was working, so the second copy
        // was a duplicate.
        let lived = log(&[reply("a", 10, 1), reply("a", 10, 7), reply("b", 10, 2), reply("b", 10, 1)]);
        let after_life = audit(&acknowledged, &lived, stored);
        assert_eq!((after_life.duplicated, after_life.in_doubt), (1, 0));
        assert!(!after_life.passed());
    }
}
