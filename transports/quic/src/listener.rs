//! [`QuicListener`]: accepts farcall connections on a UDP address.

use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};

use farcall_core::{Connection, Listener, TransportError};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, EndpointConfig};

use crate::drive::{Driver, DriverUse};
use crate::{connection_error, lock, size_socket_buffers, transport_config, QuicConnection, ALPN};

type Accepted = Result<QuicConnection, TransportError>;

/// Listens for farcall connections over QUIC.
///
/// Handshakes run concurrently in the background: a slow or hostile client
/// never holds up the others. [`Listener::accept`] returns each connection
/// once its handshake is complete; a handshake that fails (no client
/// certificate, one from another CA, an expired one, ...) is returned as an
/// error of that connection only, and the listener goes on.
#[derive(Debug)]
pub struct QuicListener {
    endpoint: Endpoint,
    url: String,
    incoming: Mutex<mpsc::Receiver<Accepted>>,
    task: tokio::task::JoinHandle<()>,
    _driver: DriverUse,
}

impl QuicListener {
    /// Binds `addr` (`host:port`; port 0 picks a free port) and serves the
    /// QUIC handshake with `server_config` (made by
    /// [`farcall_tls::server_config`]: it requires a client certificate; the
    /// [`ALPN`] protocol is set here). Frames longer than `max_frame` are
    /// refused on accepted connections.
    pub fn bind(addr: &str, server_config: Arc<rustls::ServerConfig>, max_frame: usize) -> Result<QuicListener, TransportError> {
        let driver = Driver::start()?;
        let socket = std::net::UdpSocket::bind(addr).map_err(|e| TransportError::io(format!("binding quic://{addr}"), e))?;
        size_socket_buffers(&socket);
        let local = socket.local_addr().map_err(|e| TransportError::io("reading the bound address", e))?;
        let mut tls = (*server_config).clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| TransportError::Config(format!("the TLS server configuration cannot be used for QUIC: {e}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport_config());
        let endpoint = Endpoint::new(EndpointConfig::default(), Some(config), socket, driver.quinn_runtime())
            .map_err(|e| TransportError::io(format!("starting a QUIC endpoint on {local}"), e))?;

        let (tx, rx) = mpsc::channel();
        let accepting = endpoint.clone();
        let users = driver.clone();
        let task = driver.driver().handle().spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let tx = tx.clone();
                let driver = users.clone();
                tokio::spawn(async move {
                    let from: SocketAddr = incoming.remote_address();
                    let accepted = match incoming.await {
                        Ok(conn) => {
                            // Its thread will come in to read the handshake.
                            driver.driver().expect_caller();
                            Ok(QuicConnection::establish(conn, None, driver, max_frame, "client"))
                        }
                        Err(e) => Err(match connection_error(&e, "client", &format!("QUIC handshake with {from}")) {
                            TransportError::Closed => TransportError::io(
                                format!("QUIC handshake with {from}"),
                                io::Error::new(io::ErrorKind::ConnectionAborted, "the client gave up"),
                            ),
                            other => other,
                        }),
                    };
                    let _ = tx.send(accepted);
                });
            }
        });
        Ok(QuicListener { endpoint, url: format!("quic://{local}"), incoming: Mutex::new(rx), task, _driver: driver })
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}

impl Listener for QuicListener {
    fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        match lock(&self.incoming).recv() {
            Ok(accepted) => Ok(Box::new(accepted?)),
            Err(_) => Err(TransportError::Closed),
        }
    }

    fn local_url(&self) -> String {
        self.url.clone()
    }
}

impl Drop for QuicListener {
    /// Stops accepting (new clients are refused); connections already
    /// accepted go on.
    fn drop(&mut self) {
        self.endpoint.set_server_config(None);
        self.task.abort();
    }
}
