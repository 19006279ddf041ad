//! Ports for servers a test starts as processes (herald, Tansu,
//! redis-server) and may kill and start again on the same address.
//!
//! Picking a free port, letting it go and starting the server on it later
//! is a race on a busy machine: between the two, any bind to port 0 or any
//! outgoing connection may take it, and so may the gap between a kill and
//! the restart. A [`Reserved`] port is held for the whole test by a socket
//! that is bound (with `SO_REUSEADDR`) but never listens: Linux then hands
//! the port to no `bind(…:0)` and no outgoing connection, while a server
//! that binds it with `SO_REUSEADDR` too (herald, Tansu and Redis all do)
//! still can. Nothing accepts on it while the server is down, so clients
//! get "connection refused", as from a stopped server.

use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// A port on 127.0.0.1 held for the test until dropped.
#[derive(Debug)]
pub struct Reserved {
    _socket: TcpSocket,
    pub port: u16,
}

impl Reserved {
    pub fn new() -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        let port = socket.local_addr().expect("bound address").port();
        Self {
            _socket: socket,
            port,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for Reserved {
    fn default() -> Self {
        Self::new()
    }
}
