//! mTLS between proxies: the server side of the inbound listener and the
//! client side of calls to meshed endpoints, both with the proxy's own
//! certificate ([`crate::identity`]) and the mesh's trust anchors.
//!
//! ```text
//! client proxy --TLS 1.3, ALPN h2, SNI = server's identity name--> server proxy
//!   verifies: the chain to the anchors,     verifies: a client certificate, when
//!   and that the certificate names the      one is sent, chains to the anchors;
//!   identity discovery said the endpoint    the client's identity is its URI name
//!   has (its DNS form, as the SNI)
//! ```
//!
//! On the inbound side a connection that starts with a TLS ClientHello whose
//! server name is this proxy's identity is terminated here; any other TLS
//! (the app's own) and everything else passes as before. A client without a
//! certificate is served as unauthenticated; policy ([`crate::policy`])
//! decides what that may do. Configurations are rustls's defaults with TLS
//! 1.3 only; the certificate is looked up per handshake, so a renewed one
//! is used from the next connection on.

use crate::{detect::Prefixed, identity::Current};
use bytes::BytesMut;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::{ResolvesClientCert, WebPkiServerVerifier},
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    server::{Acceptor, ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// What a client proxy will speak inside TLS, as it tells the server (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http2,
    Http1,
    /// Opaque TCP: no ALPN.
    None,
}

impl Alpn {
    const ALL: [Alpn; 3] = [Alpn::Http2, Alpn::Http1, Alpn::None];

    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http2 => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::None => Vec::new(),
        }
    }
}
/// How long a TLS handshake may take, either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A ClientHello larger than this is not read further (it is passed on as
/// the app's own TLS).
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Why the mesh's TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("the trust anchors: {0}")]
    Anchors(String),
    #[error("{0} is not spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT")]
    Identity(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("the client verifier: {0}")]
    Verifier(String),
}

/// The TLS state of a connection between proxies, and the other side's
/// identity: on the inbound side the client's (when it sent a
/// certificate), on the outbound side the server's (verified).
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub enum PeerTls {
    /// Plaintext, or TLS that is not the mesh's (passed through untouched).
    #[default]
    None,
    /// Mesh TLS.
    Mesh { id: Option<Arc<str>> },
}

impl PeerTls {
    pub fn is_tls(&self) -> bool {
        matches!(self, PeerTls::Mesh { .. })
    }

    /// The other side's verified identity, if any.
    pub fn id(&self) -> Option<&Arc<str>> {
        match self {
            PeerTls::Mesh { id } => id.as_ref(),
            PeerTls::None => None,
        }
    }
}

/// What the inbound side made of a connection's first bytes.
pub enum Accepted {
    /// Mesh TLS, terminated; read and write the plaintext through it.
    Terminated(
        Box<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>>,
        PeerTls,
    ),
    /// Not mesh TLS: serve the bytes read (returned) and the connection as before.
    Passthrough(BytesMut, TcpStream),
}

/// A served connection's bytes: as accepted, or through mesh TLS
/// terminated here.
#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>>),
}

/// What serving reads from and writes to: a transport, after the bytes
/// detection read from it.
pub type ServerIo = Prefixed<Transport>;

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Transport::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Transport::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Transport::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(io) => io.is_write_vectored(),
            Transport::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io).poll_flush(cx),
            Transport::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Transport::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The proxy's TLS configurations, client and server.
pub struct MeshTls {
    /// This proxy's identity and its DNS form (the server name clients ask for).
    identity: Arc<str>,
    server_name: String,
    trust_domain: String,
    server: Arc<ServerConfig>,
    /// One per [`Alpn`], in `Alpn::ALL`'s order.
    clients: [Arc<ClientConfig>; 3],
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    /// Configurations for `identity`, presenting `current` and trusting
    /// `anchors_pem`.
    pub fn new(
        identity: &str,
        anchors_pem: &[u8],
        current: Current,
    ) -> Result<Self, TlsSetupError> {
        let (trust_domain, _, _) = stockkube_proto::identity::parse(identity)
            .ok_or_else(|| TlsSetupError::Identity(identity.to_owned()))?;
        let server_name = stockkube_proto::identity::dns_name_of(identity)
            .ok_or_else(|| TlsSetupError::Identity(identity.to_owned()))?;
        let roots = Arc::new(roots(anchors_pem)?);
        let provider = mesh_runtime::tls_provider();
        let resolver = Arc::new(CurrentCertificate(current));

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = [Alpn::Http2, Alpn::Http1]
            .into_iter()
            .flat_map(Alpn::protocols)
            .collect();

        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
        let client = |alpn: Alpn| -> Result<Arc<ClientConfig>, TlsSetupError> {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_webpki_verifier(server_verifier.clone())
                .with_client_cert_resolver(resolver.clone());
            config.alpn_protocols = alpn.protocols();
            Ok(Arc::new(config))
        };
        let [h2, h1, opaque] = Alpn::ALL;
        let clients = [client(h2)?, client(h1)?, client(opaque)?];

        Ok(Self {
            identity: identity.into(),
            server_name,
            trust_domain: trust_domain.to_owned(),
            server: Arc::new(server),
            clients,
        })
    }

    /// This proxy's identity.
    pub fn identity(&self) -> &Arc<str> {
        &self.identity
    }

    /// This proxy's trust domain (what `cluster-authenticated` admits).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Reads the ClientHello that starts with `prefix` (already read from
    /// `conn`); terminates the connection when it asks for this proxy's
    /// identity, otherwise hands back every byte read for the connection
    /// to be served as it would be without the mesh's TLS.
    pub async fn accept(
        &self,
        mut conn: TcpStream,
        mut read: BytesMut,
    ) -> std::io::Result<Accepted> {
        let mut acceptor = Acceptor::default();
        let mut fed = 0;
        let accepted = loop {
            while fed < read.len() {
                match acceptor.read_tls(&mut &read[fed..]) {
                    Ok(0) => break,
                    Ok(n) => fed += n,
                    // Its buffer is full: no ClientHello the mesh sends.
                    Err(_) => return Ok(Accepted::Passthrough(read, conn)),
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => break accepted,
                Ok(None) if read.len() < MAX_CLIENT_HELLO => {
                    let more = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.read_buf(&mut read));
                    match more.await {
                        Ok(Ok(0)) => {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return Err(err),
                        Err(_) => return Ok(Accepted::Passthrough(read, conn)),
                    }
                }
                // Not a ClientHello rustls reads: the app's business.
                Ok(None) | Err(_) => return Ok(Accepted::Passthrough(read, conn)),
            }
        };
        if accepted.client_hello().server_name() != Some(self.server_name.as_str()) {
            return Ok(Accepted::Passthrough(read, conn));
        }
        let rest = read.split_off(fed);
        let start = tokio_rustls::StartHandshake::from_parts(accepted, Prefixed::new(rest, conn));
        let stream =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(self.server.clone()))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(uri_name);
        Ok(Accepted::Terminated(Box::new(stream), PeerTls::Mesh { id }))
    }

    /// TLS over `conn` to a server that must prove `server_id`, to speak
    /// `alpn` inside.
    pub async fn connect<I>(
        &self,
        conn: I,
        server_id: &str,
        alpn: Alpn,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let name = stockkube_proto::identity::dns_name_of(server_id)
            .and_then(|name| ServerName::try_from(name).ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{server_id} is not an identity the mesh issues"),
                )
            })?;
        // `Alpn::ALL` lists the variants in declaration order.
        let connector = tokio_rustls::TlsConnector::from(self.clients[alpn as usize].clone());
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, conn))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }
}

/// Whether a connection's first bytes start a TLS handshake record.
pub fn looks_like_tls(first: &[u8]) -> bool {
    first.first() == Some(&0x16)
}

fn roots(anchors_pem: &[u8]) -> Result<RootCertStore, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(anchors_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Anchors(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Anchors("no CERTIFICATE block".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| TlsSetupError::Anchors(e.to_string()))?;
    }
    Ok(roots)
}

/// The SPIFFE ID a certificate names (its URI SAN), if any.
fn uri_name(cert: &CertificateDer<'_>) -> Option<Arc<str>> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let names = cert.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) if stockkube_proto::identity::parse(uri).is_some() => {
                Some(Arc::from(*uri))
            }
            _ => None,
        })
}

/// The certificate in use, looked up per handshake.
#[derive(Debug)]
struct CurrentCertificate(Current);

impl CurrentCertificate {
    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .borrow()
            .as_ref()
            .map(|certified| certified.key.clone())
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
