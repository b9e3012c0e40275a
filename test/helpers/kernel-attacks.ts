/**
 * What the isolation tests run inside a kernel, through kgate as a user
 * would: Python that reads, writes, connects and forks, and prints what
 * happened in one word, so a test compares outcomes across provisioners.
 */
import { expect } from 'vitest';
import { stdout, type KernelClient } from './gateway.js';

/** Runs `code`, answering its reply status, its stdout (trimmed) and the reply. */
export async function run(c: KernelClient, code: string, timeoutMs = 30_000): Promise<{ status: string; out: string; reply: Record<string, unknown> }> {
  const m = c.execute(code);
  const r = await c.reply(m, timeoutMs);
  return { status: r.content['status'] as string, out: stdout(c.outputs(m)).trim(), reply: r.content };
}

/** Runs `code`, which must succeed, answering its stdout. */
export async function ok(c: KernelClient, code: string): Promise<string> {
  const r = await run(c, code);
  expect(r.status, JSON.stringify(r.reply)).toBe('ok');
  return r.out;
}

/** Lists a directory or reads a file: `listed:…`, `read:…` or `refused:<exception>`. */
export const PROBE = (path: string): string => `import os
p = ${JSON.stringify(path)}
try:
    print('listed:' + ','.join(sorted(os.listdir(p))) if os.path.isdir(p) else 'read:' + open(p).read()[:20])
except Exception as e:
    print('refused:' + type(e).__name__)`;

/** Writes a file: `written` or `refused:<exception>:<errno>`. */
export const WRITE = (path: string): string => `try:
    open(${JSON.stringify(path)}, 'w').write('x')
    print('written')
except Exception as e:
    print('refused:' + type(e).__name__ + ':' + str(getattr(e, 'errno', '')))`;

/** Opens a TCP connection: `connected` or `refused:<errno name>`. */
export const CONNECT = (host: string, port: number): string => `import socket, errno
s = socket.socket()
s.settimeout(3)
try:
    s.connect((${JSON.stringify(host)}, ${port}))
    print('connected')
except OSError as e:
    print('refused:' + (errno.errorcode.get(e.errno, '') or type(e).__name__))`;

/** Forks until refused (bounded at 100000): `stopped <n> <exception>`, or `unbounded <n>`. */
export const FORK_BOMB = `import os, time
n = 0
try:
    while n < 100000:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
    print('unbounded', n)
except OSError as e:
    print('stopped', n, type(e).__name__)`;
