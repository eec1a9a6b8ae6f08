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
pub(crate) async fn plain(listener: TcpListener, app: Router) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(TokioIo::new(stream), app.clone()));
    }
}

pub(crate) async fn tls(listener: TcpListener, acceptor: TlsAcceptor, app: Router) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            if let Ok(stream) = accept_tls(&acceptor, stream).await {
                connection(TokioIo::new(stream), app).await;
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

/// Lets a handler act on its own connection (fault injection).
#[derive(Default)]
pub(crate) struct ConnectionControl {
    /// Drop the connection at once, without answering.
    pub kill: tokio::sync::Notify,
}

async fn connection<I>(io: I, app: Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let control = Arc::new(ConnectionControl::default());
    let service = TowerToHyperService::new(app.layer(axum::Extension(control.clone())));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // APNs advertises about 1000 concurrent streams per connection.
    builder.http2().max_concurrent_streams(1000);
    let conn = builder.serve_connection(io, service);
    tokio::select! {
        _ = conn => {}
        // Dropping the connection closes the socket: every stream on it ends.
        _ = control.kill.notified() => {}
    }
}

pub(crate) fn tls_acceptor(cert: &CertifiedKey<KeyPair>) -> Result<TlsAcceptor, rustls::Error> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
