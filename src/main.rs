//! The `botfleet` binary: parses the command line and settings, sets up logging, builds the
//! runtime and hands over to the library.

use std::process::ExitCode;
use std::sync::Arc;

use botfleet::metrics::Metrics;
use botfleet::settings::{
    self, ApiSettings, BotConfig, FakeTelegramSettings, MigrateSettings, Secret, SettingsError, Source,
    TelemetrySettings, WebhookSettings, WorkerSettings,
};
use botfleet::shutdown::{self, CancellationToken};
use botfleet::{api, db, fake_telegram, telemetry, webhook, worker};

const USAGE: &str = "usage: botfleet <command>

commands:
  worker                 serve the webhook (POST /webhook/{bot})
  api                    serve the feed API
  migrate                apply schema migrations and roles on the primary
  webhook set|info|delete
                         manage each bot's webhook with Telegram (a deploy step)
  fake-telegram          run the Bot API double for tests and the local cluster

Settings come from BOTFLEET_* environment variables (see the README).";

/// mimalloc: under W1, glibc's malloc and free were a fifth of a worker's CPU time, and a worker
/// spends a fifth less per update with mimalloc; SSE streams cost no more memory with it
/// (`loadtest/README.md`, W1 and W3).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a command line that makes no sense (sysexits' EX_USAGE).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let command = match words.as_slice() {
        [] | ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        ["--version" | "-V"] => {
            println!("botfleet {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        ["worker"] => Command::Worker,
        ["api"] => Command::Api,
        ["fake-telegram"] => Command::FakeTelegram,
        ["migrate"] => Command::Migrate,
        ["webhook", sub] => match webhook::Command::parse(sub) {
            Some(sub) => Command::Webhook(sub),
            None => return usage_error(&format!("unknown webhook command {sub:?}")),
        },
        _ => return usage_error(&format!("unknown command {:?}", args.join(" "))),
    };
    run(command)
}

#[derive(Clone, Copy)]
enum Command {
    Worker,
    Api,
    FakeTelegram,
    Migrate,
    Webhook(webhook::Command),
}

fn usage_error(problem: &str) -> ExitCode {
    eprintln!("botfleet: {problem}\n\n{USAGE}");
    ExitCode::from(EXIT_USAGE)
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
    Webhook(webhook::Command, WebhookSettings),
}

impl Process {
    fn load(command: Command, source: &Source) -> Result<Self, SettingsError> {
        Ok(match command {
            Command::Worker => Self::Worker(WorkerSettings::load(source)?),
            Command::Api => Self::Api(ApiSettings::load(source)?),
            Command::FakeTelegram => Self::FakeTelegram(FakeTelegramSettings::load(source)?),
            Command::Migrate => Self::Migrate(MigrateSettings::load(source)?),
            Command::Webhook(sub) => Self::Webhook(sub, WebhookSettings::load(source)?),
        })
    }

    /// What error reports must never contain: the bots' tokens and webhook secrets.
    fn secrets(&self) -> Vec<Secret> {
        let bots: &[BotConfig] = match self {
            Self::Worker(settings) => &settings.bots,
            Self::Api(settings) => &settings.bots,
            Self::Webhook(_, settings) => &settings.bots,
            Self::FakeTelegram(_) | Self::Migrate(_) => &[],
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
                let applied = db::migrations::apply(&settings).await?;
                println!(
                    "migrations applied: {applied:?}; roles {} and {} granted",
                    settings.worker_role, settings.api_role
                );
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
