//! The Redis users of each role (src/kv/acl.rs), as `schema.rs` proves the Postgres roles: what
//! each may do, and what it is refused. Every other test runs its processes as these users too.

use botfleet::settings::{self, Source, WorkerSettings};

use crate::helpers::{API_ROLE, WORKER_ROLE, env, redis_url, unique};

async fn as_role(role: &str) -> redis::aio::MultiplexedConnection {
    let client = crate::helpers::redis_client(&redis_url(role));
    client.get_multiplexed_async_connection().await.unwrap()
}

/// What `args` gets: `Ok` or the error code (`NOPERM`).
async fn run(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> Result<(), String> {
    let mut cmd = redis::cmd(args[0]);
    args[1..].iter().for_each(|arg| {
        cmd.arg(*arg);
    });
    cmd.query_async::<redis::Value>(conn).await.map(drop).map_err(|e| e.code().unwrap_or("other").to_owned())
}

#[tokio::test]
async fn the_api_node_cannot_mark_updates_queue_messages_or_publish_posts() {
    let p = unique("r");
    let mut api = as_role(API_ROLE).await;
    let (handled, outbox, live) = (format!("{p}:1:hf"), format!("{p}:1:outbox"), format!("{p}:feed:live"));
    let (dialogue, stream) = (format!("{p}:1:d:42"), format!("{p}:feed:stream"));
    let refused = [
        &["SETBIT", &handled, "7", "1"][..],
        &["BITFIELD", &handled, "SET", "u16", "0", "1"],
        &["XADD", &outbox, "*", "chat", "42"],
        &["PUBLISH", &live, "a forged post"],
        &["SET", &dialogue, "a dialogue"],
        &["DEL", &stream],
        &["FLUSHALL"],
        &["KEYS", "*"],
        &["CONFIG", "GET", "maxmemory"],
    ];
    for args in refused {
        assert_eq!(run(&mut api, args).await, Err("NOPERM".to_owned()), "the API node ran {args:?}");
    }
    for args in [
        vec!["GET".to_owned(), format!("{p}:1:d:42")],
        vec!["XRANGE".to_owned(), format!("{p}:feed:stream"), "-".into(), "+".into()],
        vec!["SET".to_owned(), format!("{p}:feed:page:7"), "a page".into()],
        vec!["SET".to_owned(), format!("{p}:feed:gen"), "5".into()],
        vec!["SET".to_owned(), format!("{p}:1:media:path:u"), "files/x".into()],
        vec!["INFO".to_owned(), "memory".into()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(run(&mut api, &args).await, Ok(()), "the API node must be able to run {args:?}");
    }
}

#[tokio::test]
async fn the_worker_runs_no_dangerous_command_and_the_webhook_command_touches_its_key_only() {
    let p = unique("r");
    let mut worker = as_role(WORKER_ROLE).await;
    for args in [
        &["FLUSHALL"][..],
        &["KEYS", "*"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["ACL", "SETUSER", "mallory", "on"],
    ] {
        assert_eq!(run(&mut worker, args).await, Err("NOPERM".to_owned()), "the worker ran {args:?}");
    }
    let key = format!("{p}:1:hf");
    assert_eq!(run(&mut worker, &["SETBIT", &key, "7", "1"]).await, Ok(()));
    let mut webhook = as_role("webhook").await;
    let secret = format!("{p}:1:webhook:secret-sha256");
    assert_eq!(run(&mut webhook, &["SET", &secret, "abc"]).await, Ok(()));
    assert_eq!(run(&mut webhook, &["GET", &key]).await, Err("NOPERM".to_owned()));
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
