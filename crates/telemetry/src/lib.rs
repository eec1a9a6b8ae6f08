//! Logs and traces for every Herald process.
//!
//! [`init`] installs one `tracing` subscriber: logs on stderr (text, or JSON
//! with `HERALD_LOG_FORMAT=json`), filtered by `HERALD_LOG`, and, when
//! `telemetry.otlp_endpoint` is set, every span exported to an OpenTelemetry
//! collector over OTLP/HTTP. [`trace_parent`] and [`follow`] carry a trace
//! across Kafka as a W3C `traceparent`, so that one trace runs from the API
//! request (or the campaign page, or the trigger) to the provider's answer.

pub mod health;

use herald_config::TelemetryConfig;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_protocol `{0}`: use http/protobuf or http/json")]
    Protocol(String),
    #[error("telemetry.sample_ratio {0}: a fraction from 0 to 1")]
    SampleRatio(f64),
    #[error("telemetry.otlp_endpoint `{endpoint}`: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("installing the log subscriber: {0}")]
    Subscriber(String),
}

/// How long the exporter may take to send one batch of spans.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Flushes the spans not yet exported when dropped: keep it until the
/// process ends.
#[must_use = "dropping it stops the trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("herald: flushing the last spans failed: {e}");
            }
        }
    }
}

/// Checks the settings without installing anything (`herald check-config`).
pub fn check(config: &TelemetryConfig) -> Result<(), TelemetryError> {
    protocol(&config.otlp_protocol)?;
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(TelemetryError::SampleRatio(config.sample_ratio));
    }
    Ok(())
}

fn protocol(name: &str) -> Result<Protocol, TelemetryError> {
    match name {
        "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        other => Err(TelemetryError::Protocol(other.to_string())),
    }
}

/// The collector's traces URL: `/v1/traces` is added to a base URL.
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

/// Installs the subscriber. `role` names the process (`gateway`, `sender`,
/// ...) where `telemetry.service_name` is empty: `herald-ROLE`.
///
/// Call it before any async runtime starts: the exporter runs on a thread of
/// its own, with a blocking HTTP client that must not be built inside one.
pub fn init(config: &TelemetryConfig, role: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let json = std::env::var("HERALD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let (provider, traces) = match config.otlp_endpoint.trim() {
        "" => (None, None),
        endpoint => {
            check(config)?;
            let provider = tracer_provider(config, endpoint, role)?;
            // Spans are exported whatever HERALD_LOG says about log lines.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("herald"))
                .with_filter(EnvFilter::new("info,rdkafka=off,sqlx=off,h2=off,hyper=off"));
            (Some(provider), Some(layer))
        }
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

fn tracer_provider(
    config: &TelemetryConfig,
    endpoint: &str,
    role: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol(&config.otlp_protocol)?)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    let service_name = match config.service_name.trim() {
        "" => format!("herald-{role}"),
        name => name.to_string(),
    };
    let resource = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

const TRACEPARENT: &str = "traceparent";

/// The current span's trace context as a W3C `traceparent`, to travel with
/// work handed to another process. None when no trace is being recorded.
pub fn trace_parent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the trace that `traceparent` names (from
/// [`trace_parent`] in the process that handed the work over).
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    // Fails only when no OpenTelemetry layer is installed: nothing to join.
    let _ = span.set_parent(context);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_once() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c.example/otlp/v1/traces"),
            "https://c.example/otlp/v1/traces"
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let mut config = TelemetryConfig::default();
        assert!(check(&config).is_ok());
        config.otlp_protocol = "grpc".into();
        assert!(check(&config)
            .unwrap_err()
            .to_string()
            .contains("otlp_protocol `grpc`"));
        config.otlp_protocol = "http/json".into();
        config.sample_ratio = 1.5;
        assert!(check(&config)
            .unwrap_err()
            .to_string()
            .contains("sample_ratio 1.5"));
    }

    #[test]
    fn without_a_trace_there_is_no_traceparent_to_carry() {
        assert_eq!(trace_parent(), None);
        // And following none, or garbage, is harmless.
        let span = tracing::info_span!("x");
        follow(&span, None);
        follow(&span, Some("not a traceparent"));
    }
}
