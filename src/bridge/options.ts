/**
 * The bridge's options: the bounds of the relay between clients and kernels
 * (message sizes, what may be buffered each way, the iopub high-water mark and
 * rate limits), message signatures, and what is kept for a client's reconnect.
 */
import { z } from 'zod';
import { bool, bytes, opt, seconds, slice, type ConfigOf } from '../options.js';

const OPTIONS = {
  verifySignatures: opt(
    'verify-signatures',
    'string',
    'true or false: check the HMAC of every message from kernels (default true; its cost, and when off is sound: docs/operations.md)',
    bool.default(true),
  ),
  maxMessageSize: opt(
    'max-message-size',
    'string',
    'largest WebSocket message a client may send, in bytes (default 67108864); larger ones close the socket with 1009',
    bytes.default(64 * 1024 * 1024),
  ),
  maxClientBuffer: opt(
    'max-client-buffer',
    'string',
    'bytes a client may leave unread before its output (stream, display data) is dropped, with a notice once it catches up; at twice this it is closed with 4008 (default 16777216)',
    bytes.default(16 * 1024 * 1024),
  ),
  maxClientInput: opt(
    'max-client-input',
    'string',
    "bytes of one client's messages kgate may hold for its kernel; past half of it kgate stops reading that socket until the kernel takes them, past all of it the socket is closed with 1013 (default 16777216)",
    bytes.default(16 * 1024 * 1024),
  ),
  maxKernelInput: opt(
    'max-kernel-input',
    'string',
    'bytes kgate may hold per kernel channel (shell, control, stdin) for all its clients together, while the kernel starts or does not read; same policy as --max-client-input; also how much shell and control carry to a kernel that has not shown it handled it (default 67108864)',
    bytes.default(64 * 1024 * 1024),
  ),
  maxQueued: opt(
    'max-queued',
    'string',
    'messages per kernel channel held while the kernel (re)starts or is busy sending (default 10000)',
    z.coerce.number().int().min(1).max(1_000_000).default(10_000),
  ),
  iopubHwm: opt(
    'iopub-hwm',
    'string',
    "iopub messages per kernel the gateway may hold unread before the kernel starts dropping them (ZeroMQ high-water mark; bounds the gateway's memory per kernel at this many messages; default 200: 12.5 MiB of 64 KiB messages)",
    z.coerce.number().int().min(100).max(10_000_000).default(200),
  ),
  iopubMsgRateLimit: opt(
    'iopub-msg-rate-limit',
    'string',
    "iopub messages per second before output is paused, as jupyter_server's limit (default 0: off; jupyter_server uses 1000)",
    z.coerce.number().min(0).default(0),
  ),
  iopubDataRateLimit: opt(
    'iopub-data-rate-limit',
    'string',
    "stream bytes per second before output is paused, as jupyter_server's limit (default 0: off; jupyter_server uses 1000000)",
    z.coerce.number().min(0).default(0),
  ),
  rateLimitWindow: opt('rate-limit-window', 'string', 'seconds over which the iopub rates are averaged (default 3)', seconds.default(3)),
  replayBytes: opt(
    'replay-bytes',
    'string',
    'bytes of kernel output kept per disconnected client for its reconnect with the same session_id (default 16777216; 0: none)',
    z.coerce
      .number()
      .int()
      .min(0)
      .max(2 ** 31)
      .default(16 * 1024 * 1024),
  ),
  replaySeconds: opt('replay-seconds', 'string', 'seconds output is kept for a disconnected client (default 120)', seconds.default(120)),
  replaySessions: opt(
    'replay-sessions',
    'string',
    'disconnected sessions whose output is kept, per kernel; the oldest is given up past this (default 64)',
    z.coerce.number().int().min(1).max(100_000).default(64),
  ),
  replayKernelBytes: opt(
    'replay-kernel-bytes',
    'string',
    'bytes kept for all disconnected sessions of one kernel; the oldest session is given up past this (default 67108864)',
    bytes.default(64 * 1024 * 1024),
  ),
  replayTotalBytes: opt(
    'replay-total-bytes',
    'string',
    'bytes kept for disconnected sessions in the whole gateway; the oldest session of any kernel is given up past this (default 268435456)',
    bytes.default(256 * 1024 * 1024),
  ),
} as const;

export type BridgeConfig = ConfigOf<typeof OPTIONS>;

export const BRIDGE_OPTIONS = slice('Relay bounds: message sizes, buffers, rates and replay', OPTIONS);
