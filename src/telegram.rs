//! The Bot API client: teloxide's `Bot`, pointed at Telegram or at the fake.
//!
//! The token lives inside the URL of every call, so nothing here may print a request URL;
//! teloxide already strips the token from its network errors and [`redact`] is the belt to
//! those braces for anything we log.

use std::time::Duration;

use teloxide_core::Bot;
use url::Url;

use crate::settings::Secret;

/// Longest a single Bot API call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for one bot. Cheap to clone; clones share the connection pool.
pub fn bot(token: &Secret, api_url: &Url) -> anyhow::Result<Bot> {
    let client = teloxide_core::net::default_reqwest_settings().timeout(CALL_TIMEOUT).build()?;
    Ok(Bot::with_client(token.expose(), client).set_api_url(api_url.clone()))
}

/// `text` with every occurrence of the token replaced, for logs and error reports.
pub fn redact(text: &str, token: &Secret) -> String {
    text.replace(token.expose(), "<bot-token>")
}
