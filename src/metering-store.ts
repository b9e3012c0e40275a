/**
 * Where usage is kept (src/metering.ts). With --state-dir: JSON lines under
 * `<state-dir>/usage/`, one file per UTC day (`2026-12-01.jsonl`), each line
 * one interval a kernel was metered. A batch of lines goes out in one write()
 * on a file opened O_APPEND, so replicas on one state dir append to the same
 * file and their lines never interleave. Lines are never rewritten; an
 * interval that crosses midnight is split into the two days' files.
 *
 * Beside them, `usage/open/ID.json` holds the last checkpoint of each kernel
 * being metered (rewritten atomically, temp file then rename): a gateway that
 * adopts the kernel after a crash charges from there, so the time across the
 * crash is not lost. It goes when the kernel's metering ends.
 *
 * Without a state dir the same intervals are kept in memory, for as long as
 * a usage query may reach back (MAX_RANGE_MS), and are gone with the process.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ResourceRequest } from './provisioner/types.js';

/** The longest span one usage query may cover (and what the memory store keeps). */
export const MAX_RANGE_MS = 31 * 86_400_000;
const DAY_MS = 86_400_000;
const ID = /^[A-Za-z0-9-]{1,64}$/;

/** A kernel metered from `from` to `to` (epoch ms), with what it reserved all along. */
export interface UsageInterval {
  kernelId: string;
  tenant: string;
  user: string | null;
  kernelspec: string;
  from: number;
  to: number;
  resources: ResourceRequest;
}

/** A kernel's last checkpoint: who it is for, what it reserves, and up to when it was charged (`to`). */
export type UsageMark = Omit<UsageInterval, 'from'>;

export interface UsageStore {
  /** Appends intervals (as one write per day file). */
  append(intervals: readonly UsageInterval[]): Promise<void>;
  /** Visits every recorded interval overlapping [since, until), unclipped, in file order. */
  scan(since: number, until: number, visit: (i: UsageInterval) => void): Promise<void>;
  mark(m: UsageMark): Promise<void>;
  lastMark(kernelId: string): Promise<UsageMark | undefined>;
  unmark(kernelId: string): Promise<void>;
  /** The kernels that have a mark. */
  marked(): Promise<string[]>;
}

/** The UTC day (`YYYY-MM-DD`) that holds epoch ms `t`. */
export const utcDay = (t: number): string => new Date(t).toISOString().slice(0, 10);

/** The interval cut at each UTC midnight it crosses. */
export function splitByDay(i: UsageInterval): UsageInterval[] {
  const out: UsageInterval[] = [];
  let from = i.from;
  // Bounded: an interval spans at most as many days as it is long.
  while (from < i.to) {
    const midnight = (Math.floor(from / DAY_MS) + 1) * DAY_MS;
    const to = Math.min(i.to, midnight);
    out.push({ ...i, from, to });
    from = to;
  }
  return out;
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;

/** What a line or a mark file says a kernel reserved, keeping only well-formed members. */
function resourcesOf(v: unknown): ResourceRequest {
  if (v === null || typeof v !== 'object') return {};
  const r = v as Record<string, unknown>;
  const out: ResourceRequest = {};
  if (isCount(r['cpu'])) out.cpu = r['cpu'];
  if (isCount(r['memory'])) out.memory = r['memory'];
  if (r['extended'] !== null && typeof r['extended'] === 'object') {
    const ext = Object.entries(r['extended'] as Record<string, unknown>).filter((e): e is [string, number] => isCount(e[1]));
    if (ext.length > 0) out.extended = Object.fromEntries(ext);
  }
  return out;
}

function toLine(i: UsageInterval): string {
  const { kernelId, tenant, user, kernelspec, resources } = i;
  return `${JSON.stringify({ kernelId, tenant, user, kernelspec, from: new Date(i.from).toISOString(), to: new Date(i.to).toISOString(), resources })}\n`;
}

/** Who and what a line or a mark charges; undefined when it is not well formed. */
function chargeOf(v: unknown): Omit<UsageInterval, 'from' | 'to'> | undefined {
  if (v === null || typeof v !== 'object') return undefined;
  const { kernelId, tenant, user, kernelspec, resources } = v as Record<string, unknown>;
  if (typeof kernelId !== 'string' || typeof tenant !== 'string' || typeof kernelspec !== 'string') return undefined;
  if (user !== null && typeof user !== 'string') return undefined;
  return { kernelId, tenant, user, kernelspec, resources: resourcesOf(resources) };
}

const timeOf = (v: unknown): number => (typeof v === 'string' ? Date.parse(v) : NaN);

function parseJson(text: string): Record<string, unknown> | undefined {
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** A line read back; undefined for one that is not an interval (a line cut short when a disk filled). */
export function parseLine(line: string): UsageInterval | undefined {
  const v = parseJson(line);
  const charge = chargeOf(v);
  const from = timeOf(v?.['from']);
  const to = timeOf(v?.['to']);
  return charge && from < to ? { ...charge, from, to } : undefined;
}

export class FileUsageStore implements UsageStore {
  private readonly openDir: string;

  constructor(readonly dir: string) {
    this.openDir = join(dir, 'open');
  }

  async init(): Promise<void> {
    await mkdir(this.openDir, { recursive: true, mode: 0o700 });
  }

  private dayFile(day: string): string {
    return join(this.dir, `${day}.jsonl`);
  }

  private markFile(id: string): string {
    if (!ID.test(id)) throw new Error(`not a kernel id: ${id.slice(0, 64)}`);
    return join(this.openDir, `${id}.json`);
  }

  async append(intervals: readonly UsageInterval[]): Promise<void> {
    const byDay = new Map<string, string[]>();
    for (const i of intervals) {
      for (const part of splitByDay(i)) {
        const day = utcDay(part.from);
        const lines = byDay.get(day) ?? [];
        lines.push(toLine(part));
        byDay.set(day, lines);
      }
    }
    for (const [day, lines] of byDay) {
      const buf = Buffer.from(lines.join(''));
      const fh = await open(this.dayFile(day), 'a', 0o600);
      try {
        // One write() on an O_APPEND file: the batch lands whole, after whatever another replica appended.
        const { bytesWritten } = await fh.write(buf, 0, buf.length);
        if (bytesWritten !== buf.length) throw new Error(`usage file ${day}: wrote ${bytesWritten} of ${buf.length} bytes`);
      } finally {
        await fh.close();
      }
    }
  }

  async scan(since: number, until: number, visit: (i: UsageInterval) => void): Promise<void> {
    // Bounded by the query's range: at most MAX_RANGE_MS / DAY_MS + 1 files.
    for (let day = Math.floor(since / DAY_MS) * DAY_MS; day < until; day += DAY_MS) {
      const stream = createReadStream(this.dayFile(utcDay(day)), { encoding: 'utf8' });
      const opened = await new Promise<boolean>((resolve) => {
        stream.once('open', () => resolve(true));
        stream.once('error', () => resolve(false));
      });
      if (!opened) continue;
      for await (const line of createInterface({ input: stream, crlfDelay: Infinity })) {
        const i = parseLine(line);
        if (i && i.from < until && i.to > since) visit(i);
      }
    }
  }

  async mark(m: UsageMark): Promise<void> {
    const tmp = join(this.openDir, `.${m.kernelId}.${randomBytes(4).toString('hex')}.tmp`);
    await writeFile(tmp, JSON.stringify({ ...m, to: new Date(m.to).toISOString() }), { mode: 0o600 });
    await rename(tmp, this.markFile(m.kernelId));
  }

  async lastMark(kernelId: string): Promise<UsageMark | undefined> {
    let text: string;
    try {
      text = await readFile(this.markFile(kernelId), 'utf8');
    } catch {
      return undefined;
    }
    const v = parseJson(text);
    const charge = chargeOf(v);
    const to = timeOf(v?.['to']);
    return charge && charge.kernelId === kernelId && Number.isFinite(to) ? { ...charge, to } : undefined;
  }

  async unmark(kernelId: string): Promise<void> {
    await rm(this.markFile(kernelId), { force: true });
  }

  async marked(): Promise<string[]> {
    const names = await readdir(this.openDir).catch(() => [] as string[]);
    return names.filter((n) => n.endsWith('.json') && !n.startsWith('.')).map((n) => n.slice(0, -'.json'.length));
  }
}

/** The store without a state dir: the same intervals, in this process only, kept for MAX_RANGE_MS. */
export class MemoryUsageStore implements UsageStore {
  private intervals: UsageInterval[] = [];
  private readonly marks = new Map<string, UsageMark>();
  /** The last interval appended per kernel, to extend it when the next one follows on (one per run, not one per checkpoint). */
  private readonly last = new Map<string, UsageInterval>();
  private prunedAt = 0;

  constructor(private readonly now: () => number = Date.now) {}

  async append(intervals: readonly UsageInterval[]): Promise<void> {
    for (const i of intervals) {
      const prev = this.last.get(i.kernelId);
      if (prev && prev.to === i.from && sameCharge(prev, i)) {
        prev.to = i.to;
        continue;
      }
      const copy = { ...i };
      this.intervals.push(copy);
      this.last.set(i.kernelId, copy);
    }
    const now = this.now();
    if (now - this.prunedAt > 3_600_000) {
      this.prunedAt = now;
      this.intervals = this.intervals.filter((i) => i.to > now - MAX_RANGE_MS);
      for (const [id, i] of this.last) if (i.to <= now - MAX_RANGE_MS) this.last.delete(id);
    }
  }

  async scan(since: number, until: number, visit: (i: UsageInterval) => void): Promise<void> {
    for (const i of this.intervals) if (i.from < until && i.to > since) visit({ ...i });
  }

  async mark(m: UsageMark): Promise<void> {
    this.marks.set(m.kernelId, { ...m });
  }

  async lastMark(kernelId: string): Promise<UsageMark | undefined> {
    return this.marks.get(kernelId);
  }

  async unmark(kernelId: string): Promise<void> {
    this.marks.delete(kernelId);
  }

  async marked(): Promise<string[]> {
    return [...this.marks.keys()];
  }
}

/** Two intervals charged to the same owner, kernelspec and resources. */
export function sameCharge(a: UsageInterval, b: UsageInterval): boolean {
  return a.tenant === b.tenant && a.user === b.user && a.kernelspec === b.kernelspec && JSON.stringify(a.resources) === JSON.stringify(b.resources);
}
