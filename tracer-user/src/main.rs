use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};
use reapwatch::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("reapwatch: {}", cli::usage_error_line(&err));
            return ExitCode::from(2);
        }
    };
    match reapwatch::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("reapwatch: {}", one_line(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Errors are one line: the first line of each message in the chain.
fn one_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_owned()
}
