//! The Redis users of each role (src/kv/acl.rs), as `schema.rs` proves the Postgres roles: what
//! each may do, and what it is refused. Every other test runs its processes as these users too.

use botfleet::kv::{BotKeys, FeedKeys};
use botfleet::settings::{self, Source, WorkerSettings};
use botfleet::types::{BotId, ChatId, UpdateId};

use crate::helpers::{API_ROLE, WORKER_ROLE, env, redis_url, unique};

async fn as_role(role: &str) -> botfleet::kv::Conn {
    crate::helpers::redis_at(&redis_url(role)).await
}

/// A connection to one server as `role` (a Redis Cluster's first seed node), for the commands of
/// no key that a cluster client would send to every node: each node refuses them itself.
async fn on_a_node_as(role: &str) -> redis::aio::MultiplexedConnection {
    let client = crate::helpers::redis_client(&redis_url(role));
    client.seed().get_multiplexed_async_connection().await.unwrap()
}

/// What `args` gets: `Ok` or the error code (`NOPERM`), or else the whole error.
async fn run(conn: &mut impl redis::aio::ConnectionLike, args: &[&str]) -> Result<(), String> {
    let mut cmd = redis::cmd(args[0]);
    args[1..].iter().for_each(|arg| {
        cmd.arg(*arg);
    });
    cmd.query_async::<redis::Value>(conn)
        .await
        .map(drop)
        .map_err(|e| e.code().map_or_else(|| e.to_string(), str::to_owned))
}

const DANGEROUS: [&[&str]; 4] = [
    &["FLUSHALL"],
    &["KEYS", "*"],
    &["CONFIG", "SET", "maxmemory", "1"],
    &["ACL", "SETUSER", "mallory", "on"],
];

#[tokio::test]
async fn the_api_node_cannot_mark_updates_queue_messages_or_publish_posts() {
    let p = unique("r");
    let (keys, feed) = (BotKeys::new(&p, BotId(1)), FeedKeys::new(&p));
    let mut api = as_role(API_ROLE).await;
    let [outbox, _] = keys.outbox();
    let (handled, field) = keys.handled("42", UpdateId(7));
    let field = field.to_string();
    let dialogue = keys.dialogue(ChatId(42));
    let refused = [
        &["HSET", &handled, &field, "1"][..],
        &["SETBIT", &feed.published(botfleet::types::PostId(1)).0, "1", "1"],
        &["XADD", &outbox, "*", "chat", "42"],
        &["PUBLISH", &feed.channel, "a forged post"],
        &["SET", &dialogue, "a dialogue"],
        &["DEL", &feed.stream],
    ];
    for args in refused {
        assert_eq!(run(&mut api, args).await, Err("NOPERM".to_owned()), "the API node ran {args:?}");
    }
    let mut node = on_a_node_as(API_ROLE).await;
    for args in DANGEROUS {
        assert_eq!(run(&mut node, args).await, Err("NOPERM".to_owned()), "the API node ran {args:?}");
    }
    for args in [
        vec!["GET".to_owned(), dialogue.clone()],
        vec!["XRANGE".to_owned(), feed.stream.clone(), "-".into(), "+".into()],
        vec!["SET".to_owned(), feed.page_slot(7), "a page".into()],
        vec!["SET".to_owned(), feed.generation.clone(), "5".into()],
        vec!["SET".to_owned(), keys.media_path("u"), "files/x".into()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(run(&mut api, &args).await, Ok(()), "the API node must be able to run {args:?}");
    }
    assert_eq!(run(&mut node, &["INFO", "memory"]).await, Ok(()), "the API node samples memory");
}

#[tokio::test]
async fn the_worker_runs_no_dangerous_command_and_the_webhook_command_touches_its_key_only() {
    let p = unique("r");
    let keys = BotKeys::new(&p, BotId(1));
    let mut node = on_a_node_as(WORKER_ROLE).await;
    for args in DANGEROUS {
        assert_eq!(run(&mut node, args).await, Err("NOPERM".to_owned()), "the worker ran {args:?}");
    }
    let mut worker = as_role(WORKER_ROLE).await;
    let (handled, field) = keys.handled("42", UpdateId(7));
    assert_eq!(run(&mut worker, &["HSET", &handled, &field.to_string(), "1"]).await, Ok(()));
    let mut webhook = as_role("webhook").await;
    let secret = keys.webhook_secret();
    assert_eq!(run(&mut webhook, &["SET", &secret, "abc"]).await, Ok(()));
    assert_eq!(run(&mut webhook, &["GET", &handled]).await, Err("NOPERM".to_owned()));
    assert_eq!(run(&mut webhook, &["DEL", &secret]).await, Err("NOPERM".to_owned()));
}

#[tokio::test]
async fn a_wrong_redis_password_stops_the_worker_naming_the_setting() {
    let wrong = redis_url(WORKER_ROLE).replace(":test-worker@", ":not-the-password@");
    assert_ne!(wrong, redis_url(WORKER_ROLE));
    let pairs = [
        (settings::DATABASE_URL, env("BOTFLEET_TEST_PRIMARY_URL")),
        (settings::REDIS_URL, wrong),
        (settings::LISTEN, "127.0.0.1:0".to_owned()),
        (settings::ADMIN_LISTEN, "127.0.0.1:0".to_owned()),
        (settings::BOTS, "main".to_owned()),
        ("BOTFLEET_BOT_MAIN_TOKEN", crate::helpers::MAIN_BOT.token.to_owned()),
        ("BOTFLEET_BOT_MAIN_WEBHOOK_SECRET", crate::helpers::MAIN_BOT.secret.to_owned()),
    ];
    let settings = WorkerSettings::load(&Source::from_pairs(pairs)).unwrap();
    let metrics = std::sync::Arc::new(botfleet::metrics::Metrics::new("worker").unwrap());
    let Err(error) = botfleet::worker::build(settings, metrics).await else {
        panic!("a worker started with a password Redis refuses");
    };
    let message = format!("{error:#}");
    assert!(
        message.starts_with("setting BOTFLEET_REDIS_URL: Redis refused its user or password"),
        "{message}"
    );
    assert!(!message.contains("not-the-password"), "the password leaked: {message}");
}
