// Node's own cluster module as a supervisor, for bench/compare.sh: a primary
// that forks WORKERS copies of app.js, replaces one that dies, and on SIGHUP
// does a rolling restart the way the cluster docs describe it: fork a new
// worker, wait for its 'listening' event, then worker.disconnect() the old
// one (kill it if it has not exited after 5 s). NODE_CLUSTER_SCHED_POLICY
// (rr, Node's default, or none) chooses who accepts. It prints
// "reload done" when every old worker has exited.
//   PORT=8080 WORKERS=2 NODE_CLUSTER_SCHED_POLICY=none node bench/node/cluster.js
'use strict';

const cluster = require('node:cluster');
const path = require('node:path');

cluster.setupPrimary({ exec: path.join(__dirname, 'app.js') });
const want = Number(process.env.WORKERS || 2);
let reloading = false;
let stopping = false;

cluster.on('exit', (worker) => {
  // A worker that was disconnected on purpose is not replaced here.
  if (!worker.exitedAfterDisconnect && !stopping) cluster.fork();
});

function replace(old) {
  return new Promise((resolve) => {
    const fresh = cluster.fork();
    fresh.once('listening', () => {
      const timer = setTimeout(() => old.process.kill('SIGKILL'), 5000);
      old.once('exit', () => { clearTimeout(timer); resolve(); });
      old.disconnect();
    });
  });
}

process.on('SIGHUP', async () => {
  if (reloading) return;
  reloading = true;
  for (const old of Object.values(cluster.workers)) {
    await replace(old);
  }
  reloading = false;
  process.stdout.write('reload done\n');
});

function shutdown() {
  stopping = true;
  for (const w of Object.values(cluster.workers)) w.disconnect();
  setTimeout(() => process.exit(0), 5000).unref();
  cluster.disconnect(() => process.exit(0));
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

let listening = 0;
cluster.on('listening', () => {
  if (++listening === want) process.stdout.write('all workers listening\n');
});
for (let i = 0; i < want; i++) cluster.fork();
