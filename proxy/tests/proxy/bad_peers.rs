//! Peers that misbehave do not hurt the proxy or its other clients.

use crate::support::{call_many, spawn_proxy, static_list};
use std::time::Duration;
use stockdata::test_util::{connect, spawn_replica};
use stockkube_proto::stockdata::stocks_client::StocksClient;
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

#[tokio::test]
async fn garbage_resets_and_idle_connections_leave_others_served() {
    let replica = spawn_replica("sturdy").await;
    let proxy = spawn_proxy(&[
        "--outbound",
        "stockdata=127.0.0.1:0",
        "--discover",
        &static_list(&[replica.addr]),
        "--detect-timeout",
        "200ms",
    ])
    .await;

    // 1,000 idle connections, held open throughout.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(proxy.outbound).await.unwrap());
    }

    // Garbage after a valid HTTP/2 preface, and garbage with no preface.
    for junk in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xff\r\nX: \x00\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(proxy.outbound).await.unwrap();
        conn.write_all(junk).await.unwrap();
    }

    // A client that resets mid-stream: a call in flight, then the
    // connection dropped with RST.
    {
        let conn = TcpStream::connect(proxy.outbound).await.unwrap();
        let mut client = StocksClient::new(connect(proxy.outbound).await);
        let call = tokio::spawn(async move {
            client
                .get(stockkube_proto::stockdata::GetRequest { id: 1 })
                .await
        });
        // Linger zero makes the close an RST, which is the point here; the
        // blocking it is deprecated for does not happen with a zero linger.
        #[allow(deprecated)]
        conn.set_linger(Some(Duration::ZERO)).unwrap();
        drop(conn);
        call.abort();
    }

    let client = StocksClient::new(connect(proxy.outbound).await);
    let tally = call_many(&client, 100, 20).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.count("sturdy"), 100);
    drop(idle);
    proxy.shutdown().await;
}
