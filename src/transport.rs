//! QUIC endpoints, node certificates, and connections that have passed the secret handshake.
//!
//! The only module that touches quinn and rustls (with `auth`, the handshake it runs): the
//! rest of the code sees an [`Endpoint`], the [`Incoming`] attempts it admits, and
//! [`Connection`]s with their [`RequestStreams`]. It does not know what requests mean.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};
use ring::hmac;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::auth::{self, HandshakeError, Me, PeerHello};
use crate::names::NodeName;
use crate::secret::Secret;
use crate::wire::{ALPN, FrameReader, MAX_HANDSHAKE_FRAME};

mod connection;
mod endpoint;
mod settings;
pub use connection::{Connection, Ended, RecvStream, RequestStreams, SendStream};
pub use endpoint::{Endpoint, Incoming};
pub use settings::{Limits, Timeouts};

/// Application close codes, so the other side can say why a connection ended.
pub mod close {
    use quinn::VarInt;
    /// Normal end of a conversation.
    pub const DONE: VarInt = VarInt::from_u32(0);
    /// The peer's proof of the secret was wrong.
    pub const AUTH_FAILED: VarInt = VarInt::from_u32(1);
    /// The peer speaks another protocol version.
    pub const VERSION: VarInt = VarInt::from_u32(2);
    /// The handshake was malformed.
    pub const BAD_HANDSHAKE: VarInt = VarInt::from_u32(3);
    /// The handshake did not finish within its deadline.
    pub const HANDSHAKE_TIMEOUT: VarInt = VarInt::from_u32(4);
    /// The node is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(5);
    /// The node's name is already taken by a live member of the cluster.
    pub const NAME_TAKEN: VarInt = VarInt::from_u32(6);
    /// The node has too many connections.
    pub const BUSY: VarInt = VarInt::from_u32(7);
    /// A raft stream (issue 25) carried a frame that is oversize or no raft frame: that
    /// stream is stopped with this code, the connection goes on.
    pub const BAD_RAFT_FRAME: VarInt = VarInt::from_u32(8);
    /// A streamed snapshot (issue 26) its range's group does not take now (it holds that
    /// much, or is taking another): the sender is told it did not arrive, and raft-rs sends
    /// a snapshot again if one is still needed.
    pub const SNAPSHOT_NOT_TAKEN: VarInt = VarInt::from_u32(9);
}

/// The server name every client asks for; identity comes from the secret handshake, not DNS.
const SERVER_NAME: &str = "kvnode";

/// Why a transport could not be set up or a connection made.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The certificate or key file is unreadable or corrupt.
    #[error("node certificate {path}: {reason}; delete the file to have a new one made")]
    Identity { path: String, reason: String },
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// TLS configuration failed (a bug, not a user error).
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Why a connection attempt failed, as the caller needs to report it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No QUIC connection could be made (nobody listening, network down, timed out).
    #[error("{0}")]
    Unreachable(String),
    /// The node refused our proof, or could not prove its own: the secrets differ.
    #[error("the secrets differ")]
    AuthRefused { peer_name: Option<String> },
    /// The node speaks another protocol version.
    #[error("{0}")]
    Version(String),
    /// The node refused for another stated reason (shutting down, busy, name taken).
    #[error("{0}")]
    Refused(String),
}

/// A connection that has passed the handshake; nothing is exchanged on it before that.
#[derive(Clone, Debug)]
pub struct Authed {
    pub conn: Connection,
    pub peer: PeerHello,
}

/// A node's TLS identity: a self-signed certificate kept in its data directory.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Loads `DIR/tls/{cert,key}.der`, or makes a new pair with rcgen the first time.
    pub fn load_or_create(data_dir: &Path, name: &NodeName) -> Result<Self, TransportError> {
        let dir = data_dir.join("tls");
        let (cert_path, key_path) = (dir.join("cert.der"), dir.join("key.der"));
        let err = |path: &PathBuf, reason: String| TransportError::Identity {
            path: path.display().to_string(),
            reason,
        };
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(|e| err(&cert_path, e.to_string()))?;
            let key = std::fs::read(&key_path).map_err(|e| err(&key_path, e.to_string()))?;
            // Check that the pair is usable now rather than on the first connection.
            rcgen::KeyPair::try_from(key.as_slice()).map_err(|e| err(&key_path, e.to_string()))?;
            let identity = Self {
                cert: CertificateDer::from(cert),
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            };
            rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| err(&cert_path, e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
                .map_err(|e| err(&cert_path, e.to_string()))?;
            return Ok(identity);
        }
        let key = rcgen::KeyPair::generate().map_err(|e| err(&key_path, e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string(), name.to_string()])
            .map_err(|e| err(&cert_path, e.to_string()))?;
        let cert = params.self_signed(&key).map_err(|e| err(&cert_path, e.to_string()))?;
        crate::secret::create_private_dir(&dir).map_err(|e| err(&dir, e.to_string()))?;
        write_private(&key_path, &key.serialize_der()).map_err(|e| err(&key_path, e.to_string()))?;
        std::fs::write(&cert_path, cert.der()).map_err(|e| err(&cert_path, e.to_string()))?;
        tracing::info!(path = %dir.display(), "made a new self-signed node certificate");
        Ok(Self {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config(limits: &Limits, idle: Duration, keep_alive: Option<Duration>) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(limits.max_streams_per_connection));
    // Unidirectional streams carry raft frames between nodes (issue 25): one per peer, a few
    // while one is being replaced. Only node connections are read from; a client's would stay
    // unread, bounded by the receive window below.
    t.max_concurrent_uni_streams(VarInt::from_u32(4));
    t.max_idle_timeout(Some(idle.try_into().unwrap_or(quinn::IdleTimeout::from(VarInt::MAX))));
    t.keep_alive_interval(keep_alive);
    t.datagram_receive_buffer_size(Some(1 << 20));
    // Received bytes not yet read, over all of a connection's streams (quinn's default is
    // unbounded: 200 streams not read on would hold 200 stream windows). What the node has
    // read of frames not yet whole is bounded apart (`wire::UNFINISHED_FRAMES_PER_CONNECTION`).
    t.receive_window(VarInt::from_u32(crate::wire::UNFINISHED_FRAMES_PER_CONNECTION as u32));
    t
}

/// The QUIC server side of a node.
pub fn server_config(
    identity: &Identity,
    limits: &Limits,
    timeouts: &Timeouts,
) -> Result<quinn::ServerConfig, TransportError> {
    let tls_err = |e: rustls::Error| TransportError::Tls(e.to_string());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config(limits, timeouts.idle, None)));
    Ok(config)
}

/// TLS 1.3 over TCP with the node's certificate: the RESP listener's (`resp_tls`). No ALPN:
/// Redis clients send none.
pub fn tcp_server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let tls_err = |e: rustls::Error| TransportError::Tls(e.to_string());
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(tls_err)?;
    Ok(Arc::new(tls))
}

/// The QUIC client side, for command-line clients and for nodes talking to nodes.
pub fn client_config(
    limits: &Limits,
    idle: Duration,
    keep_alive: Option<Duration>,
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SecretIsTheIdentity(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config(limits, idle, keep_alive)));
    Ok(config)
}

/// Accepts any node certificate (they are self-signed, one per node) while still checking the
/// handshake signature. Who the peer is, is established by the secret handshake, which is
/// bound to this TLS session's exporter: a man in the middle with its own certificate ends up
/// with a different exporter on each side, and both proofs fail.
#[derive(Debug)]
struct SecretIsTheIdentity(Arc<CryptoProvider>);

impl ServerCertVerifier for SecretIsTheIdentity {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a node's endpoint is made of: its server and client sides and its endpoint settings;
/// kept whole so that binding may be tried at more than one address.
#[derive(Clone)]
pub struct NodeSetup {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    config: quinn::EndpointConfig,
}

impl NodeSetup {
    /// A node's setup: its certificate, its limits, its keep-alive to peers, and the
    /// endpoint settings of [`node_endpoint_config`].
    pub fn new(
        identity: &Identity,
        limits: &Limits,
        timeouts: &Timeouts,
        keep_alive: Option<Duration>,
        secret: &Secret,
        name: &NodeName,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            server: server_config(identity, limits, timeouts)?,
            client: client_config(limits, timeouts.idle, keep_alive)?,
            config: node_endpoint_config(secret, name),
        })
    }

    /// The node's endpoint, bound at `listen` (see [`node_endpoint`]).
    pub fn bind(&self, listen: SocketAddr) -> Result<Endpoint, TransportError> {
        node_endpoint(listen, self.server.clone(), self.client.clone(), self.config.clone())
    }
}

/// A node's endpoint: serves on `listen` and connects out from the same socket, so peers
/// see the address they can reach it at.
pub fn node_endpoint(
    listen: SocketAddr,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    config: quinn::EndpointConfig,
) -> Result<Endpoint, TransportError> {
    let bind = |source| TransportError::Bind { addr: listen, source };
    let socket = std::net::UdpSocket::bind(listen).map_err(bind)?;
    let runtime = quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no async runtime found")))?;
    let mut endpoint = quinn::Endpoint::new(config, Some(server), socket, runtime).map_err(bind)?;
    endpoint.set_default_client_config(client);
    Ok(Endpoint::from(endpoint))
}

/// The address a node gives others (its directory entry, gossip, its handshakes) for the
/// socket it bound at `bound`: `given` (`--advertise`; port 0 is the port bound) if any; else
/// `bound`, unless that is a wildcard such as 0.0.0.0:4040, which nobody can connect to:
/// then this machine's address on its default route, as the kernel would pick it to send
/// there (a UDP socket connected to a documentation address: connecting sends nothing), or
/// loopback on a machine with no route.
pub fn advertised(bound: SocketAddr, given: Option<SocketAddr>) -> SocketAddr {
    if let Some(given) = given {
        let port = if given.port() == 0 { bound.port() } else { given.port() };
        return SocketAddr::new(given.ip(), port);
    }
    if !bound.ip().is_unspecified() {
        return bound;
    }
    // TEST-NET-1 and the IPv6 documentation prefix: routed as any far address is.
    let (any, far, loopback): (SocketAddr, SocketAddr, IpAddr) = match bound {
        SocketAddr::V4(_) => (
            (Ipv4Addr::UNSPECIFIED, 0).into(),
            (Ipv4Addr::new(192, 0, 2, 1), 9).into(),
            Ipv4Addr::LOCALHOST.into(),
        ),
        SocketAddr::V6(_) => (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into(),
            Ipv6Addr::LOCALHOST.into(),
        ),
    };
    let routed = std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect(far).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified());
    let ip = routed.unwrap_or_else(|| {
        tracing::warn!(%bound, "this machine has no route to advertise an address on; other machines cannot reach this node (give --advertise)");
        loopback
    });
    SocketAddr::new(ip, bound.port())
}

/// A node's endpoint settings, which keep its connection ids and stateless resets (RFC 9000
/// §10.3) the same from one run to the next: when a node that died comes back on its
/// address, a peer still holding a connection to the dead run gets a reset it recognises at
/// its next packet and drops that connection at once, instead of sending into it until the
/// idle timeout. Both keys derive from the cluster secret and the node's name, so only
/// members of the cluster can forge such a reset, and no two nodes share keys.
pub fn node_endpoint_config(secret: &Secret, name: &NodeName) -> quinn::EndpointConfig {
    let reset = auth::node_key(secret, "kvnode quic stateless reset v1", name);
    let reset_key = hmac::Key::new(hmac::HMAC_SHA256, &reset);
    let cid = auth::node_key(secret, "kvnode quic connection id v1", name);
    let cid_key = u64::from_le_bytes(cid[..8].try_into().expect("a key of 32 bytes has 8"));
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

/// A client-only endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(target: SocketAddr, client: quinn::ClientConfig) -> Result<quinn::Endpoint, TransportError> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(a) if a.ip().is_loopback() => "127.0.0.1:0",
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(a) if a.ip().is_loopback() => "[::1]:0",
        SocketAddr::V6(_) => "[::]:0",
    }
    .parse()
    .expect("valid bind address");
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

fn exporter(conn: &quinn::Connection) -> Result<[u8; 32], HandshakeError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, auth::EXPORTER_LABEL, b"")
        .map_err(|_| HandshakeError::BadHello("no TLS exporter on this connection".into()))?;
    Ok(out)
}

impl crate::rpc::FinishStream for quinn::SendStream {
    async fn finish_delivered(mut self) {
        if self.finish().is_ok() {
            // Resolves once the peer acknowledged every byte (or stopped the stream, or the
            // connection ended); whoever waits on this bounds it.
            let _ = self.stopped().await;
        }
    }
}

/// Why an established connection to a node ended, in words for an error message (quinn
/// says `closed by peer: 0` for a node whose process let go of the connection).
pub fn ended_because(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason);
            match c.error_code {
                close::DONE => "the node closed the connection (it stopped or restarted)".into(),
                close::SHUTDOWN => "the node is shutting down".into(),
                close::BUSY => format!("the node is busy ({reason}); try again later"),
                code if reason.is_empty() => format!("the node closed the connection (code {code})"),
                _ => format!("the node closed the connection: {reason}"),
            }
        }
        ConnectionError::Reset => "the node reset the connection, as a node that restarted does; try again".into(),
        ConnectionError::TimedOut => "the node stopped answering (the connection timed out)".into(),
        other => other.to_string(),
    }
}

/// Why the peer closed the connection, in words, when it told us.
fn close_reason(conn: &quinn::Connection) -> Option<ConnectError> {
    match conn.close_reason()? {
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            Some(match close.error_code {
                close::AUTH_FAILED => ConnectError::AuthRefused { peer_name: None },
                close::VERSION => ConnectError::Version(reason),
                _ => ConnectError::Refused(reason),
            })
        }
        other => Some(ConnectError::Unreachable(other.to_string())),
    }
}

/// Connects to `addr` and runs the client side of the secret handshake.
/// The caller bounds the whole of it with its deadline.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    secret: &Secret,
    me: &Me<'_>,
) -> Result<Authed, ConnectError> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    let conn = connecting.await.map_err(|e| match e {
        ConnectionError::ApplicationClosed(_) | ConnectionError::ConnectionClosed(_) => {
            ConnectError::Refused(e.to_string())
        }
        _ => ConnectError::Unreachable(e.to_string()),
    })?;
    let result = async {
        let exporter = exporter(&conn)?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| HandshakeError::Frame(std::io::Error::from(e).into()))?;
        let mut reader = FrameReader::new(recv, MAX_HANDSHAKE_FRAME);
        let peer = auth::client_handshake(&mut reader, &mut send, secret, me, &exporter).await?;
        let _ = send.finish();
        Ok::<_, HandshakeError>(peer)
    }
    .await;
    match result {
        Ok(peer) => Ok(Authed {
            conn: Connection::new(conn),
            peer,
        }),
        Err(HandshakeError::BadProof) => {
            conn.close(close::AUTH_FAILED, b"the node could not prove the shared secret");
            Err(ConnectError::AuthRefused { peer_name: None })
        }
        Err(e) => {
            // The node closes the connection after a failed handshake, but its stream's end
            // may arrive first: give the close a moment to land, then say why in its words.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            let reason = close_reason(&conn).unwrap_or_else(|| match e {
                HandshakeError::VersionMismatch { .. } => ConnectError::Version(e.to_string()),
                other => ConnectError::Refused(format!("handshake failed: {other}")),
            });
            conn.close(close::BAD_HANDSHAKE, b"handshake failed");
            Err(reason)
        }
    }
}

/// Why an incoming connection was dropped (logged by the node; the peer is told by close code).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("QUIC handshake failed: {0}")]
    Quic(#[from] ConnectionError),
    #[error("authentication refused: the peer's secret differs")]
    AuthRefused,
    /// TLS was done (so the peer owns its address) but no proof of the secret came in time.
    #[error("handshake not finished within {0:?}")]
    Timeout(Duration),
    /// The QUIC/TLS handshake itself did not finish: the address may well be spoofed (no
    /// answer to our packets ever came back), so it is not held against it.
    #[error("QUIC handshake not finished within {0:?}")]
    QuicTimeout(Duration),
    #[error("{0}")]
    Handshake(HandshakeError),
}

/// Accepts an incoming connection and runs the server side of the secret handshake with
/// any of `keys` (the node's keyring), all within `deadline`. Nothing else the peer sends is
/// read before this succeeds.
pub async fn accept(
    incoming: quinn::Incoming,
    keys: &[Secret],
    me: &Me<'_>,
    deadline: Duration,
) -> Result<Authed, AcceptError> {
    let start = tokio::time::Instant::now();
    let conn = match tokio::time::timeout(deadline, incoming).await {
        Ok(conn) => conn?,
        Err(_) => return Err(AcceptError::QuicTimeout(deadline)),
    };
    let handshake = async {
        let exporter = exporter(&conn)?;
        let (mut send, recv) = conn
            .accept_bi()
            .await
            .map_err(|e| HandshakeError::Frame(std::io::Error::from(e).into()))?;
        let mut reader = FrameReader::new(recv, MAX_HANDSHAKE_FRAME);
        let peer = auth::server_handshake(&mut reader, &mut send, keys, me, &exporter).await?;
        let _ = send.finish();
        Ok::<_, HandshakeError>(peer)
    };
    match tokio::time::timeout_at(start + deadline, handshake).await {
        Ok(Ok(peer)) => Ok(Authed {
            conn: Connection::new(conn),
            peer,
        }),
        Ok(Err(HandshakeError::BadProof)) => {
            conn.close(close::AUTH_FAILED, b"authentication failed: the secrets differ");
            Err(AcceptError::AuthRefused)
        }
        Ok(Err(e @ HandshakeError::VersionMismatch { .. })) => {
            conn.close(close::VERSION, e.to_string().as_bytes());
            Err(AcceptError::Handshake(e))
        }
        Ok(Err(e)) => {
            conn.close(close::BAD_HANDSHAKE, b"malformed handshake");
            Err(AcceptError::Handshake(e))
        }
        Err(_) => {
            conn.close(close::HANDSHAKE_TIMEOUT, b"handshake not finished in time");
            Err(AcceptError::Timeout(deadline))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: VarInt, reason: &'static [u8]) -> ConnectionError {
        ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: code,
            reason: bytes::Bytes::from_static(reason),
        })
    }

    #[test]
    fn a_node_advertises_its_bound_address_a_given_one_or_a_routed_one_for_a_wildcard() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(advertised(a("127.0.0.1:4040"), None), a("127.0.0.1:4040"));
        assert_eq!(
            advertised(a("0.0.0.0:4040"), Some(a("10.0.0.2:5050"))),
            a("10.0.0.2:5050")
        );
        // Port 0 given: the port bound.
        assert_eq!(advertised(a("0.0.0.0:4040"), Some(a("10.0.0.2:0"))), a("10.0.0.2:4040"));
        // A wildcard: some address of this machine (loopback without a route), same port.
        for wildcard in ["0.0.0.0:4040", "[::]:4040"] {
            let got = advertised(a(wildcard), None);
            assert!(!got.ip().is_unspecified(), "{wildcard} advertised as {got}");
            assert_eq!((got.port(), got.is_ipv4()), (4040, wildcard.starts_with('0')));
        }
    }

    #[test]
    fn an_ended_connection_is_explained_not_shown_as_a_close_code() {
        // A node process that lets go of its connections closes them with code 0.
        assert_eq!(
            ended_because(&closed(close::DONE, b"")),
            "the node closed the connection (it stopped or restarted)"
        );
        assert_eq!(
            ended_because(&closed(close::SHUTDOWN, b"node shutting down")),
            "the node is shutting down"
        );
        assert!(ended_because(&closed(close::BUSY, b"too many connections")).contains("try again later"));
        assert_eq!(
            ended_because(&closed(VarInt::from_u32(99), b"")),
            "the node closed the connection (code 99)"
        );
        assert!(ended_because(&ConnectionError::Reset).contains("restarted"));
        assert!(!ended_because(&ConnectionError::TimedOut).contains("closed by peer"));
    }
}
