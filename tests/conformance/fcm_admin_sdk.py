"""Drives `herald sim` with Google's official Firebase Admin SDK for Python,
changed in nothing but its endpoint, and prints what the SDK reports as one
JSON document.

The Admin SDK has no setting for the FCM host: its endpoint is the class
attribute `_MessagingService.FCM_URL`, set here before the app is made. The
OAuth2 endpoint comes from the service-account file the simulator serves
(`token_uri`), exactly as Google's own files name theirs.

Settings come from the environment (tests/tests/conformance.rs sets them):
SIM_TLS (the simulator's https:// base URL), SIM_CONTROL (its base URL, for
/sim/faults), SERVICE_ACCOUNT (the key file's path), FAULT_TOKENS
(comma-separated tokens whose prefixes choose an error), and
REQUESTS_CA_BUNDLE / SSL_CERT_FILE (the simulator's certificate).
"""

import asyncio
import json
import os
import urllib.request
from datetime import timedelta

import firebase_admin
from firebase_admin import credentials, exceptions, messaging

env = os.environ
messaging._MessagingService.FCM_URL = env["SIM_TLS"] + "/v1/projects/{0}/messages:send"


def set_faults(faults):
    request = urllib.request.Request(
        env["SIM_CONTROL"] + "/sim/faults",
        data=json.dumps(faults).encode(),
        headers={"content-type": "application/json"},
        method="PUT",
    )
    urllib.request.urlopen(request).read()


def message(**target):
    return messaging.Message(
        notification=messaging.Notification(title="conformance", body="firebase-admin"),
        data={"source": "conformance"},
        android=messaging.AndroidConfig(
            priority="high",
            ttl=timedelta(seconds=60),
            collapse_key="conformance",
            notification=messaging.AndroidNotification(tag="conformance", channel_id="news"),
        ),
        **target,
    )


def failure(error):
    """What the SDK says about a failed send."""
    response = getattr(error, "http_response", None)
    return {
        "type": type(error).__name__,
        "code": getattr(error, "code", None),
        "status": response.status_code if response is not None else None,
        "retry_after": response.headers.get("Retry-After") if response is not None else None,
    }


def main():
    out = {}
    app = firebase_admin.initialize_app(credentials.Certificate(env["SERVICE_ACCOUNT"]))
    out["project_id"] = app.project_id
    out["normal"] = messaging.send(message(token="conformance-normal"))
    out["dry_run"] = messaging.send(message(token="conformance-dry-run"), dry_run=True)
    out["topic"] = messaging.send(message(topic="news"))
    out["condition"] = messaging.send(message(condition="'news' in topics || 'sport' in topics"))
    batch = asyncio.run(
        messaging.send_each_async(
            [message(token="conformance-async-1"), message(token="conformance-async-2")],
            dry_run=False,
        )
    )
    out["async"] = [r.message_id if r.success else failure(r.exception) for r in batch.responses]

    set_faults({"retry_after_secs": 1})
    tokens = [t for t in env["FAULT_TOKENS"].split(",") if t]
    batch = messaging.send_each([message(token=t) for t in tokens])
    out["faults"] = {
        t: (r.message_id if r.success else failure(r.exception))
        for t, r in zip(tokens, batch.responses)
    }

    set_faults({"fail_first": 1000000, "fcm_error": "THIRD_PARTY_AUTH_ERROR"})
    try:
        out["configured"] = messaging.send(message(token="conformance-configured"))
    except exceptions.FirebaseError as error:
        out["configured"] = failure(error)
    set_faults({})
    print(json.dumps(out))


main()
