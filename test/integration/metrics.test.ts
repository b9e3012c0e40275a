/**
 * GET /metrics after a scripted scenario on a real kgate (in this process)
 * with real ipykernel kernels: a pooled hand-out, cold starts, a start that
 * fails, executes, a client that stops reading, a bad frame, a reconnect that
 * replays, a kill -9 of a kernel (automatic restart), a cull, refused
 * credentials. Each counter and histogram is then checked against what the
 * scenario did (exactly where the scenario decides it), and the whole output
 * against the rules of the Prometheus text exposition format (checked here:
 * prom-client has no parser), and against prom-client's own view of the same
 * registry.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelClient, startGateway, stdout, type TestGateway } from '../helpers/gateway.js';

const METRICS_TOKEN = 'metrics-scrape-token-0123456789';
const CLIENT_BUFFER = 256 * 1024;
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;

// ---------------------------------------------------------------------------
// The text exposition format (https://prometheus.io/docs/instrumenting/exposition_formats/), as promtool checks it.

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Family {
  name: string;
  type: string;
  help: string | undefined;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

/** A sample value as Prometheus reads it (Go's ParseFloat: Inf and NaN in any case; prom-client writes `Nan`). */
function parseValue(s: string): number {
  if (/^\+?inf(inity)?$/i.test(s)) return Infinity;
  if (/^-inf(inity)?$/i.test(s)) return -Infinity;
  if (/^nan$/i.test(s)) return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s)) throw new Error(`not a sample value: ${s}`);
  return Number(s);
}

function parseLabels(s: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < s.length) {
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"/.exec(s.slice(i));
    if (!m) throw new Error(`malformed labels in: ${line}`);
    if (m[1]! in labels) throw new Error(`label ${m[1]} twice in: ${line}`);
    labels[m[1]!] = m[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    i += m[0].length;
    if (i < s.length) {
      if (s[i] !== ',') throw new Error(`malformed labels in: ${line}`);
      i++;
    }
  }
  return labels;
}

/** The family a sample belongs to: histogram and summary samples carry a suffix. */
function familyOf(sample: string, families: Map<string, Family>): Family | undefined {
  const f = families.get(sample);
  if (f) return f;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!sample.endsWith(suffix)) continue;
    const g = families.get(sample.slice(0, -suffix.length));
    if (g && (g.type === 'histogram' || (g.type === 'summary' && suffix !== '_bucket'))) return g;
  }
  return undefined;
}

/** Parses the exposition, throwing at the first rule it breaks. */
function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const done = new Set<string>();
  let current: Family | undefined;
  const seen = new Set<string>();
  const begin = (name: string): Family => {
    if (!NAME.test(name)) throw new Error(`bad metric name ${name}`);
    let f = families.get(name);
    if (f === undefined) {
      if (done.has(name)) throw new Error(`${name}: its lines are not together`);
      f = { name, type: 'untyped', help: undefined, samples: [] };
      families.set(name, f);
    }
    if (current && current !== f) done.add(current.name);
    if (current !== f && f.samples.length > 0) throw new Error(`${name}: its lines are not together`);
    current = f;
    return f;
  };
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
      if (!m) continue; // a comment
      const f = begin(m[2]!);
      if (m[1] === 'HELP') {
        if (f.help !== undefined) throw new Error(`${f.name}: HELP twice`);
        f.help = m[3] ?? '';
      } else {
        if (f.samples.length > 0) throw new Error(`${f.name}: TYPE after its samples`);
        if (f.type !== 'untyped' || (m[3] !== undefined && !TYPES.has(m[3]))) throw new Error(`${f.name}: TYPE twice, or unknown (${m[3]})`);
        f.type = m[3]!;
      }
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const f = familyOf(m[1]!, families) ?? begin(m[1]!);
    if (current !== f) throw new Error(`${m[1]}: its samples are not with its HELP and TYPE`);
    const labels = parseLabels(m[2] ?? '', line);
    for (const l of Object.keys(labels)) if (!LABEL.test(l) || l.startsWith('__')) throw new Error(`bad label name ${l}`);
    const key = `${m[1]}{${Object.entries(labels)
      .sort()
      .map(([k, v]) => `${k}=${v}`)
      .join(',')}}`;
    if (seen.has(key)) throw new Error(`sample twice: ${key}`);
    seen.add(key);
    f.samples.push({ name: m[1]!, labels, value: parseValue(m[3]!) });
  }
  for (const f of families.values()) checkFamily(f);
  return families;
}

function checkFamily(f: Family): void {
  if (f.help === undefined) throw new Error(`${f.name}: no HELP`);
  if (f.type === 'counter') {
    if (!f.name.endsWith('_total')) throw new Error(`counter ${f.name} does not end in _total`);
    for (const s of f.samples) if (!(s.value >= 0)) throw new Error(`counter ${f.name} is negative or NaN`);
  }
  if (f.type !== 'histogram') return;
  const series = new Map<string, { buckets: Array<[number, number]>; sum?: number; count?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const e = series.get(key) ?? { buckets: [] };
    series.set(key, e);
    if (s.name === `${f.name}_bucket`) {
      if (le === undefined) throw new Error(`${f.name}: a bucket without le`);
      e.buckets.push([parseValue(le), s.value]);
    } else if (s.name === `${f.name}_sum`) e.sum = s.value;
    else if (s.name === `${f.name}_count`) e.count = s.value;
    else throw new Error(`${f.name}: unexpected sample ${s.name}`);
  }
  for (const [key, e] of series) {
    if (e.count === undefined || e.sum === undefined) throw new Error(`${f.name}${key}: no _count or _sum`);
    for (let i = 1; i < e.buckets.length; i++) {
      if (!(e.buckets[i]![0] > e.buckets[i - 1]![0])) throw new Error(`${f.name}${key}: le not increasing`);
      if (e.buckets[i]![1] < e.buckets[i - 1]![1]) throw new Error(`${f.name}${key}: buckets not cumulative`);
    }
    const last = e.buckets.at(-1);
    if (!last || last[0] !== Infinity) throw new Error(`${f.name}${key}: no +Inf bucket`);
    if (last[1] !== e.count) throw new Error(`${f.name}${key}: +Inf bucket ${last[1]} is not _count ${e.count}`);
  }
}

describe('the exposition checker', () => {
  it('accepts a well-formed exposition and refuses what breaks a rule', () => {
    const good = [
      '# HELP a_total A.',
      '# TYPE a_total counter',
      'a_total{x="1"} 2',
      '# HELP h H.',
      '# TYPE h histogram',
      'h_bucket{le="1"} 1',
      'h_bucket{le="+Inf"} 2',
      'h_sum 3',
      'h_count 2',
    ].join('\n');
    expect(parseExposition(good).get('h')!.samples).toHaveLength(4);
    const broken = [
      good.replace('a_total{x="1"} 2', 'a_total{x="1"} 2\na_total{x="1"} 3'),
      good.replace(/a_total/g, 'a'),
      good.replace('h_count 2', 'h_count 3'),
      good.replace('h_bucket{le="+Inf"} 2', 'h_bucket{le="+Inf"} 0'),
      good.replace('# HELP h H.', '# HELP h H.\n# HELP h again'),
      good.replace('a_total{x="1"} 2', 'a_total{x=1} 2'),
      `${good}\na_total{x="2"} 1`,
    ];
    for (const b of broken) expect(() => parseExposition(b), b).toThrow();
  });
});

// ---------------------------------------------------------------------------

let t: TestGateway;
let specDir: string;
const kernelIds: string[] = [];
const sessions: string[] = [];

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function scrape(auth = `Bearer ${METRICS_TOKEN}`): Promise<Map<string, Family>> {
  const r = await fetch(new URL('metrics', t.url), { headers: { Authorization: auth } });
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
  return parseExposition(await r.text());
}

/** The value of one sample, undefined when there is none. */
function value(fams: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  const f = familyOf(name, fams);
  const s = f?.samples.find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v) && Object.keys(x.labels).length === Object.keys(labels).length);
  return s?.value;
}

async function startKernel(name: string, env: Record<string, string>): Promise<Response> {
  return t.api('api/kernels', { method: 'POST', json: { name, env } });
}

async function started(name: string, env: Record<string, string>): Promise<string> {
  const r = await startKernel(name, env);
  expect(r.status).toBe(201);
  const id = ((await r.json()) as { id: string }).id;
  kernelIds.push(id);
  return id;
}

async function connect(id: string, protocol: 'json' | 'v1' = 'json', session: string = randomUUID()): Promise<KernelClient> {
  sessions.push(session);
  return KernelClient.connect(t, id, { protocol, session });
}

async function run(c: KernelClient, code: string): Promise<string> {
  const m = c.execute(code);
  const reply = await c.reply(m);
  expect(reply.content['status']).toBe('ok');
  return stdout(c.outputs(m));
}

beforeAll(async () => {
  specDir = await mkdtemp(join(tmpdir(), 'kgate-metrics-'));
  await mkdir(join(specDir, 'kg-fail'));
  await writeFile(join(specDir, 'kg-fail', 'kernel.json'), JSON.stringify({ argv: ['/bin/sh', '-c', 'exit 3', '{connection_file}'], display_name: 'fails', language: 'shell' }));
  t = await startGateway([
    '--kernelspec-dir',
    specDir,
    '--metrics-token',
    METRICS_TOKEN,
    '--metrics-port',
    '0',
    '--pool',
    'python3=1',
    '--cull-idle-timeout',
    '5',
    '--cull-interval',
    '0.5',
    '--max-client-buffer',
    String(CLIENT_BUFFER),
  ]);
});
afterAll(async () => {
  await t?.close();
  if (specDir) await rm(specDir, { recursive: true, force: true });
});

describe('GET /metrics', () => {
  it('is served to the metrics token and the operator token on the main port, and without auth on --metrics-port', async () => {
    expect((await fetch(new URL('metrics', t.url), { headers: { Authorization: `Bearer ${METRICS_TOKEN}` } })).status).toBe(200);
    expect((await fetch(new URL('metrics', t.url), { headers: { Authorization: `token ${t.token}` } })).status).toBe(200);
    const port = t.gw.metrics.address!.port;
    expect(t.gw.metrics.address!.host).toBe('127.0.0.1');
    const r = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect((await r.text()).includes('# TYPE kgate_kernels gauge')).toBe(true);
    const other = await fetch(`http://127.0.0.1:${port}/api/kernels`);
    expect(other.status).toBe(404);
    expect(((await other.json()) as { code: string }).code).toBe('KG_NOT_FOUND');
  });

  it('counts what a scripted scenario did', { timeout: 180_000 }, async () => {
    let authHttpBad = 0;
    // The pooled kernel, handed out at once (before the culler could find it idle).
    await until('the warm pool', async () => {
      const s = (await (await t.api('api/status')).json()) as { pools: Record<string, { ready: number }> };
      return s.pools['python3']?.ready === 1 ? true : undefined;
    });
    const a = await started('python3', {});
    const c1 = await connect(a);
    const c2 = await connect(a, 'v1');
    // Cold starts (KERNEL_* env a pooled kernel was not launched with), and one that fails.
    const b = await started('python3', { KERNEL_METRICS_TEST: 'b' });
    const cb = await connect(b);
    const c = await started('python3', { KERNEL_METRICS_TEST: 'c' });
    const failed = await startKernel('kg-fail', {});
    expect(failed.status).toBe(500);
    const failCode = ((await failed.json()) as { code: string }).code;
    let shellSent = 0;

    // Executes on the JSON and the v1 socket.
    expect((await run(c1, 'print(6*7)')).trim()).toBe('42');
    expect((await run(c2, 'print(6*8)')).trim()).toBe('48');
    shellSent += 2;

    // A client that stops reading while the kernel floods: its output past the bound is
    // dropped and it is told how much once it reads again; the count is what it was told.
    const stalledSession = randomUUID();
    sessions.push(stalledSession);
    const stalled = new WebSocket(`${t.wsUrl}api/kernels/${a}/channels?session_id=${stalledSession}&token=${t.token}`);
    await new Promise((res, rej) => stalled.once('open', res).once('error', rej));
    const stalledSaw: string[] = [];
    stalled.on('message', (d: Buffer) => stalledSaw.push(d.toString('utf8')));
    (stalled as unknown as { _socket: Socket })._socket.pause();
    await run(c1, `import sys, time\nc = 'x' * 16384\nfor _ in range(2048):\n    sys.stdout.write(c); sys.stdout.flush(); time.sleep(0.0003)`);
    shellSent += 1;
    (stalled as unknown as { _socket: Socket })._socket.resume();
    const notice = await until('the stalled client to be told what it missed', async () => stalledSaw.find((s) => s.includes('[kgate]')));
    const missed = Number(/(\d+) output messages? w/.exec(notice)?.[1]);
    expect(missed).toBeGreaterThan(0);
    stalled.close();

    // A frame kgate cannot decode: that client alone is closed with 1007.
    const bad = await connect(a);
    bad.ws.send('[1,2,3]');
    expect((await bad.waitClosed()).code).toBe(1007);

    // A session that reconnects gets what the kernel sent while it was away.
    c2.close();
    await c2.waitClosed();
    await run(c1, 'print("while c2 was away")');
    shellSent += 1;
    const c2again = await connect(a, 'v1', c2.session);
    await c2again.next((m) => m.header.msg_type === 'stream' && String(m.content['text']).includes('while c2 was away'));

    // kill -9 of a kernel's process: it is restarted automatically, and answers again.
    const pid = Number((await run(cb, 'import os; print(os.getpid())')).trim());
    shellSent += 1;
    expect(pid).toBeGreaterThan(1);
    process.kill(pid, 'SIGKILL');
    await cb.next((m) => m.header.msg_type === 'status' && m.content['execution_state'] === 'restarting');
    await until('the kernel restarted', async () => {
      const k = (await (await t.api(`api/kernels/${b}`)).json()) as { execution_state: string };
      return k.execution_state === 'idle' ? true : undefined;
    });
    expect(Number((await run(cb, 'import os; print(os.getpid())')).trim())).not.toBe(pid);
    shellSent += 1;

    // The kernel nobody connected to is culled.
    await until('the idle kernel culled', async () => ((await t.api(`api/kernels/${c}`)).status === 404 ? true : undefined), 30_000);

    // Refused credentials: none, a wrong one, the metrics token on another route, a WebSocket with a wrong one.
    expect((await fetch(new URL('api/kernels', t.url))).status).toBe(401);
    expect((await fetch(new URL('api/kernels', t.url), { headers: { Authorization: 'token wrong' } })).status).toBe(401);
    authHttpBad++;
    expect((await fetch(new URL('api/kernels', t.url), { headers: { Authorization: `Bearer ${METRICS_TOKEN}` } })).status).toBe(401);
    authHttpBad++;
    expect((await fetch(new URL('metrics', t.url), { headers: { Authorization: `Bearer ${METRICS_TOKEN}x` } })).status).toBe(401);
    authHttpBad++;
    const refused = await new Promise<number>((res) => {
      const ws = new WebSocket(`${t.wsUrl}api/kernels/${a}/channels?token=wrong`);
      ws.once('unexpected-response', (_req, r) => res(r.statusCode ?? 0));
      ws.once('open', () => res(101));
      ws.once('error', () => undefined);
    });
    expect(refused).toBe(401);

    // The replacement pooled kernel is ready again, and the closed sockets are counted closed.
    await until('the pool refilled', async () => {
      const s = (await (await t.api('api/status')).json()) as { pools: Record<string, { ready: number; starting: number }> };
      return s.pools['python3']?.ready === 1 && s.pools['python3'].starting === 0 ? true : undefined;
    });
    // Open now: c1, cb (JSON) and c2again (v1); stalled, bad and c2 closed.
    const fams = await until('the sockets closed', async () => {
      const f = await scrape();
      return value(f, 'kgate_websocket_connections', { protocol: 'json' }) === 2 && value(f, 'kgate_websocket_connections', { protocol: 'v1' }) === 1 ? f : undefined;
    });

    const text = await (await fetch(new URL('metrics', t.url), { headers: { Authorization: `token ${t.token}` } })).text();
    // Kept as a test artifact: what an operator sees after this scenario.
    await mkdir(ARTIFACTS, { recursive: true });
    await writeFile(join(ARTIFACTS, 'metrics-after-scenario.txt'), text);
    // No label value is a kernel id, a session id or any UUID.
    for (const f of fams.values()) {
      for (const s of f.samples) {
        for (const v of Object.values(s.labels)) {
          expect(UUID.test(v), `${s.name} ${v}`).toBe(false);
          expect(kernelIds.includes(v) || sessions.includes(v)).toBe(false);
        }
      }
    }
    for (const id of kernelIds) expect(text.includes(id)).toBe(false);

    expect(value(fams, 'kgate_kernels', { phase: 'running', kernelspec: 'python3' })).toBe(2);
    expect(value(fams, 'kgate_kernels', { phase: 'dead', kernelspec: 'kg-fail' })).toBeUndefined();
    // c1, cb, stalled and bad; c2 and c2again.
    expect(value(fams, 'kgate_websocket_connections_opened_total', { protocol: 'json' })).toBe(4);
    expect(value(fams, 'kgate_websocket_connections_opened_total', { protocol: 'v1' })).toBe(2);

    const hist = (outcome: string, pooled: string): { count: number | undefined; sum: number | undefined } => ({
      count: value(fams, 'kgate_kernel_start_seconds_count', { provisioner: 'local', outcome, pooled }),
      sum: value(fams, 'kgate_kernel_start_seconds_sum', { provisioner: 'local', outcome, pooled }),
    });
    expect(hist('ok', 'true').count).toBe(1);
    expect(hist('ok', 'true').sum).toBe(0);
    expect(hist('ok', 'false').count).toBe(2);
    expect(hist('ok', 'false').sum).toBeGreaterThan(0.05);
    expect(failCode).toBe('KG_KERNEL_START_FAILED');
    expect(hist(failCode, 'false').count).toBe(1);
    expect(fams.get('kgate_kernel_start_seconds')!.type).toBe('histogram');

    expect(value(fams, 'kgate_pool_kernels', { kernelspec: 'python3', state: 'ready' })).toBe(1);
    expect(value(fams, 'kgate_pool_kernels', { kernelspec: 'python3', state: 'starting' })).toBe(0);
    expect(value(fams, 'kgate_pool_target_kernels', { kernelspec: 'python3' })).toBe(1);

    expect(value(fams, 'kgate_dropped_messages_total', { reason: 'slow_client' })).toBe(missed);
    expect(value(fams, 'kgate_dropped_messages_total', { reason: 'malformed' })).toBe(1);
    for (const reason of ['rate_limited', 'bad_signature', 'no_client', 'input_queue_full', 'unsolicited_input']) {
      expect(value(fams, 'kgate_dropped_messages_total', { reason }), reason).toBe(0);
    }

    expect(value(fams, 'kgate_kernel_deaths_total', { kernelspec: 'python3', final: 'false' })).toBe(1);
    expect(value(fams, 'kgate_kernel_deaths_total', { kernelspec: 'python3', final: 'true' })).toBeUndefined();
    expect(value(fams, 'kgate_kernel_restarts_total', { kernelspec: 'python3', cause: 'death' })).toBe(1);
    expect(value(fams, 'kgate_kernel_restarts_total', { kernelspec: 'python3', cause: 'request' })).toBeUndefined();
    expect(value(fams, 'kgate_kernel_culls_total', { kernelspec: 'python3' })).toBe(1);
    expect(fams.get('kgate_kernel_adoptions_total')!.samples).toEqual([]);

    // Usage metering, per tenant: every kernel here is the operator's (tenant default); none reserved CPU or a GPU.
    const kernelSeconds = value(fams, 'kgate_usage_kernel_seconds_total', { tenant: 'default' })!;
    expect(kernelSeconds).toBeGreaterThan(0);
    expect(value(fams, 'kgate_usage_core_seconds_total', { tenant: 'default' })).toBe(0);
    expect(fams.get('kgate_usage_gpu_seconds_total')!.samples).toEqual([]);

    expect(value(fams, 'kgate_auth_failures_total', { kind: 'missing', transport: 'http' })).toBe(1);
    expect(value(fams, 'kgate_auth_failures_total', { kind: 'bad_token', transport: 'http' })).toBe(authHttpBad);
    expect(value(fams, 'kgate_auth_failures_total', { kind: 'bad_token', transport: 'websocket' })).toBe(1);

    expect(value(fams, 'kgate_relayed_messages_total', { channel: 'shell', direction: 'in' })).toBe(shellSent);
    expect(value(fams, 'kgate_relayed_messages_total', { channel: 'shell', direction: 'out' })).toBe(shellSent);
    for (const channel of ['control', 'stdin']) {
      for (const direction of ['in', 'out']) expect(value(fams, 'kgate_relayed_messages_total', { channel, direction }), `${channel} ${direction}`).toBe(0);
    }
    // At least the flood's 2048 streams, and its 32 MiB.
    expect(value(fams, 'kgate_relayed_messages_total', { channel: 'iopub', direction: 'out' })).toBeGreaterThan(2048);
    expect(value(fams, 'kgate_relayed_bytes_total', { channel: 'iopub', direction: 'out' })).toBeGreaterThan(2048 * 16384);
    expect(value(fams, 'kgate_relayed_bytes_total', { channel: 'shell', direction: 'in' })).toBeGreaterThan(shellSent * 100);

    expect(value(fams, 'kgate_replay_resumes_total', { outcome: 'replayed' })).toBe(1);
    expect(value(fams, 'kgate_replay_resumes_total', { outcome: 'lost' })).toBe(0);
    const kept = value(fams, 'kgate_replay_kept_bytes')!;
    expect(kept).toBeGreaterThanOrEqual(0);
    expect(kept).toBeLessThanOrEqual(value(fams, 'kgate_replay_limit_bytes')!);

    // Node's own, kgate_ prefixed.
    expect(value(fams, 'kgate_process_resident_memory_bytes')).toBeGreaterThan(10 * 1024 * 1024);
    expect(value(fams, 'kgate_process_open_fds')).toBeGreaterThan(3);
    expect(value(fams, 'kgate_nodejs_heap_size_used_bytes')).toBeGreaterThan(0);
    expect(fams.get('kgate_nodejs_eventloop_lag_seconds')!.type).toBe('gauge');
    expect(fams.get('kgate_process_cpu_seconds_total')!.type).toBe('counter');
    for (const f of fams.values()) expect(f.name.startsWith('kgate_'), f.name).toBe(true);

    // prom-client's own view of the gateway's registry names the same families, of the same types.
    const json = await t.gw.metrics.registry.getMetricsAsJSON();
    for (const m of json) {
      // At run time the type is its name (prom-client's typings say an enum).
      const type = m.type as unknown as string;
      expect(fams.get(m.name)?.type, m.name).toBe(type);
      // Counters of events are equal across two reads; usage counters grow with every running second.
      if (type !== 'counter' || m.name.startsWith('kgate_usage_')) continue;
      for (const v of m.values) expect(value(fams, m.name, v.labels as Record<string, string>), `${m.name} ${JSON.stringify(v.labels)}`).toBe(v.value);
    }

    for (const k of [c1, cb, c2again]) k.close();
  });
});

describe('GET /metrics under --base-url, for other principals', () => {
  let g: TestGateway;
  let dir: string;
  const USER_TOKEN = 'user-token-0123456789abcdef';
  const ADMIN_TOKEN = 'admin-token-0123456789abcdef';
  const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kgate-metrics-tokens-'));
    const file = join(dir, 'tokens.yaml');
    await writeFile(file, `tokens:\n  - sha256: ${sha(USER_TOKEN)}\n    user: alice\n  - sha256: ${sha(ADMIN_TOKEN)}\n    user: ops\n    scopes: [kgate:admin]\n`);
    g = await startGateway(['--base-url', '/gw/', '--token-file', file, '--metrics-token', METRICS_TOKEN]);
  });
  afterAll(async () => {
    await g?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('is served under the base URL to the scrape token, the operator and admins; another user gets 403', async () => {
    const get = (path: string, token: string): Promise<Response> => fetch(new URL(path, g.url), { headers: { Authorization: `Bearer ${token}` } });
    expect(g.url.endsWith('/gw/')).toBe(true);
    for (const token of [METRICS_TOKEN, g.token, ADMIN_TOKEN]) expect((await get('metrics', token)).status, token).toBe(200);
    const user = await get('metrics', USER_TOKEN);
    expect(user.status).toBe(403);
    expect(((await user.json()) as { code: string }).code).toBe('KG_FORBIDDEN');
    // The user's token is good elsewhere; the scrape token is not.
    expect((await get('api/kernels', USER_TOKEN)).status).toBe(200);
    expect((await get('api/kernels', METRICS_TOKEN)).status).toBe(401);
    // Outside the base URL there is no /metrics, whatever the token.
    expect((await fetch(new URL('/metrics', g.url), { headers: { Authorization: `Bearer ${METRICS_TOKEN}` } })).status).toBe(401);
    expect((await fetch(new URL('/metrics', g.url), { headers: { Authorization: `token ${g.token}` } })).status).toBe(404);
    const fams = parseExposition(await (await get('metrics?x=1', METRICS_TOKEN)).text());
    expect(value(fams, 'kgate_kernels')).toBeUndefined();
    expect(fams.get('kgate_kernels')!.type).toBe('gauge');
  });
});
