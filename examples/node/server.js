// A Node.js HTTP server that runs under clusterd unmodified: it listens on the
// socket clusterd hands it as fd 3 (or on :8080 alone) and drains on SIGTERM.
//   clusterd run --listen tcp://127.0.0.1:8080 -w 2 -- node examples/node/server.js
'use strict';

const http = require('node:http');

// LISTEN_FDS/LISTEN_PID is systemd's socket-activation protocol, which
// clusterd speaks: the first socket is fd 3.
const inherited = process.env.LISTEN_FDS && Number(process.env.LISTEN_PID) === process.pid;
const worker = process.env.CLUSTERD_WORKER_ID ?? '-';

const server = http.createServer((req, res) => {
  if (draining) {
    // Keep-alive clients go to another worker for their next request.
    res.setHeader('Connection', 'close');
  }
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.end(`hello from node pid ${process.pid}, worker ${worker}\n`);
});

let draining = false;
process.on('SIGTERM', () => {
  draining = true;
  // close() stops accepting at once and calls back once every connection
  // has ended; idle keep-alive connections are closed by closeIdleConnections.
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});

server.listen(inherited ? { fd: 3 } : { port: 8080 }, () => {
  process.stderr.write(`node: worker ${worker} pid ${process.pid} listening\n`);
});
