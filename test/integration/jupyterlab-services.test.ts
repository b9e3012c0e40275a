/**
 * kgate driven by the real `@jupyterlab/services` client in Node, set up as a
 * Thebe-style page sets it up: ServerConnection settings with a token, the
 * `ws` WebSocket, and the library's own managers for kernelspecs, kernels and
 * sessions, against real ipykernel kernels.
 */
import { KernelManager, KernelMessage, KernelSpecManager, ServerConnection, SessionManager, type Kernel } from '@jupyterlab/services';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { until } from '../helpers/wait.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

const V1 = 'v1.kernel.websocket.jupyter.org';

/** The `ws` WebSocket, recording every socket the library opens (URL, protocols asked for). */
const sockets: Array<{ ws: RecordingWebSocket; url: string; asked: string[] }> = [];
class RecordingWebSocket extends WebSocket {
  constructor(url: string, protocols?: string | string[]) {
    super(url, protocols);
    sockets.push({ ws: this, url, asked: protocols === undefined ? [] : ([] as string[]).concat(protocols) });
  }
}

let t: TestGateway;
let settings: ServerConnection.ISettings;
let kernelManager: KernelManager;
let sessionManager: SessionManager;
let specManager: KernelSpecManager;
const warnings: string[] = [];

/** Runs `code` through the library and returns the reply and every iopub message of the request. */
async function execute(kernel: Kernel.IKernelConnection, code: string): Promise<{ reply: KernelMessage.IExecuteReplyMsg; iopub: KernelMessage.IIOPubMessage[] }> {
  const iopub: KernelMessage.IIOPubMessage[] = [];
  const future = kernel.requestExecute({ code, stop_on_error: false });
  future.onIOPub = (msg) => {
    iopub.push(msg);
  };
  const reply = await future.done;
  return { reply, iopub };
}

function stdoutOf(iopub: KernelMessage.IIOPubMessage[]): string {
  return iopub
    .filter(KernelMessage.isStreamMsg)
    .filter((m) => m.content.name === 'stdout')
    .map((m) => m.content.text)
    .join('');
}

async function kernelIdsOnServer(): Promise<string[]> {
  const r = await t.api('api/kernels');
  expect(r.status).toBe(200);
  return ((await r.json()) as Array<{ id: string }>).map((k) => k.id);
}

beforeAll(async () => {
  const warn = console.warn;
  vi.spyOn(console, 'warn').mockImplementation((...args: unknown[]) => {
    warnings.push(args.map(String).join(' '));
    warn(...args);
  });
  t = await startGateway();
  settings = ServerConnection.makeSettings({
    baseUrl: t.url,
    wsUrl: t.wsUrl,
    token: t.token,
    appendToken: true,
    WebSocket: RecordingWebSocket as unknown as typeof globalThis.WebSocket,
    fetch,
    Request,
    Headers,
  });
  kernelManager = new KernelManager({ serverSettings: settings });
  sessionManager = new SessionManager({ serverSettings: settings, kernelManager });
  specManager = new KernelSpecManager({ serverSettings: settings });
  await Promise.all([kernelManager.ready, sessionManager.ready, specManager.ready]);
});

afterAll(async () => {
  // The managers poll the server every 10 s; disposing them lets vitest exit.
  sessionManager?.dispose();
  kernelManager?.dispose();
  specManager?.dispose();
  for (const s of sockets) s.ws.terminate();
  await t?.close();
  vi.restoreAllMocks();
});

describe('KernelSpecManager', () => {
  it('lists python3 with its display name, argv and resources', async () => {
    await specManager.refreshSpecs();
    const specs = specManager.specs;
    expect(specs).not.toBeNull();
    expect(specs!.default).toBe('python3');
    const py = specs!.kernelspecs['python3'];
    // The library drops a spec that lacks argv or resources, with a warning.
    expect(py).toBeDefined();
    expect(warnings.filter((w) => /errant kernel spec|Default kernel not found/.test(w))).toEqual([]);
    expect(py!.name).toBe('python3');
    expect(py!.display_name).toMatch(/Python 3/);
    expect(py!.language).toBe('python');
    expect(py!.argv.length).toBeGreaterThan(0);
    expect(Object.keys(py!.resources).length).toBeGreaterThan(0);
    // A resource URL the library hands a page is fetchable with the token.
    const logo = py!.resources['logo-64x64'] ?? Object.values(py!.resources)[0]!;
    const r = await t.api(logo.replace(/^\//, ''));
    expect(r.status).toBe(200);
    expect((await r.arrayBuffer()).byteLength).toBeGreaterThan(0);
  });
});

describe('KernelManager and a kernel connection', () => {
  let kernel: Kernel.IKernelConnection;

  beforeAll(async () => {
    kernel = await kernelManager.startNew({ name: 'python3' });
  });

  it('executes code: stream output, an ok reply, connected, and an execute_result', async () => {
    expect(kernel.name).toBe('python3');
    expect(await kernelIdsOnServer()).toContain(kernel.id);

    const { reply, iopub } = await execute(kernel, 'print(6*7)');
    expect(reply.content.status).toBe('ok');
    expect(stdoutOf(iopub)).toBe('42\n');
    expect(kernel.connectionStatus).toBe('connected');
    await until(() => kernel.status === 'idle', 'the kernel status to be idle', 30_000, 20);

    const second = await execute(kernel, '1+1');
    expect(second.reply.content.status).toBe('ok');
    const result = second.iopub.find(KernelMessage.isExecuteResultMsg);
    expect(result).toBeDefined();
    expect(result!.content.data['text/plain']).toBe('2');

    // kernel_info went through too (the library sends it on every connect).
    const info = await kernel.info;
    expect(info.implementation).toBe('ipython');
  });

  it('negotiates the v1 subprotocol, with the token on the WebSocket URL', () => {
    const mine = sockets.filter((s) => s.url.includes(`/api/kernels/${kernel.id}/channels`));
    expect(mine.length).toBeGreaterThan(0);
    const first = mine[0]!;
    expect(first.asked).toContain(V1);
    expect(new URL(first.url).searchParams.get('token')).toBe(t.token);
    expect(new URL(first.url).searchParams.get('session_id')).toBe(kernel.clientId);
    expect(first.ws.protocol).toBe(V1);
    // What the library remembers as the server's choice (src/kernel/default.ts `_selectedProtocol`).
    expect((kernel as unknown as { _selectedProtocol: string })._selectedProtocol).toBe(V1);
  });

  it('interrupts a busy kernel: the reply is a KeyboardInterrupt error, and the kernel carries on', async () => {
    const iopub: KernelMessage.IIOPubMessage[] = [];
    const future = kernel.requestExecute({ code: "print('looping', flush=True)\nwhile True: pass", stop_on_error: false });
    future.onIOPub = (msg) => {
      iopub.push(msg);
    };
    await until(() => iopub.some(KernelMessage.isStreamMsg) && kernel.status === 'busy', 'the loop to start', 30_000, 20);
    // An interrupt landing between execute_input and the loop's start is lost inside
    // ipykernel; the user presses interrupt again after 2 s without a reply (at most 10 times).
    let done = false;
    void future.done.then(
      () => (done = true),
      () => (done = true),
    );
    for (let i = 0; i < 10 && !done; i++) {
      await kernel.interrupt();
      await Promise.race([future.done, new Promise((r) => setTimeout(r, 2000))]);
    }
    const reply = await future.done;
    expect(reply.content.status).toBe('error');
    expect((reply.content as KernelMessage.IReplyErrorContent).ename).toBe('KeyboardInterrupt');
    const err = iopub.find(KernelMessage.isErrorMsg);
    expect(err?.content.ename).toBe('KeyboardInterrupt');

    const after = await execute(kernel, 'print("after")');
    expect(after.reply.content.status).toBe('ok');
    expect(stdoutOf(after.iopub)).toBe('after\n');
  });

  it('restarts: the same kernel id comes back with a fresh namespace and runs code again', async () => {
    const set = await execute(kernel, 'kgate_x = 5\nimport os\nprint(os.getpid())');
    expect(set.reply.content.status).toBe('ok');
    const pidBefore = stdoutOf(set.iopub).trim();
    expect(pidBefore).toMatch(/^\d+$/);
    const socketsBefore = sockets.length;

    const id = kernel.id;
    await kernel.restart();
    expect(kernel.id).toBe(id);
    expect(kernel.connectionStatus).toBe('connected');
    // The library reconnects after a restart: the new socket negotiated v1 and carried the token too.
    const reconnected = sockets.slice(socketsBefore).filter((s) => s.url.includes(`/api/kernels/${id}/channels`));
    expect(reconnected.length).toBeGreaterThan(0);
    expect(reconnected.at(-1)!.ws.protocol).toBe(V1);
    expect(new URL(reconnected.at(-1)!.url).searchParams.get('token')).toBe(t.token);

    const gone = await execute(kernel, 'kgate_x');
    expect(gone.reply.content.status).toBe('error');
    expect((gone.reply.content as KernelMessage.IReplyErrorContent).ename).toBe('NameError');

    const again = await execute(kernel, 'import os\nprint(6*7, os.getpid())');
    expect(again.reply.content.status).toBe('ok');
    const [answer, pidAfter] = stdoutOf(again.iopub).trim().split(' ');
    expect(answer).toBe('42');
    // A new kernel process, not the old one with a cleared namespace.
    expect(pidAfter).toMatch(/^\d+$/);
    expect(pidAfter).not.toBe(pidBefore);
    await until(() => kernel.status === 'idle', 'the kernel status to be idle after the restart', 30_000, 20);
    expect(await kernelIdsOnServer()).toContain(id);
    // The socket the library dropped for the restart is gone from kgate's count.
    let connections = -1;
    for (let k = 0; k < 50 && connections !== 1; k++) {
      if (k > 0) await new Promise((r) => setTimeout(r, 100));
      connections = ((await (await t.api(`api/kernels/${id}`)).json()) as { connections: number }).connections;
    }
    expect(connections).toBe(1);
  });

  it('survives the kernel process dying: kgate restarts it and the library reconnects', async () => {
    const statuses: Kernel.Status[] = [];
    const onStatus = (_: Kernel.IKernelConnection, s: Kernel.Status): void => {
      statuses.push(s);
    };
    kernel.statusChanged.connect(onStatus);
    const set = await execute(kernel, 'kgate_y = 1\nimport os\nprint(os.getpid())');
    const pidBefore = stdoutOf(set.iopub).trim();
    // No reply can come: the process exits mid-request.
    const dying = kernel.requestExecute({ code: 'import os; os._exit(1)' });
    dying.done.catch(() => undefined);
    // kgate's own status message ('restarting') makes the library reconnect.
    await until(() => statuses.includes('autorestarting'), 'the library to see the automatic restart', 30_000, 20);
    await until(() => kernel.connectionStatus === 'connected' && kernel.status === 'idle', 'the kernel to come back', 30_000, 20);
    kernel.statusChanged.disconnect(onStatus);
    const after = await execute(kernel, 'import os\nprint(os.getpid())\nprint("kgate_y" in dir())');
    expect(after.reply.content.status).toBe('ok');
    const [pidAfter, still] = stdoutOf(after.iopub).trim().split('\n');
    expect(pidAfter).not.toBe(pidBefore);
    expect(still).toBe('False');
  });

  it('shuts kernels down through KernelManager.shutdown and kernel.shutdown()', async () => {
    const other = await kernelManager.startNew({ name: 'python3' });
    const ran = await execute(other, 'print("other")');
    expect(stdoutOf(ran.iopub)).toBe('other\n');
    expect(await kernelIdsOnServer()).toEqual(expect.arrayContaining([kernel.id, other.id]));

    await kernelManager.shutdown(other.id);
    expect(await kernelIdsOnServer()).not.toContain(other.id);
    expect([...kernelManager.running()].map((m) => m.id)).not.toContain(other.id);

    const id = kernel.id;
    await kernel.shutdown();
    expect(kernel.isDisposed).toBe(true);
    expect(await kernelIdsOnServer()).not.toContain(id);
    await kernelManager.refreshRunning();
    expect([...kernelManager.running()].map((m) => m.id)).not.toContain(id);
    other.dispose();
  });
});

describe('SessionManager', () => {
  it('starts a notebook session, lists it, executes through it, and shuts it and its kernel down', async () => {
    const session = await sessionManager.startNew({ path: 'demo.ipynb', type: 'notebook', name: 'demo.ipynb', kernel: { name: 'python3' } });
    expect(session.path).toBe('demo.ipynb');
    expect(session.type).toBe('notebook');
    expect(session.name).toBe('demo.ipynb');
    const kernel = session.kernel;
    expect(kernel).not.toBeNull();
    const kernelId = kernel!.id;
    expect(kernel!.name).toBe('python3');

    await sessionManager.refreshRunning();
    const listed = [...sessionManager.running()].find((m) => m.id === session.id);
    expect(listed).toBeDefined();
    expect(listed!.path).toBe('demo.ipynb');
    expect(listed!.kernel?.id).toBe(kernelId);
    expect(await kernelIdsOnServer()).toContain(kernelId);

    const { reply, iopub } = await execute(kernel!, 'print(6*7)');
    expect(reply.content.status).toBe('ok');
    expect(stdoutOf(iopub)).toBe('42\n');

    await session.shutdown();
    expect(session.isDisposed).toBe(true);
    const r = await t.api('api/sessions');
    expect(((await r.json()) as Array<{ id: string }>).map((s) => s.id)).not.toContain(session.id);
    expect(await kernelIdsOnServer()).not.toContain(kernelId);
    await sessionManager.refreshRunning();
    expect([...sessionManager.running()].map((m) => m.id)).not.toContain(session.id);
  });

  it('leaves no kernel behind', async () => {
    expect(await kernelIdsOnServer()).toEqual([]);
  });
});
