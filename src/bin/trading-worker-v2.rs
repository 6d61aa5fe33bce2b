//! The next build of the reference trading worker: schema 2 (one more field),
//! reads schema 1 and writes it for a rollback. Used to show a schema
//! migration in the tests and the demo.
fn main() -> std::process::ExitCode {
    trading_worker::main_v2()
}
