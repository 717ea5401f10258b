//! The rcmd wire protocol: frames ([`frame`]) carrying typed messages ([`message`]).
//!
//! Nothing in here opens or owns a socket (the decoder reads from any `Read` it is given), so
//! all of it can be tested on byte literals.

pub mod frame;
pub mod message;

pub use frame::{Frame, FrameDecoder, FrameEncoder, FrameError};
pub use message::{ErrorCode, ExitStatus, Message, PROTOCOL_VERSION, SignalName};
