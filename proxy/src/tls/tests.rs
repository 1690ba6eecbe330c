use super::*;
use crate::identity::{Certified, Key};
use mesh_controller::identity::issuer::{Authority, Issuer};
use std::time::SystemTime;
use tokio::{io::AsyncWriteExt as _, net::TcpListener, sync::watch};

const WEB: &str = "spiffe://cluster.local/ns/stocks/sa/stockweb";
const DATA: &str = "spiffe://cluster.local/ns/stocks/sa/stockdata";

struct Mesh {
    authority: Authority,
    issuer: Issuer,
}

impl Mesh {
    fn new() -> Self {
        let authority = Authority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let issuer = Issuer::new(&authority, Duration::from_secs(600)).unwrap();
        Self { authority, issuer }
    }

    /// A proxy's TLS with a certificate for `id`; the sender keeps it current.
    fn proxy(&self, id: &str) -> (MeshTls, watch::Sender<Option<Arc<Certified>>>) {
        let key = Key::generate().unwrap();
        let (chain_pem, _) = self
            .issuer
            .certify(key.csr_der(), &id.parse().unwrap())
            .unwrap();
        let certified = Certified {
            key: key.certified(&chain_pem).unwrap(),
            chain_pem,
            valid_until: SystemTime::now() + Duration::from_secs(600),
            received: SystemTime::now(),
        };
        let (tx, current) = watch::channel(Some(Arc::new(certified)));
        let tls = MeshTls::new(id, self.authority.trust_anchor_pem.as_bytes(), current).unwrap();
        (tls, tx)
    }
}

/// Accepts one connection and hands it, with its first bytes, to `tls`.
async fn accept_one(listener: TcpListener, tls: Arc<MeshTls>) -> std::io::Result<Accepted> {
    let (mut conn, _) = listener.accept().await?;
    let mut first = BytesMut::with_capacity(1024);
    conn.read_buf(&mut first).await?;
    assert!(looks_like_tls(&first));
    tls.accept(conn, first).await
}

#[tokio::test]
async fn proxies_authenticate_each_other_and_bytes_flow() {
    let mesh = Mesh::new();
    let (server, _keep_server) = mesh.proxy(DATA);
    let (client, _keep_client) = mesh.proxy(WEB);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn(accept_one(listener, Arc::new(server)));

    let conn = TcpStream::connect(addr).await.unwrap();
    let mut stream = client.connect(conn, DATA, Alpn::Http2).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream.write_all(b"hello").await.unwrap();
    stream.flush().await.unwrap();

    let Accepted::Terminated(mut served, peer) = accepting.await.unwrap().unwrap() else {
        panic!("the server's own identity is terminated");
    };
    assert_eq!(
        peer,
        PeerTls::Mesh {
            id: Some(WEB.into())
        }
    );
    let mut hello = [0; 5];
    served.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello");
    let protocol = served.get_ref().1.protocol_version();
    assert_eq!(protocol, Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused() {
    let mesh = Mesh::new();
    let (server, _keep_server) = mesh.proxy(DATA);
    let (client, _keep_client) = mesh.proxy(WEB);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The server answers as itself; the client asked for someone else, so
    // the server does not even terminate (the name is not its own).
    let accepting = tokio::spawn(accept_one(listener, Arc::new(server)));
    let conn = TcpStream::connect(addr).await.unwrap();
    let other = "spiffe://cluster.local/ns/stocks/sa/impostor";
    let connecting = client.connect(conn, other, Alpn::Http2);
    let (connected, accepted) = tokio::join!(connecting, accepting);
    assert!(connected.is_err());
    assert!(matches!(
        accepted.unwrap().unwrap(),
        Accepted::Passthrough(..)
    ));
}

#[tokio::test]
async fn a_certificate_from_another_authority_is_refused_both_ways() {
    let (server, _keep_server) = Mesh::new().proxy(DATA);
    let (client, _keep_client) = Mesh::new().proxy(WEB);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn(accept_one(listener, Arc::new(server)));
    let conn = TcpStream::connect(addr).await.unwrap();
    let connected = client.connect(conn, DATA, Alpn::Http2).await;
    assert!(connected.is_err(), "the client does not trust the server");
    assert!(accepting.await.unwrap().is_err());
}

#[tokio::test]
async fn tls_for_another_name_passes_through_byte_for_byte() {
    let mesh = Mesh::new();
    let (server, _keep) = mesh.proxy(DATA);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn(accept_one(listener, Arc::new(server)));

    // The app's own TLS: a ClientHello for example.org, from a plain
    // rustls client that trusts nothing of the mesh.
    let config = ClientConfig::builder_with_provider(mesh_runtime::tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let mut app_client =
        rustls::ClientConnection::new(Arc::new(config), "example.org".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    app_client.write_tls(&mut hello).unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&hello).await.unwrap();

    let Accepted::Passthrough(read, _conn) = accepting.await.unwrap().unwrap() else {
        panic!("not the proxy's name: passed through");
    };
    assert_eq!(&read[..], &hello[..]);
}
