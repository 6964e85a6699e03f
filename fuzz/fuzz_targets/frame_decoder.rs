//! Any bytes on a request stream: frames are split and decoded as every message type; never a
//! panic, and never a frame (or buffer) beyond the limit.
#![no_main]

use kvnode::wire::{self, FrameReader, Hello, Proof, RequestFrame, ResponseFrame};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut reader = FrameReader::new(data, LIMIT);
        while let Ok(Some(payload)) = reader.next_frame().await {
            assert!(payload.len() <= LIMIT);
            let _ = wire::decode::<RequestFrame>(&payload);
            let _ = wire::decode::<ResponseFrame>(&payload);
            let _ = wire::decode::<Hello>(&payload);
            let _ = wire::decode::<Proof>(&payload);
            if let Ok(RequestFrame {
                request: wire::Request::Bucket(b),
                ..
            }) = wire::decode(&payload)
            {
                let _ = b.validate();
            }
        }
    });
});
