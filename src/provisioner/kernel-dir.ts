/**
 * The per-kernel directory an isolated kernel (sandbox, container) shares
 * with kgate, its only way out: ZeroMQ's ipc sockets and the connection file,
 * bound into the kernel at KERNEL_DIR. Its network namespace has nothing else.
 */
import { chmod, chown, lstat, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { kernelStartFailed } from '../errors.js';
import type { ConnectionInfo, LaunchRequest } from './types.js';

/** Where the kernel sees its directory. */
export const KERNEL_DIR = '/run/kgate';
/** ZeroMQ's ipc path limit is the socket address's 108 bytes, less its NUL. */
const IPC_PATH_MAX = 107;
/** The channels' ipc "ports": ipykernel binds `{ip}-{port}`. */
const IPC_PORTS = { shell_port: 1, iopub_port: 2, stdin_port: 3, control_port: 4, hb_port: 5 } as const;

/** The base of the kernels' directories: kgate's own, 0711 (each kernel's directory is closed to the others). */
export async function ensureBaseDir(baseDir: string, what: string): Promise<void> {
  await mkdir(baseDir, { recursive: true, mode: 0o711 });
  const base = await lstat(baseDir);
  if (!base.isDirectory() || base.uid !== (process.getuid?.() ?? base.uid)) throw kernelStartFailed(`the ${what} base directory ${baseDir} is not a directory of kgate's user`);
  await chmod(baseDir, 0o711);
}

/** The kernel's connection over ipc in `dir` (as kgate reaches it), or the one in force on a restart. */
export function ipcConnection(req: LaunchRequest, dir: string, what: string): ConnectionInfo {
  if (req.reuse) return req.reuse;
  const ip = join(dir, 'k');
  if (Buffer.byteLength(`${ip}-${IPC_PORTS.hb_port}`) > IPC_PATH_MAX) {
    throw kernelStartFailed(`the ${what}'s ipc sockets would be longer than ${IPC_PATH_MAX} bytes under ${join(dir, '..')}: give the ${what} a shorter base directory`);
  }
  return { transport: 'ipc', ip, ...IPC_PORTS, key: req.key, signature_scheme: 'hmac-sha256', kernel_name: req.spec.name };
}

/**
 * The kernel's directory (0700, its user's when kgate is root) and a fresh
 * connection file in it naming the sockets as the kernel sees them. The
 * kernel may have left anything there: the old file (or a symlink in its
 * place) goes first, then the new one is written exclusively.
 */
export async function writeKernelDir(dir: string, conn: ConnectionInfo, owner: { uid: number; gid: number }, what: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await lstat(dir);
  if (!st.isDirectory()) throw kernelStartFailed(`the ${what}'s kernel directory ${dir} is not a directory`);
  const file = join(dir, 'connection.json');
  await rm(file, { force: true });
  await writeFile(file, JSON.stringify({ ...conn, ip: `${KERNEL_DIR}/k` }), { mode: 0o600, flag: 'wx' });
  if (process.getuid?.() === 0) {
    await chown(dir, owner.uid, owner.gid);
    await chown(file, owner.uid, owner.gid);
  }
}
