//! `dazai mcp`'s link to the daemon: register itself, watch for the daemon's
//! end, fetch secrets, and register the programs it starts.

use std::io::Read;
use std::path::{Path, PathBuf};

use dazai_client::connection::unexpected;
use dazai_client::protocol::{Reply, Request};
use dazai_client::{Capability, ClientError, Connection};
use goodnight::SecretBuffer;

/// Where the daemon listens; every request opens its own connection.
#[derive(Clone, Debug)]
pub struct DaemonLink {
    socket: PathBuf,
}

impl DaemonLink {
    /// A link to the daemon on `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn request(&self, request: &Request) -> Result<Reply, ClientError> {
        Connection::open(&self.socket)?.request(request)
    }

    /// Registers the calling process, so the panic kills it.
    pub fn register_self(&self) -> Result<(), ClientError> {
        match self.request(&Request::Register { pid: None })? {
            Reply::Ok(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Registers `leader` and its process group, so the panic kills them all.
    pub fn register_group(&self, leader: i32) -> Result<(), ClientError> {
        match self.request(&Request::RegisterGroup { leader })? {
            Reply::Ok(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The names of the secrets the daemon holds (from its status).
    pub fn held_secrets(&self) -> Result<Vec<String>, ClientError> {
        let json = match self.request(&Request::Status)? {
            Reply::Status(json) => json,
            other => return Err(unexpected(other)),
        };
        let status: serde_json::Value = serde_json::from_str(&json).map_err(|_| {
            ClientError::Protocol(dazai_client::protocol::ProtocolError::BadArguments(
                "STATUS JSON",
            ))
        })?;
        Ok(status["secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// Fetches the secret `name` straight into a new locked buffer, through
    /// the capability this process inherited from the daemon.
    pub fn fetch(&self, name: &str) -> Result<SecretBuffer, ClientError> {
        Capability::inherited()?.fetch_secret(name)
    }

    /// Opens the `WATCH` connection: it reaches end of file when the daemon ends.
    pub fn watch(&self) -> Result<Watch, ClientError> {
        let mut connection = Connection::open(&self.socket)?;
        match connection.request(&Request::Watch)? {
            Reply::Ok(_) => Ok(Watch { connection }),
            other => Err(unexpected(other)),
        }
    }
}

/// An open `WATCH` connection.
pub struct Watch {
    connection: Connection,
}

impl Watch {
    /// Blocks until the daemon ends (end of file or an error on the connection).
    pub fn wait_for_daemon_end(self) {
        let mut buffer = [0u8; 64];
        loop {
            match self.connection.stream().read(&mut buffer) {
                Ok(0) => return,
                // The daemon sends nothing after the OK; anything else is ignored.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
}
