//! Any bytes from a peer during the secret handshake, on either side: an error, never a panic,
//! and never a successful authentication without the secret.
#![no_main]

use kvnode::auth::{self, Me};
use kvnode::secret::Secret;
use kvnode::wire::{FrameReader, MAX_HANDSHAKE_FRAME, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let secret = Secret::new(b"fuzzing secret".to_vec()).unwrap();
    let exporter = [7u8; 32];
    rt.block_on(async {
        let me = Me {
            role: Role::Node,
            name: "foo",
            listen: None,
        };
        let mut reader = FrameReader::new(data, MAX_HANDSHAKE_FRAME);
        let mut sink = Vec::new();
        // The fuzzer cannot know the HMAC of a fresh nonce: success would be a forgery.
        assert!(
            auth::server_handshake(&mut reader, &mut sink, std::slice::from_ref(&secret), &me, &exporter)
                .await
                .is_err()
        );
        let me = Me {
            role: Role::Client,
            name: "client@fuzz",
            listen: None,
        };
        let mut reader = FrameReader::new(data, MAX_HANDSHAKE_FRAME);
        let mut sink = Vec::new();
        assert!(
            auth::client_handshake(&mut reader, &mut sink, &secret, &me, &exporter)
                .await
                .is_err()
        );
    });
});
