//! The secret-proving handshake that runs after QUIC's own (SPEC §3).
//!
//! Each side sends a `Hello` with a fresh nonce, then a `Proof`: HMAC-SHA256, keyed by the
//! shared secret, over a domain label, the prover's role, both names, both nonces and the TLS
//! exporter of this very connection. A proof therefore cannot be replayed on another connection
//! or relayed through a man in the middle (whose two TLS sessions have different exporters).
//! The client proves first, so a node never hands an unauthenticated stranger a proof to attack.
//!
//! This module speaks frames over any byte stream and takes the exporter as an input; opening
//! the QUIC stream and reading the exporter is the transport's job.

use ring::hmac;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::names::NodeName;
use crate::secret::Secret;
use crate::wire::{self, FrameError, FrameReader, Hello, PROTOCOL_VERSION, Proof, Role};

/// The TLS exporter label both sides use (RFC 5705 / RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-kvnode-auth-v1";
const DOMAIN: &[u8] = b"kvnode/1 handshake proof";
const MAX_PEER_NAME: usize = 128;

/// Which end of the connection produced a proof; part of the MAC so that a server's proof
/// can never be reflected back as a client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Everything a proof is bound to.
#[derive(Clone, Debug)]
pub struct Transcript<'a> {
    pub client_name: &'a str,
    pub server_name: &'a str,
    pub client_nonce: &'a [u8; 32],
    pub server_nonce: &'a [u8; 32],
    /// Keying material exported from this connection's TLS session.
    pub exporter: &'a [u8; 32],
}

impl Transcript<'_> {
    fn message(&self, side: Side) -> Vec<u8> {
        let mut m = Vec::with_capacity(256);
        m.extend_from_slice(DOMAIN);
        m.push(match side {
            Side::Client => b'C',
            Side::Server => b'S',
        });
        for name in [self.client_name, self.server_name] {
            m.extend_from_slice(&(name.len() as u32).to_be_bytes());
            m.extend_from_slice(name.as_bytes());
        }
        m.extend_from_slice(self.client_nonce);
        m.extend_from_slice(self.server_nonce);
        m.extend_from_slice(self.exporter);
        m
    }
}

/// The HMAC-SHA256 key every MAC made with the shared secret uses.
fn mac_key(secret: &Secret) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

fn mac(secret: &Secret, message: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&mac_key(secret), message);
    tag.as_ref().try_into().expect("HMAC-SHA256 tags are 32 bytes")
}

/// The MAC that proves `side` knows `secret` on the connection the transcript describes.
pub fn prove(secret: &Secret, side: Side, t: &Transcript<'_>) -> [u8; 32] {
    mac(secret, &t.message(side))
}

/// Checks a proof in constant time.
pub fn verify(secret: &Secret, side: Side, t: &Transcript<'_>, mac: &[u8; 32]) -> bool {
    hmac::verify(&mac_key(secret), &t.message(side), mac).is_ok()
}

/// A key for `purpose` (a fixed label) on node `name`, derived from the shared secret:
/// only members of the cluster can compute it, and each node's differs.
pub fn node_key(secret: &Secret, purpose: &str, name: &NodeName) -> [u8; 32] {
    mac(secret, &[purpose.as_bytes(), &[0], name.as_str().as_bytes()].concat())
}

/// A fresh random nonce.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n).expect("the system random source failed");
    n
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    #[error(
        "the peer speaks kvnode protocol version {theirs}, this program speaks {ours}; run the same kvnode version on both sides"
    )]
    VersionMismatch { ours: u16, theirs: u16 },
    /// The peer's proof is wrong: it does not hold our secret.
    #[error("the peer's proof of the shared secret is wrong: the secrets differ")]
    BadProof,
    /// The peer's hello is not acceptable (bad name, wrong role).
    #[error("invalid hello from peer: {0}")]
    BadHello(String),
    /// The stream ended before the handshake finished.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// A handshake frame was oversized or undecodable.
    #[error("handshake frame: {0}")]
    Frame(#[from] FrameError),
}

/// What each side learns about the other.
#[derive(Clone, Debug)]
pub struct PeerHello {
    pub role: Role,
    pub name: String,
    pub listen: Option<String>,
}

impl PeerHello {
    /// The peer's node name, when it is a node.
    pub fn node_name(&self) -> Option<NodeName> {
        (self.role == Role::Node)
            .then(|| NodeName::new(&self.name).ok())
            .flatten()
    }
}

/// What this side says about itself.
#[derive(Clone, Debug)]
pub struct Me<'a> {
    pub role: Role,
    pub name: &'a str,
    pub listen: Option<String>,
}

async fn send<W: AsyncWrite + Unpin, T: serde::Serialize>(w: &mut W, msg: &T) -> Result<(), HandshakeError> {
    let bytes = wire::frame(msg)?;
    w.write_all(&bytes).await.map_err(FrameError::Io)?;
    Ok(())
}

async fn recv_hello<R: AsyncRead + Unpin>(r: &mut FrameReader<R>) -> Result<Hello, HandshakeError> {
    let payload = r.next_frame().await?.ok_or(HandshakeError::Closed)?;
    let theirs = wire::peek_version(&payload).ok_or(HandshakeError::Frame(FrameError::Decode(
        postcard::Error::DeserializeUnexpectedEnd,
    )))?;
    if theirs != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    let hello: Hello = wire::decode(&payload)?;
    if hello.name.is_empty() || hello.name.len() > MAX_PEER_NAME {
        return Err(HandshakeError::BadHello(format!("name of {} bytes", hello.name.len())));
    }
    if hello.role == Role::Node {
        NodeName::new(&hello.name).map_err(|e| HandshakeError::BadHello(e.to_string()))?;
    }
    Ok(hello)
}

async fn recv_proof<R: AsyncRead + Unpin>(r: &mut FrameReader<R>) -> Result<[u8; 32], HandshakeError> {
    let proof: Proof = r.next().await?.ok_or(HandshakeError::Closed)?;
    Ok(proof.mac)
}

fn hello(me: &Me<'_>, nonce: [u8; 32]) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        role: me.role,
        name: me.name.to_string(),
        nonce,
        listen: me.listen.clone(),
    }
}

fn peer(h: Hello) -> PeerHello {
    PeerHello {
        role: h.role,
        name: h.name,
        listen: h.listen,
    }
}

/// The connecting side: hello, read the node's hello, prove, check the node's proof.
pub async fn client_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    secret: &Secret,
    me: &Me<'_>,
    exporter: &[u8; 32],
) -> Result<PeerHello, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client_nonce = nonce();
    send(writer, &hello(me, client_nonce)).await?;
    let server = recv_hello(reader).await?;
    let t = Transcript {
        client_name: me.name,
        server_name: &server.name,
        client_nonce: &client_nonce,
        server_nonce: &server.nonce,
        exporter,
    };
    send(
        writer,
        &Proof {
            mac: prove(secret, Side::Client, &t),
        },
    )
    .await?;
    let mac = recv_proof(reader).await?;
    if !verify(secret, Side::Server, &t, &mac) {
        return Err(HandshakeError::BadProof);
    }
    Ok(peer(server))
}

/// The secret of `keys` that `mac` was made with, if any: each is checked (in constant time),
/// all of them whichever matches, so the time taken does not say which did.
pub fn verify_any<'k>(keys: &'k [Secret], side: Side, t: &Transcript<'_>, mac: &[u8; 32]) -> Option<&'k Secret> {
    keys.iter().fold(None, |found, key| match verify(key, side, t, mac) {
        true => found.or(Some(key)),
        false => found,
    })
}

/// The accepting side: read the hello, answer with ours, check the client's proof against
/// every secret of `keys` (a node's keyring), prove with the one it was made with (so a
/// client holding any installed secret is answered in terms it can check). Nothing else
/// from the peer is read before this returns `Ok`.
pub async fn server_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    keys: &[Secret],
    me: &Me<'_>,
    exporter: &[u8; 32],
) -> Result<PeerHello, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client = recv_hello(reader).await?;
    let server_nonce = nonce();
    send(writer, &hello(me, server_nonce)).await?;
    let t = Transcript {
        client_name: &client.name,
        server_name: me.name,
        client_nonce: &client.nonce,
        server_nonce: &server_nonce,
        exporter,
    };
    let mac = recv_proof(reader).await?;
    let secret = verify_any(keys, Side::Client, &t, &mac).ok_or(HandshakeError::BadProof)?;
    send(
        writer,
        &Proof {
            mac: prove(secret, Side::Server, &t),
        },
    )
    .await?;
    Ok(peer(client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MAX_HANDSHAKE_FRAME;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec()).unwrap()
    }

    /// Runs both sides over an in-memory pipe with the given exporters.
    async fn run(
        client_secret: &Secret,
        server_secret: &Secret,
        client_exporter: [u8; 32],
        server_exporter: [u8; 32],
    ) -> (Result<PeerHello, HandshakeError>, Result<PeerHello, HandshakeError>) {
        run_keyring(
            client_secret,
            std::slice::from_ref(server_secret),
            client_exporter,
            server_exporter,
        )
        .await
    }

    /// As [`run`], with a node that accepts any of `server_keys`.
    async fn run_keyring(
        client_secret: &Secret,
        server_keys: &[Secret],
        client_exporter: [u8; 32],
        server_exporter: [u8; 32],
    ) -> (Result<PeerHello, HandshakeError>, Result<PeerHello, HandshakeError>) {
        let (c, s) = tokio::io::duplex(4096);
        let (cr, mut cw) = tokio::io::split(c);
        let (sr, mut sw) = tokio::io::split(s);
        let client = async {
            let mut r = FrameReader::new(cr, MAX_HANDSHAKE_FRAME);
            let me = Me {
                role: Role::Client,
                name: "client@test",
                listen: None,
            };
            let res = client_handshake(&mut r, &mut cw, client_secret, &me, &client_exporter).await;
            drop(cw);
            res
        };
        let server = async {
            let mut r = FrameReader::new(sr, MAX_HANDSHAKE_FRAME);
            let me = Me {
                role: Role::Node,
                name: "foo",
                listen: None,
            };
            let res = server_handshake(&mut r, &mut sw, server_keys, &me, &server_exporter).await;
            drop(sw);
            res
        };
        tokio::join!(client, server)
    }

    #[tokio::test]
    async fn the_same_secret_authenticates_both_sides() {
        let (c, s) = run(&secret("cookie"), &secret("cookie"), [1; 32], [1; 32]).await;
        assert_eq!(c.unwrap().name, "foo");
        let s = s.unwrap();
        assert_eq!((s.name.as_str(), s.role), ("client@test", Role::Client));
    }

    #[tokio::test]
    async fn a_node_accepts_any_installed_secret_and_answers_with_it() {
        let keys = [secret("old cookie"), secret("new cookie")];
        for client in [secret("old cookie"), secret("new cookie")] {
            let (c, s) = run_keyring(&client, &keys, [1; 32], [1; 32]).await;
            // The client checks the node's proof with the one secret it holds: it passes.
            assert_eq!(c.unwrap().name, "foo");
            assert_eq!(s.unwrap().name, "client@test");
        }
        let (c, s) = run_keyring(&secret("removed cookie"), &keys, [1; 32], [1; 32]).await;
        assert!(matches!(s, Err(HandshakeError::BadProof)));
        assert!(c.is_err());
    }

    #[test]
    fn verify_any_names_the_secret_a_proof_was_made_with() {
        let keys = [secret("a"), secret("b"), secret("c")];
        let (cn, sn) = ([3; 32], [4; 32]);
        let t = Transcript {
            client_name: "a",
            server_name: "foo",
            client_nonce: &cn,
            server_nonce: &sn,
            exporter: &[1; 32],
        };
        let mac = prove(&keys[1], Side::Client, &t);
        assert_eq!(verify_any(&keys, Side::Client, &t, &mac), Some(&keys[1]));
        assert_eq!(verify_any(&keys[..1], Side::Client, &t, &mac), None);
        assert_eq!(verify_any(&[], Side::Client, &t, &mac), None);
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_by_the_node() {
        let (c, s) = run(&secret("wrong"), &secret("cookie"), [1; 32], [1; 32]).await;
        assert!(matches!(s, Err(HandshakeError::BadProof)));
        assert!(c.is_err(), "the client must not believe it is authenticated");
    }

    #[tokio::test]
    async fn different_exporters_mean_a_relayed_connection_and_fail() {
        // A man in the middle has two TLS sessions; each end sees a different exporter.
        let (_, s) = run(&secret("cookie"), &secret("cookie"), [1; 32], [2; 32]).await;
        assert!(matches!(s, Err(HandshakeError::BadProof)));
    }

    #[test]
    fn a_proof_from_one_connection_does_not_verify_on_another() {
        let s = secret("cookie");
        let (cn, sn) = ([3; 32], [4; 32]);
        let on = |exporter| Transcript {
            client_name: "a",
            server_name: "foo",
            client_nonce: &cn,
            server_nonce: &sn,
            exporter,
        };
        let mac = prove(&s, Side::Client, &on(&[1; 32]));
        assert!(verify(&s, Side::Client, &on(&[1; 32]), &mac));
        assert!(
            !verify(&s, Side::Client, &on(&[2; 32]), &mac),
            "replayed on another connection"
        );
        assert!(
            !verify(&s, Side::Server, &on(&[1; 32]), &mac),
            "reflected as the other side"
        );
    }

    #[tokio::test]
    async fn another_protocol_version_is_named_in_the_error() {
        let (c, s) = tokio::io::duplex(4096);
        let (_cr, mut cw) = tokio::io::split(c);
        let (sr, mut sw) = tokio::io::split(s);
        let mut h = hello(
            &Me {
                role: Role::Client,
                name: "x",
                listen: None,
            },
            [0; 32],
        );
        h.version = 99;
        cw.write_all(&wire::frame(&h).unwrap()).await.unwrap();
        let mut r = FrameReader::new(sr, MAX_HANDSHAKE_FRAME);
        let me = Me {
            role: Role::Node,
            name: "foo",
            listen: None,
        };
        let err = server_handshake(&mut r, &mut sw, &[secret("c")], &me, &[0; 32])
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            HandshakeError::VersionMismatch {
                theirs: 99,
                ours: PROTOCOL_VERSION
            }
        ));
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        fn run_server(input: &[u8]) -> Result<PeerHello, HandshakeError> {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = FrameReader::new(input, MAX_HANDSHAKE_FRAME);
                let me = Me {
                    role: Role::Node,
                    name: "foo",
                    listen: None,
                };
                let mut sink = Vec::new();
                server_handshake(&mut r, &mut sink, &[secret("cookie")], &me, &[5; 32]).await
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            /// Random bytes from a peer are an error on either side, never a panic, never a success.
            #[test]
            fn random_bytes_never_authenticate(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                prop_assert!(run_server(&bytes).is_err());
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let client = rt.block_on(async {
                    let mut r = FrameReader::new(&bytes[..], MAX_HANDSHAKE_FRAME);
                    let me = Me { role: Role::Client, name: "c", listen: None };
                    let mut sink = Vec::new();
                    client_handshake(&mut r, &mut sink, &secret("cookie"), &me, &[5; 32]).await
                });
                prop_assert!(client.is_err());
            }

            /// A well-formed hello and a proof made without the secret, with bytes flipped:
            /// still never authenticated.
            #[test]
            fn mutated_handshakes_never_authenticate(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6)) {
                let hello = hello(&Me { role: Role::Client, name: "c", listen: None }, [1; 32]);
                let mut bytes = wire::frame(&hello).unwrap();
                bytes.extend(wire::frame(&Proof { mac: [9; 32] }).unwrap());
                for (at, b) in flips {
                    let at = at % bytes.len();
                    bytes[at] ^= b;
                }
                prop_assert!(run_server(&bytes).is_err());
            }
        }
    }

    #[tokio::test]
    async fn garbage_instead_of_a_hello_is_an_error_not_a_panic() {
        for garbage in [vec![0xff; 64], vec![0, 0, 0, 3, 1, 2, 3], vec![0xff, 0xff, 0xff, 0xff]] {
            let mut r = FrameReader::new(&garbage[..], MAX_HANDSHAKE_FRAME);
            let me = Me {
                role: Role::Node,
                name: "foo",
                listen: None,
            };
            let mut sink = Vec::new();
            assert!(
                server_handshake(&mut r, &mut sink, &[secret("c")], &me, &[0; 32])
                    .await
                    .is_err()
            );
        }
    }
}
