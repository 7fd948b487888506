//! The `nuwax` binary: parse the command line, run it, turn the outcome into an exit code.

fn main() -> std::process::ExitCode {
    let cli = <nuwax::cli::Cli as clap::Parser>::parse();
    nuwax::cli::main(cli)
}
