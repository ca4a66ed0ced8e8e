//! Key names. In a Redis Cluster, every script's keys must share a slot, which their hash tag
//! (`{…}`) decides.

use crate::types::{BotId, ChatId, PostId, UpdateId, UserId};

/// The key and bit of one id among bitmaps of 65,536 consecutive ids (8 KiB each): marking a
/// day of posts at thousands per second takes a few thousand keys, not hundreds of millions.
fn bit(base: &str, id: i64) -> (String, i64) {
    (format!("{base}:{}", id >> 16), id & 0xFFFF)
}

/// How many slots one bot's chats are spread over (the hash tag of a chat's keys): enough to
/// use every shard of any Redis Cluster, few enough that each slot's handled-update hashes stay
/// small (Redis keeps a hash of up to 128 fields as a compact list).
const CHAT_SLOTS: u32 = 1024;

/// Key names of one bot. In a Redis Cluster, every script's keys must share a slot, which
/// `{…}` (the hash tag) decides: the bot's own keys (`<prefix>:{<bot>}:…`) are in one slot; a
/// chat's keys (its turn, dialogue, handled updates, and in a private chat its user) are in its
/// bot's share of 1,024 slots (`<prefix>:{<bot>.<n>}:…`), so one busy bot uses every shard.
#[derive(Debug, Clone)]
pub struct BotKeys {
    /// `<prefix>:{<bot>}:`
    own: String,
    /// `<prefix>:<bot>:`, keys spread by their own name.
    spread: String,
    /// `<prefix>:{<bot>.`
    chats: String,
}

impl BotKeys {
    pub fn new(deployment: &str, bot_id: BotId) -> Self {
        Self {
            own: format!("{deployment}:{{{bot_id}}}:"),
            spread: format!("{deployment}:{bot_id}:"),
            chats: format!("{deployment}:{{{bot_id}."),
        }
    }

    /// The prefix of the keys of `chat` (an id, or another turn key `bot::turn_key` makes): the
    /// slot is a hash (FNV-1a) of it, so a private chat's keys and its user's share one.
    fn chat(&self, chat: &str) -> String {
        let hash = chat.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
        format!("{}{}}}:", self.chats, hash % CHAT_SLOTS)
    }

    /// Where the update of `chat` is marked handled: a hash of the chat's slot per 65,536
    /// consecutive ids, field `update_id mod 65536`, value the fingerprint of what was handled
    /// under that id (about 12 bytes per update).
    pub fn handled(&self, chat: &str, update_id: UpdateId) -> (String, i64) {
        (format!("{}hf:{}", self.chat(chat), update_id.0 >> 16), update_id.0 & 0xFFFF)
    }

    /// How many attempts at the update failed.
    pub fn attempts(&self, update_id: UpdateId) -> String {
        format!("{}att:{update_id}", self.spread)
    }

    /// The chat's lease, waiting queue, waiter deadlines and hold (its failed update that later
    /// ones wait for): the per-chat turn.
    pub fn chat_turn(&self, chat: &str) -> [String; 4] {
        let base = format!("{}c:{chat}", self.chat(chat));
        [format!("{base}:lease"), format!("{base}:q"), format!("{base}:w"), format!("{base}:hold")]
    }

    /// The bot's send schedule (its paid broadcasts' if `paid`), one chat's, and the bot's pause
    /// after a 429 (`flood_take.lua`): one slot, as every message of the bot reserves its moment
    /// on the bot's schedule.
    pub fn flood(&self, chat_id: ChatId, paid: bool) -> [String; 3] {
        let bot = if paid { "paid" } else { "bot" };
        [format!("{}flood:{bot}", self.own), format!("{}flood:c:{chat_id}", self.own), self.flood_pause()]
    }

    /// Set for `retry_after` after a 429: every process waits it out before calling Telegram.
    pub fn flood_pause(&self) -> String {
        format!("{}flood:pause", self.own)
    }

    /// The media proxy's own pause after a 429 from `getFile` (the bot's messages do not wait it).
    pub fn media_pause(&self) -> String {
        format!("{}media:pause", self.own)
    }

    /// A file's path for the media proxy, by its `file_unique_id` (an hour); its slot is the
    /// file's, for the claim beside it.
    pub fn media_path(&self, unique_id: &str) -> String {
        format!("{}media:path:{{{unique_id}}}", self.spread)
    }

    /// The outbox (a stream read by the group `senders`) and where dead messages go.
    pub fn outbox(&self) -> [String; 2] {
        [format!("{}outbox", self.own), format!("{}outbox:dead", self.own)]
    }

    /// Marks the message `id` as queued (`outbox_add.lua`).
    pub fn outbox_once(&self, id: &str) -> String {
        format!("{}outbox:once:{id}", self.own)
    }

    /// A broadcast's progress (a hash: `total`, `sent`, `chat`, `message`, …) and its
    /// cancellation mark.
    pub fn broadcast(&self, id: i64) -> [String; 2] {
        let base = format!("{}bc:{id}", self.own);
        [base.clone(), format!("{base}:cancelled")]
    }

    /// Set for a while after a sender edited a broadcast's progress message: the next edit
    /// waits it out.
    pub fn broadcast_edited(&self, id: i64) -> String {
        format!("{}bc:{id}:edited", self.own)
    }

    /// A broadcast's pause mark, and the stream its queued messages wait in while it is paused
    /// (`broadcast_park.lua`, `broadcast_resume.lua`).
    pub fn broadcast_pause(&self, id: i64) -> [String; 2] {
        let base = format!("{}bc:{id}", self.own);
        [format!("{base}:paused"), format!("{base}:parked")]
    }

    /// Which worker queues the bot's broadcasts' recipients (a lease: `telegram::outbox::feed`).
    pub fn feeder(&self) -> String {
        format!("{}bc:feeder", self.own)
    }

    /// Which worker asks Telegram for the webhook's info (a lease).
    pub fn webhook_watcher(&self) -> String {
        format!("{}webhook:watcher", self.own)
    }

    /// Which worker rebuilds what Redis lost of the outbox (a lease).
    pub fn reconciler(&self) -> String {
        format!("{}outbox:reconciler", self.own)
    }

    /// A fingerprint (SHA-256, hex) of the secret the webhook was last set with.
    pub fn webhook_secret(&self) -> String {
        format!("{}webhook:secret-sha256", self.own)
    }

    pub fn dialogue(&self, chat_id: ChatId) -> String {
        let chat = chat_id.to_string();
        format!("{}d:{chat}", self.chat(&chat))
    }

    /// The cached user, in the slot of the user's private chat.
    pub fn user(&self, user_id: UserId) -> String {
        let user = user_id.to_string();
        format!("{}user:{user}", self.chat(&user))
    }
}

/// Key names of the deployment's public feed (shared by all its bots), in one slot
/// (`<prefix>:{feed}:…`) but for the cached pages, which are spread.
#[derive(Debug, Clone)]
pub struct FeedKeys {
    pub stream: String,
    pub generation: String,
    /// Counts removals (deleted posts, bans): the version of pages after a cursor.
    pub removals: String,
    /// The primary's WAL position after the latest publish or removal committed: a replica that
    /// has not replayed this far lags (ids are not commit order, so no post id can tell).
    pub wal_position: String,
    pub channel: String,
    prefix: String,
}

impl FeedKeys {
    pub fn new(deployment: &str) -> Self {
        Self {
            stream: format!("{deployment}:{{feed}}:stream"),
            generation: format!("{deployment}:{{feed}}:gen"),
            removals: format!("{deployment}:{{feed}}:removals"),
            wal_position: format!("{deployment}:{{feed}}:lsn"),
            channel: format!("{deployment}:feed:live"),
            prefix: deployment.to_owned(),
        }
    }

    /// One of the keys feed pages are cached in (`feed::cache`).
    pub fn page_slot(&self, slot: u64) -> String {
        format!("{}:feed:page:{slot}", self.prefix)
    }

    /// Where a post is marked published to the stream, so that it goes out once.
    pub fn published(&self, post_id: PostId) -> (String, i64) {
        bit(&format!("{}:{{feed}}:pub", self.prefix), post_id.0)
    }
}

/// The channel on which a released chat turn wakes the workers waiting for it.
pub fn turns_channel(deployment: &str) -> String {
    format!("{deployment}:chat-turns")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's slot in a Redis Cluster: CRC16 (XMODEM) of its hash tag, or of the whole key.
    fn slot(key: &str) -> u16 {
        let tag = key.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(tag, _)| tag);
        let hashed = tag.filter(|tag| !tag.is_empty()).unwrap_or(key);
        let crc = hashed.bytes().fold(0u16, |mut crc, byte| {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            }
            crc
        });
        crc % 16384
    }

    fn one_slot(keys: &[String]) {
        assert!(keys.iter().all(|key| slot(key) == slot(&keys[0])), "one slot: {keys:?}");
    }

    #[test]
    fn every_scripts_keys_share_a_slot() {
        assert_eq!(slot("foo"), 12182, "CLUSTER KEYSLOT foo");
        let keys = BotKeys::new("bf", BotId(7));
        let chat = ChatId(42);
        let turn = keys.chat_turn("42");
        let intake = [keys.handled("42", UpdateId(1 << 20)).0, keys.user(UserId(42)), keys.dialogue(chat)];
        one_slot(&[&turn[..], &intake[..]].concat());
        one_slot(&keys.flood(chat, false));
        one_slot(&keys.flood(chat, true));
        let [outbox, dead] = keys.outbox();
        one_slot(&[outbox, dead, keys.outbox_once("m1")]);
        let [progress, _] = keys.broadcast(3);
        one_slot(&[keys.outbox()[0].clone(), progress]);
        one_slot(&[&keys.broadcast(3)[..], &[keys.broadcast_edited(3)]].concat());
        one_slot(&[&keys.outbox()[..1], &keys.broadcast_pause(3)[..]].concat());
        let path = keys.media_path("AgAD");
        one_slot(&[path.clone(), format!("{path}:fetching")]);
        let feed = FeedKeys::new("bf");
        let published = feed.published(PostId(9)).0;
        one_slot(&[feed.stream, feed.generation, feed.removals, feed.wal_position, published]);
    }

    #[test]
    fn one_bots_chats_spread_over_every_shard() {
        let keys = BotKeys::new("bf", BotId(7));
        let mut shards = [0; 3];
        for chat in 0..3000 {
            let [lease, ..] = keys.chat_turn(&chat.to_string());
            shards[usize::from(slot(&lease)) * 3 / 16384] += 1;
        }
        assert!(shards.iter().all(|&n| (750..1250).contains(&n)), "chats per shard of three: {shards:?}");
    }
}
