//! The `dazai` wire protocol and the client side of it: the heartbeat that
//! ties a daemon to a session, and the one-shot control requests.

pub mod connection;
pub mod heartbeat;
pub mod paths;
pub mod protocol;

pub use connection::{ClientError, Connection};
pub use heartbeat::{hold_heartbeat, HeartbeatEnd, HeartbeatOptions};
pub use paths::default_socket_path;
