"""herald-bench peer: aioapns sends N notifications to the APNs simulator as
fast as it can, and prints one JSON line: {"sent", "ok", "seconds",
"cpu_seconds", "peak_rss_mb"}.

Settings come from the environment (herald-bench sets them): PEER_HOST,
PEER_PORT, PEER_CA_FILE, PEER_KEY_FILE, PEER_KEY_ID, PEER_TEAM_ID, PEER_TOPIC,
PEER_COUNT, PEER_CONNECTIONS, PEER_IN_FLIGHT.
"""

import asyncio
import json
import os
import resource
import ssl
import sys
import time

from aioapns import APNs, NotificationRequest, PushType
from aioapns import connection


def token(n: int) -> str:
    # herald_tests::ios_token: the same devices Herald sends to.
    return format(0xA000_0000_0000_0000 + n, "064x")


async def main() -> None:
    env = os.environ
    # aioapns always dials Apple's production host on 443: point it here.
    connection.APNsProductionClientProtocol.APNS_SERVER = env["PEER_HOST"]
    connection.APNsTLSClientProtocol.APNS_PORT = int(env["PEER_PORT"])
    context = ssl.create_default_context(cafile=env["PEER_CA_FILE"])
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with open(env["PEER_KEY_FILE"]) as f:
        key = f.read()
    apns = APNs(
        key=key,
        key_id=env["PEER_KEY_ID"],
        team_id=env["PEER_TEAM_ID"],
        topic=env["PEER_TOPIC"],
        max_connections=int(env["PEER_CONNECTIONS"]),
        ssl_context=context,
    )
    count = int(env["PEER_COUNT"])
    in_flight = asyncio.Semaphore(int(env["PEER_IN_FLIGHT"]))
    ok = 0

    async def send(n: int) -> None:
        nonlocal ok
        async with in_flight:
            result = await apns.send_notification(
                NotificationRequest(
                    device_token=token(n),
                    message={"aps": {"alert": {"title": "bench", "body": "aioapns"}}},
                    push_type=PushType.ALERT,
                )
            )
            if result.is_successful:
                ok += 1

    # One notification first: the connection and its token are set up
    # before the clock starts, as they are for Herald.
    await send(count)
    ok = 0
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    await asyncio.gather(*(send(n) for n in range(count)))
    seconds = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage.ru_utime + usage.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    print(json.dumps({
        "sent": count,
        "ok": ok,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
