//! End-to-end tests of the simulator over real sockets (port 0, in-process).

mod acks;
mod control;
mod depth;
mod feed;
mod http_client;
mod keep_alive;
mod lifetime;
mod orders;
mod protocol;
mod raw;
mod support;
mod tls;
mod user_stream;
