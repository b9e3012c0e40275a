/**
 * kgate as a user runs it: the built dist/cli.js in its own process (so its
 * memory can be read from /proc), started on a free port.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

export interface Running {
  child: ChildProcess;
  url: string;
  lines: string[];
  exited: Promise<number | null>;
}

export async function startKgate(args: string[], env: Record<string, string> = {}): Promise<Running> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const lines: string[] = [];
  // Read, so a chatty kgate never blocks on a full pipe; the last 64 KiB are kept for a failing test's message.
  let errors = '';
  child.stderr!.on('data', (d: Buffer) => {
    errors = (errors + d.toString()).slice(-65_536);
  });
  let buf = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kgate did not start: ${lines.join('\n')}\n${errors}`)), 20_000);
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop()!;
      lines.push(...parts);
      const m = /^kgate listening on (http:\/\/\S+\/)$/.exec(lines[0] ?? '');
      if (m && lines.length >= 2) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once('exit', (code) => reject(new Error(`kgate exited with ${code}: ${errors.slice(-2000)}`)));
  });
  return { child, url, lines, exited };
}

/** Resident and peak resident memory of a process, in bytes. */
export function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), peak: kb('VmHWM') };
}
