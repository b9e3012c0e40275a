/**
 * A Thebe-style page: @jupyterlab/services talks to kgate from this page's own
 * origin, starts a kernel and runs what the user types. The gateway and its
 * token come from the address: `#kgate=http://127.0.0.1:8888/&token=…` (the
 * fragment never reaches any server) or the same in the query string.
 */
import { KernelManager, ServerConnection, type Kernel, type KernelMessage } from '@jupyterlab/services';

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const form = $<HTMLFormElement>('connect');
const urlInput = $<HTMLInputElement>('kgate-url');
const tokenInput = $<HTMLInputElement>('kgate-token');
const connectButton = $<HTMLButtonElement>('connect-button');
const status = $<HTMLParagraphElement>('status');
const code = $<HTMLTextAreaElement>('code');
const run = $<HTMLButtonElement>('run');
const outputs = $<HTMLElement>('outputs');

// Tracebacks carry terminal colour codes (ESC [ … m), which are control characters by nature.
// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;?]*[ -/]*[@-~]/g;
const stripAnsi = (s: string): string => s.replace(ANSI, '');

let manager: KernelManager | undefined;
let kernel: Kernel.IKernelConnection | undefined;
let count = 0;

function setStatus(text: string, state: 'off' | 'busy' | 'idle' | 'error'): void {
  status.textContent = text;
  status.dataset['state'] = state;
}

function describe(k: Kernel.IKernelConnection): void {
  const s = k.connectionStatus === 'connected' ? k.status : k.connectionStatus;
  setStatus(`Kernel ${k.id} (${k.name}): ${s}`, s === 'idle' ? 'idle' : s === 'busy' || s === 'starting' || s === 'connecting' ? 'busy' : 'error');
}

function params(): { url: string; token: string; kernel: string } {
  const query = new URLSearchParams(location.search);
  const hash = new URLSearchParams(location.hash.slice(1));
  const get = (k: string): string => hash.get(k) ?? query.get(k) ?? '';
  return { url: get('kgate'), token: get('token'), kernel: get('kernel') };
}

async function connect(url: string, token: string, name: string): Promise<void> {
  connectButton.disabled = true;
  run.disabled = true;
  setStatus(`Starting a kernel on ${url} …`, 'busy');
  try {
    if (kernel) await kernel.shutdown().catch(() => undefined);
    manager?.dispose();
    const serverSettings = ServerConnection.makeSettings({
      baseUrl: url,
      token,
      // @jupyterlab/services adds the token to the WebSocket URL only when the host
      // *name* differs from the page's; here the page and kgate may share it (another port).
      appendToken: true,
    });
    manager = new KernelManager({ serverSettings });
    await manager.ready;
    kernel = await manager.startNew(name ? { name } : {});
    const k = kernel;
    k.statusChanged.connect(() => describe(k));
    k.connectionStatusChanged.connect(() => describe(k));
    describe(k);
    run.disabled = false;
    code.focus();
  } catch (e) {
    setStatus(`Could not start a kernel: ${e instanceof Error ? e.message : String(e)}`, 'error');
  } finally {
    connectButton.disabled = false;
  }
}

function pre(className: string, text: string): HTMLPreElement {
  const el = document.createElement('pre');
  el.className = className;
  el.textContent = text;
  return el;
}

/** Shows one iopub message in a cell's output area. */
function render(msg: KernelMessage.IIOPubMessage, area: HTMLElement, state: { clearOnNext: boolean }): void {
  const type = msg.header.msg_type;
  if (type === 'status' || type === 'execute_input') return;
  if (type === 'clear_output') {
    if ((msg as KernelMessage.IClearOutputMsg).content.wait) state.clearOnNext = true;
    else area.replaceChildren();
    return;
  }
  if (state.clearOnNext) {
    area.replaceChildren();
    state.clearOnNext = false;
  }
  if (type === 'stream') {
    const { name, text } = (msg as KernelMessage.IStreamMsg).content;
    const last = area.lastElementChild;
    // Consecutive writes to the same stream read as one block.
    if (last instanceof HTMLPreElement && last.classList.contains(name)) last.textContent += stripAnsi(text);
    else area.append(pre(`stream ${name}`, stripAnsi(text)));
  } else if (type === 'error') {
    const { ename, evalue, traceback } = (msg as KernelMessage.IErrorMsg).content;
    area.append(pre('error', traceback.length > 0 ? stripAnsi(traceback.join('\n')) : `${ename}: ${evalue}`));
  } else if (type === 'execute_result' || type === 'display_data' || type === 'update_display_data') {
    const data = (msg as KernelMessage.IDisplayDataMsg).content.data;
    const png = data['image/png'];
    const text = data['text/plain'];
    if (typeof png === 'string') {
      const img = document.createElement('img');
      img.src = `data:image/png;base64,${png.replace(/\s/g, '')}`;
      img.alt = typeof text === 'string' ? text : 'image output';
      area.append(img);
    } else if (typeof text === 'string') {
      // text/plain only: HTML from the kernel would run in this page, next to the token.
      area.append(pre(type === 'execute_result' ? 'result' : 'display', stripAnsi(text)));
    }
  }
}

async function execute(): Promise<void> {
  const k = kernel;
  const source = code.value;
  if (!k || run.disabled || source.trim() === '') return;
  run.disabled = true;
  count += 1;
  const cell = document.createElement('article');
  cell.className = 'cell';
  cell.setAttribute('aria-label', `Cell ${count}`);
  const area = document.createElement('div');
  area.className = 'output';
  cell.append(pre('input', `In [${count}]:\n${source}`), area);
  outputs.append(cell);
  const state = { clearOnNext: false };
  try {
    const future = k.requestExecute({ code: source, stop_on_error: true });
    future.onIOPub = (msg) => render(msg, area, state);
    await future.done;
  } catch (e) {
    area.append(pre('error', `The request failed: ${e instanceof Error ? e.message : String(e)}`));
  } finally {
    cell.dataset['done'] = 'true';
    run.disabled = false;
    cell.scrollIntoView({ block: 'nearest' });
  }
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  void connect(urlInput.value, tokenInput.value, params().kernel);
});
run.addEventListener('click', () => void execute());
code.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && e.shiftKey) {
    e.preventDefault();
    void execute();
  }
});

const given = params();
urlInput.value = given.url;
tokenInput.value = given.token;
if (given.url) void connect(given.url, given.token, given.kernel);
