//! The command line: one sub-command per workload, each with only the flags it reads. Durations
//! are written `30s`, `5m`, `1h` or `500ms` (a bare number counts seconds). A flag given twice
//! takes its last value (the bench scripts append to a common command). A command line that
//! makes no sense exits with 64 and one line saying why.

use std::time::Duration;

use botfleet::replay::Arrival;
use clap::{Args, Parser, Subcommand};

/// Drives the standard botfleet workloads (shared/WORKLOADS.md) against a cluster, found through
/// its cluster.env, and prints one JSON object of results.
#[derive(Parser)]
#[command(name = "loadtest", version, propagate_version = true, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// W1: private text messages to the webhook through Nginx, closed loop at a concurrency or
    /// open loop at a rate.
    #[command(args_override_self = true)]
    W1(W1),
    /// W2: cached feed reads through Nginx (80% page 1, 15% a next page, 5% one post).
    #[command(args_override_self = true)]
    W2(W2),
    /// W3: SSE clients on one API node while posts are published; delivery latency per event.
    #[command(args_override_self = true)]
    W3(W3),
    /// A broadcast to N users through the fake Telegram's limits.
    #[command(args_override_self = true)]
    Broadcast(BroadcastArgs),
    /// Replays a capture or a scenario the way Telegram delivers, then audits exactly-once.
    #[command(args_override_self = true)]
    Replay(ReplayArgs),
    /// A hostile reader: forged cursors, media cache busting, a resume storm or slow request
    /// heads, from one client address (loadtest/bench-hostile).
    #[command(args_override_self = true)]
    Attack(AttackArgs),
    /// Draws a chart of a CSV file's columns (loadtest/soak).
    Chart {
        #[arg(long)]
        csv: String,
        #[arg(long)]
        out: String,
    },
}

#[derive(Args)]
pub struct Common {
    /// The cluster's KEY=VALUE file (bin/cluster writes it).
    #[arg(long, default_value = ".cluster/cluster.env")]
    pub env: String,
    /// The first update_id sent (each run should start past the previous one's).
    #[arg(long)]
    pub first_update_id: Option<i64>,
}

/// How W1 and W2 send: lanes at once, for how long.
#[derive(Args)]
pub struct Lanes {
    /// Lanes sending at once (1 to 10000; each owns its senders).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to send.
    #[arg(long, alias = "seconds", value_parser = duration, default_value = "20s")]
    pub duration: Duration,
}

#[derive(Args)]
pub struct W1 {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub lanes: Lanes,
    /// Updates per second (open loop); without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// A folder for the run's chart.
    #[arg(long)]
    pub out: Option<String>,
}

#[derive(Args)]
pub struct W2 {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub lanes: Lanes,
    /// Read this path for every request instead (the static-file baseline).
    #[arg(long = "static")]
    pub static_path: Option<String>,
}

#[derive(Args)]
pub struct W3 {
    #[command(flatten)]
    pub common: Common,
    /// The stream URL of one API node.
    #[arg(long)]
    pub stream: String,
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Posts published per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    #[arg(long, alias = "seconds", value_parser = duration, default_value = "20s")]
    pub duration: Duration,
    /// The serving process's pid (the API node's), to report its CPU and memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// POST each post as `{"text": …}` to this URL (a baseline's publisher, such as Nchan's)
    /// instead of through the webhook.
    #[arg(long)]
    pub publish: Option<String>,
}

#[derive(Args)]
pub struct AttackArgs {
    pub kind: crate::attack::Kind,
    /// host:port of Nginx or of an API node.
    #[arg(long)]
    pub target: std::net::SocketAddr,
    /// The client address to attack from (any of 127.0.0.0/8 works on loopback).
    #[arg(long, default_value = "127.0.0.2")]
    pub from: std::net::IpAddr,
    /// Requests (or slow connections) at once.
    #[arg(long, default_value_t = 32)]
    pub lanes: usize,
    #[arg(long, alias = "seconds", value_parser = duration, default_value = "30s")]
    pub duration: Duration,
    /// The post whose photo `media` asks for.
    #[arg(long, default_value_t = 1)]
    pub post: i64,
}

#[derive(Args)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users the broadcast must reach.
    #[arg(long)]
    pub recipients: usize,
    /// Messages per second Telegram allows the bot.
    #[arg(long)]
    pub rate: f64,
    /// A paid broadcast (`/broadcast --paid`), at the bot's paid rate.
    #[arg(long)]
    pub paid: bool,
}

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: Common,
    /// Recorded updates (JSON lines), comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required_unless_present = "scenario", conflicts_with = "scenario")]
    pub capture: Vec<String>,
    /// A synthetic scenario (loadtest/scenarios/).
    #[arg(long)]
    pub scenario: Option<String>,
    /// The capture's own pace times X, or `max` (closed loop).
    #[arg(long, value_parser = speed, group = "pace")]
    pub speed: Option<Arrival>,
    /// A constant arrival rate, updates per second.
    #[arg(long, group = "pace")]
    pub rate: Option<f64>,
    /// A rate ramping FROM:TO over a duration, e.g. 100:1000:60s.
    #[arg(long, value_parser = ramp, group = "pace")]
    pub ramp: Option<Arrival>,
    /// Rates held for a duration each, e.g. 100,200,400:30s.
    #[arg(long, value_parser = step, group = "pace")]
    pub step: Option<Arrival>,
    /// Deliveries in flight at once, as Telegram's max_connections.
    #[arg(long, default_value_t = 40)]
    pub max_connections: usize,
    /// SSE subscribers to check for gaps meanwhile.
    #[arg(long = "sse", default_value_t = 0)]
    pub subscribers: usize,
    #[arg(long)]
    pub out: Option<String>,
    /// How long an update may go unacknowledged before it counts as lost.
    #[arg(long, alias = "give-up-secs", value_parser = duration, default_value = "60s")]
    pub give_up_after: Duration,
}

impl ReplayArgs {
    /// How updates arrive: the one pace given, or the capture's own.
    pub fn arrival(&self) -> Arrival {
        let given = [&self.speed, &self.ramp, &self.step].into_iter().flatten().next().cloned();
        given.or(self.rate.map(|rate| Arrival::Constant { rate })).unwrap_or(Arrival::Capture { speed: 1.0 })
    }
}

/// `30s`, `5m`, `1h`, `500ms`, or a bare number of seconds.
pub fn duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{raw:?} is not a duration like 30s or 5m"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{raw:?}: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{raw:?}: {e}"))
}

fn speed(raw: &str) -> Result<Arrival, String> {
    match raw {
        "max" => Ok(Arrival::Closed),
        _ => raw
            .parse()
            .map(|speed| Arrival::Capture { speed })
            .map_err(|_| "a factor like 2, or max".to_owned()),
    }
}

/// `FROM:TO:DURATION`.
fn ramp(raw: &str) -> Result<Arrival, String> {
    let bad = || format!("{raw:?}: expected FROM:TO:DURATION, e.g. 100:1000:60s");
    let mut parts = raw.splitn(3, ':');
    let (Some(from), Some(to), Some(over)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    Ok(Arrival::Ramp {
        from: from.parse().map_err(|_| bad())?,
        to: to.parse().map_err(|_| bad())?,
        over: duration(over)?,
    })
}

/// `R1,R2,…:DURATION`.
fn step(raw: &str) -> Result<Arrival, String> {
    let bad = || format!("{raw:?}: expected R1,R2,…:DURATION, e.g. 100,200,400:30s");
    let (rates, every) = raw.rsplit_once(':').ok_or_else(bad)?;
    let rates = rates.split(',').map(str::parse).collect::<Result<Vec<f64>, _>>().map_err(|_| bad())?;
    Ok(Arrival::Step { rates, every: duration(every)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_count_seconds() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("20"), Ok(Duration::from_secs(20)));
        assert!(duration("5 minutes").is_err());
        assert!(duration("s").is_err());
        assert!(duration("-1s").is_err());
    }

    #[test]
    fn paces_parse_and_one_at_most_is_given() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["loadtest", "replay", "--scenario", "s.json", "--ramp", "10:20:1m"])
            .unwrap();
        let Command::Replay(replay) = cli.command else { panic!("a replay") };
        assert!(matches!(replay.arrival(), Arrival::Ramp { over, .. } if over == Duration::from_secs(60)));
        let both =
            Cli::try_parse_from(["loadtest", "replay", "--scenario", "s", "--rate", "5", "--speed", "max"]);
        assert!(both.is_err(), "two paces at once make no sense");
        assert!(Cli::try_parse_from(["loadtest", "replay"]).is_err(), "a capture or a scenario is needed");
        let twice = Cli::try_parse_from(["loadtest", "w1", "--seconds", "20", "--seconds", "5"]).unwrap();
        let Command::W1(w1) = twice.command else { panic!("w1") };
        assert_eq!(w1.lanes.duration, Duration::from_secs(5), "the last value wins");
    }
}
