//! What a command line that makes no sense gets, in every binary of the project: `--help` and
//! `--version` print and succeed; anything else prints one line saying what is wrong, then where
//! to look, and exits with 64.

use std::process::ExitCode;

/// Exit code for a command line that makes no sense (sysexits' EX_USAGE); settings that make
/// no sense exit with it too (`settings::EXIT_CONFIG`).
pub const EXIT_USAGE: u8 = 64;

/// Reports `error` from parsing `program`'s command line, and the exit code to end with.
pub fn exit(program: &str, error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            print!("{error}");
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprint!("{error}");
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            eprintln!("{program}: {}\nSee '{program} --help'.", one_line(&error.to_string()));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// clap's message up to its usage, on one line.
fn one_line(message: &str) -> String {
    let problem = message.split("\n\n").next().unwrap_or_default();
    let words: Vec<&str> = problem.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    words.join(" ").trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_problem_fits_on_one_line() {
        let clap = "error: the following required arguments were not provided:\n  --capture <CAPTURE>\n\nUsage: loadtest replay --capture <CAPTURE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::one_line(clap),
            "the following required arguments were not provided: --capture <CAPTURE>"
        );
        assert_eq!(
            super::one_line("error: unexpected argument '--bogus' found\n\n  tip: …"),
            "unexpected argument '--bogus' found"
        );
    }
}
