//! The `botfleet` binary: bad settings stop it with exit code 64 and a message naming the key.

use std::process::Command;

fn botfleet(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_botfleet"));
    command.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// A command, its environment, and the key its error must name.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn missing_or_bad_settings_exit_64_naming_the_key() {
    let cases: &[Case] = &[
        ("worker", &[], "BOTFLEET_DATABASE_URL"),
        ("api", &[("BOTFLEET_DATABASE_URL", "postgres://u@h/db")], "BOTFLEET_REDIS_URL"),
        (
            "worker",
            &[
                ("BOTFLEET_DATABASE_URL", "postgres://u@h/db"),
                ("BOTFLEET_REDIS_URL", "redis://127.0.0.1:1"),
                ("BOTFLEET_BOTS", "main"),
                ("BOTFLEET_BOT_MAIN_TOKEN", "1:abc"),
                ("BOTFLEET_BOT_MAIN_WEBHOOK_SECRET", "bad secret!"),
            ],
            "BOTFLEET_BOT_MAIN_WEBHOOK_SECRET",
        ),
        ("migrate", &[("BOTFLEET_DATABASE_URL", "mysql://nope")], "BOTFLEET_DATABASE_URL"),
        ("redis-acl", &[("BOTFLEET_REDIS_URL", "redis://127.0.0.1:1")], "BOTFLEET_REDIS_WORKER_PASSWORD"),
        ("fake-telegram", &[("BOTFLEET_LISTEN", "not an address")], "BOTFLEET_LISTEN"),
        ("fake-telegram", &[("BOTFLEET_THREADS", "0")], "BOTFLEET_THREADS"),
        ("worker", &[("BOTFLEET_CONFIG_FILE", "/nonexistent/botfleet.env")], "BOTFLEET_CONFIG_FILE"),
    ];
    for (command, env, key) in cases {
        let output = botfleet(&[command], env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{command} with {env:?}: {stderr}");
        assert!(stderr.contains(key), "{command}: the message must name {key}: {stderr}");
    }
}

#[test]
fn settings_file_is_read_and_environment_wins() {
    let path = std::env::temp_dir().join(crate::helpers::unique("settings"));
    std::fs::write(&path, "BOTFLEET_DATABASE_URL=postgres://u@h/db\nBOTFLEET_LISTEN=bad-from-file\n")
        .unwrap();
    let file = path.to_str().unwrap();
    let output = botfleet(&["api"], &[("BOTFLEET_CONFIG_FILE", file)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("BOTFLEET_LISTEN"), "the file's bad listen address must be named: {stderr}");
    let output = botfleet(&["api"], &[("BOTFLEET_CONFIG_FILE", file), ("BOTFLEET_LISTEN", "127.0.0.1:0")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The environment's listen address wins; the file's database URL is used; Redis is next.
    assert!(stderr.contains("BOTFLEET_REDIS_URL"), "{stderr}");
    std::fs::remove_file(&path).ok();
}

#[test]
fn unknown_commands_and_flags_exit_64_with_a_one_line_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "'frobnicate'"),
        (&["serve"], "'serve'"),
        (&["webhook", "nuke"], "'nuke'"),
        (&["worker", "extra"], "'extra'"),
        (&["worker", "--bogus"], "'--bogus'"),
        (&["webhook"], "Usage: botfleet webhook"),
        (&[], "Usage: botfleet"),
    ];
    for (args, named) in cases {
        let output = botfleet(args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: the message must name {named}: {stderr}");
        if !named.starts_with("Usage") {
            assert!(stderr.starts_with("botfleet: "), "{args:?}: one line saying what is wrong: {stderr}");
            assert_eq!(stderr.lines().count(), 2, "{args:?}: the reason, then where to look: {stderr}");
        }
    }
}

#[test]
fn every_command_has_help_and_the_version() {
    let cases: &[(&[&str], &str)] = &[
        (&["--help"], "webhook"),
        (&["worker", "--help"], "BOTFLEET_MAX_IN_FLIGHT"),
        (&["api", "--help"], "BOTFLEET_REPLICA_URLS"),
        (&["migrate", "--help"], "BOTFLEET_API_ROLE"),
        (&["redis-acl", "--help"], "BOTFLEET_REDIS_API_PASSWORD"),
        (&["fake-telegram", "--help"], "BOTFLEET_FAKE_LIMITS"),
        (&["webhook", "--help"], "set"),
        (&["webhook", "set", "--help"], "BOTFLEET_WEBHOOK_URL"),
        (&["webhook", "info", "-h"], "BOTFLEET_BOTS"),
        (&["--version"], env!("CARGO_PKG_VERSION")),
        (&["webhook", "set", "--version"], env!("CARGO_PKG_VERSION")),
    ];
    for (args, shown) in cases {
        let output = botfleet(args, &[]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains(shown), "{args:?} must show {shown}: {stdout}");
    }
}
