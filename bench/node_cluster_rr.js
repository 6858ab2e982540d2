// Node's cluster in its default round-robin mode (SCHED_RR on Linux), with an
// HTTP server that answers as examples/hello does: the comparison for
// clusterd's --balance round-robin in bench/balance.sh.
//   node bench/node_cluster_rr.js PORT WORKERS
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.argv[2] || 8080);
const workers = Number(process.argv[3] || 2);
cluster.schedulingPolicy = cluster.SCHED_RR;

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  let listening = 0;
  cluster.on('listening', () => {
    if (++listening === workers) console.log(`listening on 127.0.0.1:${port} with ${workers} workers`);
  });
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  const id = cluster.worker.id - 1;
  http.createServer((req, res) => {
    res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.end(`hello from pid ${process.pid}, worker ${id}, generation 1\n`);
  }).listen(port, '127.0.0.1');
}
