#!/usr/bin/env node
// A raw WebSocket client of kgate in plain Node (the `ws` package and fetch):
// starts a kernel over REST, runs the code given on the command line over
// /api/kernels/{id}/channels with the JSON protocol (one JSON text frame per
// message), prints what it printed, and shuts the kernel down.
//
//   KGATE_URL=http://127.0.0.1:8888 KGATE_TOKEN=s3cret node examples/node-ws-client.mjs 'print(6 * 7)'
//
// stdout and stderr of the kernel go to ours; an error prints its traceback on
// stderr and exits 1.
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';

const base = new URL(process.env.KGATE_URL ?? 'http://127.0.0.1:8888/');
if (!base.pathname.endsWith('/')) base.pathname += '/';
const token = process.env.KGATE_TOKEN ?? '';
const code = process.argv.slice(2).join(' ') || 'print("hello from kgate")';
const kernelName = process.env.KGATE_KERNEL ?? 'python3';

async function rest(method, path, body) {
  const res = await fetch(new URL(path, base), {
    method,
    headers: { Authorization: `token ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return res.status === 204 ? undefined : res.json();
}

/** A Jupyter message in the JSON WebSocket form; `channel` picks the kernel socket. */
function message(msgType, content, session, channel = 'shell') {
  return {
    channel,
    header: { msg_id: randomUUID(), msg_type: msgType, session, username: 'node-ws-client', date: new Date().toISOString(), version: '5.3' },
    parent_header: {},
    metadata: {},
    content,
    buffers: [],
  };
}

/** Sends execute_request and resolves with `true` (ok) or `false` (error) once the kernel is idle again. */
function execute(ws, session) {
  const request = message('execute_request', { code, silent: false, store_history: false, user_expressions: {}, allow_stdin: false, stop_on_error: true }, session);
  return new Promise((resolve, reject) => {
    let status;
    let idle = false;
    const done = () => {
      if (status !== undefined && idle) {
        ws.off('message', onMessage);
        resolve(status === 'ok');
      }
    };
    const onMessage = (data, isBinary) => {
      // Messages with binary buffers come as binary frames; this example only needs text ones.
      if (isBinary) return;
      const msg = JSON.parse(data.toString('utf8'));
      if (msg.parent_header.msg_id !== request.header.msg_id) return;
      const { content } = msg;
      switch (msg.header.msg_type) {
        case 'stream':
          (content.name === 'stderr' ? process.stderr : process.stdout).write(content.text);
          break;
        case 'execute_result':
        case 'display_data':
          if (content.data['text/plain'] !== undefined) process.stdout.write(`${content.data['text/plain']}\n`);
          break;
        case 'error':
          // eslint-disable-next-line no-control-regex -- tracebacks carry ANSI colour codes (ESC [ … m)
          process.stderr.write(`${content.traceback.join('\n').replace(/\x1b\[[0-9;]*m/g, '')}\n`);
          break;
        case 'execute_reply':
          status = content.status;
          done();
          break;
        case 'status':
          idle = content.execution_state === 'idle';
          done();
          break;
      }
    };
    ws.on('message', onMessage);
    ws.once('close', (code, reason) => reject(new Error(`socket closed (${code} ${reason})`)));
    ws.send(JSON.stringify(request));
  });
}

const kernel = await rest('POST', 'api/kernels', { name: kernelName });
let ok;
try {
  const session = randomUUID();
  const wsUrl = new URL(`api/kernels/${encodeURIComponent(kernel.id)}/channels`, base);
  wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
  wsUrl.searchParams.set('session_id', session);
  const ws = new WebSocket(wsUrl, { headers: { Authorization: `token ${token}` } });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  try {
    ok = await execute(ws, session);
  } finally {
    ws.close();
  }
} finally {
  await rest('DELETE', `api/kernels/${encodeURIComponent(kernel.id)}`);
}
process.exitCode = ok ? 0 : 1;
