//! `tether`: the command line of Tether on Linux (see `cli`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
