//! The `dazai` wire protocol and the client side of it: the heartbeat that
//! ties a daemon to a session, and the one-shot control requests.

pub mod capability;
pub mod connection;
pub mod heartbeat;
pub mod paths;
pub mod protocol;

pub use capability::{Capability, CAPABILITY_ENV};
pub use connection::{ClientError, Connection};
pub use heartbeat::{hold_heartbeat, HeartbeatEnd, HeartbeatOptions};
pub use paths::default_socket_path;
