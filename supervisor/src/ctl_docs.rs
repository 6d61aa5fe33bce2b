//! What `supervisorctl` prints without a supervisor: shell completions and
//! man pages, generated from the clap definitions of both binaries so they
//! never drift from the flags.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::ctl::Command;

/// Handle `completions` and `man`; `None` for a command that needs the
/// supervisor.
pub fn offline(command: &Command) -> Option<ExitCode> {
    let (cmd, name) = match command {
        Command::Completions { supervisor, .. } | Command::Man { supervisor } => {
            if *supervisor {
                (crate::cli::Args::command(), "supervisor")
            } else {
                (crate::ctl::Args::command(), "supervisorctl")
            }
        }
        _ => return None,
    };
    let mut cmd = cmd.name(name);
    let mut out = std::io::stdout().lock();
    let written = match command {
        Command::Completions { shell, .. } => {
            clap_complete::generate(*shell, &mut cmd, name, &mut out);
            Ok(())
        }
        _ => clap_mangen::Man::new(cmd).render(&mut out),
    };
    Some(match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("supervisorctl: cannot write the output: {e}");
            ExitCode::from(3)
        }
    })
}
