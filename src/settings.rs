//! Typed settings, read once at start from the environment (optionally also from a file of
//! `KEY=VALUE` lines named by `BOTFLEET_CONFIG_FILE`; the environment wins; any key also from a
//! file of its own, `X_FILE` or in `BOTFLEET_SECRETS_DIR`) and passed down.
//!
//! Every key is a constant here with its default, and is documented in the README's settings
//! table. A bad or missing value is a [`SettingsError`] naming the key; `main` prints it and
//! exits with [`EXIT_CONFIG`]. Nothing here is global: each process builds its own struct.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use crate::types::{BotId, BotName, ChatId, UserId, WebhookSecret};

/// Exit code for a bad or missing setting (`EX_USAGE` of sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

pub const CONFIG_FILE: &str = "BOTFLEET_CONFIG_FILE";
pub const SECRETS_DIR: &str = "BOTFLEET_SECRETS_DIR";
pub const LOG: &str = "BOTFLEET_LOG";
pub const LOG_FORMAT: &str = "BOTFLEET_LOG_FORMAT";
pub const ENVIRONMENT: &str = "BOTFLEET_ENVIRONMENT";
pub const SENTRY_DSN: &str = "BOTFLEET_SENTRY_DSN";
pub const LISTEN: &str = "BOTFLEET_LISTEN";
pub const ADMIN_LISTEN: &str = "BOTFLEET_ADMIN_LISTEN";
pub const SHUTDOWN_GRACE_SECS: &str = "BOTFLEET_SHUTDOWN_GRACE_SECS";
pub const THREADS: &str = "BOTFLEET_THREADS";
pub const DATABASE_URL: &str = "BOTFLEET_DATABASE_URL";
pub const REPLICA_URLS: &str = "BOTFLEET_REPLICA_URLS";
pub const DB_POOL_SIZE: &str = "BOTFLEET_DB_POOL_SIZE";
pub const REDIS_URL: &str = "BOTFLEET_REDIS_URL";
pub const REDIS_PREFIX: &str = "BOTFLEET_REDIS_PREFIX";
pub const CACHE_REDIS_URL: &str = "BOTFLEET_CACHE_REDIS_URL";
pub const TRUSTED_PROXIES: &str = "BOTFLEET_TRUSTED_PROXIES";
pub const REDIS_WORKER_PASSWORD: &str = "BOTFLEET_REDIS_WORKER_PASSWORD";
pub const REDIS_API_PASSWORD: &str = "BOTFLEET_REDIS_API_PASSWORD";
pub const REDIS_WEBHOOK_PASSWORD: &str = "BOTFLEET_REDIS_WEBHOOK_PASSWORD";
pub const API_RATE: &str = "BOTFLEET_API_RATE";
pub const API_BURST: &str = "BOTFLEET_API_BURST";
pub const STREAMS_PER_ADDRESS: &str = "BOTFLEET_STREAMS_PER_ADDRESS";
pub const BOTS: &str = "BOTFLEET_BOTS";
pub const TELEGRAM_API_URL: &str = "BOTFLEET_TELEGRAM_API_URL";
pub const MAX_BODY_BYTES: &str = "BOTFLEET_MAX_BODY_BYTES";
pub const WORKER_ROLE: &str = "BOTFLEET_WORKER_ROLE";
pub const API_ROLE: &str = "BOTFLEET_API_ROLE";
pub const WEBHOOK_URL: &str = "BOTFLEET_WEBHOOK_URL";
pub const WEBHOOK_MAX_CONNECTIONS: &str = "BOTFLEET_WEBHOOK_MAX_CONNECTIONS";
pub const FAKE_LIMITS: &str = "BOTFLEET_FAKE_LIMITS";
pub const CHAT_LEASE_MS: &str = "BOTFLEET_CHAT_LEASE_MS";
pub const CHAT_HOLD_MS: &str = "BOTFLEET_CHAT_HOLD_MS";
pub const MAX_WAIT_MS: &str = "BOTFLEET_MAX_WAIT_MS";
pub const MAX_ATTEMPTS: &str = "BOTFLEET_MAX_ATTEMPTS";
pub const DIALOGUE_TTL_SECS: &str = "BOTFLEET_DIALOGUE_TTL_SECS";
pub const USER_CACHE_TTL_SECS: &str = "BOTFLEET_USER_CACHE_TTL_SECS";
pub const FEED_STREAM_LEN: &str = "BOTFLEET_FEED_STREAM_LEN";
pub const OUTBOX_CLAIM_MS: &str = "BOTFLEET_OUTBOX_CLAIM_MS";
pub const OUTBOX_MAX_DELIVERIES: &str = "BOTFLEET_OUTBOX_MAX_DELIVERIES";
pub const MAX_IN_FLIGHT: &str = "BOTFLEET_MAX_IN_FLIGHT";
pub const WEBHOOK_WATCH_SECS: &str = "BOTFLEET_WEBHOOK_WATCH_SECS";
pub const RECONCILE_SECS: &str = "BOTFLEET_RECONCILE_SECS";
pub const FLOOD_PER_BOT: &str = "BOTFLEET_FLOOD_PER_BOT";
pub const FLOOD_PER_CHAT: &str = "BOTFLEET_FLOOD_PER_CHAT";
pub const FLOOD_PER_GROUP: &str = "BOTFLEET_FLOOD_PER_GROUP";
pub const FLOOD_MAX_WAIT_MS: &str = "BOTFLEET_FLOOD_MAX_WAIT_MS";
pub const SSE_MAX_CLIENTS: &str = "BOTFLEET_SSE_MAX_CLIENTS";
pub const SSE_HEARTBEAT_SECS: &str = "BOTFLEET_SSE_HEARTBEAT_SECS";
pub const CORS_ORIGINS: &str = "BOTFLEET_CORS_ORIGINS";
pub const RECORD_PATH: &str = "BOTFLEET_RECORD_PATH";

const DEFAULT_TELEGRAM_API_URL: &str = "https://api.telegram.org";

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("setting {key}: {problem}")]
pub struct SettingsError {
    pub key: String,
    pub problem: String,
}

impl SettingsError {
    fn new(key: &str, problem: impl Into<String>) -> Self {
        Self { key: key.to_owned(), problem: problem.into() }
    }
}

/// A value that must never be printed: tokens, secrets, URLs that may carry passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Any setting `X` may be given as `X_FILE`, the path of a file holding its value, its trailing
/// newline dropped; never both. `BOTFLEET_SECRETS_DIR` names a folder (a mounted Kubernetes
/// Secret, say) whose files named after settings are their `X_FILE`s.
fn read_files(vars: &mut HashMap<String, String>) -> Result<(), SettingsError> {
    if let Some(dir) = vars.get(SECRETS_DIR).filter(|dir| !dir.trim().is_empty()).cloned() {
        let entries = std::fs::read_dir(dir.trim())
            .map_err(|e| SettingsError::new(SECRETS_DIR, format!("cannot read {dir}: {e}")))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("BOTFLEET_") {
                let path = entry.path().to_string_lossy().into_owned();
                vars.entry(format!("{name}_FILE")).or_insert(path);
            }
        }
    }
    let files: Vec<(String, String)> = vars
        .iter()
        .filter(|(key, path)| key.starts_with("BOTFLEET_") && *key != CONFIG_FILE && !path.trim().is_empty())
        .filter_map(|(key, path)| Some((key.strip_suffix("_FILE")?.to_owned(), path.trim().to_owned())))
        .collect();
    for (key, path) in files {
        let file_key = format!("{key}_FILE");
        if vars.get(&key).is_some_and(|v| !v.trim().is_empty()) {
            return Err(SettingsError::new(&key, format!("is set, and so is {file_key}: set one")));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| SettingsError::new(&file_key, format!("cannot read {path}: {e}")))?;
        vars.insert(key, text.trim_end_matches(['\n', '\r']).to_owned());
    }
    Ok(())
}

/// Where settings are read from: the environment over an optional file.
#[derive(Debug, Clone, Default)]
pub struct Source {
    vars: HashMap<String, String>,
}

impl Source {
    /// The process environment, over the file named by `BOTFLEET_CONFIG_FILE` if set.
    pub fn from_env() -> Result<Self, SettingsError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let mut vars = match env.get(CONFIG_FILE).filter(|path| !path.is_empty()) {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| SettingsError::new(CONFIG_FILE, format!("cannot read {path}: {e}")))?;
                parse_env_file(&text).map_err(|problem| SettingsError::new(CONFIG_FILE, problem))?
            }
            None => HashMap::new(),
        };
        vars.extend(env);
        read_files(&mut vars)?;
        Ok(Self { vars })
    }

    /// Settings from explicit pairs, for tests and embedding.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// A value, with the empty string counting as unset.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn required(&self, key: &str) -> Result<&str, SettingsError> {
        self.get(key).ok_or_else(|| SettingsError::new(key, "is required but not set"))
    }

    fn parse_or<T>(&self, key: &str, default: T) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => {
                raw.parse().map_err(|e| SettingsError::new(key, format!("cannot parse {raw:?}: {e}")))
            }
        }
    }

    fn database_url(&self, key: &str) -> Result<Secret, SettingsError> {
        let raw = self.required(key)?;
        crate::tls::postgres(raw)
            .map_err(|e| SettingsError::new(key, format!("not a valid postgres URL: {e:#}")))?;
        Ok(Secret::new(raw))
    }

    fn redis_url(&self) -> Result<Secret, SettingsError> {
        self.redis_url_of(REDIS_URL)
    }

    fn redis_url_of(&self, key: &str) -> Result<Secret, SettingsError> {
        let raw = self.required(key)?;
        crate::tls::redis(raw)
            .map_err(|e| SettingsError::new(key, format!("not a valid redis URL: {e:#}")))?;
        Ok(Secret::new(raw))
    }

    fn url(&self, key: &str, default: Option<&str>) -> Result<Url, SettingsError> {
        let raw = match (self.get(key), default) {
            (Some(raw), _) | (None, Some(raw)) => raw,
            (None, None) => return Err(SettingsError::new(key, "is required but not set")),
        };
        Url::parse(raw).map_err(|e| SettingsError::new(key, format!("not a valid URL: {e}")))
    }

    fn role(&self, key: &str, default: &str) -> Result<String, SettingsError> {
        let role = self.get(key).unwrap_or(default);
        let valid = role.len() <= 63
            && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(role.to_owned())
        } else {
            Err(SettingsError::new(key, format!("{role:?} is not a plain lower-case role name")))
        }
    }

    /// A comma-separated list of address ranges.
    fn networks(&self, key: &str) -> Result<Vec<Network>, SettingsError> {
        let raw = self.get(key).unwrap_or_default();
        let ranges = raw.split(',').map(str::trim).filter(|r| !r.is_empty());
        ranges.map(|range| range.parse().map_err(|problem| SettingsError::new(key, problem))).collect()
    }

    /// `BOTFLEET_CORS_ORIGINS`: comma-separated `scheme://host[:port]` origins.
    fn origins(&self) -> Result<Vec<String>, SettingsError> {
        let raw = self.get(CORS_ORIGINS).unwrap_or_default();
        raw.split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|origin| match Url::parse(origin) {
                Ok(url) if url.origin().ascii_serialization() == origin => Ok(origin.to_owned()),
                _ => Err(SettingsError::new(
                    CORS_ORIGINS,
                    format!("{origin:?} is not an origin like https://example.org"),
                )),
            })
            .collect()
    }

    /// The bots named by `BOTFLEET_BOTS` (comma-separated names), each with
    /// `BOTFLEET_BOT_<NAME>_TOKEN` and `BOTFLEET_BOT_<NAME>_WEBHOOK_SECRET`.
    fn bots(&self) -> Result<Vec<BotConfig>, SettingsError> {
        let mut bots: Vec<BotConfig> = Vec::new();
        for raw in self.required(BOTS)?.split(',').map(str::trim) {
            let name = BotName::parse(raw).map_err(|e| SettingsError::new(BOTS, e.to_string()))?;
            let token_key = format!("BOTFLEET_BOT_{}_TOKEN", raw.to_ascii_uppercase());
            let secret_key = format!("BOTFLEET_BOT_{}_WEBHOOK_SECRET", raw.to_ascii_uppercase());
            let token = self.required(&token_key)?;
            let id = bot_id_of_token(token).ok_or_else(|| {
                SettingsError::new(&token_key, "is not a bot token of the form <bot id>:<secret>")
            })?;
            let webhook_secret = WebhookSecret::parse(self.required(&secret_key)?)
                .map_err(|e| SettingsError::new(&secret_key, e.to_string()))?;
            let moderator_key = format!("BOTFLEET_BOT_{}_MODERATOR_CHAT", raw.to_ascii_uppercase());
            let moderator_chat = match self.get(&moderator_key) {
                None => None,
                Some(_) => Some(ChatId(self.parse_or(&moderator_key, 0i64)?)),
            };
            let admins_key = format!("BOTFLEET_BOT_{}_ADMINS", raw.to_ascii_uppercase());
            let admins = self
                .get(&admins_key)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(|id| {
                    id.parse::<UserId>().map_err(|_| {
                        SettingsError::new(&admins_key, format!("{id:?} is not a Telegram user id"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let paid_key = format!("BOTFLEET_BOT_{}_PAID_RATE", raw.to_ascii_uppercase());
            let paid_rate: u32 = self.parse_or(&paid_key, MAX_PAID_RATE)?;
            if !(1..=MAX_PAID_RATE).contains(&paid_rate) {
                let problem = format!("{paid_rate} is not a rate of 1 to {MAX_PAID_RATE} messages a second");
                return Err(SettingsError::new(&paid_key, problem));
            }
            if bots.iter().any(|b| b.name == name || b.id == id) {
                return Err(SettingsError::new(BOTS, format!("bot {raw:?} is listed twice")));
            }
            bots.push(BotConfig {
                name,
                id,
                token: Secret::new(token),
                webhook_secret,
                moderator_chat,
                admins,
                paid_rate,
            });
        }
        Ok(bots)
    }
}

/// Parses `KEY=VALUE` lines as dotenv files have them (`#` comments, quoted values,
/// `export` prefixes), without touching the process environment.
/// A file of `KEY=VALUE` lines, values optionally quoted as in a shell (`.env`, cluster.env).
pub fn parse_env_file(text: &str) -> Result<HashMap<String, String>, String> {
    dotenvy::from_read_iter(text.as_bytes()).collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// The bot's numeric id is the part of its token before the colon.
fn bot_id_of_token(token: &str) -> Option<BotId> {
    let (id, rest) = token.split_once(':')?;
    let valid_rest =
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let id: i64 = id.parse().ok()?;
    (id > 0 && valid_rest).then_some(BotId(id))
}

/// One bot served by this deployment.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// The name in `BOTFLEET_BOTS` and in the webhook path `/webhook/{name}`.
    pub name: BotName,
    /// Telegram's id of the bot (its token's prefix); rows are namespaced by it.
    pub id: BotId,
    pub token: Secret,
    pub webhook_secret: WebhookSecret,
    /// With a moderator chat, new posts wait there for approval; without, they publish at once.
    pub moderator_chat: Option<ChatId>,
    /// User ids that may `/ban`, `/unban` and `/broadcast`.
    pub admins: Vec<UserId>,
    /// Messages a second of a paid broadcast (`/broadcast --paid`), at most Telegram's
    /// [`MAX_PAID_RATE`].
    pub paid_rate: u32,
}

/// The most messages a second Telegram allows a bot with `allow_paid_broadcast`.
pub const MAX_PAID_RATE: u32 = 1000;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, with the fields of every open span (for log pipelines).
    Json,
    /// Readable lines, coloured at a terminal.
    Text,
}

/// Threads of the process's runtime, when set; else one per core.
pub fn threads(src: &Source) -> Result<Option<NonZeroUsize>, SettingsError> {
    match src.get(THREADS) {
        None => Ok(None),
        Some(_) => src.parse_or(THREADS, NonZeroUsize::MIN).map(Some),
    }
}

/// Logs and error reports, for every command.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// A `tracing` filter such as `info` or `botfleet=debug,info`.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// Named in every error report: `production` unless set (the local cluster says `local`).
    pub environment: String,
    /// Where errors and panics are reported; none are when unset.
    pub sentry_dsn: Option<Secret>,
}

impl TelemetrySettings {
    pub fn load(src: &Source) -> Result<Self, SettingsError> {
        let log_filter = src.get(LOG).unwrap_or("info").to_owned();
        tracing_subscriber::EnvFilter::try_new(&log_filter)
            .map_err(|e| SettingsError::new(LOG, format!("not a log filter: {e}")))?;
        let environment = src.get(ENVIRONMENT).unwrap_or("production").to_owned();
        // JSON where logs are collected by machines, readable lines everywhere else.
        let log_format = match src.get(LOG_FORMAT) {
            None if environment == "production" => LogFormat::Json,
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(SettingsError::new(LOG_FORMAT, format!("{other:?} is neither json nor text")));
            }
        };
        let sentry_dsn = match src.get(SENTRY_DSN) {
            None => None,
            Some(raw) => {
                raw.parse::<sentry::types::Dsn>()
                    .map_err(|e| SettingsError::new(SENTRY_DSN, format!("not a Sentry DSN: {e}")))?;
                Some(Secret::new(raw))
            }
        };
        Ok(Self { log_filter, log_format, environment, sentry_dsn })
    }
}

/// Settings every long-running process shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// Address of the admin server (`/healthz`, `/readyz`, `/metrics`).
    pub admin_listen: SocketAddr,
    /// How long a draining process may take to finish its work after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Common {
    fn load(src: &Source, default_admin: &str) -> Result<Self, SettingsError> {
        Ok(Self {
            admin_listen: src.parse_or(ADMIN_LISTEN, parse_addr(default_admin))?,
            shutdown_grace: Duration::from_secs(src.parse_or(SHUTDOWN_GRACE_SECS, 25)?),
        })
    }
}

fn parse_addr(addr: &str) -> SocketAddr {
    // The defaults below are literal, valid socket addresses.
    addr.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub common: Common,
    pub listen: SocketAddr,
    /// The primary, connected to as the worker role.
    pub database_url: Secret,
    pub db_pool_size: usize,
    pub redis_url: Secret,
    /// Prefix of every Redis key of this deployment; bots add their id below it.
    pub redis_prefix: String,
    pub bots: Vec<BotConfig>,
    pub telegram_api_url: Url,
    /// Largest webhook body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Updates a worker handles at once; past it, 503 with `Retry-After` at once.
    pub max_in_flight: usize,
    /// A chat's turn (lease) length; renewed while an update is handled.
    pub chat_lease: Duration,
    /// Longest wait for a chat's turn before 503 + `Retry-After`.
    pub max_wait: Duration,
    /// Longest a failed update holds its chat's later updates back, awaiting its redelivery.
    pub chat_hold: Duration,
    /// Failed attempts at one update before it is dead-lettered and acknowledged.
    pub max_attempts: u64,
    /// An abandoned dialogue expires after this.
    pub dialogue_ttl: Duration,
    /// The Redis user cache's time to live.
    pub user_cache_ttl: Duration,
    /// Entries the feed stream keeps for SSE resumption (approximately).
    pub feed_stream_len: u64,
    /// Telegram's send limits, kept by the whole cluster together.
    pub flood: FloodLimits,
    /// A pending outbox message idle this long is claimed by another sender.
    pub outbox_claim_after: Duration,
    /// Deliveries of one outbox message before it is dead-lettered.
    pub outbox_max_deliveries: usize,
    /// How often one worker of the cluster asks Telegram for each bot's webhook info; `None`:
    /// never.
    pub webhook_watch: Option<Duration>,
    /// How often one worker of the cluster queues again what Redis lost of the outbox.
    pub reconcile: Duration,
    /// Where received updates are recorded, anonymised (see `worker/record.rs`); `None`: nowhere.
    pub record_path: Option<std::path::PathBuf>,
}

/// Messages the bot may send, over every worker together. `None` for a rate turns the flood
/// control off altogether (for benchmarks against a Telegram without limits).
#[derive(Debug, Clone, Copy)]
pub struct FloodLimits {
    /// Messages per second of the bot as a whole.
    pub per_bot: Option<f64>,
    /// Messages per second into one private chat.
    pub per_chat: Option<f64>,
    /// Messages per minute into one group.
    pub per_group: Option<f64>,
    /// Longest a message waits for its moment before the update is answered 503.
    pub max_wait: Duration,
}

impl FloodLimits {
    fn load(src: &Source) -> Result<Self, SettingsError> {
        // 0 means no limit.
        let rate = |key, default| -> Result<Option<f64>, SettingsError> {
            let rate: f64 = src.parse_or(key, default)?;
            if !rate.is_finite() || rate < 0.0 {
                return Err(SettingsError::new(key, format!("{rate} is not a rate (0 for no limit)")));
            }
            Ok((rate > 0.0).then_some(rate))
        };
        Ok(Self {
            per_bot: rate(FLOOD_PER_BOT, 30.0)?,
            per_chat: rate(FLOOD_PER_CHAT, 1.0)?,
            per_group: rate(FLOOD_PER_GROUP, 20.0)?,
            max_wait: Duration::from_millis(src.parse_or(FLOOD_MAX_WAIT_MS, 5_000)?),
        })
    }
}

impl WorkerSettings {
    pub fn load(src: &Source) -> Result<Self, SettingsError> {
        Ok(Self {
            common: Common::load(src, "127.0.0.1:9091")?,
            listen: src.parse_or(LISTEN, parse_addr("127.0.0.1:8081"))?,
            database_url: src.database_url(DATABASE_URL)?,
            db_pool_size: src.parse_or(DB_POOL_SIZE, 16)?,
            redis_url: src.redis_url()?,
            redis_prefix: src.get(REDIS_PREFIX).unwrap_or("botfleet").to_owned(),
            bots: src.bots()?,
            telegram_api_url: src.url(TELEGRAM_API_URL, Some(DEFAULT_TELEGRAM_API_URL))?,
            max_body_bytes: src.parse_or(MAX_BODY_BYTES, 256 * 1024)?,
            max_in_flight: match src.parse_or(MAX_IN_FLIGHT, 512)? {
                0 => return Err(SettingsError::new(MAX_IN_FLIGHT, "must be at least 1")),
                n => n,
            },
            chat_lease: Duration::from_millis(src.parse_or(CHAT_LEASE_MS, 15_000)?),
            max_wait: Duration::from_millis(src.parse_or(MAX_WAIT_MS, 10_000)?),
            chat_hold: Duration::from_millis(src.parse_or(CHAT_HOLD_MS, 30_000)?),
            max_attempts: src.parse_or(MAX_ATTEMPTS, 5)?,
            dialogue_ttl: Duration::from_secs(src.parse_or(DIALOGUE_TTL_SECS, 24 * 3600)?),
            user_cache_ttl: Duration::from_secs(src.parse_or(USER_CACHE_TTL_SECS, 300)?),
            feed_stream_len: src.parse_or(FEED_STREAM_LEN, 10_000)?,
            flood: FloodLimits::load(src)?,
            outbox_claim_after: Duration::from_millis(src.parse_or(OUTBOX_CLAIM_MS, 30_000)?),
            outbox_max_deliveries: src.parse_or(OUTBOX_MAX_DELIVERIES, 5)?,
            reconcile: match src.parse_or(RECONCILE_SECS, 30)? {
                0 => return Err(SettingsError::new(RECONCILE_SECS, "must be at least 1")),
                secs => Duration::from_secs(secs),
            },
            webhook_watch: match src.parse_or(WEBHOOK_WATCH_SECS, 60)? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            record_path: src.get(RECORD_PATH).map(std::path::PathBuf::from),
        })
    }
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub common: Common,
    pub listen: SocketAddr,
    /// The primary, connected to as the read-only API role: the fallback when no replica is fit.
    pub database_url: Secret,
    /// Read replicas, tried in order, connected to as the read-only API role.
    pub replica_urls: Vec<Secret>,
    pub db_pool_size: usize,
    pub redis_url: Secret,
    /// Where feed pages and media paths are cached (may evict): by default `redis_url`.
    pub cache_redis_url: Secret,
    pub redis_prefix: String,
    /// Per client address limits; requests from `trusted_proxies` are exempt (they limit).
    pub limits: AddressLimits,
    /// Open SSE streams one node accepts; more get 503.
    pub sse_max_clients: usize,
    /// Comment lines keep idle SSE streams open through proxies this often.
    pub sse_heartbeat: Duration,
    /// Origins (`https://example.org`) whose pages may call the API from a browser.
    pub cors_origins: Vec<String>,
    /// The bots whose photos the media proxy may fetch (optional: without them, no media).
    pub bots: Vec<BotConfig>,
    pub telegram_api_url: Url,
}

impl ApiSettings {
    pub fn load(src: &Source) -> Result<Self, SettingsError> {
        let replica_urls = match src.get(REPLICA_URLS) {
            None => Vec::new(),
            Some(raw) => {
                let one = |url: &str| Source::from_pairs([(REPLICA_URLS, url)]).database_url(REPLICA_URLS);
                raw.split(',').map(str::trim).filter(|u| !u.is_empty()).map(one).collect::<Result<_, _>>()?
            }
        };
        Ok(Self {
            common: Common::load(src, "127.0.0.1:9092")?,
            listen: src.parse_or(LISTEN, parse_addr("127.0.0.1:8082"))?,
            database_url: src.database_url(DATABASE_URL)?,
            replica_urls,
            db_pool_size: src.parse_or(DB_POOL_SIZE, 16)?,
            redis_url: src.redis_url()?,
            cache_redis_url: match src.get(CACHE_REDIS_URL) {
                Some(_) => src.redis_url_of(CACHE_REDIS_URL)?,
                None => src.redis_url()?,
            },
            redis_prefix: src.get(REDIS_PREFIX).unwrap_or("botfleet").to_owned(),
            limits: AddressLimits {
                trusted_proxies: src.networks(TRUSTED_PROXIES)?,
                rate: src.parse_or(API_RATE, 20)?,
                burst: src.parse_or(API_BURST, 100)?,
                streams: src.parse_or(STREAMS_PER_ADDRESS, 20)?,
            },
            sse_max_clients: src.parse_or(SSE_MAX_CLIENTS, 10_000)?,
            sse_heartbeat: Duration::from_secs(src.parse_or(SSE_HEARTBEAT_SECS, 15)?),
            cors_origins: src.origins()?,
            bots: if src.get(BOTS).is_some() { src.bots()? } else { Vec::new() },
            telegram_api_url: src.url(TELEGRAM_API_URL, Some(DEFAULT_TELEGRAM_API_URL))?,
        })
    }
}

/// What one client address may do to an API node reached directly (the same as Nginx allows it,
/// `deploy/nginx/render`).
#[derive(Debug, Clone)]
pub struct AddressLimits {
    /// Peers that enforce these limits themselves (Nginx): not limited again here.
    pub trusted_proxies: Vec<Network>,
    /// Requests per second, sustained, beyond `burst`.
    pub rate: u32,
    pub burst: u32,
    /// Open SSE streams at once.
    pub streams: u32,
}

/// An address range, `10.0.0.0/8` or `::1` (a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    base: std::net::IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let bits = |prefix: u8, width: u8| if prefix == 0 { 0 } else { u128::MAX << (width - prefix) };
        match (self.base, ip.to_canonical()) {
            (V4(base), V4(ip)) => {
                let mask = bits(self.prefix, 32) as u32;
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (V6(base), V6(ip)) => {
                let mask = bits(self.prefix, 128);
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let (ip, prefix) = raw.split_once('/').map_or((raw, None), |(ip, prefix)| (ip, Some(prefix)));
        let base: std::net::IpAddr = ip.parse().map_err(|_| format!("{raw:?} is not an address or range"))?;
        let width = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix.map(str::parse::<u8>) {
            None => width,
            Some(Ok(prefix)) if prefix <= width => prefix,
            Some(_) => return Err(format!("{raw:?}: the prefix length must be 0 to {width}")),
        };
        Ok(Self { base, prefix })
    }
}

/// What `botfleet redis-acl` needs: an admin connection to each Redis, the deployment's prefix
/// and each role's password.
#[derive(Debug, Clone)]
pub struct RedisAclSettings {
    pub redis_url: Secret,
    pub cache_redis_url: Option<Secret>,
    pub prefix: String,
    /// The worker's, the API node's and the webhook command's, in that order.
    pub passwords: [Secret; 3],
}

impl RedisAclSettings {
    pub fn load(src: &Source) -> Result<Self, SettingsError> {
        let password = |key: &str| src.required(key).map(Secret::new);
        Ok(Self {
            redis_url: src.redis_url()?,
            cache_redis_url: src
                .get(CACHE_REDIS_URL)
                .map(|_| src.redis_url_of(CACHE_REDIS_URL))
                .transpose()?,
            prefix: src.get(REDIS_PREFIX).unwrap_or("botfleet").to_owned(),
            passwords: [
                password(REDIS_WORKER_PASSWORD)?,
                password(REDIS_API_PASSWORD)?,
                password(REDIS_WEBHOOK_PASSWORD)?,
            ],
        })
    }

    /// The state Redis, and the cache Redis if it is another.
    pub fn redis_urls(&self) -> Vec<&Secret> {
        let cache = self.cache_redis_url.as_ref().filter(|cache| **cache != self.redis_url);
        std::iter::once(&self.redis_url).chain(cache).collect()
    }
}

#[derive(Debug, Clone)]
pub struct MigrateSettings {
    /// The primary, connected to as the owner of the schema.
    pub database_url: Secret,
    pub worker_role: String,
    pub api_role: String,
}

impl MigrateSettings {
    pub fn load(src: &Source) -> Result<Self, SettingsError> {
        Ok(Self {
            database_url: src.database_url(DATABASE_URL)?,
            worker_role: src.role(WORKER_ROLE, "botfleet_worker")?,
            api_role: src.role(API_ROLE, "botfleet_api")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub bots: Vec<BotConfig>,
    pub telegram_api_url: Url,
    /// Public base URL of the webhook; each bot's URL is `<base>/<bot name>`.
    pub webhook_url: Option<Url>,
    pub max_connections: u8,
    /// Where `set` remembers a fingerprint of each bot's secret (Telegram never shows it), so
    /// that it can tell an unchanged webhook; without it, `set` always calls setWebhook.
    pub redis_url: Option<Secret>,
    pub redis_prefix: String,
}

impl WebhookSettings {
    pub fn load(src: &Source) -> Result<Self, SettingsError> {
        let webhook_url = match src.get(WEBHOOK_URL) {
            Some(_) => Some(src.url(WEBHOOK_URL, None)?),
            None => None,
        };
        let max_connections: u8 = src.parse_or(WEBHOOK_MAX_CONNECTIONS, 40)?;
        if max_connections == 0 || max_connections > 100 {
            return Err(SettingsError::new(WEBHOOK_MAX_CONNECTIONS, "must be 1 to 100, as Telegram allows"));
        }
        Ok(Self {
            bots: src.bots()?,
            telegram_api_url: src.url(TELEGRAM_API_URL, Some(DEFAULT_TELEGRAM_API_URL))?,
            webhook_url,
            max_connections,
            redis_url: match src.get(REDIS_URL) {
                Some(_) => Some(src.redis_url()?),
                None => None,
            },
            redis_prefix: src.get(REDIS_PREFIX).unwrap_or("botfleet").to_owned(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct FakeTelegramSettings {
    pub common: Common,
    pub listen: SocketAddr,
    /// Answer 429 with `retry_after` past Telegram's rate limits.
    pub enforce_limits: bool,
}

impl FakeTelegramSettings {
    pub fn load(src: &Source) -> Result<Self, SettingsError> {
        Ok(Self {
            common: Common::load(src, "127.0.0.1:9093")?,
            listen: src.parse_or(LISTEN, parse_addr("127.0.0.1:8083"))?,
            enforce_limits: src.parse_or(FAKE_LIMITS, false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_source(extra: &[(&str, &str)]) -> Source {
        let mut pairs = vec![
            (DATABASE_URL, "postgres://u@127.0.0.1:5432/db"),
            (REDIS_URL, "redis://127.0.0.1:6379"),
            (BOTS, "main"),
            ("BOTFLEET_BOT_MAIN_TOKEN", "123456:ABC-def_1"),
            ("BOTFLEET_BOT_MAIN_WEBHOOK_SECRET", "s3cret_token"),
        ];
        pairs.extend_from_slice(extra);
        Source::from_pairs(pairs)
    }

    #[test]
    fn a_setting_comes_from_its_file_with_the_trailing_newline_dropped() {
        let dir = std::env::temp_dir().join(format!("botfleet-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("url");
        std::fs::write(&path, "redis://u:p@127.0.0.1:1\n").unwrap();
        let path = path.to_str().unwrap().to_owned();
        let mut vars = HashMap::from([("BOTFLEET_REDIS_URL_FILE".to_owned(), path.clone())]);
        read_files(&mut vars).unwrap();
        assert_eq!(vars["BOTFLEET_REDIS_URL"], "redis://u:p@127.0.0.1:1");

        let err = read_files(&mut vars).unwrap_err();
        assert_eq!(err.key, "BOTFLEET_REDIS_URL", "both set: {err}");
        let mut missing = HashMap::from([("BOTFLEET_DATABASE_URL_FILE".to_owned(), format!("{path}.gone"))]);
        let err = read_files(&mut missing).unwrap_err();
        assert_eq!(err.key, "BOTFLEET_DATABASE_URL_FILE");
        assert!(err.to_string().contains("cannot read"), "{err}");

        // A folder of them, as a Kubernetes Secret is mounted (its own entries start with "..").
        std::fs::write(dir.join("BOTFLEET_BOT_MAIN_TOKEN"), "1:abc").unwrap();
        std::fs::write(dir.join("..data"), "").unwrap();
        let mut vars = HashMap::from([(SECRETS_DIR.to_owned(), dir.to_str().unwrap().to_owned())]);
        read_files(&mut vars).unwrap();
        assert_eq!(vars["BOTFLEET_BOT_MAIN_TOKEN"], "1:abc");
        assert_eq!(vars.len(), 3, "the folder, the file's path and the setting: {vars:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn worker_settings_load_with_defaults() {
        let settings = WorkerSettings::load(&worker_source(&[])).unwrap();
        assert_eq!(settings.bots[0].id, BotId(123456));
        assert_eq!(settings.redis_prefix, "botfleet");
        assert_eq!(settings.max_body_bytes, 256 * 1024);
        assert_eq!(settings.bots[0].paid_rate, 1000, "Telegram's most for a paid broadcast");
    }

    #[test]
    fn telemetry_is_json_in_production_readable_elsewhere_and_refuses_bad_values() {
        let load =
            |pairs: &[(&str, &str)]| TelemetrySettings::load(&Source::from_pairs(pairs.iter().copied()));
        let production = load(&[]).unwrap();
        assert_eq!((production.log_format, production.environment.as_str()), (LogFormat::Json, "production"));
        assert!(production.sentry_dsn.is_none(), "error reports are off without a DSN");
        assert_eq!(load(&[(ENVIRONMENT, "local")]).unwrap().log_format, LogFormat::Text);
        assert_eq!(
            load(&[(ENVIRONMENT, "local"), (LOG_FORMAT, "json")]).unwrap().log_format,
            LogFormat::Json
        );
        assert!(load(&[(SENTRY_DSN, "https://key@sentry.example.org/42")]).unwrap().sentry_dsn.is_some());
        for (key, value) in [(LOG_FORMAT, "xml"), (SENTRY_DSN, "not a dsn"), (LOG, "botfleet=loud")] {
            let err = load(&[(key, value)]).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn threads_are_one_per_core_unless_set_to_a_positive_number() {
        let threads = |value: &str| threads(&Source::from_pairs([(THREADS, value)]));
        assert_eq!(threads("").unwrap(), None);
        assert_eq!(threads("1").unwrap(), NonZeroUsize::new(1));
        assert_eq!(threads(" 8 ").unwrap(), NonZeroUsize::new(8));
        for bad in ["0", "-1", "two", "1.5"] {
            assert_eq!(threads(bad).unwrap_err().key, THREADS, "{bad:?} should be refused");
        }
    }

    #[test]
    fn api_limits_and_the_cache_redis_have_defaults_and_refuse_bad_values() {
        let load = |extra: &[(&str, &str)]| {
            let mut pairs =
                vec![(DATABASE_URL, "postgres://u@127.0.0.1/db"), (REDIS_URL, "redis://127.0.0.1:6379")];
            pairs.extend_from_slice(extra);
            ApiSettings::load(&Source::from_pairs(pairs))
        };
        let defaults = load(&[]).unwrap();
        assert_eq!(defaults.cache_redis_url, defaults.redis_url, "one Redis unless told");
        let limits = &defaults.limits;
        assert_eq!(
            (limits.rate, limits.burst, limits.streams, limits.trusted_proxies.len()),
            (20, 100, 20, 0)
        );
        let set = load(&[(CACHE_REDIS_URL, "redis://127.0.0.1:6380"), (TRUSTED_PROXIES, "10.0.0.0/8, ::1")])
            .unwrap();
        assert_eq!(set.cache_redis_url.expose(), "redis://127.0.0.1:6380");
        let inside = |ip: &str| set.limits.trusted_proxies.iter().any(|n| n.contains(ip.parse().unwrap()));
        assert!(inside("10.1.2.3") && inside("::1") && inside("::ffff:10.9.9.9"));
        assert!(!inside("11.0.0.1") && !inside("::2") && !inside("127.0.0.1"));
        for (key, value) in [
            (CACHE_REDIS_URL, "http://nope"),
            (TRUSTED_PROXIES, "10.0.0.0/33"),
            (TRUSTED_PROXIES, "nginx"),
            (API_RATE, "-1"),
            (STREAMS_PER_ADDRESS, "many"),
        ] {
            assert_eq!(load(&[(key, value)]).unwrap_err().key, key, "{key}={value} should be refused");
        }
        assert!("0.0.0.0/0".parse::<Network>().unwrap().contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn missing_key_is_named() {
        let err = WorkerSettings::load(&worker_source(&[(DATABASE_URL, "")])).unwrap_err();
        assert_eq!(err.key, DATABASE_URL);
        let err = WorkerSettings::load(&worker_source(&[("BOTFLEET_BOT_MAIN_TOKEN", "")])).unwrap_err();
        assert_eq!(err.key, "BOTFLEET_BOT_MAIN_TOKEN");
    }

    #[test]
    fn bad_values_are_named() {
        for (key, value) in [
            (LISTEN, "nowhere"),
            (DB_POOL_SIZE, "many"),
            ("BOTFLEET_BOT_MAIN_TOKEN", "no-colon"),
            ("BOTFLEET_BOT_MAIN_WEBHOOK_SECRET", "has space"),
            (BOTS, "Main Bot"),
            (TELEGRAM_API_URL, "::"),
            ("BOTFLEET_BOT_MAIN_PAID_RATE", "0"),
            ("BOTFLEET_BOT_MAIN_PAID_RATE", "1001"),
            ("BOTFLEET_BOT_MAIN_PAID_RATE", "fast"),
        ] {
            let err = WorkerSettings::load(&worker_source(&[(key, value)])).unwrap_err();
            assert_eq!(err.key, key, "{key}={value} should be rejected naming {key}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let settings = WorkerSettings::load(&worker_source(&[])).unwrap();
        let printed = format!("{settings:?}");
        assert!(!printed.contains("ABC-def_1"), "token printed: {printed}");
        assert!(!printed.contains("s3cret_token"), "secret printed: {printed}");
    }

    #[test]
    fn env_file_lines() {
        let vars = parse_env_file("# c\n\nA=1\nB=\"two words\"\nC='x=y'\n").unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x=y");
        assert!(parse_env_file("oops").is_err());
    }
}
