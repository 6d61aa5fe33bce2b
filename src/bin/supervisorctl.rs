//! Control a running handoff supervisor. See `handoff_supervisor::ctl`.
fn main() -> std::process::ExitCode {
    handoff_supervisor::ctl::ctl_main()
}
