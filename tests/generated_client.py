"""The README's quick start, a campaign and a trigger, through a client
generated from Herald's OpenAPI document by openapi-python-client, with no
edits to the generated code (docs.rs, `a_generated_client_runs_the_quick_start…`).

Usage: generated_client.py GATEWAY_URL SERVER_KEY SIMULATOR_URL
(the generated package `herald_client` on PYTHONPATH). Exits non-zero, with
the reason, on anything unexpected.
"""

import json
import sys
import time
import urllib.request

from herald_client import AuthenticatedClient
from herald_client.api.campaigns import create_campaign, get_campaign, launch_campaign
from herald_client.api.installations import put_installation
from herald_client.api.messages import get_message
from herald_client.api.push import send_push
from herald_client.api.triggers import create_trigger, post_events
from herald_client.models import (
    CampaignInput,
    CampaignView,
    EventInput,
    EventsAccepted,
    InstallationInput,
    InstallationView,
    MessageStatus,
    PushAccepted,
    PushRequest,
    TriggerInput,
    TriggerView,
)

IOS_TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"


def fail(why):
    print(f"generated client: {why}", file=sys.stderr)
    sys.exit(1)


def expect(response, status, kind):
    if response.status_code != status or not isinstance(response.parsed, kind):
        fail(f"expected {status} {kind.__name__}, got {response.status_code}: {response.content!r}")
    return response.parsed


def wait_until(what, check, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    fail(f"timed out waiting for {what}")


def sim_deliveries(sim):
    with urllib.request.urlopen(f"{sim}/sim/deliveries") as r:
        return json.load(r)


def main():
    gateway, key, sim = sys.argv[1:4]
    client = AuthenticatedClient(base_url=gateway, token=key, raise_on_unexpected_status=True)

    # The quick start: a push with an Idempotency-Key, sent twice, one message.
    push = PushRequest.from_dict({
        "to": {"tokens": [{"platform": "ios", "token": IOS_TOKEN}]},
        "notification": {"title": "Hello", "body": "from Herald"},
    })
    first = expect(send_push.sync_detailed(client=client, body=push, idempotency_key='"my-first-push"'), 202, PushAccepted)
    again = send_push.sync_detailed(client=client, body=push, idempotency_key='"my-first-push"')
    if expect(again, 202, PushAccepted).message_id != first.message_id:
        fail("a resubmitted push made another message")
    if again.headers.get("idempotent-replayed") != "true":
        fail("the resubmission was not marked replayed")

    def push_delivered():
        status = expect(get_message.sync_detailed(str(first.message_id), client=client), 200, MessageStatus)
        return status.counts["delivered"] == 1
    wait_until("the push to be delivered", push_delivered)

    # Two installations of one user, reached by a campaign and by a trigger.
    for i in range(2):
        token = f"{i:02x}" * 32
        installation = InstallationInput.from_dict({"platform": "ios", "token": token, "custom_id": "user-1"})
        expect(put_installation.sync_detailed(f"phone-{i}", client=client, body=installation), 200, InstallationView)

    campaign = CampaignInput.from_dict({
        "name": "Sale",
        "notification": {"title": "Sale", "body": "Everything half price"},
        "audience": {"type": "custom_ids", "ids": ["user-1"]},
    })
    created = expect(create_campaign.sync_detailed(client=client, body=campaign, idempotency_key="sale-1"), 201, CampaignView)
    expect(launch_campaign.sync_detailed(str(created.id), client=client), 200, CampaignView)

    def campaign_done():
        view = expect(get_campaign.sync_detailed(str(created.id), client=client), 200, CampaignView)
        return view.status.value == "completed"
    wait_until("the campaign to complete", campaign_done)

    trigger = TriggerInput.from_dict({
        "name": "welcome",
        "entry_event": "signup",
        "delay_seconds": 0,
        "notification": {"title": "Welcome", "body": "Glad you are here"},
    })
    expect(create_trigger.sync_detailed(client=client, body=trigger, idempotency_key="welcome-1"), 201, TriggerView)
    event = EventInput.from_dict({"event_id": "signup-1", "name": "signup", "custom_id": "user-1"})
    accepted = expect(post_events.sync_detailed(client=client, body=event), 202, EventsAccepted)
    if accepted.accepted != 1:
        fail(f"the event was not accepted: {accepted}")

    # Ground truth: the simulator's record.
    def all_arrived():
        titles = [d["payload"].get("aps", {}).get("alert", {}).get("title") for d in sim_deliveries(sim)]
        return titles.count("Hello") == 1 and titles.count("Sale") == 2 and titles.count("Welcome") == 2
    wait_until("the push, the campaign and the trigger in the simulator's record", all_arrived)
    print("generated client: quick start, campaign and trigger delivered, each once")


if __name__ == "__main__":
    main()
