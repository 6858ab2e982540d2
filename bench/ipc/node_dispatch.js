// Jobs spread by a Node.js cluster primary with worker.send, the way
// bench/ipc/ipc_test.go's BenchmarkDispatch spreads them with clusterd's
// Master.Dispatch: the primary forks WORKERS workers and keeps WINDOW jobs
// outstanding on each, every job {id, seq, pad} with a PAD-character pad;
// a worker answers each at once with {reply_to, seq}, and the primary
// resolves the job's promise (matched by id) and checks seq. It prints one
// JSON object with the rate and the CPU time the primary and its workers
// used per job, read from /proc/PID/stat as the Go benchmark reads it:
// {"per_s": ..., "primary_cpu_us_per_job": ..., "workers_cpu_us_per_job": ...}.
//
//   node bench/ipc/node_dispatch.js PAD JOBS WORKERS WINDOW
'use strict';
const cluster = require('node:cluster');
const fs = require('node:fs');

// cpuMicros is the CPU time (utime + stime, in clock ticks of 10 ms) that
// the processes pids have used so far, in µs.
const cpuMicros = (pids) => {
  let ticks = 0;
  for (const pid of pids) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
    ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks * 10000;
};

if (cluster.isPrimary) {
  const args = process.argv.slice(2).map(Number);
  if (args.length !== 4 || args.some((n) => !Number.isInteger(n) || n < 1)) {
    console.error('node_dispatch.js: want PAD JOBS WORKERS WINDOW, positive integers');
    process.exit(2);
  }
  const [padLen, jobs, workers, window] = args;
  const pad = 'x'.repeat(padLen);
  const pending = new Map(); // job id -> resolve
  let nextID = 0;
  let nextSeq = 0;
  let ready = 0;

  const dispatch = (w, job) => new Promise((resolve) => {
    const id = ++nextID;
    pending.set(id, resolve);
    w.send({ id, seq: job.seq, pad: job.pad });
  });

  // lane keeps one of a worker's WINDOW slots busy until the jobs run out.
  const lane = async (w) => {
    while (nextSeq < jobs) {
      const seq = nextSeq++;
      const answer = await dispatch(w, { seq, pad });
      if (answer.seq !== seq) throw new Error(`job ${seq}: answer for job ${answer.seq}`);
    }
  };

  const run = async (ws) => {
    const pids = ws.map((w) => w.process.pid);
    const primary0 = cpuMicros(['self']);
    const workers0 = cpuMicros(pids);
    const start = process.hrtime.bigint();
    const lanes = [];
    for (const w of ws) for (let i = 0; i < window; i++) lanes.push(lane(w));
    await Promise.all(lanes);
    const secs = Number(process.hrtime.bigint() - start) / 1e9;
    const primary = cpuMicros(['self']) - primary0;
    const workersCPU = cpuMicros(pids) - workers0;
    console.log(JSON.stringify({
      per_s: jobs / secs,
      primary_cpu_us_per_job: primary / jobs,
      workers_cpu_us_per_job: workersCPU / jobs,
    }));
    for (const w of ws) w.kill();
  };

  const ws = [];
  for (let i = 0; i < workers; i++) {
    const w = cluster.fork();
    w.on('message', (m) => {
      if (m.ready) {
        if (++ready === workers) run(ws).catch((err) => { console.error(err); process.exit(1); });
        return;
      }
      const resolve = pending.get(m.reply_to);
      pending.delete(m.reply_to);
      resolve(m);
    });
    ws.push(w);
  }
} else {
  process.on('message', (m) => process.send({ reply_to: m.id, seq: m.seq }));
  process.send({ ready: true });
}
