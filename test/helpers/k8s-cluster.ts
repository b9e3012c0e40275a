/**
 * A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-scheduler and
 * kube-controller-manager, built from source by scripts/build-k8s.sh (into
 * .cache/k8s/<version>/bin/), run as processes on 127.0.0.1 with their state in one temp dir.
 * There is no kubelet: a test registers Node objects itself (or runs the simulated node agent).
 *
 * API (kept stable; other helpers build on it):
 *
 *   const cluster = await startCluster({ logDir? });   // all four ready, or throws with logs
 *   cluster.server            // https://127.0.0.1:<port>
 *   cluster.kubeconfigPath    // admin kubeconfig (group system:masters), for KubeConfig.loadFromFile
 *   cluster.adminToken        // the admin's bearer token (static token file)
 *   cluster.caPath            // the CA that signed the API server's serving certificate
 *   cluster.kubeConfig()      // a KubeConfig loaded from kubeconfigPath
 *   cluster.startupMs         // spawn of etcd to every component ready
 *   await createNamespace(cluster, 'ns')               // and waits for its "default" ServiceAccount
 *   const token = await mintServiceAccountToken(cluster, 'ns', 'sa', { expirationSeconds? })
 *   const path = kubeconfigFor(cluster, token, 'ns'?)  // a kubeconfig with that bearer token
 *   await cluster.stop()      // kills every process, removes the temp dir; safe to call twice
 *
 * What runs, and why it differs from a stock cluster:
 * - admission: the defaults plus NamespaceLifecycle, LimitRanger, ServiceAccount and
 *   ResourceQuota, but not TaintNodesByCondition: with no node lifecycle controller nothing
 *   would lift the not-ready taint from a new Node, so a Node a test registers is schedulable
 *   once it exists (its Ready condition is for the readers of its status, as on a real node);
 * - controller-manager runs only serviceaccount, serviceaccount-token, namespace,
 *   garbagecollector (a Secret owned by a pod goes when the pod goes), resourcequota and
 *   root-ca-certificate-publisher; no node lifecycle (no kubelet heartbeats to watch);
 * - authorization Node,RBAC; the scheduler and controller-manager use their own users
 *   (system:kube-scheduler, system:kube-controller-manager) and their bootstrap RBAC roles.
 * Certificates come from openssl (argv, no shell), the service-account key pair from node:crypto.
 * Ports are taken by binding port 0 and reading it back (the components cannot report a port
 * they chose themselves: etcd advertises its URL, the API server's port 0 means "off").
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CoreV1Api, KubeConfig, RbacAuthorizationV1Api, type V1PolicyRule } from '@kubernetes/client-node';
import { stringify } from 'yaml';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const BINARIES = ['etcd', 'kube-apiserver', 'kube-scheduler', 'kube-controller-manager'] as const;
const CONTROLLERS = [
  'serviceaccount-controller',
  'serviceaccount-token-controller',
  'namespace-controller',
  'garbage-collector-controller',
  'resourcequota-controller',
  'root-ca-certificate-publisher-controller',
];
const SERVICE_CIDR = '10.0.0.0/24';
const SERVICE_ACCOUNT_ISSUER = 'https://kubernetes.default.svc.cluster.local';

export interface ClusterOptions {
  /** Where the components' logs go (kept after stop); by default inside the temp dir, removed by stop(). */
  logDir?: string;
  /** The directory holding the four binaries; by default .cache/k8s/<version in tools/k8s/kubernetes/go.mod>/bin. */
  binDir?: string;
  /** How long startCluster waits for every component, in ms. */
  timeoutMs?: number;
}

export interface Cluster {
  server: string;
  kubeconfigPath: string;
  adminToken: string;
  caPath: string;
  /** The cluster's temp dir (kubeconfigs, certificates, etcd data). */
  dir: string;
  startupMs: number;
  kubeConfig(): KubeConfig;
  stop(): Promise<void>;
}

/** The Kubernetes release the harness runs: the one tools/k8s/kubernetes/go.mod requires. */
export function kubernetesVersion(): string {
  const mod = readFileSync(join(REPO, 'tools/k8s/kubernetes/go.mod'), 'utf8');
  const m = /^\s*k8s\.io\/kubernetes (v1\.\S+)/m.exec(mod);
  if (!m) throw new Error('tools/k8s/kubernetes/go.mod names no k8s.io/kubernetes version');
  return m[1]!;
}

export function defaultBinDir(): string {
  return join(REPO, '.cache/k8s', kubernetesVersion(), 'bin');
}

interface Component {
  name: string;
  child: ChildProcess;
  log: WriteStream;
  logPath: string;
  exited: Promise<void>;
  exitCode: number | null | undefined;
}

/** Every component still running in this process, killed if the test process exits without stop(). */
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  // The components take their ports from the command line, chosen free a moment before: another
  // process (a parallel test file) may take one first. That start is thrown away and done again.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startClusterOnce(opts);
    } catch (err) {
      if (attempt >= 3 || !/address already in use/.test((err as Error).message)) throw err;
    }
  }
}

async function startClusterOnce(opts: ClusterOptions): Promise<Cluster> {
  const binDir = opts.binDir ?? defaultBinDir();
  const missing = BINARIES.filter((b) => !existsSync(join(binDir, b)));
  if (missing.length > 0) {
    throw new Error(`Kubernetes binaries missing in ${binDir} (${missing.join(', ')}): run scripts/build-k8s.sh (scripts/setup.sh --test runs it)`);
  }
  const timeoutMs = opts.timeoutMs ?? 180_000;
  const started = Date.now();
  const dir = mkdtempSync(join(tmpdir(), 'kgate-k8s-'));
  const logDir = opts.logDir ?? join(dir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const components: Component[] = [];
  let stopped = false;

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    // Dependants first, so the API server and etcd are there while the others wind down.
    for (const c of [...components].reverse()) await stopComponent(c);
    rmSync(dir, { recursive: true, force: true });
  };

  const run = (name: string, args: string[]): Component => {
    const logPath = join(logDir, `${name}.log`);
    const log = createWriteStream(logPath);
    const child = spawn(join(binDir, name), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    const c: Component = { name, child, log, logPath, exitCode: undefined, exited: Promise.resolve() };
    c.exited = new Promise((resolve) =>
      child.once('exit', (code) => {
        c.exitCode = code;
        live.delete(child);
        resolve();
      }),
    );
    components.push(c);
    return c;
  };

  try {
    const [etcdClient, etcdPeer, apiPort, schedulerPort, cmPort] = await freePorts(5);
    const pki = makePki(dir);
    const tokens = { admin: token(), scheduler: token(), controllerManager: token() };
    // token,user,uid,"groups"
    writeFileSync(
      join(dir, 'tokens.csv'),
      [
        `${tokens.admin},kgate-test-admin,kgate-test-admin,"system:masters"`,
        `${tokens.scheduler},system:kube-scheduler,system:kube-scheduler`,
        `${tokens.controllerManager},system:kube-controller-manager,system:kube-controller-manager`,
      ].join('\n') + '\n',
      { mode: 0o600 },
    );
    const server = `https://127.0.0.1:${apiPort}`;
    const kubeconfig = (name: string, bearer: string, namespace?: string): string => writeKubeconfig(join(dir, `${name}.kubeconfig`), server, pki.caPath, name, bearer, namespace);
    const kubeconfigPath = kubeconfig('admin', tokens.admin);

    const etcd = run('etcd', [
      '--name=kgate',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=http://127.0.0.1:${etcdClient}`,
      `--advertise-client-urls=http://127.0.0.1:${etcdClient}`,
      `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-cluster=kgate=http://127.0.0.1:${etcdPeer}`,
      // A test cluster's data lives as long as the test: durability only costs time here.
      '--unsafe-no-fsync',
      '--log-level=warn',
    ]);
    await waitReady([etcd], () => httpGet(`http://127.0.0.1:${etcdClient}/health`), 'etcd /health', started + timeoutMs);

    const apiserver = run('kube-apiserver', [
      `--etcd-servers=http://127.0.0.1:${etcdClient}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      `--secure-port=${apiPort}`,
      `--cert-dir=${join(dir, 'apiserver-certs')}`,
      `--tls-cert-file=${pki.serverCertPath}`,
      `--tls-private-key-file=${pki.serverKeyPath}`,
      `--client-ca-file=${pki.caPath}`,
      `--token-auth-file=${join(dir, 'tokens.csv')}`,
      '--authorization-mode=Node,RBAC',
      `--service-account-issuer=${SERVICE_ACCOUNT_ISSUER}`,
      `--service-account-key-file=${pki.saPublicPath}`,
      `--service-account-signing-key-file=${pki.saPrivatePath}`,
      `--service-cluster-ip-range=${SERVICE_CIDR}`,
      '--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,ResourceQuota',
      '--disable-admission-plugins=TaintNodesByCondition',
      // The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints refuse.
      '--endpoint-reconciler-type=none',
      '--profiling=false',
    ]);
    await waitReady([etcd, apiserver], () => httpGet(`${server}/readyz`, { ca: pki.ca, token: tokens.admin }), 'kube-apiserver /readyz', started + timeoutMs);

    const scheduler = run('kube-scheduler', [
      `--kubeconfig=${kubeconfig('kube-scheduler', tokens.scheduler)}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${schedulerPort}`,
      `--cert-dir=${join(dir, 'scheduler-certs')}`,
      '--leader-elect=false',
      '--profiling=false',
    ]);
    const controllerManager = run('kube-controller-manager', [
      `--kubeconfig=${kubeconfig('kube-controller-manager', tokens.controllerManager)}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${cmPort}`,
      `--cert-dir=${join(dir, 'controller-manager-certs')}`,
      '--leader-elect=false',
      `--controllers=${CONTROLLERS.join(',')}`,
      '--use-service-account-credentials=true',
      `--service-account-private-key-file=${pki.saPrivatePath}`,
      `--root-ca-file=${pki.caPath}`,
      '--profiling=false',
    ]);
    const all = [etcd, apiserver, scheduler, controllerManager];
    // Their own serving certificates are self-signed: only "is it up" is asked of them.
    await waitReady(all, () => httpGet(`https://127.0.0.1:${schedulerPort}/healthz`, { insecure: true }), 'kube-scheduler /healthz', started + timeoutMs);
    await waitReady(all, () => httpGet(`https://127.0.0.1:${cmPort}/healthz`, { insecure: true }), 'kube-controller-manager /healthz', started + timeoutMs);

    const cluster: Cluster = {
      server,
      kubeconfigPath,
      adminToken: tokens.admin,
      caPath: pki.caPath,
      dir,
      startupMs: 0,
      kubeConfig: () => {
        const kc = new KubeConfig();
        kc.loadFromFile(kubeconfigPath);
        return kc;
      },
      stop,
    };
    // The controllers work once the "default" namespace has its ServiceAccount.
    await waitReady(all, () => hasDefaultServiceAccount(cluster, 'default'), 'the controller-manager to make default/default ServiceAccount', started + timeoutMs);
    cluster.startupMs = Date.now() - started;
    return cluster;
  } catch (err) {
    const logs = components.map((c) => `--- ${c.name} (exit ${c.exitCode === undefined ? 'running' : c.exitCode}):\n${tail(c.logPath)}`).join('\n');
    await stop();
    throw new Error(`${(err as Error).message}\n${logs}`, { cause: err });
  }
}

/** Creates a namespace and waits until its "default" ServiceAccount exists (pods need it to be admitted). */
export async function createNamespace(cluster: Cluster, name: string, labels: Record<string, string> = {}): Promise<void> {
  const core = cluster.kubeConfig().makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name, labels } } });
  const deadline = Date.now() + 60_000;
  while (!(await hasDefaultServiceAccount(cluster, name))) {
    if (Date.now() > deadline) throw new Error(`namespace ${name} got no default ServiceAccount in 60 s`);
    await sleep(100);
  }
}

/** A bearer token for ServiceAccount `namespace/name` from the TokenRequest API (the SA must exist). */
export async function mintServiceAccountToken(cluster: Cluster, namespace: string, name: string, opts: { expirationSeconds?: number } = {}): Promise<string> {
  const core = cluster.kubeConfig().makeApiClient(CoreV1Api);
  const res = await core.createNamespacedServiceAccountToken({
    name,
    namespace,
    body: { spec: { audiences: [SERVICE_ACCOUNT_ISSUER], expirationSeconds: opts.expirationSeconds ?? 3600 } },
  });
  const t = res.status?.token;
  if (!t) throw new Error(`TokenRequest for ${namespace}/${name} returned no token`);
  return t;
}

/** Writes a kubeconfig that talks to the cluster with `bearer` (default namespace `namespace`); returns its path. */
export function kubeconfigFor(cluster: Cluster, bearer: string, namespace?: string): string {
  const name = `user-${randomBytes(6).toString('hex')}`;
  return writeKubeconfig(join(cluster.dir, `${name}.kubeconfig`), cluster.server, cluster.caPath, name, bearer, namespace);
}

function writeKubeconfig(path: string, server: string, caPath: string, user: string, bearer: string, namespace?: string): string {
  const config = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'kgate-test', cluster: { server, 'certificate-authority-data': readFileSync(caPath).toString('base64') } }],
    users: [{ name: user, user: { token: bearer } }],
    contexts: [{ name: user, context: { cluster: 'kgate-test', user, ...(namespace ? { namespace } : {}) } }],
    'current-context': user,
  };
  writeFileSync(path, stringify(config), { mode: 0o600 });
  return path;
}

async function hasDefaultServiceAccount(cluster: Cluster, namespace: string): Promise<boolean> {
  const core = cluster.kubeConfig().makeApiClient(CoreV1Api);
  try {
    await core.readNamespacedServiceAccount({ name: 'default', namespace });
    return true;
  } catch (err) {
    if ((err as { code?: number }).code === 404) return false;
    throw err;
  }
}

interface Pki {
  ca: Buffer;
  caPath: string;
  serverCertPath: string;
  serverKeyPath: string;
  saPublicPath: string;
  saPrivatePath: string;
}

/** A CA, the API server's serving certificate signed by it (for 127.0.0.1 and the in-cluster names), and the service-account key pair. */
function makePki(dir: string): Pki {
  const pki = join(dir, 'pki');
  mkdirSync(pki);
  const p = (f: string): string => join(pki, f);
  const openssl = (args: string[]): void => {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', p('ca.key'), '-out', p('ca.crt'), '-days', '2', '-subj', '/CN=kgate-test-ca']);
  openssl(['req', ...ec, '-keyout', p('apiserver.key'), '-out', p('apiserver.csr'), '-subj', '/CN=kube-apiserver']);
  const sans = [
    'IP:127.0.0.1',
    'IP:10.0.0.1',
    'DNS:localhost',
    'DNS:kubernetes',
    'DNS:kubernetes.default',
    'DNS:kubernetes.default.svc',
    'DNS:kubernetes.default.svc.cluster.local',
  ];
  writeFileSync(p('apiserver.ext'), `subjectAltName=${sans.join(',')}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n`);
  openssl([
    'x509',
    '-req',
    '-in',
    p('apiserver.csr'),
    '-CA',
    p('ca.crt'),
    '-CAkey',
    p('ca.key'),
    '-CAcreateserial',
    '-out',
    p('apiserver.crt'),
    '-days',
    '2',
    '-extfile',
    p('apiserver.ext'),
  ]);
  const sa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(p('sa.key'), sa.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  writeFileSync(p('sa.pub'), sa.publicKey.export({ type: 'spki', format: 'pem' }));
  return {
    ca: readFileSync(p('ca.crt')),
    caPath: p('ca.crt'),
    serverCertPath: p('apiserver.crt'),
    serverKeyPath: p('apiserver.key'),
    saPublicPath: p('sa.pub'),
    saPrivatePath: p('sa.key'),
  };
}

function token(): string {
  return randomBytes(24).toString('hex');
}

/** Polls `probe` until it holds; fails at once when one of `watched` exits, or at `deadline`. */
async function waitReady(watched: Component[], probe: () => Promise<boolean>, what: string, deadline: number): Promise<void> {
  while (true) {
    const dead = watched.find((c) => c.exitCode !== undefined);
    if (dead) throw new Error(`${dead.name} exited with ${dead.exitCode} while waiting for ${what}`);
    if (await probe().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

/** True when GET `url` answers 200. */
function httpGet(url: string, opts: { ca?: Buffer; token?: string; insecure?: boolean } = {}): Promise<boolean> {
  if (url.startsWith('http:')) {
    return fetch(url, { signal: AbortSignal.timeout(5000) }).then(
      (r) => r.ok,
      () => false,
    );
  }
  return new Promise((resolve) => {
    const req = request(
      url,
      {
        ca: opts.ca,
        rejectUnauthorized: !opts.insecure,
        headers: opts.token ? { authorization: `Bearer ${opts.token}` } : {},
        timeout: 5000,
      },
      (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

/** `n` distinct ports that were free a moment ago on 127.0.0.1. */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
          const s = createServer();
          s.once('error', reject);
          s.listen(0, '127.0.0.1', () => resolve(s));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

async function stopComponent(c: Component): Promise<void> {
  if (c.exitCode === undefined) {
    c.child.kill('SIGTERM');
    const timer = setTimeout(() => c.child.kill('SIGKILL'), 10_000);
    await c.exited;
    clearTimeout(timer);
  }
  await new Promise((r) => c.log.end(r));
}

function tail(path: string, lines = 40): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A kubeconfig for a new ServiceAccount `name` of `namespace`, bound there to a Role `name` of `rules`: kgate as a narrow identity. */
export async function identityWithRole(cluster: Cluster, namespace: string, name: string, rules: V1PolicyRule[]): Promise<string> {
  const kc = cluster.kubeConfig();
  const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
  await kc.makeApiClient(CoreV1Api).createNamespacedServiceAccount({ namespace, body: { metadata: { name } } });
  await rbac.createNamespacedRole({ namespace, body: { metadata: { name }, rules } });
  await rbac.createNamespacedRoleBinding({
    namespace,
    body: { metadata: { name }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name }, subjects: [{ kind: 'ServiceAccount', name, namespace }] },
  });
  return kubeconfigFor(cluster, await mintServiceAccountToken(cluster, namespace, name), namespace);
}
