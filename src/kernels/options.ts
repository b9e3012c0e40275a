/**
 * The kernels' options: which kernelspecs, where kernels run and what they
 * may be given, their lifecycle (launch, shutdown, restart, heartbeat), the
 * limits on how many run, warm pools, culling, and the state dir that lets
 * another gateway adopt them.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { bool, list, opt, seconds, slice, type ConfigOf } from '../options.js';
import { KERNEL_NAME } from './kernelspecs.js';

const poolSizes = list
  .default([])
  .pipe(z.array(z.string().regex(/^[A-Za-z0-9._-]{1,128}=([1-9]|[1-9]\d)$/, 'each pool is NAME=N, N from 1 to 99')))
  .transform((entries) => Object.fromEntries(entries.map((e) => [e.slice(0, e.lastIndexOf('=')), Number(e.slice(e.lastIndexOf('=') + 1))])) as Record<string, number>);

const defaultRuntimeDir = (): string => join(process.env['XDG_RUNTIME_DIR'] || tmpdir(), `kgate-${process.getuid?.() ?? 'user'}`);

const OPTIONS = {
  defaultKernelName: opt(
    'default-kernel-name',
    'string',
    'kernelspec used when a request names none (default python3, else the first)',
    z.string().regex(KERNEL_NAME, 'must be a kernelspec name ([A-Za-z0-9._-], at most 128)').optional(),
  ),
  kernelspecDir: opt('kernelspec-dir', 'string', 'an extra directory of kernelspecs, searched first (repeatable)', list.default([]), true),
  // The local provisioner's; here until provisioners declare options of their own.
  runtimeDir: opt(
    'runtime-dir',
    'string',
    'where connection files are written, mode 0700 (default $XDG_RUNTIME_DIR/kgate-UID, else the temp dir)',
    z.string().min(1).default(defaultRuntimeDir()),
  ),
  rootDir: opt(
    'root-dir',
    'string',
    'working directory of kernels when KERNEL_WORKING_DIR is not given, and the directory KERNEL_WORKING_DIR must lie in (symlinks followed; relative names are taken under it) (default: the current directory)',
    z.string().min(1).default(process.cwd()),
  ),
  envAllow: opt('env-allow', 'string', 'environment names beyond KERNEL_* that clients may pass to kernels (repeatable)', list.default([]), true),
  launchTimeout: opt(
    'launch-timeout',
    'string',
    "seconds a kernel may take to answer kernel_info after launch; a request's KERNEL_LAUNCH_TIMEOUT may ask for up to 4 times this (default 60)",
    seconds.default(60),
  ),
  shutdownWait: opt('shutdown-wait', 'string', 'seconds to wait after shutdown_request before SIGTERM (default 5)', seconds.default(5)),
  restartLimit: opt(
    'restart-limit',
    'string',
    'automatic restart attempts in a row before a dying kernel is declared dead; the first at once, then 0.5 s doubling to 8 s (default 5)',
    z.coerce.number().int().min(0).max(100).default(5),
  ),
  heartbeatInterval: opt('heartbeat-interval', 'string', 'seconds between heartbeat pings (default 3)', seconds.default(3)),
  heartbeatTimeout: opt('heartbeat-timeout', 'string', 'seconds without a heartbeat echo before a kernel counts as dead (default 30)', seconds.default(30)),
  maxKernels: opt(
    'max-kernels',
    'string',
    'kernels that may run at once, starting ones included; more are refused with 403 KG_KERNEL_LIMIT (default 0: no limit)',
    z.coerce.number().int().min(0).default(0),
  ),
  maxKernelsPerUser: opt(
    'max-kernels-per-user',
    'string',
    'kernels one user may run at once: the authenticated user, or for a caller that may impersonate (the operator token) the KERNEL_USERNAME it names (default 0: no limit)',
    z.coerce.number().int().min(0).default(0),
  ),
  policy: opt(
    'policy',
    'string',
    'a YAML file of per-tenant limits (max_kernels, max_kernels_per_user, resources, max_per_kernel, kernelspecs), checked at start and read again on SIGHUP; see docs/tenancy.md (default: none)',
    z.string().min(1).optional(),
  ),
  pool: opt('pool', 'string', 'NAME=N: keep N started kernels of kernelspec NAME ready to hand out (repeatable)', poolSizes, true),
  cullIdleTimeout: opt(
    'cull-idle-timeout',
    'string',
    'seconds without a message either way after which a kernel is shut down (default 0: never)',
    z.coerce.number().min(0).max(31_536_000).default(0),
  ),
  cullInterval: opt('cull-interval', 'string', 'seconds between checks for idle kernels (default 300)', seconds.default(300)),
  cullConnected: opt('cull-connected', 'string', 'true or false: cull idle kernels that still have clients (default false)', bool.default(false)),
  cullBusy: opt('cull-busy', 'string', 'true or false: cull kernels that are busy (default false)', bool.default(false)),
  stateDir: opt(
    'state-dir',
    'string',
    'directory where each kernel is recorded, so a gateway started after a crash (or a second one) adopts the kernels still running (default: none)',
    z.string().min(1).optional(),
  ),
  stateStore: opt(
    'state-store',
    'string',
    "where kernels are recorded so that other gateways can adopt, follow and take them over: dir (the --state-dir, when given) or kubernetes (a Secret and a Lease per kernel in --state-namespace, through --kubeconfig or the pod's service account), so that replicas share them (default dir)",
    z.enum(['dir', 'kubernetes']).default('dir'),
  ),
  stateNamespace: opt(
    'state-namespace',
    'string',
    "namespace of the kernel records with --state-store kubernetes (default: the namespace kgate's pod runs in, else the kubeconfig context's, else default)",
    z
      .string()
      .regex(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, 'must be a namespace name (a DNS label)')
      .optional(),
  ),
  keepKernels: opt(
    'keep-kernels',
    'string',
    'true or false: on SIGTERM/SIGINT leave the kernels running for the next gateway on the same --state-dir (default false)',
    bool.default(false),
  ),
} as const;

export type KernelsConfig = ConfigOf<typeof OPTIONS>;

export const KERNEL_OPTIONS = slice('Kernels: kernelspecs, lifecycle, limits, pools, culling and state', OPTIONS);
