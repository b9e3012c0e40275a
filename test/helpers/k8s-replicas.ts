/**
 * kgate replicas on a test cluster (test/helpers/k8s-cluster.ts), as
 * deploy/ runs them: each one its own process (the sources through tsx, so
 * no stale dist/ is run), sharing nothing but the cluster. Their identity is
 * the ServiceAccount kgate-system/kgate with exactly the Roles of deploy/base
 * (rbac-state.yaml in kgate-system, the kgate-kernels ClusterRole bound in
 * kgate-default by tenant-default.yaml), applied from the files themselves,
 * so a verb missing there fails here.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CoreV1Api, KubernetesObjectApi, type KubernetesObject } from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { gatewayClient, TOKEN, type GatewayClient } from './gateway.js';
import { kubeconfigFor, mintServiceAccountToken, type Cluster } from './k8s-cluster.js';
import { until } from './wait.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(REPO, 'src/cli.ts');
/** The files of deploy/base that make kgate's identity and its rights, in the order they apply. */
const IDENTITY_MANIFESTS = ['namespace.yaml', 'serviceaccount.yaml', 'rbac-state.yaml', 'rbac-kernels.yaml', 'tenant-default.yaml'];
export const STATE_NAMESPACE = 'kgate-system';
export const KERNEL_NAMESPACE = 'kgate-default';

/**
 * Applies deploy/base's namespaces, ServiceAccount and RBAC with the admin's
 * credentials, and returns a kubeconfig holding a token of
 * kgate-system/kgate (default namespace kgate-system): what a replica's pod
 * would have mounted.
 */
export async function deployIdentity(cluster: Cluster): Promise<string> {
  const kc = cluster.kubeConfig();
  const objects = KubernetesObjectApi.makeApiClient(kc);
  for (const file of IDENTITY_MANIFESTS) {
    for (const doc of parseAllDocuments(readFileSync(join(REPO, 'deploy/base', file), 'utf8'))) {
      const body = doc.toJS() as KubernetesObject | null;
      if (body?.kind) await objects.create(body);
    }
  }
  const core = kc.makeApiClient(CoreV1Api);
  // Pods are admitted only once their namespace has its "default" ServiceAccount.
  for (const namespace of [STATE_NAMESPACE, KERNEL_NAMESPACE]) {
    await until(
      () =>
        core.readNamespacedServiceAccount({ name: 'default', namespace }).then(
          () => true,
          () => false,
        ),
      `the default ServiceAccount of ${namespace}`,
      60_000,
      100,
    );
  }
  return kubeconfigFor(cluster, await mintServiceAccountToken(cluster, STATE_NAMESPACE, 'kgate'), STATE_NAMESPACE);
}

export interface Replica {
  child: ChildProcess;
  pid: number;
  url: string;
  client: GatewayClient;
  /** Where its stdout and stderr go (kept until `stop`, for a failing test's reader). */
  logPath: string;
  exited: Promise<number | null>;
  /** `kill -9`: the process ends without a word to anyone. */
  kill9(): Promise<void>;
  /** SIGTERM (it shuts down as it would in a rollout), then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

/** Starts `kgate` (port 0 on 127.0.0.1, the test token, its own runtime dir, no state dir) with `args`; resolves once it listens. */
export async function startReplica(args: string[]): Promise<Replica> {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-replica-'));
  const logPath = join(dir, 'kgate.log');
  const log = createWriteStream(logPath);
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, '--port', '0', '--auth-token', TOKEN, '--runtime-dir', join(dir, 'runtime'), ...args], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env },
  });
  running.add(child);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      running.delete(child);
      resolve(code);
    }),
  );
  child.stderr!.pipe(log, { end: false });
  let buf = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kgate did not start in 60 s: ${tail(logPath)}`)), 60_000);
    child.stdout!.on('data', (d: Buffer) => {
      log.write(d);
      buf += d.toString();
      const m = /^kgate listening on (http:\/\/\S+\/)$/m.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`kgate exited with ${code}: ${tail(logPath)}`));
    });
  });
  let removed = false;
  const end = async (): Promise<void> => {
    await exited;
    await new Promise((r) => log.end(r));
    if (!removed && !process.env['KGATE_KEEP_REPLICA_LOGS']) rmSync(dir, { recursive: true, force: true });
    removed = true;
  };
  return {
    child,
    pid: child.pid!,
    url,
    client: gatewayClient(url, TOKEN),
    logPath,
    exited,
    async kill9() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    async stop(graceMs = 20_000) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(t);
      }
      await end();
    },
  };
}

/** The last lines of a replica's log. */
export function tail(path: string, lines = 30): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}
