//! Logs and error reports of every process: `tracing` to stderr (JSON lines in production,
//! readable lines locally) and Sentry for errors and panics when `BOTFLEET_SENTRY_DSN` is set.
//!
//! An error report names the release and the environment and, for an update, the bot, the
//! update kind and a keyed hash of the chat: never a chat or user id, a message text, a token
//! or a secret (reports are scrubbed of those before they leave). Nginx gives every request an
//! `X-Request-Id`; it is a field of every log line of the request and a tag of its reports, so
//! one id finds both.

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use sentry::protocol::Event;
use sentry::{ClientInitGuard, ClientOptions, Hub, SentryFutureExt};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::settings::{LogFormat, Secret, TelemetrySettings};

/// The header Nginx fills with its `$request_id`.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Installs the process's log subscriber; call once, first thing.
pub fn init_logs(settings: &TelemetrySettings) {
    // The filter was validated with the settings.
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match settings.log_format {
        // Each line carries the fields of its spans: request id, bot, update id.
        LogFormat::Json => logs.json().with_current_span(false).with_span_list(true).init(),
        // Colours only for a person at a terminal, never in log files.
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}

/// Starts reporting to Sentry if a DSN is set; reports are sent until the guard is dropped.
/// `secrets` (tokens, webhook secrets) are cut out of every report.
pub fn init_sentry(settings: &TelemetrySettings, secrets: Vec<Secret>) -> Option<ClientInitGuard> {
    let dsn = settings.sentry_dsn.as_ref()?;
    let mut options = sentry_options(settings, secrets);
    // Validated with the settings.
    options.dsn = dsn.expose().parse().ok();
    Some(sentry::init(options))
}

/// Sentry's options for this process, without the DSN (tests give their own transport).
pub fn sentry_options(settings: &TelemetrySettings, secrets: Vec<Secret>) -> ClientOptions {
    let scrubber = Scrubber { secrets };
    ClientOptions {
        release: Some(concat!("botfleet@", env!("CARGO_PKG_VERSION")).into()),
        environment: Some(settings.environment.clone().into()),
        send_default_pii: false,
        before_send: Some(Arc::new(move |event| Some(scrubber.event(event)))),
        ..ClientOptions::default()
    }
}

/// Reports an error (one event) with the tags of the current scope.
pub fn report_error(message: &str) {
    sentry::capture_message(message, sentry::Level::Error);
}

/// Tags the current scope's error reports.
pub fn tag(key: &str, value: &str) {
    sentry::configure_scope(|scope| scope.set_tag(key, value));
}

/// `future` with an error-report scope of its own, starting as a copy of the current one: tags
/// set inside stay inside, and a panic inside is reported with them.
pub fn own_scope<F: Future>(future: F) -> sentry::SentryFuture<F> {
    future.bind_hub(scope_of_its_own())
}

/// A copy of the current error-report scope; without Sentry, the current one (no cost).
fn scope_of_its_own() -> Arc<Hub> {
    let current = Hub::current();
    if current.client().is_some() { Arc::new(Hub::new_from_top(current)) } else { current }
}

/// A chat as error reports name it: the same chat gives the same tag, but the tag cannot be
/// turned back into the chat id without `key` (the bot's webhook secret).
pub fn chat_tag(key: &[u8], chat: i64) -> String {
    let digest = Sha256::new().chain_update(key).chain_update(chat.to_be_bytes()).finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Middleware: runs each request in a span and an error-report scope carrying Nginx's request
/// id, when the request has one.
pub async fn request_context(request: Request, next: Next) -> Response {
    let Some(id) = request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).filter(|id| {
        // Nginx's ids are 32 hex digits; anything else a client made up is not logged.
        id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) else {
        return next.run(request).await;
    };
    let span = tracing::info_span!("request", request_id = %id);
    let scope = scope_of_its_own();
    scope.configure_scope(|scope| scope.set_tag("request_id", id));
    next.run(request).instrument(span).bind_hub(scope).await
}

/// Cuts secrets out of error reports.
struct Scrubber {
    secrets: Vec<Secret>,
}

impl Scrubber {
    fn event(&self, mut event: Event<'static>) -> Event<'static> {
        if let Some(message) = event.message.as_mut() {
            *message = self.text(message);
        }
        for exception in &mut event.exception.values {
            if let Some(value) = exception.value.as_mut() {
                *value = self.text(value);
            }
        }
        for breadcrumb in &mut event.breadcrumbs.values {
            if let Some(message) = breadcrumb.message.as_mut() {
                *message = self.text(message);
            }
        }
        event
    }

    fn text(&self, text: &str) -> String {
        let known = self
            .secrets
            .iter()
            .filter(|secret| !secret.expose().is_empty())
            .fold(text.to_owned(), |text, secret| text.replace(secret.expose(), "<secret>"));
        scrub_tokens(&known)
    }
}

/// `text` with everything shaped like a bot token (`<digits>:<20 or more of [A-Za-z0-9_-]>`)
/// replaced, whichever bot it belongs to.
pub fn scrub_tokens(text: &str) -> String {
    let bytes = text.as_bytes();
    let token_char = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-';
    let mut out = String::with_capacity(text.len());
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b':' {
            let digits = bytes[copied..i].iter().rev().take_while(|b| b.is_ascii_digit()).count();
            let rest = bytes[i + 1..].iter().take_while(|b| token_char(b)).count();
            if digits >= 3 && rest >= 20 {
                out.push_str(&text[copied..i - digits]);
                out.push_str("<bot-token>");
                i += 1 + rest;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_any_bot_are_cut_out() {
        let text =
            "GET https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe failed";
        assert_eq!(scrub_tokens(text), "GET https://api.telegram.org/bot<bot-token>/getMe failed");
        assert_eq!(scrub_tokens("a:b 12:30 at 10:00:00, 42: ok"), "a:b 12:30 at 10:00:00, 42: ok");
        assert_eq!(scrub_tokens("ünïcode 1234:abcdefghijklmnopqrstuvwxyz!"), "ünïcode <bot-token>!");
    }

    #[test]
    fn known_secrets_are_cut_out_of_every_part_of_a_report() {
        let scrubber = Scrubber { secrets: vec![Secret::new("hush-hush"), Secret::new("")] };
        let mut event = Event { message: Some("saw hush-hush".into()), ..Event::default() };
        event.exception.values.push(sentry::protocol::Exception {
            value: Some("panicked on hush-hush".into()),
            ..Default::default()
        });
        let event = scrubber.event(event);
        assert_eq!(event.message.as_deref(), Some("saw <secret>"));
        assert_eq!(event.exception.values[0].value.as_deref(), Some("panicked on <secret>"));
    }

    #[test]
    fn a_chat_tag_is_stable_per_key_and_hides_the_chat() {
        assert_eq!(chat_tag(b"k", 42), chat_tag(b"k", 42));
        assert_ne!(chat_tag(b"k", 42), chat_tag(b"other", 42));
        assert_ne!(chat_tag(b"k", 42), chat_tag(b"k", 43));
        let tag = chat_tag(b"k", 42);
        assert!(tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()), "{tag}");
    }
}
