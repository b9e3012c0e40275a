import { randomUUID } from 'node:crypto';
import type { MessageParts } from './wire.js';

/** jupyter_client's `date` format: microseconds and a Z, which Python parses strictly. */
export function jupyterDate(ms: number = Date.now()): string {
  return new Date(ms).toISOString().replace(/Z$/, '000Z');
}

/** Builds a message that kgate itself sends (nudges, shutdown, interrupt, synthetic status). */
export function makeMessage(msgType: string, content: object, session: string, parent: object = {}): { msgId: string; parts: MessageParts } {
  const msgId = randomUUID();
  const header = {
    msg_id: msgId,
    msg_type: msgType,
    username: 'kgate',
    session,
    date: jupyterDate(),
    version: '5.3',
  };
  return {
    msgId,
    parts: {
      header: Buffer.from(JSON.stringify(header)),
      parent: Buffer.from(JSON.stringify(parent)),
      metadata: Buffer.from('{}'),
      content: Buffer.from(JSON.stringify(content)),
      buffers: [],
    },
  };
}
