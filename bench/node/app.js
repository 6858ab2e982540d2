// The Node.js HTTP server of bench/compare.sh for PM2 and for Node's own
// cluster module: it listens on PORT (a cluster worker's listen() goes
// through the primary) and answers "pid=N". It stops the way both projects'
// docs suggest: PM2 sends SIGINT, the cluster primary disconnects the
// worker; either way server.close() stops accepting and the process exits
// once its connections are done.
'use strict';

const http = require('node:http');
const cluster = require('node:cluster');

const body = `pid=${process.pid}\n`;
const server = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  res.end(body);
});

function stop() {
  server.close(() => process.exit(0));
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);

server.listen(Number(process.env.PORT), '127.0.0.1', () => {
  // PM2's wait_ready, when asked for; harmless otherwise.
  if (process.send && !cluster.isWorker) process.send('ready');
});
