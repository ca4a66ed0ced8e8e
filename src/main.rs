//! The `botfleet` binary: parses the command line and settings, sets up logging, builds the
//! runtime and hands over to the library.

use std::process::ExitCode;
use std::sync::Arc;

use botfleet::metrics::Metrics;
use botfleet::settings::{
    self, ApiSettings, BotConfig, FakeTelegramSettings, MigrateSettings, RedisAclSettings, Secret,
    SettingsError, Source, TelemetrySettings, WebhookSettings, WorkerSettings,
};
use botfleet::shutdown::{self, CancellationToken};
use botfleet::{api, cli, fake_telegram, migrate, telemetry, webhook, worker};
use clap::{Parser, Subcommand};

/// mimalloc: under W1, glibc's malloc and free were a fifth of a worker's CPU time, and a worker
/// spends a fifth less per update with mimalloc; SSE streams cost no more memory with it
/// (`loadtest/README.md`, W1 and W3).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Telegram bot backend that scales out: stateless webhook workers, Redis, Postgres replicas,
/// a live feed.
///
/// Every setting comes from a BOTFLEET_* environment variable (or BOTFLEET_CONFIG_FILE); each
/// command's help lists those it reads, and the README says what they mean.
#[derive(Parser)]
#[command(
    name = "botfleet",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = "Common settings: BOTFLEET_CONFIG_FILE (a KEY=VALUE file under the environment), \
BOTFLEET_SECRETS_DIR (a folder of files named after settings; any setting X may also come from \
the file X_FILE names), BOTFLEET_LOG, BOTFLEET_LOG_FORMAT, BOTFLEET_ENVIRONMENT, \
BOTFLEET_SENTRY_DSN, BOTFLEET_THREADS."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Clone, Copy)]
enum Command {
    /// Serve the webhook (POST /webhook/{bot}) and run the bot.
    #[command(after_help = concat!(
        "Settings: BOTFLEET_DATABASE_URL, BOTFLEET_REDIS_URL, BOTFLEET_BOTS and per bot ",
        "BOTFLEET_BOT_<NAME>_TOKEN, _WEBHOOK_SECRET, _MODERATOR_CHAT, _ADMINS, _PAID_RATE; BOTFLEET_LISTEN, ",
        "BOTFLEET_ADMIN_LISTEN, BOTFLEET_SHUTDOWN_GRACE_SECS, BOTFLEET_DB_POOL_SIZE, ",
        "BOTFLEET_REDIS_PREFIX, BOTFLEET_TELEGRAM_API_URL, BOTFLEET_MAX_BODY_BYTES, ",
        "BOTFLEET_MAX_IN_FLIGHT, BOTFLEET_CHAT_LEASE_MS, BOTFLEET_MAX_WAIT_MS, BOTFLEET_CHAT_HOLD_MS, BOTFLEET_MAX_ATTEMPTS, ",
        "BOTFLEET_DIALOGUE_TTL_SECS, BOTFLEET_USER_CACHE_TTL_SECS, BOTFLEET_FEED_STREAM_LEN, ",
        "BOTFLEET_FLOOD_PER_BOT, BOTFLEET_FLOOD_PER_CHAT, BOTFLEET_FLOOD_PER_GROUP, ",
        "BOTFLEET_FLOOD_MAX_WAIT_MS, BOTFLEET_OUTBOX_CLAIM_MS, BOTFLEET_OUTBOX_MAX_DELIVERIES, ",
        "BOTFLEET_WEBHOOK_WATCH_SECS, BOTFLEET_RECONCILE_SECS, BOTFLEET_RECORD_PATH; and the common ones (botfleet --help)."
    ))]
    Worker,
    /// Serve the public feed: JSON, Server-Sent Events, media and the live page.
    #[command(after_help = concat!(
        "Settings: BOTFLEET_DATABASE_URL, BOTFLEET_REPLICA_URLS, BOTFLEET_REDIS_URL, BOTFLEET_LISTEN, ",
        "BOTFLEET_ADMIN_LISTEN, BOTFLEET_SHUTDOWN_GRACE_SECS, BOTFLEET_DB_POOL_SIZE, ",
        "BOTFLEET_REDIS_PREFIX, BOTFLEET_SSE_MAX_CLIENTS, BOTFLEET_SSE_HEARTBEAT_SECS, ",
        "BOTFLEET_CORS_ORIGINS, BOTFLEET_BOTS (for media) with BOTFLEET_BOT_<NAME>_TOKEN, ",
        "BOTFLEET_TELEGRAM_API_URL; and the common ones (botfleet --help)."
    ))]
    Api,
    /// Apply the schema migrations and the least-privilege roles on the primary.
    #[command(
        after_help = "Settings: BOTFLEET_DATABASE_URL (the owner), BOTFLEET_WORKER_ROLE, BOTFLEET_API_ROLE."
    )]
    Migrate,
    /// Create or update the Redis users of each role (worker, API node, webhook command), on the
    /// state Redis and the cache Redis.
    #[command(after_help = concat!(
        "Settings: BOTFLEET_REDIS_URL (a user allowed ACL), BOTFLEET_CACHE_REDIS_URL, ",
        "BOTFLEET_REDIS_PREFIX, BOTFLEET_REDIS_WORKER_PASSWORD, BOTFLEET_REDIS_API_PASSWORD, ",
        "BOTFLEET_REDIS_WEBHOOK_PASSWORD. The processes then connect as ",
        "redis://botfleet-worker:<password>@host, botfleet-api, botfleet-webhook."
    ))]
    RedisAcl,
    /// Manage each bot's webhook and command menu with Telegram (a deploy step).
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Run the Bot API double for tests, the local cluster and load tests.
    #[command(after_help = concat!(
        "Settings: BOTFLEET_LISTEN, BOTFLEET_ADMIN_LISTEN, BOTFLEET_SHUTDOWN_GRACE_SECS, ",
        "BOTFLEET_FAKE_LIMITS; and the common ones (botfleet --help)."
    ))]
    FakeTelegram,
}

const WEBHOOK_SETTINGS: &str = concat!(
    "Settings: BOTFLEET_BOTS with BOTFLEET_BOT_<NAME>_TOKEN and _WEBHOOK_SECRET, BOTFLEET_WEBHOOK_URL ",
    "(set), BOTFLEET_WEBHOOK_MAX_CONNECTIONS, BOTFLEET_TELEGRAM_API_URL, BOTFLEET_REDIS_URL and ",
    "BOTFLEET_REDIS_PREFIX (optional: where set remembers the secret's fingerprint)."
);

#[derive(Subcommand, Clone, Copy)]
enum WebhookCommand {
    /// Point Telegram at <BOTFLEET_WEBHOOK_URL>/<bot> and register the command menu, each only
    /// if it differs from what Telegram has.
    #[command(after_help = WEBHOOK_SETTINGS)]
    Set,
    /// Show what Telegram says of each bot's webhook.
    #[command(after_help = WEBHOOK_SETTINGS)]
    Info,
    /// Remove each bot's webhook (never done by a worker: it would cut off every other replica).
    #[command(after_help = WEBHOOK_SETTINGS)]
    Delete,
}

impl From<WebhookCommand> for webhook::Command {
    fn from(command: WebhookCommand) -> Self {
        match command {
            WebhookCommand::Set => webhook::Command::Set,
            WebhookCommand::Info => webhook::Command::Info,
            WebhookCommand::Delete => webhook::Command::Delete,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::exit("botfleet", &e),
    };
    run(cli.command)
}

fn config_error(e: &SettingsError) -> ExitCode {
    eprintln!("botfleet: {e}");
    ExitCode::from(settings::EXIT_CONFIG as u8)
}

fn run(command: Command) -> ExitCode {
    let source = match Source::from_env() {
        Ok(source) => source,
        Err(e) => return config_error(&e),
    };
    // Settings are parsed before anything starts, so a bad value never half-starts a process.
    let loaded = Process::load(command, &source)
        .and_then(|p| Ok((p, TelemetrySettings::load(&source)?, settings::threads(&source)?)));
    let (process, telemetry, threads) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => return config_error(&e),
    };
    telemetry::init_logs(&telemetry);
    // Kept until the end of main: dropping it sends what is still queued.
    let _sentry = telemetry::init_sentry(&telemetry, process.secrets());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.get());
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("botfleet: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(process.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed");
            eprintln!("botfleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Process {
    Worker(WorkerSettings),
    Api(ApiSettings),
    FakeTelegram(FakeTelegramSettings),
    Migrate(MigrateSettings),
    RedisAcl(RedisAclSettings),
    Webhook(webhook::Command, WebhookSettings),
}

impl Process {
    fn load(command: Command, source: &Source) -> Result<Self, SettingsError> {
        Ok(match command {
            Command::Worker => Self::Worker(WorkerSettings::load(source)?),
            Command::Api => Self::Api(ApiSettings::load(source)?),
            Command::FakeTelegram => Self::FakeTelegram(FakeTelegramSettings::load(source)?),
            Command::Migrate => Self::Migrate(MigrateSettings::load(source)?),
            Command::RedisAcl => Self::RedisAcl(RedisAclSettings::load(source)?),
            Command::Webhook { command } => Self::Webhook(command.into(), WebhookSettings::load(source)?),
        })
    }

    /// What error reports must never contain: the bots' tokens and webhook secrets.
    fn secrets(&self) -> Vec<Secret> {
        let bots: &[BotConfig] = match self {
            Self::Worker(settings) => &settings.bots,
            Self::Api(settings) => &settings.bots,
            Self::Webhook(_, settings) => &settings.bots,
            Self::FakeTelegram(_) | Self::Migrate(_) | Self::RedisAcl(_) => &[],
        };
        bots.iter().flat_map(|bot| [bot.token.clone(), Secret::new(bot.webhook_secret.expose())]).collect()
    }

    async fn run(self) -> anyhow::Result<()> {
        let metrics = |process| Metrics::new(process).map(Arc::new);
        let server = match self {
            Self::Worker(settings) => worker::build(settings, metrics("worker")?).await?,
            Self::Api(settings) => api::build(settings, metrics("api")?).await?,
            Self::FakeTelegram(settings) => fake_telegram::build(settings, metrics("fake-telegram")?).await?,
            Self::Migrate(settings) => {
                println!("{}", migrate::run(&settings).await?);
                return Ok(());
            }
            Self::RedisAcl(settings) => {
                for line in botfleet::kv::acl::apply(&settings).await? {
                    println!("{line}");
                }
                return Ok(());
            }
            Self::Webhook(command, settings) => {
                for line in webhook::run(command, &settings).await? {
                    println!("{line}");
                }
                return Ok(());
            }
        };
        let stop = CancellationToken::new();
        shutdown::cancel_on_signal(stop.clone());
        server.run_until_stopped(stop).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
