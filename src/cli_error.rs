//! The error every `kiln` subcommand returns: what to print and the exit code. Its own module
//! so that the subcommands (`cli`, `runner`, `tuning`, `demo`, `hata_cli`) share it without
//! depending on one another.

/// A failed command: the message to print and the process exit code.
#[derive(Debug)]
pub struct CliError {
    /// What to print on stderr.
    pub message: String,
    /// The process exit code (2: usage or environment, 1: a failure of the work).
    pub code: i32,
}

impl CliError {
    /// A usage or environment error (exit code 2): the user's to fix.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 2,
        }
    }

    /// A failure of the work itself (exit code 1).
    pub fn failure(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 1,
        }
    }
}
