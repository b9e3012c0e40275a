/**
 * What the status page (status/src/main.ts, in a browser) and `kgate status`
 * (src/status-cli.ts, in a terminal) show, made once from the answers of
 * `GET /api/kernels` and `GET /api/status`: both print the same table. Pure
 * (no DOM, no node): the page's bundle and the CLI import it alike, so the
 * wire types below are written out here rather than imported from the server.
 */

/** What a kernel reserved (the `kgate.resources` member). */
export interface KernelResources {
  cpu?: number;
  /** Bytes. */
  memory?: number;
  extended?: Record<string, number>;
}

/** kgate's own member of a kernel model. */
export interface KgateKernelInfo {
  owner: string | null;
  tenant: string;
  provisioner: string;
  phase: string;
  started: string;
  resources: KernelResources;
  /** The last launch phase while starting or restarting. */
  progress?: string;
}

/** A kernel as `GET /api/kernels` answers it; `kgate` is missing from other gateways. */
export interface KernelEntry {
  id: string;
  name: string;
  last_activity: string;
  execution_state: string;
  connections: number;
  kgate?: KgateKernelInfo;
}

export interface PoolEntry {
  target: number;
  ready: number;
  starting: number;
}

/** `GET /api/status`. */
export interface GatewayStatus {
  started: string;
  last_activity: string;
  kernels: number;
  connections: number;
  pools?: Record<string, PoolEntry>;
}

export interface Column<R> {
  key: keyof R & string;
  /** The terminal's header. */
  title: string;
  /** The page's header. */
  label: string;
  /** Widest a terminal cell gets (longer values end with …). */
  max: number;
  right?: boolean;
}

export interface KernelRow {
  /** The whole id (the page shows it on hover). */
  fullId: string;
  id: string;
  kernelspec: string;
  provisioner: string;
  owner: string;
  tenant: string;
  state: string;
  age: string;
  idle: string;
  connections: string;
  resources: string;
  /** What the state's colour on the page keys on: idle, busy, starting, … */
  tone: string;
}

export const KERNEL_COLUMNS: ReadonlyArray<Column<KernelRow>> = [
  { key: 'id', title: 'KERNEL', label: 'Kernel', max: 8 },
  { key: 'kernelspec', title: 'KERNELSPEC', label: 'Kernelspec', max: 24 },
  { key: 'provisioner', title: 'PROVISIONER', label: 'Provisioner', max: 16 },
  { key: 'owner', title: 'OWNER', label: 'Owner', max: 20 },
  { key: 'tenant', title: 'TENANT', label: 'Tenant', max: 16 },
  { key: 'state', title: 'STATE', label: 'State', max: 26 },
  { key: 'age', title: 'AGE', label: 'Age', max: 8, right: true },
  { key: 'idle', title: 'IDLE', label: 'Idle', max: 8, right: true },
  { key: 'connections', title: 'CONN', label: 'Connections', max: 5, right: true },
  { key: 'resources', title: 'RESOURCES', label: 'Resources', max: 40 },
];

export interface PoolRow {
  kernelspec: string;
  target: string;
  ready: string;
  starting: string;
}

export const POOL_COLUMNS: ReadonlyArray<Column<PoolRow>> = [
  { key: 'kernelspec', title: 'POOL', label: 'Kernelspec', max: 24 },
  { key: 'target', title: 'TARGET', label: 'Target', max: 6, right: true },
  { key: 'ready', title: 'READY', label: 'Ready', max: 6, right: true },
  { key: 'starting', title: 'STARTING', label: 'Starting', max: 8, right: true },
];

/** A placeholder for what is not known (an ownerless kernel, a gateway without the kgate member). */
export const NONE = '-';

/** Milliseconds since the epoch of a Jupyter date (microseconds, which not every Date parser takes), or NaN. */
export function parseDate(s: string): number {
  return Date.parse(s.replace(/(\.\d{3})\d+/, '$1'));
}

/** 0s, 42s, 5m03s, 3h07m, 2d04h. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return NONE;
  const s = Math.max(0, Math.floor(ms / 1000));
  const pad = (n: number): string => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h${pad(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86_400)}d${pad(Math.floor(s / 3600) % 24)}h`;
}

/** Bytes as Kubernetes writes memory: 512Mi, 1.5Gi, 800Ki, 100 (bytes). */
export function formatBytes(n: number): string {
  const units = ['Ki', 'Mi', 'Gi', 'Ti', 'Pi'];
  let v = n;
  let unit = '';
  for (const u of units) {
    if (v < 1024) break;
    v /= 1024;
    unit = u;
  }
  const text = v >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1).replace(/\.0$/, '');
  return `${text}${unit}`;
}

export function formatResources(r: KernelResources | undefined): string {
  if (!r) return NONE;
  const parts: string[] = [];
  if (r.cpu !== undefined) parts.push(`cpu ${r.cpu}`);
  if (r.memory !== undefined) parts.push(`mem ${formatBytes(r.memory)}`);
  for (const [name, n] of Object.entries(r.extended ?? {})) parts.push(`${name} ${n}`);
  return parts.length > 0 ? parts.join(', ') : NONE;
}

/**
 * The state a person reads: the execution state of a running kernel, the
 * lifecycle phase otherwise, with the launch's progress while it starts
 * (`starting (pulling)`).
 */
export function stateOf(k: KernelEntry): { text: string; tone: string } {
  const g = k.kgate;
  if (!g || g.phase === 'running') return { text: k.execution_state, tone: k.execution_state };
  const phase = g.phase.replace(/_/g, ' ');
  return { text: g.progress ? `${phase} (${g.progress})` : phase, tone: g.phase };
}

/** The first 8 characters of a kernel id, as `docker ps` shortens its ids. */
export const shortId = (id: string): string => id.slice(0, 8);

/** One row per kernel, the oldest first; `now` is the gateway's clock when it is known. */
export function kernelRows(kernels: readonly KernelEntry[], now: number): KernelRow[] {
  const started = (k: KernelEntry): number => (k.kgate ? parseDate(k.kgate.started) : NaN);
  const sorted = [...kernels].sort((a, b) => (started(a) || 0) - (started(b) || 0) || a.id.localeCompare(b.id));
  return sorted.map((k) => {
    const g = k.kgate;
    const state = stateOf(k);
    return {
      fullId: k.id,
      id: shortId(k.id),
      kernelspec: k.name,
      provisioner: g?.provisioner ?? NONE,
      owner: g?.owner ?? NONE,
      tenant: g?.tenant ?? NONE,
      state: state.text,
      age: g ? formatDuration(now - started(k)) : NONE,
      idle: formatDuration(now - parseDate(k.last_activity)),
      connections: String(k.connections),
      resources: formatResources(g?.resources),
      tone: state.tone,
    };
  });
}

export function poolRows(status: GatewayStatus): PoolRow[] {
  return Object.entries(status.pools ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([kernelspec, p]) => ({ kernelspec, target: String(p.target), ready: String(p.ready), starting: String(p.starting) }));
}

/** The main counters, as label and value. */
export function counters(status: GatewayStatus, kernels: readonly KernelEntry[], now: number): Array<[string, string]> {
  const starting = kernels.filter((k) => k.kgate?.phase === 'starting' || k.kgate?.phase === 'restarting').length;
  return [
    ['kernels', String(status.kernels)],
    ['starting', String(starting)],
    ['connections', String(status.connections)],
    ['up', formatDuration(now - parseDate(status.started))],
    ['last activity', `${formatDuration(now - parseDate(status.last_activity))} ago`],
  ];
}

/**
 * The gateway's clock from an answer's `Date` header, so ages and idle times
 * are the gateway's, not those of a laptop whose clock is off: the offset to
 * add to the local clock (0 within the header's one-second resolution).
 */
export function clockOffset(dateHeader: string | null, localNow: number): number {
  const server = dateHeader ? Date.parse(dateHeader) : NaN;
  if (!Number.isFinite(server)) return 0;
  const offset = server - localNow;
  return Math.abs(offset) > 2000 ? offset : 0;
}
