//! Issue 25, replicated ranges between real nodes. Replicated tables are still refused until
//! the durable group store lands (step 3), so this file holds what a node already does with
//! raft traffic: a peer's bad raft frames end that stream and nothing else.

mod common;

use std::time::Duration;

use common::Home;
use kvnode::auth::Me;
use kvnode::secret::SecretSource;
use kvnode::transport::{self, Limits};
use kvnode::wire::{Reply, Request, Role};

#[test]
fn garbage_and_oversized_raft_frames_close_their_stream_and_the_node_serves_on() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let secret = SecretSource::Home(home.secret_path()).load().unwrap();
        let config = transport::client_config(&Limits::default(), Duration::from_secs(10), None).unwrap();
        let endpoint = transport::client_endpoint(foo.addr(), config).unwrap();
        let me = Me {
            role: Role::Node,
            name: "mallory",
            listen: Some("127.0.0.1:9".into()),
        };
        let authed = transport::connect(&endpoint, foo.addr(), &secret, &me).await.unwrap();
        for bytes in [
            // A frame whose payload is no raft frame.
            [
                9u32.to_be_bytes().as_slice(),
                &[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0xff],
            ]
            .concat(),
            // A length over the limit: nothing is allocated for it.
            u32::MAX.to_be_bytes().to_vec(),
        ] {
            let mut send = authed.conn.open_uni().await.unwrap();
            send.write_all(&bytes).await.unwrap();
            let stopped = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
            assert!(
                matches!(stopped, Ok(Ok(Some(_)))),
                "the node did not stop the stream: {stopped:?}"
            );
        }
        // The same connection still serves a request.
        let (send, recv) = authed.conn.open_bi().await.unwrap();
        let channel = kvnode::rpc::Channel::spawn(recv, send);
        let answer = channel.call(&Request::Ping, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(answer, Ok(Reply::Pong { .. })), "{answer:?}");
    });
    let put = home.run(&["put", "b", "k", "v"]);
    assert_eq!(put.code, Some(0), "{}", put.stderr);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !foo.stderr().iter().any(|l| l.contains("bad raft frame from mallory")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line for the bad frames: {:?}",
            foo.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
