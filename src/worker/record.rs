//! Opt-in capture of the updates a worker receives (`BOTFLEET_RECORD_PATH`), for load testers
//! to replay (`loadtest replay --capture`). Updates are anonymised before they reach the disk
//! (see [`crate::replay::anonymise`]), keyed by the bot's webhook secret: every worker of a
//! deployment maps a chat to the same anonymous chat, so captures of several workers merge.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::replay::{Recorded, anonymise};
use crate::settings::BotConfig;

pub struct Recorder {
    file: Mutex<std::fs::File>,
}

impl Recorder {
    /// Appends to `path`, creating it if need be.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file: Mutex::new(file) })
    }

    /// Appends one update, anonymised, as one line written at once.
    pub fn record(&self, bot: &BotConfig, raw: &[u8]) {
        let Ok(update) = serde_json::from_slice::<serde_json::Value>(raw) else { return };
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let recorded = Recorded {
            at_ms,
            bot: Some(bot.name.as_str().to_owned()),
            update: anonymise(&update, bot.webhook_secret.expose().as_bytes()),
        };
        let Ok(mut line) = serde_json::to_vec(&recorded) else { return };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&line) {
            tracing::warn!(error = %e, "could not record an update");
        }
    }
}
