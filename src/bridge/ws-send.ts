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

/** Sends one message made of chunks, without concatenating large ones. */
export function sendFrame(ws: WebSocket, f: OutFrame): void {
  const whole = f.binary ? WHOLE : WHOLE_TEXT;
  if (f.chunks.length === 1) {
    ws.send(f.chunks[0]!, whole);
    return;
  }
  if (f.length < COALESCE_BELOW) {
    ws.send(Buffer.concat(f.chunks, f.length), whole);
    return;
  }
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
  const part = f.binary ? PART : PART_TEXT;
  const last = fragments.length - 1;
  for (let k = 0; k < last; k++) ws.send(fragments[k]!, part);
  ws.send(fragments[last]!, whole);
}
