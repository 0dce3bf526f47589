//! Client endpoints kept for later connections.
//!
//! A connection made by [`QuicConnection::connect`](crate::QuicConnection)
//! needs a UDP socket, a quinn endpoint on it and a runtime with its keeper
//! thread ([`Driver`]). Making them costs about a third of a QUIC connection
//! set-up on a virtual machine (quinn zeroes a 3 MB receive buffer per
//! endpoint and probes the kernel's UDP offloads with throw-away sockets; a
//! thread is spawned). So when a connection is dropped its endpoints go back
//! to a small process-wide stock, and the next connection takes them: a
//! client that reconnects, or connects and closes in a loop, pays for them
//! once. Connections alive at the same time never share: each has its own
//! runtime, so threads using different connections never wait for each
//! other to drive I/O.
//!
//! A forked child does not inherit the threads of its parent's runtimes:
//! it discards the stock it inherited (without dropping it, which would wait
//! for threads that are not there) and makes its own.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;

use farcall_core::TransportError;
use quinn::{Endpoint, EndpointConfig};

use crate::drive::{Driver, DriverUse};
use crate::{lock, size_socket_buffers};

/// Idle client endpoints kept at most; more are closed.
const MAX_IDLE: usize = 4;

/// A runtime and the client endpoints (one per address family, made when
/// first needed) that live on it.
#[derive(Debug)]
pub(crate) struct ClientSide {
    pub(crate) driver: DriverUse,
    v4: Option<Endpoint>,
    v6: Option<Endpoint>,
}

impl ClientSide {
    /// The endpoint for addresses of one family, made if there is none yet.
    pub(crate) fn endpoint(&mut self, ipv4: bool, context: &str) -> Result<Endpoint, TransportError> {
        let slot = if ipv4 { &mut self.v4 } else { &mut self.v6 };
        if let Some(e) = slot {
            return Ok(e.clone());
        }
        let local: SocketAddr = if ipv4 { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let socket = std::net::UdpSocket::bind(local).map_err(|e| TransportError::io(format!("{context}: binding a UDP socket"), e))?;
        size_socket_buffers(&socket);
        let endpoint = Endpoint::new(EndpointConfig::default(), None, socket, self.driver.quinn_runtime())
            .map_err(|e| TransportError::io(format!("{context}: starting a QUIC endpoint"), e))?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The local ports of the endpoints made so far (for tests).
    #[cfg(test)]
    pub(crate) fn ports(&self) -> Vec<u16> {
        [&self.v4, &self.v6].into_iter().flatten().filter_map(|e| e.local_addr().ok()).map(|a| a.port()).collect()
    }
}

#[derive(Debug)]
struct Stock {
    /// The process the stock belongs to.
    pid: u32,
    sides: Vec<ClientSide>,
}

static STOCK: Mutex<Stock> = Mutex::new(Stock { pid: 0, sides: Vec::new() });

/// The stock of this process (emptied first if it was inherited by a fork).
fn stock() -> std::sync::MutexGuard<'static, Stock> {
    let mut stock = lock(&STOCK);
    let pid = std::process::id();
    if stock.pid != pid {
        for side in stock.sides.drain(..) {
            std::mem::forget(side);
        }
        stock.pid = pid;
    }
    stock
}

/// A [`ClientSide`] lent to one connection; returned to the stock when dropped.
#[derive(Debug)]
pub(crate) struct Reusable(Option<ClientSide>);

impl Reusable {
    /// An idle client side from the stock, or a new one.
    pub(crate) fn take() -> Result<Reusable, TransportError> {
        let idle = stock().sides.pop();
        let side = match idle {
            Some(side) => side,
            None => ClientSide { driver: Driver::start()?, v4: None, v6: None },
        };
        Ok(Reusable(Some(side)))
    }

    pub(crate) fn side(&mut self) -> &mut ClientSide {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for Reusable {
    fn drop(&mut self) {
        let Some(side) = self.0.take() else { return };
        let mut stock = stock();
        if stock.sides.len() < MAX_IDLE {
            stock.sides.push(side);
        } else {
            drop(stock);
            drop(side);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_side_serves_the_next_taker_and_sides_in_use_are_never_shared() {
        let mut a = Reusable::take().unwrap();
        let mut b = Reusable::take().unwrap();
        a.side().endpoint(true, "test").unwrap();
        b.side().endpoint(true, "test").unwrap();
        let (pa, pb) = (a.side().ports(), b.side().ports());
        assert_ne!(pa, pb, "two sides in use at once have sockets of their own");
        drop(a);
        // Other tests of this process may take from the stock meanwhile; the
        // side dropped last is on top.
        let mut c = Reusable::take().unwrap();
        assert_eq!(c.side().ports(), pa, "the next connection reuses the dropped side's socket");
    }
}
