// A Node.js server on node:http for clusterd: it listens on the socket
// clusterd shares as fd 3 and drains on SIGTERM.
//   clusterd run --listen tcp://127.0.0.1:8000 -w 2 --cwd examples/servers/node -- \
//     node http.js
'use strict';

const http = require('node:http');

const worker = process.env.CLUSTERD_WORKER_ID ?? '-';
let draining = false;

const server = http.createServer((req, res) => {
  if (draining) {
    // A keep-alive client sends its next request to another worker.
    res.setHeader('Connection', 'close');
  }
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.end(`hello from node pid ${process.pid}, worker ${worker}\n`);
});

process.on('SIGTERM', () => {
  draining = true;
  // close stops accepting at once and calls back when the last connection
  // has ended; idle keep-alive connections are closed now, busy ones after
  // their answer.
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});

// LISTEN_FDS is systemd's socket-activation protocol, which clusterd speaks:
// the first socket is fd 3. Node calls listen(2) on it again, with the
// backlog given here (511 without it) for every worker sharing it.
if (!process.env.LISTEN_FDS || Number(process.env.LISTEN_PID) !== process.pid) {
  process.stderr.write('http.js: no socket at fd 3: run it under clusterd --listen\n');
  process.exit(2);
}
server.listen({ fd: 3 }, 4096);
