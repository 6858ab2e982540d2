// An Express 5 app for clusterd: it listens on the socket clusterd shares
// as fd 3 and drains on SIGTERM. Install Express first:
//   npm ci --prefix examples/servers/node
//   clusterd run --listen tcp://127.0.0.1:8000 -w 2 --cwd examples/servers/node -- \
//     node express.js
'use strict';

const express = require('express');

const worker = process.env.CLUSTERD_WORKER_ID ?? '-';
let draining = false;

const app = express();
app.get('/', (req, res) => {
  if (draining) {
    res.set('Connection', 'close');
  }
  res.type('text/plain').send(`hello from express pid ${process.pid}, worker ${worker}\n`);
});

if (!process.env.LISTEN_FDS || Number(process.env.LISTEN_PID) !== process.pid) {
  process.stderr.write('express.js: no socket at fd 3: run it under clusterd --listen\n');
  process.exit(2);
}
// app.listen passes its arguments to http.Server.listen, which calls
// listen(2) again on the inherited socket: without the second argument the
// backlog of the socket every worker shares drops from clusterd's (the
// kernel's maximum, net.core.somaxconn) to Node's default of 511.
const server = app.listen({ fd: 3 }, 4096);

process.on('SIGTERM', () => {
  draining = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
