#!/usr/bin/env node
// A minimal Node.js client for taskerd.
//
//   TASKER_SOCKET=/path/to/taskerd.sock node client.js [CMD ARGS...]
//   TASKER_ADDRESS=host:7700 TASKER_TLS_CA=ca.pem TASKER_TOKEN_FILE=ci.token node client.js
//   node client.js --groups                  # ListGroups
//   node client.js --pause GROUP | --resume GROUP
//
// Submits one task (default: `echo hello from node`), streams its events with
// output, prints the final state and then the daemon's Stats. With --groups it
// lists the groups; with --pause or --resume it pauses or resumes one group
// (Pause, Resume), then lists the groups. It loads the contract straight from
// protos/tasker/v1/tasker.proto; no code generation.
// Over TCP (TASKER_ADDRESS), the channel uses TLS with TASKER_TLS_CA (else the
// system's CAs; TASKER_TLS_CERT and TASKER_TLS_KEY for mutual TLS), and every
// call carries `authorization: Bearer TOKEN` (TASKER_TOKEN, or the first line
// of TASKER_TOKEN_FILE).
// Over the Unix socket it shows its user to taskerd first (protos/tasker/peers.py):
// it sends a random nonce to the side door `<socket>.peer`, keeps that open, and
// every call carries `tasker-peer: NONCE`, so its tasks record `unix:USER`.
// Exit status: 0 when the task succeeded (or the group verb did), 1 when it
// ended otherwise (or the daemon refused), 69 when the daemon is unreachable,
// 77 when the token is missing, unknown or its role may not (as taskerctl).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILE = path.join(PROTO_ROOT, 'tasker', 'v1', 'tasker.proto');
const EX_UNAVAILABLE = 69;
const EX_NOPERM = 77;

/** The daemon's socket: $TASKER_SOCKET, else the same default as taskerctl. */
function socketPath() {
  if (process.env.TASKER_SOCKET) return path.resolve(process.env.TASKER_SOCKET);
  const runtime = process.env.XDG_RUNTIME_DIR;
  const base = runtime ? path.join(runtime, 'tasker') : `/tmp/tasker-${os.userInfo().uid}`;
  return path.join(base, 'taskerd.sock');
}

/** The file named by an environment variable, read; null when it is unset. */
function readEnvFile(name) {
  return process.env[name] ? fs.readFileSync(process.env[name]) : null;
}

/** The daemon's target and channel credentials: TCP with TLS, or the Unix socket. */
function where() {
  const address = process.env.TASKER_ADDRESS;
  if (!address) {
    return { target: `unix:${socketPath()}`, credentials: grpc.credentials.createInsecure() };
  }
  const ca = readEnvFile('TASKER_TLS_CA'); // null: the system's CAs
  const key = readEnvFile('TASKER_TLS_KEY');
  const cert = readEnvFile('TASKER_TLS_CERT');
  return { target: address, credentials: grpc.credentials.createSsl(ca, key, cert) };
}

/** The token for TCP calls: $TASKER_TOKEN, or the first line of $TASKER_TOKEN_FILE. */
function token() {
  if (process.env.TASKER_TOKEN) return process.env.TASKER_TOKEN;
  const file = readEnvFile('TASKER_TOKEN_FILE');
  return file ? file.toString().trim().split('\n')[0].trim() : null;
}

/** A Tasker stub connected to the daemon (see `where`). */
function connect() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT], // google/protobuf/*.proto come with proto-loader
    keepCase: false,
    longs: String, // uint64 ids and counters as decimal strings
    enums: String, // enum values by name, e.g. "TASK_STATE_SUCCEEDED"
    defaults: true,
    oneofs: true, // TaskEvent.kind names the set field
  });
  const { tasker } = grpc.loadPackageDefinition(definition);
  const { target, credentials } = where();
  return new tasker.v1.Tasker(target, credentials);
}

/** The side door's nonce once it is open (see `knock`); null otherwise. */
let peerNonce = null;

/**
 * Over the Unix socket, open the side door `<socket>.peer` with a random nonce,
 * so that taskerd reads this process's user from the kernel (SO_PEERCRED) and
 * records it for the tasks it submits. Resolves either way: a daemon without a
 * door records the socket alone.
 */
function knock() {
  if (process.env.TASKER_ADDRESS) return Promise.resolve();
  const nonce = crypto.randomBytes(16).toString('hex');
  return new Promise((resolve) => {
    const door = net.connect(`${socketPath()}.peer`);
    door.on('error', () => resolve());
    door.on('connect', () => {
      door.write(`${nonce}\n`);
      door.unref(); // it stays open while the process lives, and keeps nothing alive
      peerNonce = nonce;
      resolve();
    });
  });
}

/**
 * Call metadata announcing API level 3 (protos/tasker/api.py): with less, the
 * daemon shows each newer state as the nearest one an older client knows.
 */
function apiLevel() {
  const metadata = new grpc.Metadata();
  metadata.set('tasker-api', '3');
  const bearer = token();
  if (bearer) metadata.set('authorization', `Bearer ${bearer}`);
  if (peerNonce) metadata.set('tasker-peer', peerNonce);
  return metadata;
}

/** Promisified unary call. */
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10_000);
    client[method](request, apiLevel(), { deadline }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

/** Streams a task's events to stdout/stderr; resolves with its final Task record. */
function follow(client, id) {
  return new Promise((resolve, reject) => {
    let finished = null;
    const seen = { stdout: 0, stderr: 0 }; // bytes streamed so far, per stream
    const call = client.streamResults({ ids: [id], output: true }, apiLevel());
    call.on('data', (event) => {
      if (event.kind === 'started') {
        console.log(`task ${id}: started (pid ${event.started.pid}, worker ${event.started.worker})`);
      } else if (event.kind === 'output') {
        const name = event.output.stream === 'OUTPUT_STREAM_STDERR' ? 'stderr' : 'stdout';
        process[name].write(event.output.data);
        seen[name] += event.output.data.length;
      } else if (event.kind === 'retrying') {
        console.log(`task ${id}: retrying (${event.retrying.reason})`);
      } else if (event.kind === 'stateChanged') {
        // Paused, resumed (RUNNING again) or stashed.
        const state = event.stateChanged.state.replace(/^TASK_STATE_/, '');
        console.log(`task ${id}: ${state} (${event.stateChanged.reason})`);
      } else if (event.kind === 'finished') {
        finished = event.finished.task;
        // A task that ended before we watched it streams no chunks: its output
        // comes whole in `finished`. Print whatever the chunks did not cover.
        for (const name of ['stdout', 'stderr']) {
          const rest = (finished[name] || Buffer.alloc(0)).subarray(seen[name]);
          if (rest.length > 0) process[name].write(rest);
        }
      }
    });
    call.on('error', reject);
    call.on('end', () =>
      finished ? resolve(finished) : reject(new Error(`stream of task ${id} ended early`)),
    );
  });
}

function seconds(duration) {
  if (!duration) return 0;
  return Number(duration.seconds) + duration.nanos / 1e9;
}

/** Prints every group, a line each. */
async function listGroups(client) {
  const { groups } = await unary(client, 'listGroups', {});
  for (const g of groups) {
    console.log(
      `group ${g.name}: parallel ${g.parallel}-${g.maxParallel} running ${g.running} ` +
        `queued ${g.queued} stashed ${g.stashed} paused ${g.paused ? 'yes' : 'no'}`,
    );
  }
}

/** --groups, --pause GROUP, --resume GROUP: the queue-control verbs. */
async function control(client, argv) {
  const [flag, name] = argv;
  if (flag === '--pause' || flag === '--resume') {
    if (!name) throw new Error(`${flag} takes a group name`);
    const verb = flag.slice(2);
    const reply = await unary(client, verb, { groups: [name] });
    const ids = reply.paused || reply.resumed || [];
    console.log(`${verb}d group ${name}` + (ids.length ? ` (tasks ${ids.join(', ')})` : ''));
  }
  await listGroups(client);
  return 0;
}

async function main(argv) {
  await knock();
  const client = connect();
  if (['--groups', '--pause', '--resume'].includes(argv[0])) {
    const code = await control(client, argv);
    client.close();
    return code;
  }
  const command = argv.length > 0 ? argv : ['echo', 'hello from node'];

  const { ids } = await unary(client, 'submit', { tasks: [{ argv: command }] });
  const id = ids[0];
  console.log(`submitted task ${id}: ${command.join(' ')}`);

  const task = await follow(client, id);
  const state = task.state.replace(/^TASK_STATE_/, '');
  const how = task.exitCode !== undefined && task.exitCode !== null ? ` exit ${task.exitCode}` : '';
  const why = task.error ? ` (${task.error})` : '';
  console.log(`task ${id}: ${state}${how} in ${seconds(task.run).toFixed(3)}s${why}`);

  const s = await unary(client, 'stats', {});
  console.log(
    `stats: workers ${s.activeWorkers}/${s.baseWorkers}-${s.maxWorkers} running ${s.running} ` +
      `queued ${s.queued}/${s.queueCapacity} succeeded ${s.succeeded} failed ${s.failed} ` +
      `timed_out ${s.timedOut} cancelled ${s.cancelled} uptime ${seconds(s.uptime).toFixed(1)}s ` +
      `version ${s.version}`,
  );
  client.close();
  return task.state === 'TASK_STATE_SUCCEEDED' ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    const code = err && err.code;
    console.error(`error: ${err && err.details ? err.details : err}`);
    if (code === grpc.status.UNAVAILABLE) process.exitCode = EX_UNAVAILABLE;
    else if (code === grpc.status.UNAUTHENTICATED || code === grpc.status.PERMISSION_DENIED) {
      process.exitCode = EX_NOPERM;
    } else process.exitCode = 1;
  },
);
