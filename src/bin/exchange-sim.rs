//! The bundled exchange simulator. See `exchange_sim`.
fn main() -> std::process::ExitCode {
    exchange_sim::cli_main()
}
