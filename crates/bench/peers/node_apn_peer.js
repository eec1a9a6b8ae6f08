// herald-bench peer: @parse/node-apn sends N notifications to the APNs
// simulator as fast as it can, and prints one JSON line: {sent, ok, seconds,
// cpu_seconds, peak_rss_mb}.
//
// Settings come from the environment (herald-bench sets them): PEER_HOST,
// PEER_PORT, PEER_CA_FILE, PEER_KEY_FILE, PEER_KEY_ID, PEER_TEAM_ID,
// PEER_TOPIC, PEER_COUNT, PEER_CONNECTIONS, PEER_IN_FLIGHT.
'use strict';

const fs = require('fs');
const apn = require('@parse/node-apn');

// herald_tests::ios_token: the same devices Herald sends to.
function token(n) {
  return (0xa000000000000000n + BigInt(n)).toString(16).padStart(64, '0');
}

async function main() {
  const env = process.env;
  const provider = new apn.MultiProvider({
    token: { key: fs.readFileSync(env.PEER_KEY_FILE), keyId: env.PEER_KEY_ID, teamId: env.PEER_TEAM_ID },
    production: true,
    address: env.PEER_HOST,
    port: Number(env.PEER_PORT),
    ca: fs.readFileSync(env.PEER_CA_FILE),
    clientCount: Number(env.PEER_CONNECTIONS),
    requestTimeout: 20000,
  });
  const count = Number(env.PEER_COUNT);
  const inFlight = Number(env.PEER_IN_FLIGHT);
  const note = () => {
    const n = new apn.Notification();
    n.alert = { title: 'bench', body: 'node-apn' };
    n.topic = env.PEER_TOPIC;
    n.pushType = 'alert';
    return n;
  };
  let ok = 0;
  const send = async (i) => {
    const result = await provider.send(note(), token(i));
    ok += result.sent.length;
  };
  // One notification first: the connection and its token are set up
  // before the clock starts, as they are for Herald.
  await send(count);
  ok = 0;
  const cpuBefore = process.cpuUsage();
  const started = process.hrtime.bigint();
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      await send(i);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpuBefore);
  console.log(JSON.stringify({
    sent: count,
    ok,
    seconds,
    cpu_seconds: (cpu.user + cpu.system) / 1e6,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
  }));
  await provider.shutdown();
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
