// A Node.js caller of poold: it loads the contract from api/, runs one HTTP
// request through the pool, then several over one Pipeline stream, changes
// the default policy's idle timeout and reads the effective policy back.
//
// Usage: node client.js [poold address] [upstream URL]
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const address = process.argv[2] || '127.0.0.1:7070';
const upstream = process.argv[3] || 'http://127.0.0.1:8080/from-node';

const api = path.join(__dirname, '..', '..', 'api');
const definition = protoLoader.loadSync(
  ['poold/v1/http.proto', 'poold/v1/policy.proto'],
  { includeDirs: [api, path.join(__dirname, "..", "..", "third_party")], keepCase: false, longs: String, enums: String, defaults: false, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).poold.v1;
const creds = grpc.credentials.createInsecure();
const http = new v1.HTTPService(address, creds);
const policies = new v1.PolicyService(address, creds);

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10000);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// pipeline sends every request over one Pipeline stream and resolves with
// the answers by id, once the stream has ended.
function pipeline(client, requests) {
  return new Promise((resolve, reject) => {
    const answers = new Map();
    const stream = client.Pipeline({ deadline: new Date(Date.now() + 10000) });
    stream.on('metadata', (md) => console.log(`Pipeline: depth ${md.get('poold-pipeline-depth')}`));
    stream.on('data', (answer) => answers.set(answer.id, answer));
    stream.on('error', reject);
    stream.on('end', () => resolve(answers));
    requests.forEach((request, i) => stream.write({ id: String(i + 1), request }));
    stream.end();
  });
}

async function main() {
  const resp = await call(http, 'Do', {
    method: 'POST',
    url: upstream,
    headers: [{ name: 'Content-Type', value: 'text/plain' }],
    body: Buffer.from('hello from node'),
  });
  console.log(`Do: ${resp.statusCode} ${resp.protocol} connection ${resp.timing.connectionId}`);
  console.log(resp.body.toString().trim());
  if (resp.statusCode !== 200 || !resp.body.toString().includes('hello from node')) {
    throw new Error(`unexpected response: ${resp.statusCode}`);
  }

  const paths = ['/one', '/two', '/three'];
  const answers = await pipeline(http, paths.map((p) => ({ method: 'GET', url: new URL(p, upstream).href })));
  for (const [i, p] of paths.entries()) {
    const answer = answers.get(String(i + 1));
    if (!answer || answer.error || answer.response.statusCode !== 200) {
      throw new Error(`pipelined ${p}: ${JSON.stringify(answer && (answer.error || answer.response.statusCode))}`);
    }
    console.log(`Pipeline: id ${answer.id} ${answer.response.statusCode} ${p}`);
  }

  const current = await call(policies, 'GetPolicy', { name: 'policies/default' });
  const updated = await call(policies, 'UpdatePolicy', {
    policy: { name: 'policies/default', idleConnTimeout: { seconds: 45 }, etag: current.etag },
    updateMask: { paths: ['idle_conn_timeout'] },
  });
  console.log(`UpdatePolicy: idle_conn_timeout=${updated.idleConnTimeout.seconds}s etag=${updated.etag}`);

  const effective = await call(policies, 'GetEffectivePolicy', { host: new URL(upstream).host });
  console.log(`GetEffectivePolicy: ${effective.name} idle_conn_timeout=${effective.idleConnTimeout.seconds}s`);
  if (String(effective.idleConnTimeout.seconds) !== '45') {
    throw new Error('policy change not visible in the effective policy');
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`node example failed: ${err.message}`);
    process.exit(1);
  },
);
