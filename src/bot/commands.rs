//! The bot's commands: what each is called, what the menu says of it, and how a message names
//! one (`/name@bot args`). `botfleet webhook set` registers [`menu`] with `setMyCommands`.
//!
//! teloxide's `BotCommands` derive would give the same enum, but it lives in the `teloxide` crate
//! with its dispatcher and the dependencies behind it; we use `teloxide-core` only.

use teloxide_core::types::BotCommand;

/// Every command the bot knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start,
    Help,
    Post,
    Skip,
    My,
    Cancel,
    Ban,
    Unban,
    Broadcast,
    BroadcastPause,
    BroadcastResume,
    BroadcastCancel,
}

impl Command {
    pub const ALL: [Command; 12] = [
        Command::Start,
        Command::Help,
        Command::Post,
        Command::Skip,
        Command::My,
        Command::Cancel,
        Command::Ban,
        Command::Unban,
        Command::Broadcast,
        Command::BroadcastPause,
        Command::BroadcastResume,
        Command::BroadcastCancel,
    ];

    /// The name after the slash.
    pub fn name(self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Help => "help",
            Command::Post => "post",
            Command::Skip => "skip",
            Command::My => "my",
            Command::Cancel => "cancel",
            Command::Ban => "ban",
            Command::Unban => "unban",
            Command::Broadcast => "broadcast",
            Command::BroadcastPause => "broadcast_pause",
            Command::BroadcastResume => "broadcast_resume",
            Command::BroadcastCancel => "broadcast_cancel",
        }
    }

    /// What the menu says of it; `None` for commands that are not for everyone (admins') or
    /// only make sense inside a dialogue.
    fn description(self) -> Option<&'static str> {
        match self {
            Command::Start => Some("start over"),
            Command::Help => Some("what I can do"),
            Command::Post => Some("write a post step by step, with an optional photo"),
            Command::My => Some("your posts, and delete one"),
            Command::Cancel => Some("stop what you are doing"),
            Command::Skip
            | Command::Ban
            | Command::Unban
            | Command::Broadcast
            | Command::BroadcastPause
            | Command::BroadcastResume
            | Command::BroadcastCancel => None,
        }
    }
}

/// A command as a message names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invocation<'a> {
    /// `None` when the name is no command of ours.
    pub command: Option<Command>,
    pub name: &'a str,
    /// The rest of the message, trimmed.
    pub args: &'a str,
}

/// `/name@bot args` → the command, its name and its arguments; `None` if `text` is no command.
pub fn parse(text: &str) -> Option<Invocation<'_>> {
    let rest = text.strip_prefix('/')?;
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let name = word.split('@').next().unwrap_or(word);
    let command = Command::ALL.into_iter().find(|c| c.name() == name);
    Some(Invocation { command, name, args: args.trim() })
}

/// The command menu Telegram clients show.
pub fn menu() -> Vec<BotCommand> {
    Command::ALL.into_iter().filter_map(|c| Some(BotCommand::new(c.name(), c.description()?))).collect()
}

pub const HELP: &str = "Send me a text of 10 to 2000 characters and I will publish it on the public feed. \
A photo with a caption becomes a photo post.\n\n\
/post — write a post step by step, with an optional photo\n\
/my — your posts, and delete one\n\
/cancel — stop what you are doing\n\
/help — this message";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_with_or_without_the_bot_name_and_with_their_arguments() {
        let ban = parse("/ban@fleet_bot  42 ").unwrap();
        assert_eq!((ban.command, ban.name, ban.args), (Some(Command::Ban), "ban", "42"));
        let start = parse("/start\tpromo").unwrap();
        assert_eq!((start.command, start.args), (Some(Command::Start), "promo"));
        assert_eq!(parse("/broadcast_cancel").unwrap().command, Some(Command::BroadcastCancel));
        let unknown = parse("/frobnicate now").unwrap();
        assert_eq!((unknown.command, unknown.name), (None, "frobnicate"));
        assert_eq!(parse("no command"), None);
    }

    #[test]
    fn the_menu_lists_everyones_commands_within_telegrams_rules() {
        let menu = menu();
        let names: Vec<&str> = menu.iter().map(|c| c.command.as_str()).collect();
        assert_eq!(names, ["start", "help", "post", "my", "cancel"]);
        for command in &menu {
            assert!((1..=32).contains(&command.command.len()));
            assert!((3..=256).contains(&command.description.chars().count()), "{command:?}");
        }
        for command in ["/post", "/my", "/cancel", "/help"] {
            assert!(HELP.contains(command), "/help tells of {command}");
        }
    }
}
