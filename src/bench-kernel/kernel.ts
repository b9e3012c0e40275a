/**
 * kgate's bench kernel: a Jupyter kernel (messaging protocol 5.3,
 * https://jupyter-client.readthedocs.io/en/stable/messaging.html) that computes
 * nothing, so that a benchmark measures the gateway, not the kernel.
 *
 * - heartbeat: a REP socket that echoes;
 * - `kernel_info_request` on shell and control, `execute_request`,
 *   `interrupt_request` and `shutdown_request` (control), plus minimal answers
 *   to `comm_info`, `is_complete`, `complete`, `inspect` and `history`;
 * - every request is framed by iopub `status` busy and idle;
 * - `flood N SIZE` publishes N iopub `stream` (stdout) messages whose text is
 *   SIZE bytes, then replies; any other code is echoed as one stream message.
 *
 * Incoming signatures are verified (bad ones are dropped). The wire codec is
 * kgate's own (`src/bridge/wire.ts`), so the kernel and the gateway agree by
 * construction and neither pays for a second implementation.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { Publisher, Reply, Router } from 'zeromq';
import { jupyterDate } from '../bridge/messages.js';
import { Signer, splitWire, toWire, type MessageParts, type WireMessage } from '../bridge/wire.js';
import type { ConnectionInfo } from '../provisioner/types.js';

export const IMPLEMENTATION_VERSION = '0.1.0';

/**
 * Messages the iopub PUB may queue per subscriber before ZeroMQ drops them.
 * A flood of 100k must survive a subscriber that reads more slowly than the
 * kernel writes; the flood size cap below bounds what this can hold.
 */
const IOPUB_SNDHWM = 1_000_000;
/** Replies queued per peer on shell and control. */
const ROUTER_SNDHWM = 100_000;
/** A flood yields to the event loop this often, so heartbeat and control stay answered. */
const FLOOD_YIELD_EVERY = 1024;
/** The largest flood accepted, in text bytes: a flood must end, and fit in memory. */
const FLOOD_MAX_BYTES = 4 * 1024 ** 3;
const FLOOD = /^\s*flood\s+(\d+)\s+(\d+)\s*$/;

interface RequestHeader {
  msg_id?: unknown;
  msg_type?: unknown;
}

interface ExecuteContent {
  code?: unknown;
  silent?: unknown;
  store_history?: unknown;
}

const KERNEL_INFO = {
  status: 'ok',
  protocol_version: '5.3',
  implementation: 'kgate-bench',
  implementation_version: IMPLEMENTATION_VERSION,
  language_info: { name: 'text', version: '1.0', mimetype: 'text/plain', file_extension: '.txt' },
  banner: 'kgate bench kernel: `flood N SIZE` publishes N stream messages of SIZE bytes; anything else is echoed',
  help_links: [],
};

/** Status messages and replies to other requests never change, so they are built once. */
const BUSY = Buffer.from('{"execution_state":"busy"}');
const IDLE = Buffer.from('{"execution_state":"idle"}');
const EMPTY_OBJECT = Buffer.from('{}');

/** Topics as ipykernel sets them (`kernel.<id>.<type>`, `stream.stdout`); subscribers take all. */
function topic(s: string): Buffer {
  return Buffer.from(s);
}

/**
 * The address of a channel, as jupyter_client writes it (`ipc` paths are
 * `ip-port`). kgate's link has the same rule for connecting; the kernel keeps
 * its own copy so that it depends only on the wire codec, not on the relay.
 */
function channelUrl(c: ConnectionInfo, port: number): string {
  return c.transport === 'ipc' ? `ipc://${c.ip}-${port}` : `tcp://${c.ip.includes(':') ? `[${c.ip}]` : c.ip}:${port}`;
}

function onSendFailed(e: unknown): void {
  process.stderr.write(`bench kernel: a send failed: ${e instanceof Error ? e.message : String(e)}\n`);
}

export class BenchKernel {
  /** The kernel's session id, as in the `session` field of every header it writes. */
  readonly session = randomBytes(16).toString('hex');
  private readonly signer: Signer;
  private readonly shell: Router;
  private readonly control: Router;
  private readonly stdin: Router;
  private readonly iopub: Publisher;
  private readonly hb: Reply;
  private readonly statusTopic: Buffer;
  private readonly streamTopic = topic('stream.stdout');
  private readonly executeInputTopic: Buffer;
  private readonly shutdownTopic: Buffer;
  private counter = 0;
  private dateMs = 0;
  private date = '';
  private executionCount = 0;
  private interrupted = false;
  private badSignatures = 0;
  private closing = false;

  constructor(private readonly conn: ConnectionInfo) {
    this.signer = new Signer(conn.key, conn.signature_scheme);
    // sendTimeout 0: every send completes (or fails) at once, so sends need not be
    // awaited one by one and a flood goes out as one synchronous batch.
    this.shell = new Router({ linger: 0, sendTimeout: 0, sendHighWaterMark: ROUTER_SNDHWM });
    this.control = new Router({ linger: 0, sendTimeout: 0, sendHighWaterMark: ROUTER_SNDHWM });
    this.stdin = new Router({ linger: 0, sendTimeout: 0 });
    this.iopub = new Publisher({ linger: 0, sendTimeout: 0, sendHighWaterMark: IOPUB_SNDHWM });
    this.hb = new Reply({ linger: 0 });
    const prefix = `kernel.${this.session}.`;
    this.statusTopic = topic(`${prefix}status`);
    this.executeInputTopic = topic(`${prefix}execute_input`);
    this.shutdownTopic = topic(`${prefix}shutdown_reply`);
  }

  /** Binds every channel and serves until shutdown. */
  async start(): Promise<void> {
    const c = this.conn;
    await Promise.all([
      this.shell.bind(channelUrl(c, c.shell_port)),
      this.control.bind(channelUrl(c, c.control_port)),
      this.stdin.bind(channelUrl(c, c.stdin_port)),
      this.iopub.bind(channelUrl(c, c.iopub_port)),
      this.hb.bind(channelUrl(c, c.hb_port)),
    ]);
    void this.serveHeartbeat();
    void this.serveStdin();
    void this.serve(this.control, true);
    await this.serve(this.shell, false);
  }

  /** Stops a flood in progress (interrupt_request, or SIGINT). */
  interrupt(): void {
    this.interrupted = true;
  }

  close(): void {
    if (this.closing) return;
    this.closing = true;
    for (const s of [this.shell, this.control, this.stdin, this.iopub, this.hb]) s.close();
  }

  private async serveHeartbeat(): Promise<void> {
    try {
      for await (const frames of this.hb) await this.hb.send(frames);
    } catch (e) {
      if (!this.closing) onSendFailed(e);
    }
  }

  private async serveStdin(): Promise<void> {
    try {
      // Nothing is asked on stdin; whatever comes is read so it cannot pile up.
      for await (const frames of this.stdin) void frames;
    } catch (e) {
      if (!this.closing) onSendFailed(e);
    }
  }

  /** One request at a time per channel, in order, as a kernel does. */
  private async serve(socket: Router, isControl: boolean): Promise<void> {
    try {
      for await (const frames of socket) {
        const m = splitWire(frames);
        if (m === undefined) continue;
        if (!this.signer.verify(m)) {
          if (this.badSignatures++ === 0) process.stderr.write('bench kernel: dropped a message with a bad signature\n');
          continue;
        }
        await this.handle(socket, isControl, m);
      }
    } catch (e) {
      if (!this.closing) onSendFailed(e);
    }
  }

  private async handle(socket: Router, isControl: boolean, m: WireMessage): Promise<void> {
    let header: RequestHeader;
    try {
      header = JSON.parse(m.header.toString('utf8')) as RequestHeader;
    } catch {
      return;
    }
    const type = typeof header.msg_type === 'string' ? header.msg_type : '';
    const parent = m.header;
    this.publish(this.statusTopic, 'status', BUSY, parent);
    switch (type) {
      case 'kernel_info_request':
        this.reply(socket, m, 'kernel_info_reply', KERNEL_INFO);
        break;
      case 'execute_request':
        await this.execute(socket, m);
        break;
      case 'interrupt_request':
        this.interrupt();
        this.reply(socket, m, 'interrupt_reply', { status: 'ok' });
        break;
      case 'shutdown_request':
        this.shutdown(socket, m, isControl);
        return;
      case 'comm_info_request':
        this.reply(socket, m, 'comm_info_reply', { status: 'ok', comms: {} });
        break;
      case 'is_complete_request':
        this.reply(socket, m, 'is_complete_reply', { status: 'complete' });
        break;
      case 'complete_request':
        this.reply(socket, m, 'complete_reply', { status: 'ok', matches: [], cursor_start: 0, cursor_end: 0, metadata: {} });
        break;
      case 'inspect_request':
        this.reply(socket, m, 'inspect_reply', { status: 'ok', found: false, data: {}, metadata: {} });
        break;
      case 'history_request':
        this.reply(socket, m, 'history_reply', { status: 'ok', history: [] });
        break;
      default:
        // Unknown requests get no reply, as in ipykernel; the idle below still frames them.
        break;
    }
    this.publish(this.statusTopic, 'status', IDLE, parent);
  }

  private async execute(socket: Router, m: WireMessage): Promise<void> {
    let content: ExecuteContent;
    try {
      content = JSON.parse(m.content.toString('utf8')) as ExecuteContent;
    } catch {
      content = {};
    }
    const code = typeof content.code === 'string' ? content.code : '';
    const silent = content.silent === true;
    if (!silent && content.store_history !== false) this.executionCount++;
    const count = this.executionCount;
    if (!silent) this.publish(this.executeInputTopic, 'execute_input', { code, execution_count: count }, m.header);
    this.interrupted = false;

    const flood = FLOOD.exec(code);
    if (flood) {
      const n = Number(flood[1]);
      const size = Number(flood[2]);
      if (!Number.isSafeInteger(n) || !Number.isSafeInteger(size) || n * size > FLOOD_MAX_BYTES) {
        this.reply(socket, m, 'execute_reply', {
          status: 'error',
          execution_count: count,
          ename: 'ValueError',
          evalue: `flood is capped at ${FLOOD_MAX_BYTES} bytes in all`,
          traceback: [],
        });
        return;
      }
      const t0 = performance.now();
      const sent = silent ? 0 : await this.flood(n, size, m.header);
      const publishMs = performance.now() - t0;
      const stats = { messages: sent, bytes: sent * size, publish_ms: publishMs };
      if (sent < n && !silent) {
        this.reply(socket, m, 'execute_reply', { status: 'error', execution_count: count, ename: 'KeyboardInterrupt', evalue: 'interrupted', traceback: [], flood: stats });
        return;
      }
      this.reply(socket, m, 'execute_reply', { status: 'ok', execution_count: count, user_expressions: {}, payload: [], flood: stats });
      return;
    }
    if (!silent && code.length > 0) this.publish(this.streamTopic, 'stream', { name: 'stdout', text: code }, m.header);
    this.reply(socket, m, 'execute_reply', { status: 'ok', execution_count: count, user_expressions: {}, payload: [] });
  }

  /**
   * Publishes `n` stream messages of `size` text bytes. Content and parent are
   * the same bytes for every message; only the header (msg_id, date) is new.
   * Returns how many went out (fewer when interrupted).
   */
  private async flood(n: number, size: number, parent: Buffer): Promise<number> {
    const content = Buffer.from(JSON.stringify({ name: 'stdout', text: 'x'.repeat(size) }));
    for (let i = 0; i < n; i++) {
      if (i % FLOOD_YIELD_EVERY === FLOOD_YIELD_EVERY - 1) {
        await yieldToLoop();
        if (this.interrupted || this.closing) return i;
      }
      this.publish(this.streamTopic, 'stream', content, parent);
    }
    return n;
  }

  private shutdown(socket: Router, m: WireMessage, isControl: boolean): void {
    let restart = false;
    try {
      restart = (JSON.parse(m.content.toString('utf8')) as { restart?: unknown }).restart === true;
    } catch {
      // no content: a plain shutdown
    }
    const content = { status: 'ok', restart };
    this.reply(socket, m, 'shutdown_reply', content);
    // ipykernel also tells every client on iopub, so they all know.
    this.publish(this.shutdownTopic, 'shutdown_reply', content, m.header);
    this.publish(this.statusTopic, 'status', IDLE, m.header);
    if (!isControl) process.stderr.write('bench kernel: shutdown_request on shell (expected on control)\n');
    // Let ZeroMQ's I/O thread write the reply before the sockets go.
    setTimeout(() => {
      this.close();
      process.exit(0);
    }, 50);
  }

  /**
   * A header from a template: only msg_id (session and a counter, unique as
   * jupyter_client's are) and date change, and the date string is remade once
   * per millisecond. This is most of what a flood message costs to build.
   */
  private header(msgType: string): Buffer {
    const now = Date.now();
    if (now !== this.dateMs) {
      this.dateMs = now;
      this.date = jupyterDate(now);
    }
    return Buffer.from(
      `{"msg_id":"${this.session}_${this.counter++}","msg_type":"${msgType}","username":"kernel","session":"${this.session}","date":"${this.date}","version":"5.3"}`,
    );
  }

  private message(msgType: string, content: object | Buffer, parent: Buffer): MessageParts {
    return {
      header: this.header(msgType),
      parent,
      metadata: EMPTY_OBJECT,
      content: Buffer.isBuffer(content) ? content : Buffer.from(JSON.stringify(content)),
      buffers: [],
    };
  }

  /** A reply to `m`, routed back through every identity frame it came with. */
  private reply(socket: Router, m: WireMessage, msgType: string, content: object): void {
    const ids = m.identities;
    if (ids.length === 0) return;
    const frames = toWire(ids[ids.length - 1]!, this.signer, this.message(msgType, content, m.header));
    if (ids.length > 1) frames.unshift(...ids.slice(0, -1));
    socket.send(frames).catch(onSendFailed);
  }

  private publish(topicFrame: Buffer, msgType: string, content: object | Buffer, parent: Buffer): void {
    this.iopub.send(toWire(topicFrame, this.signer, this.message(msgType, content, parent))).catch(onSendFailed);
  }
}
