//! The exactly-once audit of a replay: every acknowledged update had exactly one effect.
//!
//! The bot quotes each message it answers in its first reply, so a reply is attributed to the
//! message it answers: an acknowledged message with no quoting reply in the fake Telegram's log
//! lost its effect; one with two was handled twice. A callback query must have exactly one
//! answer. Posts are counted by `update_id` in Postgres (their uniqueness is a constraint, so a
//! second post would be a broken schema). Other updates (edits, kinds the bot ignores) are
//! acknowledged without a reply and are not audited.

use std::collections::HashMap;

use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Audit {
    pub acknowledged: u64,
    /// Acknowledged updates whose effect the audit can see (messages and callback queries).
    pub audited: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Posts made by the replayed updates.
    pub posts: u64,
}

impl Audit {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

/// `updates`: each replayed update and whether it was acknowledged; `calls`: the fake
/// Telegram's log of the run; `posts`: posts per `update_id`.
pub fn audit(updates: &[(&Value, bool)], calls: &[Value], posts: &HashMap<i64, i64>) -> Audit {
    let mut replies: HashMap<(i64, i64), u64> = HashMap::new();
    let mut answers: HashMap<&str, u64> = HashMap::new();
    for call in calls.iter().filter(|c| c["status"] == 200) {
        let params = &call["params"];
        match call["method"].as_str() {
            Some("sendMessage" | "sendPhoto") => {
                if let (Some(chat), Some(message)) =
                    (params["chat_id"].as_i64(), params["reply_parameters"]["message_id"].as_i64())
                {
                    *replies.entry((chat, message)).or_default() += 1;
                }
            }
            Some("answerCallbackQuery") => {
                if let Some(id) = params["callback_query_id"].as_str() {
                    *answers.entry(id).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let mut audit = Audit::default();
    for (update, _) in updates.iter().filter(|(_, acknowledged)| *acknowledged) {
        audit.acknowledged += 1;
        let message = &update["message"];
        let effects = if let (Some(chat), Some(id)) =
            (message["chat"]["id"].as_i64(), message["message_id"].as_i64())
        {
            replies.get(&(chat, id)).copied().unwrap_or(0)
        } else if let Some(id) = update["callback_query"]["id"].as_str() {
            answers.get(id).copied().unwrap_or(0)
        } else {
            continue;
        };
        audit.audited += 1;
        audit.lost += u64::from(effects == 0);
        audit.duplicated += effects.saturating_sub(1);
    }
    for count in posts.values() {
        audit.posts += *count as u64;
        audit.duplicated += (*count as u64).saturating_sub(1);
    }
    audit
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(update_id: i64, chat: i64) -> Value {
        json!({"update_id": update_id, "message": {"message_id": update_id, "chat": {"id": chat}, "text": "hello"}})
    }

    fn reply(chat: i64, message_id: i64) -> Value {
        json!({"method": "sendMessage", "status": 200,
               "params": {"chat_id": chat, "text": "ok", "reply_parameters": {"message_id": message_id}}})
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
        let answer =
            json!({"method": "answerCallbackQuery", "status": 200, "params": {"callback_query_id": "cb4"}});
        let mut calls = vec![
            reply(10, 1),
            reply(10, 2),
            reply(20, 3),
            answer.clone(),
            // Not a reply to anything replayed, and a failed call: neither counts.
            json!({"method": "sendMessage", "status": 200, "params": {"chat_id": 10, "text": "notice"}}),
            json!({"method": "sendMessage", "status": 429, "params": {"chat_id": 20, "text": "ok", "reply_parameters": {"message_id": 3}}}),
        ];
        let posts = HashMap::from([(1, 1), (2, 1)]);
        let clean = audit(&acknowledged, &calls, &posts);
        assert_eq!(clean, Audit { acknowledged: 5, audited: 4, lost: 0, duplicated: 0, posts: 2 });
        assert!(clean.passed());

        // A loss: the reply to update 2 never went out.
        calls.remove(1);
        let lost = audit(&acknowledged, &calls, &posts);
        assert_eq!((lost.lost, lost.duplicated), (1, 0));
        assert!(!lost.passed());
        // A duplicate: update 3 answered twice, the callback answered twice.
        calls.insert(1, reply(10, 2));
        calls.push(reply(20, 3));
        calls.push(answer);
        let doubled = audit(&acknowledged, &calls, &posts);
        assert_eq!((doubled.lost, doubled.duplicated), (0, 2));
        // An update given up (not acknowledged) is not expected to have an effect.
        let given_up: Vec<(&Value, bool)> = updates.iter().map(|u| (u, u["update_id"] != 2)).collect();
        calls.remove(1);
        calls.truncate(calls.len() - 2);
        assert!(audit(&given_up, &calls, &posts).passed());
    }
}
