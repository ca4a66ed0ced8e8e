//! The `loadtest` command line: help everywhere, and a command line that makes no sense exits
//! with 64 and one line naming the problem.

// Test code panics on purpose: an unwrap is an assertion with the error in its message.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest")).args(args).env_clear().output().unwrap()
}

#[test]
fn every_workload_has_help() {
    for (args, shown) in [
        (&["--help"][..], "replay"),
        (&["replay", "--help"], "--give-up-after"),
        (&["w1", "--help"], "--duration"),
        (&["w3", "-h"], "--stream"),
        (&["attack", "--help"], "slow-heads"),
        (&["--version"], env!("CARGO_PKG_VERSION")),
    ] {
        let output = loadtest(args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains(shown), "{args:?} must show {shown}: {stdout}");
    }
}

#[test]
fn nonsense_exits_64_naming_the_problem() {
    for (args, named) in [
        (&["frobnicate"][..], "'frobnicate'"),
        (&["w1", "--bogus"], "'--bogus'"),
        (&["w1", "--duration", "soon"], "soon"),
        (&["replay", "--rate", "5"], "--capture"),
        (&["attack", "forged-cursors"], "--target"),
        (&["attack", "flood", "--target", "127.0.0.1:1"], "'flood'"),
        (&["attack", "media", "--target", "127.0.0.1:1", "--from", "localhost"], "localhost"),
        (&["replay", "--scenario", "s.json", "--rate", "5", "--speed", "max"], "--speed"),
    ] {
        let output = loadtest(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("loadtest: ") && stderr.contains(named),
            "{args:?} must name {named}: {stderr}"
        );
    }
}
