// Node.js's cluster IPC, measured the way bench/ipc/ipc_test.go measures
// clusterd's: the primary forks one worker and runs one mode,
//
//   to-worker     sends N messages with worker.send; the worker counts them
//                 (process.on('message')) and answers "done";
//   to-primary    asks the worker to send N messages with process.send and
//                 counts them;
//   request-C     N requests from the primary to the worker with C in flight
//                 at a time, each answered at once by the worker, with the
//                 latency of every one;
//
// and prints one JSON object with the rate (per_s) and, for requests, the
// latencies (p50_ns, p99_ns). Every message is {seq, pad} with a
// 48-character pad, as in the Go benchmark.
//
//   node bench/ipc/node_ipc.js MODE N
'use strict';
const cluster = require('node:cluster');

const PAD = 'x'.repeat(48);

if (cluster.isPrimary) {
  const mode = process.argv[2];
  const messages = Number(process.argv[3] || 200000);
  const requests = messages;
  const w = cluster.fork();
  let onMessage = () => {};
  w.on('message', (m) => onMessage(m));

  const next = () => new Promise((resolve) => { onMessage = resolve; });

  const toWorker = async () => {
    const done = next();
    const start = process.hrtime.bigint();
    w.send({ op: 'count', n: messages });
    for (let i = 1; i <= messages; i++) w.send({ seq: i, pad: PAD });
    await done;
    return messages / (Number(process.hrtime.bigint() - start) / 1e9);
  };

  const toPrimary = () => new Promise((resolve, reject) => {
    let seen = 0;
    const start = process.hrtime.bigint();
    onMessage = (m) => {
      seen++;
      if (m.seq !== seen) reject(new Error(`message ${seen} has seq ${m.seq}`));
      if (seen === messages) resolve(messages / (Number(process.hrtime.bigint() - start) / 1e9));
    };
    w.send({ op: 'send', n: messages });
  });

  const request = (callers) => new Promise((resolve) => {
    const sentAt = new Map();
    const lat = [];
    let id = 0;
    const start = process.hrtime.bigint();
    const issue = () => {
      id++;
      sentAt.set(id, process.hrtime.bigint());
      w.send({ id, seq: id, pad: PAD });
    };
    onMessage = (m) => {
      const t = process.hrtime.bigint();
      lat.push(Number(t - sentAt.get(m.reply_to)));
      sentAt.delete(m.reply_to);
      if (lat.length === requests) {
        const secs = Number(t - start) / 1e9;
        lat.sort((a, b) => a - b);
        resolve({ per_s: requests / secs, p50_ns: lat[Math.floor(lat.length / 2)], p99_ns: lat[Math.floor(lat.length * 0.99)] });
      } else if (id < requests) {
        issue();
      }
    };
    for (let i = 0; i < callers && id < requests; i++) issue();
  });

  const modes = {
    'to-worker': async () => ({ per_s: await toWorker() }),
    'to-primary': async () => ({ per_s: await toPrimary() }),
    'request-1': () => request(1),
    'request-64': () => request(64),
  };
  if (!modes[mode]) {
    console.error(`node_ipc.js: unknown mode ${mode}: want one of ${Object.keys(modes).join(', ')}`);
    process.exit(2);
  }
  w.once('online', async () => {
    await next(); // the worker's "ready"
    console.log(JSON.stringify(await modes[mode]()));
    w.kill();
  });
} else {
  let counting = 0;
  process.on('message', (m) => {
    if (counting > 0) {
      if (--counting === 0) process.send({ done: true });
      return;
    }
    if (m.op === 'count') {
      counting = m.n;
    } else if (m.op === 'send') {
      for (let i = 1; i <= m.n; i++) process.send({ seq: i, pad: PAD });
    } else if (m.id !== undefined) {
      process.send({ reply_to: m.id, seq: m.seq, pad: PAD });
    }
  });
  process.send({ ready: true });
}
