// Drives `herald sim` with @parse/node-apn, a widely used Node.js APNs client,
// changed in nothing but its endpoint (`address`, `port`, `ca`), and prints
// what the client reports as one JSON document.
//
// Settings come from the environment (tests/tests/conformance.rs sets them):
// SIM_HOST, SIM_PORT (the TLS listener), SIM_CONTROL (the simulator's base
// URL, for /sim/faults), CA_FILE, KEY_FILE, KEY_ID, TEAM_ID, TOPIC,
// CERT_FILE (certificate and key, PEM), TOKEN, REASONS (comma-separated APNs
// reasons to inject, one send each).
'use strict';

const fs = require('fs');
const apn = require('@parse/node-apn');

const env = process.env;
const endpoint = {
  production: true,
  address: env.SIM_HOST,
  port: Number(env.SIM_PORT),
  ca: fs.readFileSync(env.CA_FILE),
  requestTimeout: 10000,
};

function tokenProvider() {
  return new apn.Provider({
    ...endpoint,
    token: { key: fs.readFileSync(env.KEY_FILE), keyId: env.KEY_ID, teamId: env.TEAM_ID },
  });
}

function alert(topic) {
  const note = new apn.Notification();
  note.alert = { title: 'conformance', body: 'node-apn' };
  if (topic) note.topic = topic;
  note.pushType = 'alert';
  return note;
}

// What the client says happened to one send.
function report(result) {
  if (result.sent.length === 1) return { sent: true };
  const failure = result.failed[0] || {};
  return {
    sent: false,
    status: failure.status === undefined ? null : Number(failure.status),
    reason: (failure.response && failure.response.reason) || (failure.error && failure.error.message) || null,
  };
}

async function setFaults(faults) {
  const answer = await fetch(`${env.SIM_CONTROL}/sim/faults`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(faults),
  });
  if (!answer.ok) throw new Error(`PUT /sim/faults: ${answer.status} ${await answer.text()}`);
}

async function main() {
  const out = { normal: null, reasons: {}, certificate_without_topic: null };

  const provider = tokenProvider();
  out.normal = report(await provider.send(alert(env.TOPIC), env.TOKEN));
  await provider.shutdown();

  // Each reason on a provider of its own: node-apn signs a new token after an
  // ExpiredProviderToken, which the same connection would then refuse as
  // TooManyProviderTokenUpdates, as Apple's does.
  for (const reason of env.REASONS.split(',').filter(Boolean)) {
    await setFaults({ fail_first: 1000000, apns_reason: reason });
    const p = tokenProvider();
    out.reasons[reason] = report(await p.send(alert(env.TOPIC), env.TOKEN));
    await p.shutdown();
  }
  await setFaults({});

  // Certificate auth with no apns-topic: Apple takes the certificate's topic.
  const certified = new apn.Provider({ ...endpoint, cert: env.CERT_FILE, key: env.CERT_FILE });
  out.certificate_without_topic = report(await certified.send(alert(null), env.TOKEN));
  await certified.shutdown();

  console.log(JSON.stringify(out));
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
