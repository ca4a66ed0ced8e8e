//! Integration tests: real Postgres (primary and streaming replica), Redis and Nginx, started
//! by `bin/test`; the fake Telegram in place of Telegram. One binary, so it links once.

// Test code panics on purpose: an unwrap is an assertion with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod bot;
mod browser;
mod chaos;
mod cli;
mod cluster;
mod crash;
mod deploy;
mod exactly_once;
mod fake_telegram;
mod feed;
mod flood;
mod helpers;
mod hostile;
mod layout;
mod lua;
mod openapi;
mod outbox;
mod redis_acl;
mod replay;
mod schema;
mod sre;
mod stream;
mod telemetry;
mod tls;
mod webhook;
mod webhook_command;
