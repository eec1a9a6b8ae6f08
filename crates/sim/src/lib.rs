//! APNs and FCM simulators (`herald sim`): real HTTP/2 servers, over TLS with a
//! generated certificate and over cleartext h2c, that check what Apple and
//! Google check, answer with their status codes and error bodies, inject faults,
//! and record every accepted delivery. The record is the ground truth of
//! Herald's end-to-end tests: lost = accepted - delivered, duplicated =
//! delivered more than once.

mod apns;
mod control;
mod errors;
mod fcm;
mod message;
mod serve;
mod state;

pub use state::{Faults, RecordMode, RecordedDelivery, SimCredentials};

use axum::routing::{get, post, put};
use axum::Router;
use state::SimState;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("generating keys or certificate: {0}")]
    Keys(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

/// A running simulator.
pub struct Simulator {
    pub h2c_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    /// The self-signed certificate of the TLS listener, to trust in clients.
    pub ca_pem: String,
    state: Arc<SimState>,
}

impl Simulator {
    /// Binds the listeners (an empty `tls_listen` disables TLS) and serves in
    /// background tasks until the process ends.
    pub async fn start(
        listen: &str,
        tls_listen: &str,
        max_concurrent_streams: u32,
        record: RecordMode,
    ) -> Result<Self, SimError> {
        let h2c = bind(listen).await?;
        let h2c_addr = h2c.local_addr().map_err(|source| SimError::Bind {
            addr: listen.to_string(),
            source,
        })?;
        let token_uri = format!("http://{h2c_addr}/token");
        let state = Arc::new(SimState::new(token_uri, record)?);
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
        let ca_pem = cert.cert.pem();
        let app = router(state.clone(), ca_pem.clone());
        tokio::spawn(serve::plain(h2c, app.clone(), max_concurrent_streams));
        let tls_addr = if tls_listen.is_empty() {
            None
        } else {
            let tls = bind(tls_listen).await?;
            let addr = tls.local_addr().map_err(|source| SimError::Bind {
                addr: tls_listen.to_string(),
                source,
            })?;
            let acceptor = serve::tls_acceptor(&cert, &state.client_ca_der)?;
            tokio::spawn(serve::tls(tls, acceptor, app, max_concurrent_streams));
            Some(addr)
        };
        Ok(Self {
            h2c_addr,
            tls_addr,
            ca_pem,
            state,
        })
    }

    /// Credentials the simulator accepts, in the shape Herald stores per app.
    pub fn credentials(&self) -> SimCredentials {
        self.state.credentials.clone()
    }

    pub fn deliveries(&self) -> Vec<RecordedDelivery> {
        self.state.deliveries()
    }
}

async fn bind(addr: &str) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind {
            addr: addr.to_string(),
            source,
        })
}

fn router(state: Arc<SimState>, tls_certificate: String) -> Router {
    Router::new()
        .route(
            "/sim/tls-certificate",
            get(move || async move { tls_certificate }),
        )
        .route(
            "/3/device/{token}",
            post(apns::send).fallback(apns::method_not_allowed),
        )
        .route(
            "/3/device/",
            post(apns::missing_device_token).fallback(apns::method_not_allowed),
        )
        .route("/v1/projects/{project}/{verb}", post(fcm::send))
        .route("/token", post(fcm::token))
        .route("/sim/credentials", get(control::credentials))
        .route("/sim/service-account.json", get(control::service_account))
        .route("/sim/apns-key.p8", get(control::apns_key))
        .route(
            "/sim/apns-client.pem",
            get(control::apns_client_certificate),
        )
        .route("/sim/deliveries", get(control::deliveries))
        .route("/sim/stats", get(control::stats))
        .route(
            "/sim/faults",
            put(control::set_faults).get(control::get_faults),
        )
        .route("/sim/reset", post(control::reset))
        .fallback(apns::bad_path)
        .with_state(state)
}
