//! `larder completions SHELL` and `larder man`: shell completions and a man page
//! generated from the clap definitions, so they never drift from the commands.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory, ValueEnum};

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

/// Print a completion script, e.g. `larder completions bash > ~/.local/share/bash-completion/completions/larder`.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
        Shell::Elvish => clap_complete::Shell::Elvish,
        Shell::Powershell => clap_complete::Shell::PowerShell,
    };
    let mut cmd = super::Args::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "larder", &mut out);
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Print the man page (roff) of larder and every subcommand, one after another;
/// `larder man | man -l -` reads it.
pub fn man() -> anyhow::Result<ExitCode> {
    let cmd = super::Args::command();
    let mut out = std::io::stdout().lock();
    match render(&cmd, &mut out, "larder").and_then(|()| Ok(out.flush()?)) {
        // `larder man | head`: the reader left; not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other.map(|()| ExitCode::SUCCESS),
    }
}

fn render(cmd: &clap::Command, out: &mut impl Write, name: &str) -> anyhow::Result<()> {
    clap_mangen::Man::new(cmd.clone()).title(name).render(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        render(sub, out, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(())
}
