//! The handoff supervisor daemon. See `handoff_supervisor`.
fn main() -> std::process::ExitCode {
    handoff_supervisor::cli::supervisor_main()
}
