/**
 * What decodeJsonFrame costs on hostile frames (time, heap growth, peak RSS
 * growth) and how fast it is on ordinary ones (execute_request frames in, and
 * encodeJsonFrame of stream messages out, whose kernel header is scanned too).
 * Each case runs in a fresh process, so one case's garbage and peak RSS do not
 * colour the next:
 *
 *   npx tsx bench/tools/json-scan-cost.ts                # every case
 *   npx tsx bench/tools/json-scan-cost.ts members arrays # some cases
 *
 * Hostile cases are 60 MB frames: `members` has 5.9 million top-level members
 * (issue 10), `arrays` is `[` nested 60 million deep in content, `objects` is
 * content holding 3 million small nested objects (a valid message).
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { decodeJsonFrame, encodeJsonFrame } from '../../src/bridge/ws-json.js';

const MB60 = 60_000_000;
const HOSTILE = ['members', 'arrays', 'objects'] as const;
const THROUGHPUT = ['execute', 'encode'] as const;
type Case = (typeof HOSTILE)[number] | (typeof THROUGHPUT)[number];

const gc = (globalThis as { gc?: () => void }).gc;

/** `{"header":{},` then 5.9 million `"xxxxx":0,` members with distinct base-36 names, then `"content":{}}`. */
function membersFrame(): Buffer {
  const n = 5_900_000;
  const head = Buffer.from('{"header":{},');
  const tail = Buffer.from('"content":{}}');
  const f = Buffer.allocUnsafe(head.length + 10 * n + tail.length);
  head.copy(f, 0);
  let at = head.length;
  for (let k = 0; k < n; k++) {
    f[at] = 0x22;
    let v = k;
    for (let d = 5; d >= 1; d--) {
      const digit = v % 36;
      f[at + d] = digit < 10 ? 0x30 + digit : 0x61 + digit - 10;
      v = Math.floor(v / 36);
    }
    f[at + 6] = 0x22;
    f[at + 7] = 0x3a;
    f[at + 8] = 0x30;
    f[at + 9] = 0x2c;
    at += 10;
  }
  tail.copy(f, at);
  return f;
}

function arraysFrame(): Buffer {
  const head = Buffer.from('{"header":{},"content":{"a":');
  const f = Buffer.alloc(MB60, 0x5b);
  head.copy(f, 0);
  return f;
}

/** A valid message whose content is `{"x":[{"a":{"b":1}},...]}`, 60 MB of 20-byte objects. */
function objectsFrame(): Buffer {
  const head = Buffer.from('{"header":{},"content":{"x":[');
  const item = Buffer.from('{"a":{"b":1},"c":2},');
  const tail = Buffer.from('{}]}}');
  const n = Math.floor((MB60 - head.length - tail.length) / item.length);
  const f = Buffer.allocUnsafe(head.length + n * item.length + tail.length);
  head.copy(f, 0);
  for (let k = 0; k < n; k++) item.copy(f, head.length + k * item.length);
  tail.copy(f, head.length + n * item.length);
  return f;
}

/** An execute_request as JupyterLab 4 sends it (JSON protocol, text frame). */
const EXECUTE = Buffer.from(
  JSON.stringify({
    header: {
      date: '2024-05-01T12:00:00.000Z',
      msg_id: '6c0a1f4e-8a7b-4c1d-9e2f-3b4a5c6d7e8f',
      msg_type: 'execute_request',
      session: '0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6',
      username: '',
      version: '5.2',
    },
    parent_header: {},
    metadata: { deletedCells: [], recordTiming: false, cellId: '4f5e6d7c-8b9a-4012-a345-6789abcdef01' },
    content: { code: 'import numpy as np\nx = np.arange(10)\nprint(x.sum())', silent: false, store_history: true, user_expressions: {}, allow_stdin: true, stop_on_error: true },
    buffers: [],
    channel: 'shell',
  }),
);

const STREAM = {
  header: Buffer.from(
    '{"msg_id": "a1b2c3d4-e5f6a7b8c9d0e1f2a3b4c5d6_123_45", "msg_type": "stream", "username": "u", "session": "a1b2c3d4-e5f6a7b8c9d0e1f2a3b4c5d6", "date": "2024-05-01T12:00:00.123456Z", "version": "5.3"}',
  ),
  parent: Buffer.from(
    '{"msg_id": "6c0a1f4e-8a7b-4c1d-9e2f-3b4a5c6d7e8f", "msg_type": "execute_request", "session": "0d1e2f3a", "username": "", "date": "2024-05-01T12:00:00.000Z", "version": "5.2"}',
  ),
  metadata: Buffer.from('{}'),
  content: Buffer.from('{"name": "stdout", "text": "45\\n"}'),
  buffers: [],
};

function hostile(c: (typeof HOSTILE)[number]): void {
  const frame = c === 'members' ? membersFrame() : c === 'arrays' ? arraysFrame() : objectsFrame();
  gc?.();
  const heap0 = process.memoryUsage().heapUsed;
  const rss0 = process.resourceUsage().maxRSS;
  const t0 = process.hrtime.bigint();
  let outcome: string;
  try {
    const m = decodeJsonFrame(frame, false);
    outcome = `decoded (content ${m.content.length} bytes)`;
  } catch (e) {
    outcome = `refused: ${(e as Error).message.slice(0, 90)}`;
  }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const heap = (process.memoryUsage().heapUsed - heap0) / 2 ** 20;
  const rss = (process.resourceUsage().maxRSS - rss0) / 1024;
  console.log(`${c.padEnd(8)} ${(frame.length / 1e6).toFixed(1)} MB  ${ms.toFixed(1).padStart(8)} ms  heap +${heap.toFixed(1)} MiB  peak RSS +${rss.toFixed(1)} MiB  ${outcome}`);
}

function throughput(c: (typeof THROUGHPUT)[number]): void {
  const run = c === 'execute' ? () => decodeJsonFrame(EXECUTE, false) : () => encodeJsonFrame('iopub', STREAM);
  const bytes = c === 'execute' ? EXECUTE.length : STREAM.header.length;
  for (let k = 0; k < 200_000; k++) run(); // warm up (optimised code)
  const rounds: number[] = [];
  for (let r = 0; r < 7; r++) {
    const n = 500_000;
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < n; k++) run();
    rounds.push(Number(process.hrtime.bigint() - t0) / n);
  }
  rounds.sort((a, b) => a - b);
  const median = rounds[3]!;
  const what = c === 'execute' ? `decodeJsonFrame, execute_request of ${bytes} bytes` : `encodeJsonFrame, stream with a ${bytes}-byte header`;
  console.log(
    `${c.padEnd(8)} ${what}: median ${median.toFixed(0)} ns/frame (min ${rounds[0]!.toFixed(0)}, max ${rounds[6]!.toFixed(0)}), ${(1e3 / median).toFixed(2)} M frames/s, ${((bytes / median) * 1e3).toFixed(0)} MB/s`,
  );
}

function main(): void {
  const args = process.argv.slice(2) as Case[];
  if (args.length === 1 && process.env.JSON_SCAN_COST_CHILD === '1') {
    const c = args[0]!;
    if ((HOSTILE as readonly string[]).includes(c)) hostile(c as (typeof HOSTILE)[number]);
    else throughput(c as (typeof THROUGHPUT)[number]);
    return;
  }
  const cases = args.length > 0 ? args : [...HOSTILE, ...THROUGHPUT];
  const self = fileURLToPath(import.meta.url);
  for (const c of cases) {
    const out = execFileSync(process.execPath, [...process.execArgv, '--expose-gc', '--max-old-space-size=4096', self, c], {
      env: { ...process.env, JSON_SCAN_COST_CHILD: '1' },
      encoding: 'utf8',
      timeout: 120_000,
    });
    process.stdout.write(out);
  }
}

main();
