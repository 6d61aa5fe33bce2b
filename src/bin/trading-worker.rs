//! The reference trading worker. See `trading_worker`.
fn main() -> std::process::ExitCode {
    trading_worker::main()
}
