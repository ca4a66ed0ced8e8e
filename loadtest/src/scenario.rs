//! Synthetic traffic from a small scenario file (JSON):
//!
//! ```json
//! {"updates": 2000, "users": 500, "zipf": 1.1, "rate": 50, "seed": 1,
//!  "mix": {"text": 0.6, "photo": 0.1, "command": 0.1, "callback": 0.05, "edited": 0.05, "dialogue": 0.1}}
//! ```
//!
//! Senders are drawn with a Zipf skew; each update is a text post, a photo post with a caption,
//! a command (`/start`, `/help`, `/my`), a callback query, an edit of the sender's last message,
//! or a whole `/post` dialogue (`/post`, its text, `/skip`, then the Publish button: four
//! updates of one chat in a row). Updates are spaced at `rate` a second of capture time, so
//! `--speed 1` replays them at that rate. Message ids are the update ids (unique in each chat).

use std::collections::HashMap;

use botfleet::replay::Recorded;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub updates: usize,
    pub users: usize,
    #[serde(default = "default_zipf")]
    pub zipf: f64,
    pub rate: f64,
    #[serde(default)]
    pub seed: u64,
    pub mix: HashMap<String, f64>,
}

fn default_zipf() -> f64 {
    1.1
}

const KINDS: [&str; 6] = ["text", "photo", "command", "callback", "edited", "dialogue"];

impl Scenario {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let scenario: Scenario = serde_json::from_str(text)?;
        if let Some(kind) = scenario.mix.keys().find(|k| !KINDS.contains(&k.as_str())) {
            anyhow::bail!("unknown kind {kind:?} in mix: the kinds are {KINDS:?}");
        }
        if scenario.users == 0 || scenario.rate <= 0.0 || scenario.mix.values().sum::<f64>() <= 0.0 {
            anyhow::bail!("a scenario needs users, a positive rate and a mix");
        }
        Ok(scenario)
    }

    /// The scenario's updates, from `first_update_id` on.
    pub fn generate(&self, first_update_id: i64) -> Vec<Recorded> {
        let mut rng = crate::Rng(0x9e37_79b9_7f4a_7c15 ^ self.seed.wrapping_mul(0x1000_0000_01b3).max(1));
        let mut cdf = Vec::with_capacity(self.users);
        let mut total = 0.0;
        for rank in 1..=self.users {
            total += 1.0 / (rank as f64).powf(self.zipf);
            cdf.push(total);
        }
        let kinds: Vec<(&str, f64)> =
            KINDS.iter().map(|k| (*k, self.mix.get(*k).copied().unwrap_or(0.0))).collect();
        let weight: f64 = kinds.iter().map(|(_, w)| w).sum();
        let mut last_message: HashMap<i64, i64> = HashMap::new();
        let mut out = Vec::with_capacity(self.updates + 3);
        let mut id = first_update_id;
        while out.len() < self.updates {
            let at = rng.unit() * total;
            let user = 1_000_000 + cdf.partition_point(|c| *c < at).min(self.users - 1) as i64;
            let mut pick = rng.unit() * weight;
            let kind = kinds.iter().find(|(_, w)| {
                pick -= w;
                pick < 0.0
            });
            let push = |update: Value, out: &mut Vec<Recorded>| {
                let at_ms = (out.len() as f64 * 1000.0 / self.rate) as u64;
                out.push(Recorded { at_ms, bot: None, update });
            };
            match kind.map_or("text", |(k, _)| *k) {
                "photo" => push(photo(id, user, &words(&mut rng, 20, 200)), &mut out),
                "command" => {
                    let command = ["/start", "/help", "/my"][(rng.next() % 3) as usize];
                    push(message(id, user, command), &mut out);
                }
                "callback" => push(callback(id, user, "post:cancel"), &mut out),
                "edited" => match last_message.get(&user) {
                    Some(&message_id) => {
                        push(edited(id, user, message_id, &words(&mut rng, 20, 200)), &mut out)
                    }
                    None => push(message(id, user, &words(&mut rng, 20, 300)), &mut out),
                },
                "dialogue" => {
                    push(message(id, user, "/post"), &mut out);
                    push(message(id + 1, user, &words(&mut rng, 20, 300)), &mut out);
                    push(message(id + 2, user, "/skip"), &mut out);
                    push(callback(id + 3, user, "post:publish"), &mut out);
                    id += 3;
                }
                _ => push(message(id, user, &words(&mut rng, 20, 300)), &mut out),
            }
            last_message.insert(user, id);
            id += 1;
        }
        out
    }
}

fn sender(user: i64) -> Value {
    json!({"id": user, "is_bot": false, "first_name": format!("Sim {user}"), "language_code": "en"})
}

fn chat(user: i64) -> Value {
    json!({"id": user, "type": "private", "first_name": format!("Sim {user}")})
}

fn message(id: i64, user: i64, text: &str) -> Value {
    json!({"update_id": id, "message": {"message_id": id, "date": 1790000000, "from": sender(user), "chat": chat(user), "text": text}})
}

fn photo(id: i64, user: i64, caption: &str) -> Value {
    json!({"update_id": id, "message": {"message_id": id, "date": 1790000000, "from": sender(user), "chat": chat(user),
        "caption": caption,
        "photo": [{"file_id": format!("sim-photo-{id}"), "file_unique_id": format!("sim-{id}"), "width": 640, "height": 480, "file_size": 1000}]}})
}

fn callback(id: i64, user: i64, data: &str) -> Value {
    json!({"update_id": id, "callback_query": {"id": format!("sim-{id}"), "from": sender(user), "chat_instance": "sim",
        "data": data,
        "message": {"message_id": id, "date": 1790000000, "chat": chat(user), "text": "preview"}}})
}

fn edited(id: i64, user: i64, message_id: i64, text: &str) -> Value {
    json!({"update_id": id, "edited_message": {"message_id": message_id, "date": 1790000000, "edit_date": 1790000001,
        "from": sender(user), "chat": chat(user), "text": text}})
}

fn words(rng: &mut crate::Rng, min: usize, max: usize) -> String {
    let target = min + (rng.next() % (max - min + 1) as u64) as usize;
    let mut text = String::with_capacity(target + 12);
    while text.len() < target {
        text.push_str(crate::WORDS[(rng.next() % crate::WORDS.len() as u64) as usize]);
        text.push(' ');
    }
    text.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_makes_its_mix_with_unique_ids_and_whole_dialogues() {
        let scenario = Scenario::parse(
            r#"{"updates": 400, "users": 50, "rate": 100, "seed": 3,
                "mix": {"text": 1, "photo": 1, "command": 1, "callback": 1, "edited": 1, "dialogue": 1}}"#,
        )
        .unwrap();
        let updates = scenario.generate(1000);
        assert!(updates.len() >= 400);
        let ids: Vec<i64> = updates.iter().filter_map(|u| u.update_id()).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "update ids are consecutive");
        assert_eq!(updates[100].at_ms, 1000, "spaced at the scenario's rate");
        for kind in ["\"photo\"", "edited_message", "callback_query", "\"/my\"", "\"/post\""] {
            assert!(updates.iter().any(|u| u.update.to_string().contains(kind)), "no {kind}");
        }
        let post = updates.iter().position(|u| u.update["message"]["text"] == "/post").unwrap();
        let chat = updates[post].chat();
        assert!(
            updates[post..post + 4].iter().all(|u| u.chat() == chat),
            "a dialogue's updates come in a row"
        );
        assert_eq!(updates[post + 3].update["callback_query"]["data"], "post:publish");
        assert!(Scenario::parse(r#"{"updates": 1, "users": 1, "rate": 1, "mix": {"poll": 1}}"#).is_err());
    }
}
