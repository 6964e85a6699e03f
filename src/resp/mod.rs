//! RESP, Redis's protocol, sans-IO: requests parsed from bytes ([`parse`]), replies encoded to
//! bytes ([`encode`]), and Redis commands mapped onto bucket operations ([`command`]). Knows no
//! socket and no node; `node::listen_resp` drives it.

pub mod command;
pub mod encode;
pub mod parse;
pub mod reply;

pub use command::{Action, AfterAuth, Answer, Finish, InfoStats, Listing, Session};
pub use encode::{Frame, Protocol, encode};
pub use parse::{ParseError, next_request};
