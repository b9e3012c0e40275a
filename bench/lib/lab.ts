/**
 * The targets of a run and the servers behind them. Servers are started once
 * and shared by the scenarios, except where a scenario reads a server's memory
 * and wants it fresh.
 */
import type { KernelSession } from './session.js';
import {
  channelsUrl,
  createKernel,
  deleteKernel,
  launchDirect,
  startKgate,
  startPythonServer,
  type Gateway,
  type KernelName,
  type KgateOptions,
  type ServerKind,
} from './servers.js';
import { WsSession, type WsProtocol } from './ws-session.js';
import { ZmqSession } from './zmq-session.js';

export type TargetId =
  | 'direct'
  | 'kgate-json'
  | 'kgate-v1'
  | 'jupyter-json'
  | 'jupyter-v1'
  | 'jupyter-nolimit-json'
  | 'jupyter-nolimit-v1'
  | 'jupyter2-json'
  | 'jupyter2-v1'
  | 'kernel-gateway-json'
  | 'kernel-gateway-v1'
  | 'enterprise-gateway-json'
  | 'enterprise-gateway-v1';

export interface Target {
  id: TargetId;
  label: string;
  server: 'direct' | ServerKind;
  protocol: 'zmq' | WsProtocol;
}

export const TARGETS: readonly Target[] = [
  { id: 'direct', label: 'direct ZMQ', server: 'direct', protocol: 'zmq' },
  { id: 'kgate-json', label: 'kgate JSON', server: 'kgate', protocol: 'json' },
  { id: 'kgate-v1', label: 'kgate v1', server: 'kgate', protocol: 'v1' },
  { id: 'jupyter-json', label: 'jupyter-server JSON', server: 'jupyter', protocol: 'json' },
  { id: 'jupyter-v1', label: 'jupyter-server v1', server: 'jupyter', protocol: 'v1' },
  { id: 'jupyter-nolimit-json', label: 'jupyter-server JSON, no rate limit', server: 'jupyter-nolimit', protocol: 'json' },
  { id: 'jupyter-nolimit-v1', label: 'jupyter-server v1, no rate limit', server: 'jupyter-nolimit', protocol: 'v1' },
  // The peers of today, from PyPI (scripts/setup-bench-peers.sh), rate limits off.
  { id: 'jupyter2-json', label: 'jupyter_server 2 JSON', server: 'jupyter2', protocol: 'json' },
  { id: 'jupyter2-v1', label: 'jupyter_server 2 v1', server: 'jupyter2', protocol: 'v1' },
  { id: 'kernel-gateway-json', label: 'kernel_gateway 3 JSON', server: 'kernel-gateway', protocol: 'json' },
  { id: 'kernel-gateway-v1', label: 'kernel_gateway 3 v1', server: 'kernel-gateway', protocol: 'v1' },
  { id: 'enterprise-gateway-json', label: 'enterprise_gateway 3.2 JSON', server: 'enterprise-gateway', protocol: 'json' },
  { id: 'enterprise-gateway-v1', label: 'enterprise_gateway 3.2 v1', server: 'enterprise-gateway', protocol: 'v1' },
];

/** The peer a row is compared with: jupyter server with its rate limit off, same protocol (JSON for direct). */
export function jupyterReference(t: TargetId): TargetId {
  return t.endsWith('-v1') ? 'jupyter-nolimit-v1' : 'jupyter-nolimit-json';
}

export interface KernelHandle {
  target: Target;
  /** The gateway's pid (undefined for direct), for reading its memory. */
  serverPid: number | undefined;
  /**
   * A new client of the kernel: a ZeroMQ DEALER + SUB (nudged until iopub
   * flows), or a WebSocket through the gateway that has had a
   * `kernel_info_reply`, as JupyterLab waits for one on connect (with
   * `handshake: false`, just the open socket).
   */
  connect(timeoutMs?: number, handshake?: boolean): Promise<KernelSession>;
  stop(): Promise<void>;
}

const CONNECT_TIMEOUT_MS = 30_000;
/** A request sent before a server has wired a new socket up can be lost (seen once with jupyter server): ask again. */
const HANDSHAKE_TRY_MS = 3000;

export async function kernelInfoHandshake(s: KernelSession, timeoutMs: number): Promise<void> {
  const end = performance.now() + timeoutMs;
  let last: unknown;
  while (performance.now() < end && s.isOpen) {
    try {
      await s.kernelInfo(Math.min(HANDSHAKE_TRY_MS, Math.max(1, end - performance.now())));
      return;
    } catch (e) {
      last = e;
    }
  }
  throw new Error(`no kernel_info_reply on a new WebSocket within ${timeoutMs} ms: ${String(last)}`);
}

export class Lab {
  private readonly shared = new Map<ServerKind, Promise<Gateway>>();
  private readonly owned = new Set<Gateway>();

  constructor(
    readonly root: string,
    private readonly kgateOptions: KgateOptions,
  ) {}

  /** The run's shared server of this kind, started on first use. */
  server(kind: ServerKind): Promise<Gateway> {
    let g = this.shared.get(kind);
    if (g === undefined) {
      // A failed start is kept: every later scenario reports the same error at once.
      g = this.start(kind, []);
      this.shared.set(kind, g);
    }
    return g;
  }

  /** A server of its own for one scenario; stop it with `release`. */
  async fresh(kind: ServerKind, kgateArgs: string[] = []): Promise<Gateway> {
    const g = await this.start(kind, kgateArgs);
    this.owned.add(g);
    return g;
  }

  async release(g: Gateway): Promise<void> {
    this.owned.delete(g);
    await g.stop();
  }

  /** Starts a kernel for a target: launched by the benchmark (direct) or by the target's server. */
  async startKernel(target: Target, name: KernelName, gateway?: Gateway): Promise<KernelHandle> {
    const sessions: KernelSession[] = [];
    if (target.server === 'direct') {
      const k = await launchDirect(name, this.root);
      return {
        target,
        serverPid: undefined,
        async connect(timeoutMs = CONNECT_TIMEOUT_MS) {
          const s = await ZmqSession.open(k.conn, timeoutMs);
          sessions.push(s);
          return s;
        },
        async stop() {
          for (const s of sessions) s.close();
          await k.stop();
        },
      };
    }
    const g = gateway ?? (await this.server(target.server));
    const id = await createKernel(g, name);
    const protocol = target.protocol as WsProtocol;
    const url = channelsUrl(g, id);
    return {
      target,
      serverPid: g.pid,
      async connect(timeoutMs = CONNECT_TIMEOUT_MS, handshake = true) {
        const s = await WsSession.open(url, protocol, timeoutMs);
        sessions.push(s);
        if (handshake) await kernelInfoHandshake(s, timeoutMs);
        return s;
      },
      async stop() {
        for (const s of sessions) s.close();
        await deleteKernel(g, id);
      },
    };
  }

  /** Stops every server the run started. */
  async close(): Promise<void> {
    const all: Array<Promise<void>> = [];
    for (const g of this.owned) all.push(g.stop());
    for (const p of this.shared.values())
      all.push(
        p.then(
          (g) => g.stop(),
          () => undefined,
        ),
      );
    this.owned.clear();
    this.shared.clear();
    await Promise.all(all);
  }

  private start(kind: ServerKind, kgateArgs: string[]): Promise<Gateway> {
    if (kind === 'kgate') return startKgate(this.root, { ...this.kgateOptions, args: [...(this.kgateOptions.args ?? []), ...kgateArgs] });
    return startPythonServer(this.root, kind);
  }
}
