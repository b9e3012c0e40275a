import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import type { OutFrame } from './ws-json.js';

/**
 * Below this size a frame is copied into one buffer: one small write beats
 * several WebSocket fragments. Above it the parts go out as fragments of one
 * message, so a large buffer from the kernel is never copied.
 */
const COALESCE_BELOW = 64 * 1024;
/** Consecutive chunks smaller than this are merged into one fragment. */
const SMALL_CHUNK = 16 * 1024;

const WHOLE = { binary: true, fin: true };
const WHOLE_TEXT = { binary: false, fin: true };
const PART = { binary: true, fin: false };
const PART_TEXT = { binary: false, fin: false };

/**
 * A message ready for the socket: one buffer, or fragments of one message.
 * Prepared once per kernel message and sent to every client of the same
 * protocol, so fan-out to many clients costs no encoding per client.
 */
export interface PreparedFrame {
  fragments: Buffer[];
  binary: boolean;
}

/** Coalesces small chunks (one small write beats several fragments); large ones stay as they are. */
export function prepareFrame(f: OutFrame): PreparedFrame {
  if (f.chunks.length === 1) return { fragments: f.chunks, binary: f.binary };
  if (f.length < COALESCE_BELOW) return { fragments: [Buffer.concat(f.chunks, f.length)], binary: f.binary };
  const fragments: Buffer[] = [];
  let small: Buffer[] = [];
  let smallLength = 0;
  for (const c of f.chunks) {
    if (c.length >= SMALL_CHUNK) {
      if (small.length > 0) fragments.push(small.length === 1 ? small[0]! : Buffer.concat(small, smallLength));
      small = [];
      smallLength = 0;
      fragments.push(c);
    } else {
      small.push(c);
      smallLength += c.length;
    }
  }
  if (small.length > 0) fragments.push(small.length === 1 ? small[0]! : Buffer.concat(small, smallLength));
  return { fragments, binary: f.binary };
}

/**
 * Sockets written to in this turn of the event loop, corked until its check
 * phase: the messages of a burst (a flood, or busy + execute_input + reply)
 * leave in one writev instead of one system call each. One setImmediate per
 * turn for all sockets, none per message.
 */
const corked: Socket[] = [];
let flushScheduled = false;

function uncorkAll(): void {
  flushScheduled = false;
  for (const s of corked) s.uncork();
  corked.length = 0;
}

function corkForThisTurn(ws: WebSocket): void {
  // ws keeps its net.Socket as `_socket`; its own cork/uncork around each frame nests inside ours.
  const socket = (ws as unknown as { _socket: Socket | null })._socket;
  if (!socket || socket.writableCorked > 0) return;
  socket.cork();
  corked.push(socket);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(uncorkAll);
  }
}

/** Sends a prepared message; ws frames each fragment without copying it (no masking on a server). */
export function sendPrepared(ws: WebSocket, p: PreparedFrame): void {
  corkForThisTurn(ws);
  const fragments = p.fragments;
  const last = fragments.length - 1;
  if (last > 0) {
    const part = p.binary ? PART : PART_TEXT;
    for (let k = 0; k < last; k++) ws.send(fragments[k]!, part);
  }
  ws.send(fragments[last]!, p.binary ? WHOLE : WHOLE_TEXT);
}

/** Sends one message made of chunks, without concatenating large ones. */
export function sendFrame(ws: WebSocket, f: OutFrame): void {
  sendPrepared(ws, prepareFrame(f));
}
