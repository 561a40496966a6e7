//! The async server behind the health checks: one listener per `healthCheckNodePort` and
//! bind address, opened and closed as [`HealthCheckServer::update`] is handed new desired
//! states.
//!
//! Each connection gets one answer: the request head is read (at most [`MAX_HEAD_BYTES`]),
//! the response written and the connection closed, all within [`READ_TIMEOUT`]. Any method
//! and path get the health answer; a request that is not HTTP/1.x gets 400, an oversized
//! head 431, and a client that sends nothing in time is disconnected. At most
//! [`MAX_CONNECTIONS`] connections are served at once across all ports; beyond that each
//! listener holds one accepted connection and the rest wait in the kernel's accept queue. A port that cannot be bound is reported and retried at the next
//! update, like upstream, and does not keep the other ports from being served.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::{HealthResponse, RequestHead, ServiceHealth, parse_request_head, plan};
use crate::change::Desired;
use crate::model::{IpFamily, NodePortAddresses, ProxyConfig, ServiceName};

/// The largest request head read; a longer one is answered 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long one connection may last: receiving the head, answering and closing.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once, across all ports.
pub const MAX_CONNECTIONS: usize = 128;

/// Why a health check is not served.
#[derive(Debug, thiserror::Error)]
pub enum HealthCheckError {
    /// The port could not be opened on an address; the port is not served on any address
    /// and is tried again at the next update.
    #[error("cannot serve the health check of service {service} on {address}: {source}")]
    Bind {
        /// The Service.
        service: ServiceName,
        /// The `healthCheckNodePort`.
        port: u16,
        /// The address and port that failed.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Another Service already has the port.
    #[error("healthCheckNodePort {port} of service {service} is already used by service {owner}")]
    PortConflict {
        /// The port.
        port: u16,
        /// The Service left out.
        service: ServiceName,
        /// The Service served on the port.
        owner: ServiceName,
    },
}

/// One open health-check port.
struct Listener {
    health: watch::Sender<ServiceHealth>,
    addresses: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

/// Serves the health checks of a node: call [`update`](Self::update) after every sync.
///
/// Dropping the server stops every listener (asynchronously: use
/// [`shutdown`](Self::shutdown) to wait until the ports are closed). Needs a Tokio runtime.
pub struct HealthCheckServer {
    bind: Vec<IpAddr>,
    proxy_healthy: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
    listeners: BTreeMap<u16, Listener>,
}

impl Default for HealthCheckServer {
    /// Listens on all addresses: `0.0.0.0` and `[::]` (the latter IPv6-only).
    fn default() -> Self {
        HealthCheckServer::new([
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ])
    }
}

impl HealthCheckServer {
    /// A server that will listen on these addresses (upstream: the node's `nodePortAddresses`
    /// IPs, or all addresses). An IPv6 address listens for IPv6 only, so `0.0.0.0` and `[::]`
    /// can both be given. Nothing is opened before [`update`](Self::update).
    pub fn new(bind_addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut bind: Vec<IpAddr> = bind_addresses.into_iter().collect();
        bind.sort();
        bind.dedup();
        HealthCheckServer {
            bind,
            proxy_healthy: Arc::new(AtomicBool::new(true)),
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            listeners: BTreeMap::new(),
        }
    }

    /// A server on the addresses NodePorts are accepted on (upstream binds the health-check
    /// ports to the `nodePortAddresses` IPs of each family the proxy handles):
    /// [`NodePortAddresses::All`] gives the unspecified address of each handled family,
    /// `Primary` the node's primary IP of each, `Cidrs` the node IPs (and loopback
    /// addresses) inside the CIDRs. When that leaves no address, all addresses are used, as
    /// upstream does when it cannot list the node's.
    pub fn for_config(config: &ProxyConfig) -> Self {
        let unspecified = |family: &IpFamily| match family {
            IpFamily::IPv4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpFamily::IPv6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let families = config.ip_families.iter();
        let mut addresses: Vec<IpAddr> = match &config.nodeport_addresses {
            NodePortAddresses::All => families.map(unspecified).collect(),
            NodePortAddresses::Primary => families.filter_map(|f| config.primary_ip(*f)).collect(),
            NodePortAddresses::Cidrs(cidrs) => config
                .node_ips
                .iter()
                .copied()
                .chain([Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()])
                .filter(|ip| config.handles(IpFamily::of(ip)))
                .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
                .collect(),
        };
        if addresses.is_empty() {
            addresses = config.ip_families.iter().map(unspecified).collect();
        }
        HealthCheckServer::new(addresses)
    }

    /// The addresses the ports are opened on.
    pub fn bind_addresses(&self) -> &[IpAddr] {
        &self.bind
    }

    /// Sets the proxy's own health (initially healthy). While unhealthy every port answers 503
    /// with `"serviceProxyHealthy":false`. Takes effect at the next request.
    pub fn set_proxy_healthy(&self, healthy: bool) {
        self.proxy_healthy.store(healthy, Ordering::Relaxed);
    }

    /// Brings the served ports in line with `desired`: opens new ports, closes removed ones
    /// (they are closed when this returns) and updates the counts of the others without
    /// reopening them. Returns what could not be served: ports that failed to bind (retried
    /// at the next update) and port conflicts.
    #[must_use = "the errors name health checks that are not served"]
    pub async fn update(&mut self, desired: &Desired) -> Vec<HealthCheckError> {
        let plan = plan(desired);
        let mut errors: Vec<HealthCheckError> = plan
            .conflicts
            .into_iter()
            .map(|c| HealthCheckError::PortConflict {
                port: c.port,
                service: c.service,
                owner: c.owner,
            })
            .collect();

        let removed: Vec<u16> = self
            .listeners
            .keys()
            .filter(|port| !plan.ports.contains_key(port))
            .copied()
            .collect();
        for port in removed {
            if let Some(listener) = self.listeners.remove(&port) {
                close(listener).await;
            }
        }

        for (port, health) in plan.ports {
            if let Some(listener) = self.listeners.get(&port) {
                listener.health.send_if_modified(|current| {
                    let changed = *current != health;
                    *current = health;
                    changed
                });
                continue;
            }
            match self.open(port, health) {
                Ok(listener) => {
                    self.listeners.insert(port, listener);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// The ports served, with what each reports.
    pub fn serving(&self) -> BTreeMap<u16, ServiceHealth> {
        self.listeners
            .iter()
            .map(|(port, l)| (*port, l.health.borrow().clone()))
            .collect()
    }

    /// The socket addresses a port is served on (empty when not served).
    pub fn local_addresses(&self, port: u16) -> &[SocketAddr] {
        self.listeners
            .get(&port)
            .map(|l| l.addresses.as_slice())
            .unwrap_or_default()
    }

    /// Closes every port and waits until they are closed.
    pub async fn shutdown(mut self) {
        for (_, listener) in std::mem::take(&mut self.listeners) {
            close(listener).await;
        }
    }

    /// Opens `port` on every bind address, or on none.
    fn open(&self, port: u16, health: ServiceHealth) -> Result<Listener, HealthCheckError> {
        let mut sockets = Vec::with_capacity(self.bind.len());
        for ip in &self.bind {
            let address = SocketAddr::new(*ip, port);
            match listen(address) {
                Ok(listener) => sockets.push(listener),
                Err(source) => {
                    // Dropping what was opened frees the port for the next try.
                    return Err(HealthCheckError::Bind {
                        service: health.service,
                        port,
                        address,
                        source,
                    });
                }
            }
        }
        let (tx, _) = watch::channel(health);
        let mut addresses = Vec::with_capacity(sockets.len());
        let mut tasks = Vec::with_capacity(sockets.len());
        for socket in sockets {
            addresses.push(socket.local_addr().unwrap_or_else(|_| {
                // Only fails on a closed socket; report the requested address then.
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
            }));
            tasks.push(tokio::spawn(serve(
                socket,
                tx.subscribe(),
                self.proxy_healthy.clone(),
                self.permits.clone(),
            )));
        }
        Ok(Listener {
            health: tx,
            addresses,
            tasks,
        })
    }
}

impl Drop for HealthCheckServer {
    fn drop(&mut self) {
        for listener in self.listeners.values() {
            for task in &listener.tasks {
                task.abort();
            }
        }
    }
}

/// Stops a listener's tasks and waits until their sockets are dropped.
async fn close(listener: Listener) {
    for task in &listener.tasks {
        task.abort();
    }
    for task in listener.tasks {
        // A cancelled task has dropped its future (and listener and connections) by now.
        let _ = task.await;
    }
}

/// A listening socket on `address`: `SO_REUSEADDR` (a port closed and reopened is free at
/// once), IPv6-only for IPv6 addresses.
fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until cancelled; each is answered in its own task, owned here so that
/// cancelling the listener cancels its connections too.
async fn serve(
    listener: TcpListener,
    health: watch::Receiver<ServiceHealth>,
    proxy_healthy: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
) {
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: wait a little, as Go's server does.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        // Taken after accepting, so idle listeners hold no permit; while none is free this
        // listener holds one connection and the rest wait in the kernel's queue.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return; // The semaphore is never closed.
        };
        while connections.try_join_next().is_some() {}
        let health = health.clone();
        let proxy_healthy = proxy_healthy.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _ =
                tokio::time::timeout(READ_TIMEOUT, answer(stream, &health, &proxy_healthy)).await;
        });
    }
}

/// Reads one request head and writes the answer. Errors just end the connection.
async fn answer(
    mut stream: TcpStream,
    health: &watch::Receiver<ServiceHealth>,
    proxy_healthy: &AtomicBool,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(()); // Closed before a full request.
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request_head(&buf) {
            RequestHead::Complete { head_only } => {
                let healthy = proxy_healthy.load(Ordering::Relaxed);
                break health.borrow().response(healthy).to_http(head_only);
            }
            RequestHead::Bad => break HealthResponse::error(400).to_http(false),
            RequestHead::Incomplete if buf.len() >= MAX_HEAD_BYTES => {
                break HealthResponse::error(431).to_http(false);
            }
            RequestHead::Incomplete => {}
        }
    };
    stream.write_all(&response).await?;
    stream.shutdown().await?;
    // Lingering close: closing with unread input would reset the connection, and a reset can
    // discard the answer before the client reads it. Drain until the client closes (it has
    // its answer), at most `MAX_DRAIN_BYTES`, within the caller's timeout.
    let mut drained = 0;
    while drained < MAX_DRAIN_BYTES {
        match stream.read(&mut chunk).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

/// The most input read and discarded after answering.
const MAX_DRAIN_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(nodeport_addresses: NodePortAddresses, families: &[IpFamily]) -> Vec<String> {
        let config = ProxyConfig {
            node_ips: vec!["192.168.1.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            nodeport_addresses,
            ip_families: families.to_vec(),
            ..ProxyConfig::default()
        };
        let server = HealthCheckServer::for_config(&config);
        server
            .bind_addresses()
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    #[test]
    fn bind_addresses_follow_the_nodeport_addresses() {
        let both = [IpFamily::IPv4, IpFamily::IPv6];
        assert_eq!(addresses(NodePortAddresses::All, &both), ["0.0.0.0", "::"]);
        assert_eq!(
            addresses(NodePortAddresses::All, &[IpFamily::IPv4]),
            ["0.0.0.0"]
        );
        assert_eq!(
            addresses(NodePortAddresses::Primary, &both),
            ["192.168.1.1", "fd00::1"]
        );
        let cidrs =
            |s: &[&str]| NodePortAddresses::Cidrs(s.iter().map(|c| c.parse().unwrap()).collect());
        assert_eq!(
            addresses(cidrs(&["192.168.0.0/16", "127.0.0.0/8"]), &both),
            ["127.0.0.1", "192.168.1.1"]
        );
        // Nothing matches: all addresses.
        assert_eq!(addresses(cidrs(&["10.0.0.0/8"]), &[IpFamily::IPv6]), ["::"]);
        assert_eq!(HealthCheckServer::default().bind_addresses().len(), 2);
    }
}
