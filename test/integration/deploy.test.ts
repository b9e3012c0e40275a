/**
 * kgate's deployment against the real things.
 *
 * - The image: the top-level Dockerfile built by `podman build`
 *   (scripts/build-gateway-image.sh, on the offline Debian base of the
 *   container provisioner plus the host's Node.js), then run as deploy/ runs
 *   it (read-only root, a tmpfs /tmp, no capabilities, no new privileges):
 *   the gateway's process is not root, it answers /healthz and /readyz from
 *   outside its network namespace (so it listens on the pod's address, not
 *   loopback), zeromq's prebuilt addon loads and talks, and the image holds
 *   the runtime only.
 * - The manifests: deploy/ rendered by kustomize (scripts/build-kustomize.sh)
 *   and validated by a real kube-apiserver (test/helpers/k8s-cluster.ts) with
 *   server-side dry-run and strict field validation, each object as its
 *   file has it (sent as JSON, not through client-node's typed serializer,
 *   which drops fields it does not know); the Deployment's pod template is
 *   admitted under the restricted Pod Security Standard its namespace
 *   enforces.
 * - The RBAC: the ServiceAccount, Roles and bindings made for real, a token
 *   minted for the account, and the API server's own answers (access reviews
 *   and rules reviews as that account) that it may do each thing kgate does,
 *   nothing more, and none of pods/exec, Secrets in kube-system, cluster role
 *   bindings; the kubernetes KernelStore's own permission check passes with
 *   it. The create-namespaces overlay: its admission policy refuses kgate's
 *   writes outside tenants' namespaces.
 *
 * Nothing is skipped: a machine without podman, Go or the cluster binaries
 * fails here with the reason (scripts/setup.sh --test installs them).
 */
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request, type RequestOptions } from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { AuthorizationV1Api, KubeConfig, KubernetesObjectApi, type KubernetesObject } from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kubernetesStore } from '../../src/kernels/k8s-store.js';
import { kubeconfigFor, mintServiceAccountToken, startCluster, type Cluster } from '../helpers/k8s-cluster.js';
import { until } from '../helpers/wait.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
const IMAGE = 'localhost/kgate:dev';
const PODMAN = '/usr/bin/podman';
const PODMAN_ARGS = ['--cgroup-manager=cgroupfs', '--runtime=runc', '--events-backend=file'];
// Written by scripts/build-gateway-image.sh: podman's default ulimits emptied, as the container provisioner does.
const CONTAINERS_CONF = join(REPO, '.cache/containers.conf');
const run = promisify(execFile);

function podman(args: string[], env: NodeJS.ProcessEnv = {}): string {
  return execFileSync(PODMAN, [...PODMAN_ARGS, ...args], {
    env: { ...process.env, CONTAINERS_CONF, ...env },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 60_000,
  });
}

/** Runs a script of the repository; its stderr is in the error when it fails. */
async function script(name: string, timeoutMs: number): Promise<string> {
  try {
    const { stdout } = await run(join(REPO, 'scripts', name), [], { cwd: REPO, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`scripts/${name} failed: ${err.message}\n${(err.stderr ?? '').split('\n').slice(-40).join('\n')}`, { cause: e });
  }
}

describe('the gateway image (podman build of the Dockerfile)', () => {
  const name = `kgate-deploy-test-${process.pid}`;
  const token = randomBytes(24).toString('hex');
  let base = '';
  let buildMs = 0;

  beforeAll(async () => {
    if (!existsSync(PODMAN)) throw new Error(`${PODMAN} is missing: install Debian's podman and runc (scripts/setup.sh --test does)`);
    const started = Date.now();
    // Layers are cached: only what changed since the last build is built again.
    await script('build-gateway-image.sh', 20 * 60_000);
    buildMs = Date.now() - started;
    console.log(`podman build of the Dockerfile: ${(buildMs / 1000).toFixed(0)} s (cached layers reused)`);
    // As deploy/base/deployment.yaml runs it; the token through podman's environment, not its argv.
    podman(
      [
        'run',
        '--detach',
        `--name=${name}`,
        '--read-only',
        '--tmpfs=/tmp',
        '--cap-drop=ALL',
        '--security-opt=no-new-privileges',
        '--publish=127.0.0.1::8888',
        '--env=KG_AUTH_TOKEN',
        IMAGE,
      ],
      { KG_AUTH_TOKEN: token },
    );
    // "127.0.0.1:<port>", a free port podman chose.
    base = `http://${podman(['port', name, '8888/tcp']).trim().split('\n')[0]}`;
    await until(async () => (await fetch(`${base}/healthz`).catch(() => undefined))?.ok === true, `the gateway in the container to answer (logs: ${name})`, 60_000, 200).catch(
      (e: unknown) => {
        throw new Error(`${(e as Error).message}\n${podman(['logs', name])}`, { cause: e });
      },
    );
  }, 25 * 60_000);

  afterAll(() => {
    if (existsSync(PODMAN)) podman(['rm', '--force', '--time=0', '--ignore', name]);
  });

  it('serves /healthz and /readyz from outside its network namespace, and refuses the API without a token', async () => {
    for (const path of ['/healthz', '/readyz']) {
      const r = await fetch(`${base}${path}`);
      expect(r.status, path).toBe(200);
      expect(await r.json()).toEqual({ status: 'ok' });
    }
    expect((await fetch(`${base}/api/kernels`)).status).toBe(401);
    const specs = await fetch(`${base}/api/kernelspecs`, { headers: { authorization: `token ${token}` } });
    expect(specs.status).toBe(200);
  });

  it("runs the gateway as uid 10001, not root, and listens on the container's address", () => {
    const status = podman(['exec', name, 'cat', '/proc/1/status']);
    const uids = /^Uid:\s+(.*)$/m.exec(status)?.[1]?.split(/\s+/);
    expect(uids).toEqual(['10001', '10001', '10001', '10001']);
    expect(podman(['exec', name, 'id', '-u']).trim()).toBe('10001');
    expect(podman(['exec', name, 'cat', '/proc/1/cmdline']).split('\0')).toEqual(['node', '/app/dist/cli.js', '']);
    expect(podman(['logs', name])).toContain('kgate listening on http://0.0.0.0:8888/');
  });

  it('prints its version and loads zeromq, whose prebuilt addon exchanges a message', () => {
    expect(podman(['run', '--rm', '--network=none', IMAGE, '--version']).trim()).toBe(VERSION);
    const code = [
      "const { Router, Dealer } = await import('zeromq');",
      'const router = new Router({ linger: 0 }); const dealer = new Dealer({ linger: 0 });',
      "await router.bind('tcp://127.0.0.1:*'); dealer.connect(router.lastEndpoint);",
      "await dealer.send('ping'); const [, msg] = await router.receive();",
      'console.log(msg.toString()); router.close(); dealer.close();',
    ].join(' ');
    expect(podman(['run', '--rm', '--network=none', '--read-only', '--cap-drop=ALL', '--entrypoint=node', IMAGE, '--input-type=module', '-e', code]).trim()).toBe('ping');
  });

  it('holds the built gateway and its production dependencies only', () => {
    expect(podman(['run', '--rm', '--network=none', '--entrypoint=ls', IMAGE, '/app']).trim().split('\n')).toEqual([
      'demo',
      'dist',
      'kernelspecs',
      'node_modules',
      'package.json',
      'status',
    ]);
    const modules = podman(['run', '--rm', '--network=none', '--entrypoint=ls', IMAGE, '/app/node_modules']).trim().split('\n');
    for (const dep of ['fastify', 'zeromq', '@kubernetes', 'ws']) expect(modules).toContain(dep);
    for (const dev of ['typescript', 'vitest', 'esbuild', 'eslint', 'playwright-core']) expect(modules).not.toContain(dev);
  });
});

/** One access the API server is asked about (SelfSubjectAccessReview resourceAttributes). */
interface Access {
  namespace?: string;
  group: string;
  resource: string;
  subresource?: string;
  verb: string;
  name?: string;
}

const STATE_NS = 'kgate-system';
const TENANT_NS = 'kgate-default';
const SA = { namespace: STATE_NS, name: 'kgate' };
const each = (verbs: string[], a: Omit<Access, 'verb'>): Access[] => verbs.map((verb) => ({ ...a, verb }));

/** Everything kgate's code asks of the API server with the base manifests, and the file that asks it. */
const NEEDED: Access[] = [
  // src/kernels/k8s-store.ts: the shared records, in the gateway's namespace.
  ...each(['get', 'list', 'create', 'update', 'delete'], { namespace: STATE_NS, group: '', resource: 'secrets' }),
  ...each(['get', 'list', 'create', 'update', 'delete'], { namespace: STATE_NS, group: 'coordination.k8s.io', resource: 'leases' }),
  // src/kernels/k8s-store.ts (reservations) and src/kernels/k8s-session-store.ts (a ConfigMap per session).
  ...each(['get', 'list', 'create', 'update', 'delete'], { namespace: STATE_NS, group: '', resource: 'configmaps' }),
  // src/provisioner/kubernetes.ts: kernel pods and their connection Secrets, in a tenant's namespace.
  ...each(['get', 'list', 'watch', 'create', 'patch', 'delete'], { namespace: TENANT_NS, group: '', resource: 'pods' }),
  ...each(['create', 'delete'], { namespace: TENANT_NS, group: '', resource: 'secrets' }),
  { namespace: TENANT_NS, group: '', resource: 'events', verb: 'watch' },
  // src/provisioner/k8s-tenant.ts: the tenant's NetworkPolicy, LimitRange and ResourceQuota.
  ...each(['get', 'create', 'update'], { namespace: TENANT_NS, group: 'networking.k8s.io', resource: 'networkpolicies' }),
  ...each(['get', 'create', 'update'], { namespace: TENANT_NS, group: '', resource: 'limitranges' }),
  ...each(['get', 'create', 'update', 'delete'], { namespace: TENANT_NS, group: '', resource: 'resourcequotas' }),
];

/** What the gateway's account must not do with the base manifests. */
const FORBIDDEN: Access[] = [
  { namespace: TENANT_NS, group: '', resource: 'pods', subresource: 'exec', verb: 'create' },
  { namespace: TENANT_NS, group: '', resource: 'pods', subresource: 'attach', verb: 'create' },
  { namespace: TENANT_NS, group: '', resource: 'pods', subresource: 'portforward', verb: 'create' },
  { namespace: TENANT_NS, group: '', resource: 'pods', subresource: 'log', verb: 'get' },
  { namespace: TENANT_NS, group: '', resource: 'pods', verb: 'update' },
  { namespace: TENANT_NS, group: '', resource: 'pods', subresource: 'status', verb: 'patch' },
  { namespace: TENANT_NS, group: '', resource: 'secrets', verb: 'get' },
  { namespace: TENANT_NS, group: '', resource: 'secrets', verb: 'list' },
  { namespace: 'kube-system', group: '', resource: 'secrets', verb: 'list' },
  { namespace: 'kube-system', group: '', resource: 'secrets', verb: 'get' },
  { namespace: 'kube-system', group: '', resource: 'pods', verb: 'create' },
  { namespace: 'default', group: '', resource: 'pods', verb: 'create' },
  { namespace: STATE_NS, group: '', resource: 'pods', verb: 'create' },
  { namespace: TENANT_NS, group: '', resource: 'configmaps', verb: 'list' },
  { namespace: 'kube-system', group: '', resource: 'configmaps', verb: 'update' },
  { namespace: STATE_NS, group: '', resource: 'serviceaccounts', subresource: 'token', verb: 'create', name: 'kgate' },
  { group: 'rbac.authorization.k8s.io', resource: 'clusterrolebindings', verb: 'create' },
  { group: 'rbac.authorization.k8s.io', resource: 'clusterroles', verb: 'bind' },
  { group: 'rbac.authorization.k8s.io', resource: 'clusterroles', verb: 'escalate' },
  { namespace: TENANT_NS, group: 'rbac.authorization.k8s.io', resource: 'rolebindings', verb: 'create' },
  { group: '', resource: 'namespaces', verb: 'create' },
  { group: '', resource: 'namespaces', verb: 'update' },
  { group: '', resource: 'nodes', verb: 'list' },
];

const key = (a: Access): string => [a.namespace ?? '', a.group, a.resource + (a.subresource ? `/${a.subresource}` : ''), a.verb, a.name ?? ''].join(' ');

/** The objects `kustomize build dir` renders. */
function render(kustomize: string, dir: string): KubernetesObject[] {
  const out = execFileSync(kustomize, ['build', join(REPO, dir)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  return parseAllDocuments(out).map((d) => d.toJS() as KubernetesObject);
}

/** client-node's object API, for the REST path of any kind (found through discovery). */
class ObjectPaths extends KubernetesObjectApi {
  path(o: KubernetesObject, action: 'create' | 'read'): Promise<string> {
    return this.specUriPath(structuredClone(o), action);
  }
}

interface ApiAnswer {
  status: number;
  body: { kind?: string; message?: string; reason?: string };
  warnings: string[];
}

/** One request with kubeconfig `kc`'s credentials; the body is sent as JSON exactly as given. */
async function apiRequest(kc: KubeConfig, method: string, path: string, body?: unknown): Promise<ApiAnswer> {
  const url = new URL(path, kc.getCurrentCluster()!.server);
  const opts: RequestOptions = { method, headers: { 'content-type': 'application/json', accept: 'application/json' } };
  await kc.applyToHTTPSOptions(opts);
  return new Promise((resolve, reject) => {
    const req = request(url, opts, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const w = res.headers['warning'];
        resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as ApiAnswer['body']) : {}, warnings: w === undefined ? [] : Array.isArray(w) ? w : [w] });
      });
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/** A manifest: any kind, any fields. */
type Manifest = KubernetesObject & Record<string, unknown>;

const describeObject = (o: KubernetesObject): string => `${o.kind} ${o.metadata?.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata?.name}`;

describe('deploy/ on a real API server (kube-apiserver, server-side dry-run)', () => {
  let cluster: Cluster;
  let admin: KubeConfig;
  let paths: ObjectPaths;
  let base: KubernetesObject[];
  let overlay: KubernetesObject[];
  let account: KubeConfig;
  let accountKubeconfig: string;

  /** Creates `o` as `kc` (dryRun All unless `real`), with unknown or duplicate fields an error. */
  const create = async (o: KubernetesObject, opts: { real?: boolean; as?: KubeConfig } = {}): Promise<ApiAnswer> => {
    const query = `fieldValidation=Strict${opts.real ? '' : '&dryRun=All'}`;
    return apiRequest(opts.as ?? admin, 'POST', `${await paths.path(o, 'create')}?${query}`, o);
  };
  const mustCreate = async (o: KubernetesObject, opts: { real?: boolean } = {}): Promise<void> => {
    const r = await create(o, opts);
    expect(r.status, `${describeObject(o)}: ${r.body.message ?? ''}`).toBe(201);
    expect(r.warnings, describeObject(o)).toEqual([]);
  };
  const allowed = async (kc: KubeConfig, a: Access): Promise<boolean> => {
    const review = await kc.makeApiClient(AuthorizationV1Api).createSelfSubjectAccessReview({ body: { spec: { resourceAttributes: a } } });
    return review.status?.allowed === true;
  };

  beforeAll(async () => {
    const kustomize = (await script('build-kustomize.sh', 15 * 60_000)).trim();
    cluster = await startCluster();
    admin = cluster.kubeConfig();
    paths = admin.makeApiClient(ObjectPaths);
    base = render(kustomize, 'deploy/base');
    overlay = render(kustomize, 'deploy/overlays/create-namespaces');
  }, 20 * 60_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  it('every object of deploy/base passes the API server (namespaces made for real, the rest dry-run)', async () => {
    const kinds = base.map((o) => o.kind).sort();
    expect(kinds).toEqual(
      [
        'ClusterRole',
        'ConfigMap',
        'Deployment',
        'Namespace',
        'Namespace',
        'NetworkPolicy',
        'PodDisruptionBudget',
        'Role',
        'RoleBinding',
        'RoleBinding',
        'Service',
        'ServiceAccount',
      ].sort(),
    );
    // Namespaced objects can be dry-run only in a namespace that exists.
    for (const ns of base.filter((o) => o.kind === 'Namespace')) await mustCreate(ns, { real: true });
    for (const o of base.filter((o) => o.kind !== 'Namespace')) await mustCreate(o);
    // And nothing was made by the dry run.
    const probe = await apiRequest(
      admin,
      'GET',
      await paths.path(
        base.find((o) => o.kind === 'Deployment')!,
        'read',
      ),
    );
    expect(probe.status).toBe(404);
  });

  it("admits the Deployment's pod under the restricted Pod Security Standard of kgate-system", async () => {
    const sa = base.find((o) => o.kind === 'ServiceAccount')!;
    await mustCreate(sa, { real: true });
    const deployment = base.find((o) => o.kind === 'Deployment') as KubernetesObject & { spec: { template: { metadata: object; spec: object } } };
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { ...deployment.spec.template.metadata, name: 'kgate-template-check', namespace: STATE_NS },
      spec: deployment.spec.template.spec,
    };
    await mustCreate(pod);
    // The same pod with one hardening removed is refused there: the namespace does enforce it.
    const root = structuredClone(pod) as typeof pod & { spec: { securityContext: Record<string, unknown> } };
    delete root.spec.securityContext['runAsNonRoot'];
    const refused = await create(root);
    expect(refused.status).toBe(403);
    expect(refused.body.message).toMatch(/violates PodSecurity "restricted/);
  });

  it("grants the gateway's account each thing kgate does, and nothing more (the API server's access and rules reviews, as that account)", async () => {
    for (const o of base.filter((o) => ['Role', 'RoleBinding', 'ClusterRole'].includes(o.kind!))) await mustCreate(o, { real: true });
    const token = await mintServiceAccountToken(cluster, SA.namespace, SA.name, { expirationSeconds: 600 });
    accountKubeconfig = kubeconfigFor(cluster, token, STATE_NS);
    account = new KubeConfig();
    account.loadFromFile(accountKubeconfig);
    // RBAC takes effect through the API server's informers: the first grant shows when it is in force.
    await until(() => allowed(account, NEEDED[0]!), 'the Role to be in force', 30_000, 200);
    const denied = [];
    for (const a of NEEDED) if (!(await allowed(account, a))) denied.push(key(a));
    expect(denied).toEqual([]);
    const granted = [];
    for (const a of FORBIDDEN) if (await allowed(account, a)) granted.push(key(a));
    expect(granted).toEqual([]);

    // Every rule the account holds, as the API server lists them per namespace, is one kgate needs.
    const authz = account.makeApiClient(AuthorizationV1Api);
    const extra: string[] = [];
    for (const namespace of [STATE_NS, TENANT_NS, 'kube-system', 'default']) {
      const rules = await authz.createSelfSubjectRulesReview({ body: { spec: { namespace } } });
      for (const r of rules.status?.resourceRules ?? []) {
        for (const group of r.apiGroups ?? [''])
          for (const resource of r.resources ?? [])
            for (const verb of r.verbs)
              for (const name of r.resourceNames?.length ? r.resourceNames : [undefined]) {
                // Every authenticated user may review its own access and identity (system:basic-user).
                if (group === 'authorization.k8s.io' || group === 'authentication.k8s.io') continue;
                const a: Access = { namespace, group, resource, verb, ...(name ? { name } : {}) };
                if (!NEEDED.some((n) => key(n) === key(a))) extra.push(key(a));
              }
      }
    }
    expect(extra).toEqual([]);
  }, 180_000);

  it("passes the kubernetes KernelStore's own permission check (src/kernels/k8s-store.ts init) as the gateway's account", async () => {
    const store = kubernetesStore({ kubeconfig: accountKubeconfig, namespace: STATE_NS });
    await expect(store.init()).resolves.toBeUndefined();
  });

  it("runs the image with the Deployment's own args and mounts as the gateway's account: ready, and a kernel start reaches the scheduler", async () => {
    const deployment = base.find((o) => o.kind === 'Deployment') as KubernetesObject & {
      spec: { template: { spec: { containers: Array<{ args: string[]; env: Array<{ name: string; value: string }> }> } } };
    };
    const container = deployment.spec.template.spec.containers[0]!;
    const kernelspecs = base.find((o) => o.kind === 'ConfigMap') as KubernetesObject & { data: Record<string, string> };
    // What the kubelet would mount: the account's token, the CA and the namespace; the kgate-auth Secret; the ConfigMap.
    const dir = mkdtempSync(join(tmpdir(), 'kgate-deploy-'));
    const token = randomBytes(24).toString('hex');
    const files: Record<string, string> = {
      'sa/token': await mintServiceAccountToken(cluster, SA.namespace, SA.name, { expirationSeconds: 600 }),
      'sa/ca.crt': readFileSync(cluster.caPath, 'utf8'),
      'sa/namespace': STATE_NS,
      'auth/tokens.yaml': `tokens:\n  - sha256: ${createHash('sha256').update(token).digest('hex')}\n    user: notebook-server\n    scopes: [kgate:impersonate]\n`,
      'kernelspecs/python3/kernel.json': kernelspecs.data['python3.kernel.json']!,
    };
    for (const [path, text] of Object.entries(files)) {
      mkdirSync(dirname(join(dir, path)), { recursive: true, mode: 0o755 });
      writeFileSync(join(dir, path), text, { mode: 0o644 });
    }
    chmodSync(dir, 0o755);
    const name = `kgate-deploy-incluster-${process.pid}`;
    const api = new URL(cluster.server);
    try {
      // The API server listens on the host's loopback, so the container shares the host's network; the
      // addresses move to 127.0.0.1 and free ports (the later flag wins), the rest is the Deployment's.
      podman([
        'run',
        '--detach',
        `--name=${name}`,
        '--network=host',
        '--read-only',
        '--tmpfs=/tmp',
        '--cap-drop=ALL',
        '--security-opt=no-new-privileges',
        `--volume=${join(dir, 'sa')}:/var/run/secrets/kubernetes.io/serviceaccount:ro`,
        `--volume=${join(dir, 'auth')}:/etc/kgate/auth:ro`,
        `--volume=${join(dir, 'kernelspecs')}:/etc/kgate/kernelspecs:ro`,
        `--env=KUBERNETES_SERVICE_HOST=${api.hostname}`,
        `--env=KUBERNETES_SERVICE_PORT=${api.port}`,
        ...container.env.map((e) => `--env=${e.name}=${e.value}`),
        IMAGE,
        ...container.args,
        '--ip=127.0.0.1',
        '--port=0',
        '--metrics-ip=127.0.0.1',
        '--metrics-port=0',
      ]);
      let url = '';
      await until(
        () => {
          const logs = podman(['logs', name]);
          url = /kgate listening on (http:\/\/127\.0\.0\.1:\d+)\//.exec(logs)?.[1] ?? '';
          if (!url && podman(['inspect', '--format={{.State.Running}}', name]).trim() !== 'true') throw new Error(`kgate exited:\n${logs}`);
          return url !== '';
        },
        'kgate in the container to listen',
        60_000,
        200,
      );
      expect((await fetch(`${url}/readyz`)).status).toBe(200);
      const auth = { authorization: `token ${token}`, 'content-type': 'application/json' };
      const specs = (await (await fetch(`${url}/api/kernelspecs`, { headers: auth })).json()) as { kernelspecs: Record<string, unknown> };
      expect(Object.keys(specs.kernelspecs)).toContain('python3');
      // No node in this cluster: the start goes through every call kgate makes before the scheduler's verdict.
      const posted = Date.now();
      const start = await fetch(`${url}/api/kernels`, { method: 'POST', headers: auth, body: JSON.stringify({ name: 'python3' }) });
      console.log(`POST /api/kernels to the scheduler's refusal (no nodes), through the image as deployed: ${Date.now() - posted} ms`);
      const body = (await start.json()) as { code?: string; message?: string };
      expect({ status: start.status, code: body.code }, body.message).toEqual({ status: 503, code: 'KG_KERNEL_UNSCHEDULABLE' });
      // The tenant's objects were written by kgate, with the rights of the RoleBinding in kgate-default.
      for (const [apiVersion, kind] of [
        ['networking.k8s.io/v1', 'NetworkPolicy'],
        ['v1', 'LimitRange'],
      ] as const) {
        const list = await apiRequest(admin, 'GET', await paths.path({ apiVersion, kind, metadata: { namespace: TENANT_NS } }, 'create'));
        expect((list.body as { items?: unknown[] }).items?.length, kind).toBeGreaterThan(0);
      }
    } finally {
      podman(['rm', '--force', '--time=0', '--ignore', name]);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);

  it("every object of the create-namespaces overlay passes the API server; its admission policy keeps the wider rights to tenants' namespaces", async () => {
    const added = overlay.filter((o) => !base.some((b) => describeObject(b) === describeObject(o)));
    expect(added.map(describeObject).sort()).toEqual(
      [
        'ClusterRole kgate-namespaces',
        'ClusterRoleBinding kgate-kernels',
        'ClusterRoleBinding kgate-namespaces',
        'ValidatingAdmissionPolicy kgate-tenant-namespaces-only',
        'ValidatingAdmissionPolicyBinding kgate-tenant-namespaces-only',
      ].sort(),
    );
    const deployment = overlay.find((o) => o.kind === 'Deployment') as KubernetesObject & { spec: { template: { spec: { containers: Array<{ args: string[] }> } } } };
    expect(deployment.spec.template.spec.containers[0]!.args).toContain('--k8s-create-namespaces');
    await mustCreate(deployment);
    for (const o of added) await mustCreate(o);
    for (const o of added) await mustCreate(o, { real: true });

    const tenantNs = (name: string, labelled = true): KubernetesObject => ({
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { name, labels: labelled ? { 'app.kubernetes.io/managed-by': 'kgate', 'kgate.jupyter.org/tenant': 't2' } : {} },
    });
    const pod = (namespace: string): Manifest => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'kernel-check', namespace },
      spec: {
        automountServiceAccountToken: false,
        // Restricted (kgate-system enforces it): only the policy may refuse it there.
        securityContext: { runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } },
        containers: [{ name: 'kernel', image: 'kernel:1', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }],
      },
    });
    const secret = (namespace: string): Manifest => ({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'kernel-check', namespace }, stringData: { a: 'b' } });

    // The policy is in force once the API server has loaded it: a pod of kgate's in kube-system is refused.
    // (RBAC allows each of these now; only the policy refuses them.)
    const byPolicy = async (o: KubernetesObject): Promise<boolean> => {
      const r = await create(o, { as: account });
      return r.status === 403 && (r.body.message ?? '').includes('kgate-tenant-namespaces-only');
    };
    await until(() => byPolicy(pod('kube-system')), 'the admission policy to be in force', 30_000, 200);
    for (const o of [secret('kube-system'), pod('default'), pod(STATE_NS), tenantNs('elsewhere'), tenantNs('kgate-unlabelled', false)]) {
      expect(await byPolicy(o), describeObject(o)).toBe(true);
    }
    // What kgate does: a tenant's namespace made for real, then pods and Secrets in it; its records in kgate-system.
    expect((await create(tenantNs('kgate-t2'), { as: account, real: true })).status).toBe(201);
    // Pods are admitted once the namespace has its "default" ServiceAccount (the controller-manager makes it).
    await until(async () => (await create(pod('kgate-t2'), { as: account })).status === 201, 'a pod to be admitted in kgate-t2', 60_000, 200);
    expect((await create(secret('kgate-t2'), { as: account })).status).toBe(201);
    expect((await create(secret(STATE_NS), { as: account })).status).toBe(201);
    // The wider rights still read no Secret anywhere, and bind no role.
    for (const a of [
      { namespace: 'kube-system', group: '', resource: 'secrets', verb: 'list' },
      { namespace: 'kube-system', group: '', resource: 'secrets', verb: 'get' },
      { namespace: 'kgate-t2', group: '', resource: 'pods', subresource: 'exec', verb: 'create' },
      { group: 'rbac.authorization.k8s.io', resource: 'clusterrolebindings', verb: 'create' },
      { group: '', resource: 'namespaces', verb: 'update' },
      { group: '', resource: 'namespaces', verb: 'delete' },
    ])
      expect(await allowed(account, a), key(a)).toBe(false);
  }, 180_000);
});
