//! The providers' documented error answers: the tables both simulators answer
//! from, and the names fault injection accepts.

/// Every APNs `reason` and the status Apple answers it with (Apple, "Handling
/// notification responses from APNs", the table of error codes).
pub(crate) const APNS_REASONS: &[(&str, u16)] = &[
    ("BadCollapseId", 400),
    ("BadDeviceToken", 400),
    ("BadExpirationDate", 400),
    ("BadMessageId", 400),
    ("BadPriority", 400),
    ("BadTopic", 400),
    ("DeviceTokenNotForTopic", 400),
    ("DuplicateHeaders", 400),
    ("IdleTimeout", 400),
    ("InvalidPushType", 400),
    ("MissingDeviceToken", 400),
    ("MissingTopic", 400),
    ("PayloadEmpty", 400),
    ("TopicDisallowed", 400),
    ("BadCertificate", 403),
    ("BadCertificateEnvironment", 403),
    ("ExpiredProviderToken", 403),
    ("Forbidden", 403),
    ("InvalidProviderToken", 403),
    ("MissingProviderToken", 403),
    ("UnrelatedKeyIdInToken", 403),
    ("BadEnvironmentKeyInToken", 403),
    ("BadPath", 404),
    ("MethodNotAllowed", 405),
    ("ExpiredToken", 410),
    ("Unregistered", 410),
    ("PayloadTooLarge", 413),
    ("TooManyProviderTokenUpdates", 429),
    ("TooManyRequests", 429),
    ("InternalServerError", 500),
    ("ServiceUnavailable", 503),
    ("Shutdown", 503),
];

/// Every FCM v1 `errorCode`, with the HTTP status and google.rpc status Google
/// answers it with (Firebase, the `ErrorCode` enum of the FCM v1 REST
/// reference). `UNSPECIFIED_ERROR` has no documented status; it is answered
/// as the unknown server error it stands for.
pub(crate) const FCM_ERRORS: &[(&str, u16, &str)] = &[
    ("UNSPECIFIED_ERROR", 500, "UNKNOWN"),
    ("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT"),
    ("UNREGISTERED", 404, "NOT_FOUND"),
    ("SENDER_ID_MISMATCH", 403, "PERMISSION_DENIED"),
    ("QUOTA_EXCEEDED", 429, "RESOURCE_EXHAUSTED"),
    ("UNAVAILABLE", 503, "UNAVAILABLE"),
    ("INTERNAL", 500, "INTERNAL"),
    ("THIRD_PARTY_AUTH_ERROR", 401, "UNAUTHENTICATED"),
];

pub(crate) fn apns_status(reason: &str) -> Option<u16> {
    APNS_REASONS
        .iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, status)| *status)
}

/// (HTTP status, google.rpc status) of an FCM error code.
pub(crate) fn fcm_status(code: &str) -> Option<(u16, &'static str)> {
    FCM_ERRORS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, status, rpc)| (*status, *rpc))
}

/// The reason a generic injected failure (`fail_status`) is given.
pub(crate) fn apns_reason_for(status: u16) -> &'static str {
    match status {
        429 => "TooManyRequests",
        500 => "InternalServerError",
        _ => "ServiceUnavailable",
    }
}

/// The error code a generic injected failure (`fail_status`) is given.
pub(crate) fn fcm_error_for(status: u16) -> &'static str {
    match status {
        429 => "QUOTA_EXCEEDED",
        500 => "INTERNAL",
        _ => "UNAVAILABLE",
    }
}

/// Whether an answer with this status may carry `Retry-After`: rate limits
/// and unavailability, the answers both providers tell clients to retry later.
pub(crate) fn may_retry_after(status: u16) -> bool {
    matches!(status, 429 | 503)
}
