use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{CertifiedKey, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Cleartext: HTTP/2 with prior knowledge (h2c), and HTTP/1.1 so that the
/// inspection endpoints work from any curl. Provider paths insist on HTTP/2.
pub(crate) async fn plain(listener: TcpListener, app: Router, max_streams: u32) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            TokioIo::new(stream),
            app.clone(),
            max_streams,
            false,
        ));
    }
}

pub(crate) async fn tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    max_streams: u32,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            if let Ok(stream) = accept_tls(&acceptor, stream).await {
                // The verifier only lets through certificates our CA signed.
                let client_certificate = stream.get_ref().1.peer_certificates().is_some();
                connection(TokioIo::new(stream), app, max_streams, client_certificate).await;
            }
        });
    }
}

async fn accept_tls(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    acceptor.accept(stream).await
}

/// Connections accepted and GOAWAYs sent, for `/sim/stats`.
pub(crate) static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub(crate) static GOAWAYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The most provider requests ever in flight at once on one connection.
pub(crate) static MAX_STREAMS_SEEN: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Provider requests being handled right now, on every connection.
pub(crate) static IN_FLIGHT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Lets a handler act on its own connection (fault injection).
#[derive(Default)]
pub(crate) struct ConnectionControl {
    /// Drop the connection at once, without answering.
    pub kill: tokio::sync::Notify,
    /// Send GOAWAY: finish the streams begun, refuse new ones.
    pub goaway: tokio::sync::Notify,
    /// Provider requests seen on this connection.
    pub requests: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicU64,
    /// The TLS client presented a certificate signed by the simulator's CA
    /// (APNs certificate auth).
    pub client_certificate: bool,
    /// The APNs provider token last accepted on this connection, and its `iat`.
    provider_token: std::sync::Mutex<Option<(String, i64)>>,
}

/// Apple: refresh a provider token no more often than every 20 minutes.
const MIN_TOKEN_REFRESH_SECS: i64 = 20 * 60;

impl ConnectionControl {
    /// Takes the provider token a request carries, unless it replaces the
    /// connection's token less than 20 minutes (by `iat`) after the one before
    /// (Apple's `TooManyProviderTokenUpdates`). A client signing a token per
    /// request fails here as it would on Apple.
    pub fn take_provider_token(&self, jwt: &str, iat: i64) -> bool {
        let mut current = self
            .provider_token
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some((token, _)) if token == jwt => true,
            Some((_, before)) if iat - before < MIN_TOKEN_REFRESH_SECS => false,
            _ => {
                *current = Some((jwt.to_string(), iat));
                true
            }
        }
    }

    /// Counts a provider request in flight on this connection until dropped.
    pub fn enter(&self) -> InFlight<'_> {
        use std::sync::atomic::Ordering;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_STREAMS_SEEN.fetch_max(now, Ordering::SeqCst);
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight(&self.in_flight)
    }
}

pub(crate) struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn connection<I>(io: I, app: Router, max_streams: u32, client_certificate: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let control = Arc::new(ConnectionControl {
        client_certificate,
        ..Default::default()
    });
    let service = TowerToHyperService::new(app.layer(axum::Extension(control.clone())));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(max_streams);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        // Dropping the connection closes the socket: every stream on it ends.
        _ = control.kill.notified() => return,
        _ = control.goaway.notified() => {
            GOAWAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            conn.as_mut().graceful_shutdown();
        }
    }
    tokio::select! {
        _ = conn => {}
        _ = control.kill.notified() => {}
    }
}

/// TLS with the generated server certificate; client certificates are asked
/// for, not required, and verified against the simulator's APNs client CA.
pub(crate) fn tls_acceptor(
    cert: &CertifiedKey<KeyPair>,
    client_ca_der: &[u8],
) -> Result<TlsAcceptor, rustls::Error> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(
        client_ca_der.to_vec(),
    ))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
