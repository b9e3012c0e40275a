/**
 * The kubernetes provisioner's objects (src/provisioner/k8s-objects.ts), as
 * client-node's serializer writes them to the API server: no client string
 * in a label key or a name, hostile values only as validated values (or
 * refused), every hardening field on the pod, resources (MIG included) where
 * Kubernetes wants them, and the tenant objects from a policy.
 */
// Not exported from the package's index; the serializer its API clients write requests with.
import { ObjectSerializer } from '@kubernetes/client-node/dist/serializer.js';
import { describe, expect, it } from 'vitest';
import { ErrorCodes, KgateError } from '../../src/errors.js';
import { parsePolicy } from '../../src/kernels/policy.js';
import {
  ANNOTATIONS,
  CONNECTION_FILE,
  COPY_SCRIPT,
  EGRESS_EXCEPT,
  KERNEL_PORTS,
  LABELS,
  connectionSecret,
  kernelNetworkPolicy,
  kernelPod,
  kubernetesSpecConfig,
  labelValue,
  podResources,
  tenantLimitRange,
  tenantNamespace,
  tenantResourceQuota,
} from '../../src/provisioner/k8s-objects.js';
import { namespaceFor } from '../../src/provisioner/kubernetes.js';
import type { LaunchRequest } from '../../src/provisioner/types.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the wire form is JSON, read by path
type Wire = Record<string, any>;

const KERNEL_ID = '0b7e3f9c-1d2a-4c5b-9e8f-7a6b5c4d3e2f';
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const OWN_LABEL_KEYS = new Set<string>(Object.values(LABELS));
const OWN_ANNOTATION_KEYS = new Set<string>(Object.values(ANNOTATIONS));

function request(o: Partial<LaunchRequest> & { specName?: string; user?: string | undefined; tenant?: string } = {}): LaunchRequest {
  return {
    kernelId: KERNEL_ID,
    spec: {
      name: o.specName ?? 'python3-k8s',
      resourceDir: '/usr/share/jupyter/kernels/python3',
      spec: { argv: ['python3', '-m', 'ipykernel_launcher', '-f', '{connection_file}'], display_name: 'Python 3', language: 'python' },
    },
    key: 'k'.repeat(64),
    env: o.env ?? { KERNEL_USERNAME: 'alice' },
    principal: { user: 'user' in o ? o.user : 'alice', tenant: o.tenant ?? 'acme' },
    config: o.config ?? { image: 'registry.example/kgate-kernel:1' },
    resources: o.resources ?? {},
    ports: { take: () => Promise.reject(new Error('not used')) },
  };
}

function pod(r = request()): Wire {
  const config = kubernetesSpecConfig(r.spec.name, r.config);
  // What the API server receives: client-node's serializer writes the wire names.
  return ObjectSerializer.serialize(kernelPod({ req: r, namespace: 'kgate-acme', config }), 'V1Pod') as Wire;
}

function refusal(f: () => unknown): KgateError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(KgateError);
    return e as KgateError;
  }
  throw new Error('expected a refusal');
}

describe('kernel pod', () => {
  it('has every hardening field', () => {
    const p = pod();
    expect(p['spec']['restartPolicy']).toBe('Never');
    // Not scheduled before its Secret exists (the provisioner removes the gate then).
    expect(p['spec']['schedulingGates']).toEqual([{ name: 'kgate.jupyter.org/connection-secret' }]);
    expect(p['spec']['automountServiceAccountToken']).toBe(false);
    expect(p['spec']['enableServiceLinks']).toBe(false);
    expect(p['spec']['securityContext']).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } });
    const c = p['spec']['containers'][0];
    expect(c['securityContext']).toEqual({
      runAsNonRoot: true,
      runAsUser: 1000,
      runAsGroup: 1000,
      privileged: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    });
    const volumes = Object.fromEntries((p['spec']['volumes'] as Array<Wire>).map((v) => [v['name'], v]));
    expect(volumes['tmp']['emptyDir']).toEqual({ medium: 'Memory', sizeLimit: '512Mi' });
    expect(volumes['connection-secret']['secret']).toMatchObject({ secretName: `kgate-kernel-${KERNEL_ID}` });
    const mounts = Object.fromEntries((c['volumeMounts'] as Array<Wire>).map((m) => [m['mountPath'], m]));
    expect(mounts['/run/kgate-secret']).toEqual({ name: 'connection-secret', mountPath: '/run/kgate-secret', readOnly: true });
    // The kernel's writable copy, on a tmpfs.
    expect(volumes['connection']['emptyDir']).toMatchObject({ medium: 'Memory' });
    // With connection_file: mount, the Secret itself, read-only.
    const mounted = pod(request({ config: { image: 'img:1', connection_file: 'mount' } }));
    expect(mounted['spec']['containers'][0]['volumeMounts']).toContainEqual({ name: 'connection', mountPath: '/run/kgate', readOnly: true });
    expect(mounts['/tmp']['name']).toBe('tmp');
  });

  it("runs the kernelspec's argv in its image with {connection_file} at the Secret's mount", () => {
    const p = pod();
    expect(p['metadata']['name']).toBe(`kgate-kernel-${KERNEL_ID}`);
    const c = p['spec']['containers'][0];
    expect(c['image']).toBe('registry.example/kgate-kernel:1');
    // A constant script copies the Secret's file; the paths and the argv are its positional parameters, never shell text.
    expect(c['command']).toEqual([
      '/bin/sh',
      '-c',
      COPY_SCRIPT,
      'kgate-kernel',
      '/run/kgate-secret/connection.json',
      CONNECTION_FILE,
      'python3',
      '-m',
      'ipykernel_launcher',
      '-f',
      CONNECTION_FILE,
    ]);
    const mounted = pod(request({ config: { image: 'registry.example/kgate-kernel:1', connection_file: 'mount' } }));
    expect(mounted['spec']['containers'][0]['command']).toEqual(['python3', '-m', 'ipykernel_launcher', '-f', CONNECTION_FILE]);
    expect((c['ports'] as Array<{ containerPort: number }>).map((x) => x.containerPort)).toEqual(Object.values(KERNEL_PORTS));
    expect(c['env']).toContainEqual({ name: 'KERNEL_USERNAME', value: 'alice' });
  });

  it('takes the default image only when the kernelspec names none', () => {
    expect(kubernetesSpecConfig('s', {}, { image: 'img:1' }).image).toBe('img:1');
    expect(kubernetesSpecConfig('s', { image: 'mine:2' }, { image: 'img:1' }).image).toBe('mine:2');
    expect(refusal(() => kubernetesSpecConfig('s', {})).message).toMatch(/image is not set/);
  });

  it('labels with fixed keys only, and hostile client values only as valid values or annotations', () => {
    const hostile = ['alice\nmetadata:\n  namespace: kube-system', '{{ config.__class__ }}', 'x'.repeat(300), 'bob"; rm -rf /', 'ümlaut@example.com'];
    for (const user of hostile) {
      for (const tenant of ['acme', 'Acme Corp\n', 'a@b+c']) {
        const p = pod(request({ user, tenant, specName: 'py.3_k8s-evil' }));
        for (const [k, v] of Object.entries(p['metadata']['labels'] as Record<string, string>)) {
          expect(OWN_LABEL_KEYS.has(k)).toBe(true);
          expect(v.length).toBeLessThanOrEqual(63);
          expect(v).toMatch(LABEL_VALUE);
        }
        for (const k of Object.keys(p['metadata']['annotations'] as Record<string, string>)) expect(OWN_ANNOTATION_KEYS.has(k)).toBe(true);
        // The raw values are there, as values: nothing parses them again.
        expect(p['metadata']['annotations'][ANNOTATIONS.user]).toBe(user);
        expect(p['metadata']['annotations'][ANNOTATIONS.tenant]).toBe(tenant);
        expect(p['metadata']['namespace']).toBe('kgate-acme');
        // Nowhere else: not in a name, a namespace, a label or the spec.
        const { annotations: _annotations, ...meta } = p['metadata'] as Record<string, unknown>;
        expect(JSON.stringify({ ...p, metadata: meta })).not.toMatch(/kube-system|__class__|rm -rf|ümlaut/);
      }
    }
  });

  it('hashes a value that is not a label value, and keeps one that is', () => {
    expect(labelValue('acme')).toBe('acme');
    expect(labelValue('py.3_k8s-evil')).toBe('py.3_k8s-evil');
    const h = labelValue('a@b');
    expect(h).toMatch(/^h\.[0-9a-f]{40}$/);
    expect(labelValue('a@c')).not.toBe(h);
    expect(labelValue('-leading')).toMatch(/^h\./);
    expect(labelValue('x'.repeat(64))).toMatch(/^h\./);
  });

  it('refuses a kernel id that is not a UUID as a name', () => {
    const r = { ...request(), kernelId: '../../etc\nkind: Secret' };
    expect(refusal(() => kernelPod({ req: r, namespace: 'kgate-acme', config: kubernetesSpecConfig(r.spec.name, r.config) })).code).toBe(ErrorCodes.KERNEL_START_FAILED);
  });

  it('takes node selectors, tolerations and node affinity of the checked shapes, and refuses anything else', () => {
    const config = {
      image: 'img:1',
      node_selector: { 'kgate.example/pool': 'kernels' },
      tolerations: [{ key: 'kgate.example/kernels', operator: 'Exists', effect: 'NoSchedule' }],
      affinity: {
        nodeAffinity: {
          requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'nvidia.com/mig.strategy', operator: 'In', values: ['mixed'] }] }] },
        },
      },
    };
    const p = pod(request({ config }));
    expect(p['spec']['nodeSelector']).toEqual({ 'kgate.example/pool': 'kernels' });
    expect(p['spec']['tolerations']).toEqual([{ key: 'kgate.example/kernels', operator: 'Exists', effect: 'NoSchedule' }]);
    expect(p['spec']['affinity']['nodeAffinity']['requiredDuringSchedulingIgnoredDuringExecution']['nodeSelectorTerms'][0]['matchExpressions'][0]['values']).toEqual(['mixed']);
    const bad: Array<Record<string, unknown>> = [
      { image: 'img:1', node_selector: { 'pool\nx': 'a' } },
      { image: 'img:1', node_selector: { pool: 'a b' } },
      { image: 'img:1', node_selector: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v'])) },
      { image: 'img:1', tolerations: [{ key: 'k', operator: 'Matches' }] },
      { image: 'img:1', tolerations: [{ key: 'k', command: ['sh'] }] },
      { image: 'img:1', affinity: { podAffinity: {} } },
      { image: '--privileged' },
      { image: 'img:1\nprivileged: true' },
      { image: 'img:1', privileged: true },
      { image: 'img:1', stop_timeout: 1e6 },
    ];
    for (const c of bad) expect(refusal(() => kubernetesSpecConfig('s', c)).message).toMatch(/kernelspec s: metadata\.kernel_provisioner\.config/);
  });
});

describe('resources', () => {
  it('requests and limits CPU and memory, and puts GPUs and MIG slices in limits', () => {
    const r = podResources({ cpu: 0.5, memory: 2 * 2 ** 30, extended: { 'nvidia.com/mig-3g.20gb': 1 } });
    expect(r).toEqual({ requests: { cpu: '500m', memory: '2Gi' }, limits: { cpu: '500m', memory: '2Gi', 'nvidia.com/mig-3g.20gb': '1' } });
    expect(podResources({ memory: 1000 }).limits).toEqual({ memory: '1000' });
    expect(podResources({ extended: { 'nvidia.com/gpu': 2 } })).toEqual({ limits: { 'nvidia.com/gpu': '2' } });
    expect(podResources({})).toEqual({});
    expect(pod(request({ resources: { cpu: 2, extended: { 'nvidia.com/mig-1g.5gb': 1 } } }))['spec']['containers'][0]['resources']).toEqual({
      requests: { cpu: '2000m' },
      limits: { cpu: '2000m', 'nvidia.com/mig-1g.5gb': '1' },
    });
  });

  it('refuses an extended resource name Kubernetes would not take', () => {
    expect(refusal(() => podResources({ extended: { 'cpu\nx': 1 } })).code).toBe(ErrorCodes.KERNEL_START_FAILED);
    expect(refusal(() => podResources({ extended: { 'kubernetes.io/foo': 1 } })).code).toBe(ErrorCodes.KERNEL_START_FAILED);
    expect(refusal(() => podResources({ extended: { 'nvidia.com/gpu': 1.5 } })).code).toBe(ErrorCodes.KERNEL_START_FAILED);
  });
});

describe('connection Secret', () => {
  it("holds the connection file for the pod's every address, owned by the pod", () => {
    const s = ObjectSerializer.serialize(connectionSecret(request(), 'kgate-acme', { name: `kgate-kernel-${KERNEL_ID}`, uid: 'uid-1' }), 'V1Secret') as Wire;
    expect(s['metadata']['ownerReferences']).toEqual([{ apiVersion: 'v1', kind: 'Pod', name: `kgate-kernel-${KERNEL_ID}`, uid: 'uid-1' }]);
    expect(s['immutable']).toBe(true);
    const file = JSON.parse(Buffer.from(s['data']['connection.json'] as string, 'base64').toString()) as Record<string, unknown>;
    expect(file).toEqual({ transport: 'tcp', ip: '0.0.0.0', ...KERNEL_PORTS, key: 'k'.repeat(64), signature_scheme: 'hmac-sha256', kernel_name: 'python3-k8s' });
  });
});

describe('tenant namespaces', () => {
  it('puts only a DNS-label tenant into the namespace template', () => {
    expect(namespaceFor('kgate-{tenant}', 'acme')).toBe('kgate-acme');
    expect(namespaceFor('kernels', 'Anything At All')).toBe('kernels');
    for (const t of ['Acme', 'a_b', 'a.b', 'a@b', 'acme\n', '-acme', 'x'.repeat(60), '']) expect(refusal(() => namespaceFor('kgate-{tenant}', t)).message).toMatch(/DNS label/);
  });

  it('labels the namespace for the restricted Pod Security Standard', () => {
    expect(tenantNamespace('kgate-acme', 'acme').metadata?.labels).toMatchObject({ 'pod-security.kubernetes.io/enforce': 'restricted', [LABELS.managedBy]: 'kgate' });
    expect(refusal(() => tenantNamespace('Kgate_acme', 'acme')).code).toBe(ErrorCodes.KERNEL_START_FAILED);
  });

  it("denies ingress but from kgate's pods to the kernel ports, and egress but to public addresses when allowed", () => {
    const denied = ObjectSerializer.serialize(kernelNetworkPolicy('kgate-acme', { egress: false, gatewayNamespace: 'kgate' }), 'V1NetworkPolicy') as Wire;
    expect(denied['spec']['policyTypes']).toEqual(['Ingress', 'Egress']);
    expect(denied['spec']['egress']).toEqual([]);
    expect(denied['spec']['ingress']).toEqual([
      {
        from: [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'kgate' } }, namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'kgate' } } }],
        ports: [{ protocol: 'TCP', port: 52000, endPort: 52004 }],
      },
    ]);
    const open = ObjectSerializer.serialize(kernelNetworkPolicy('kgate-acme', { egress: true }), 'V1NetworkPolicy') as Wire;
    expect(open['spec']['egress']).toEqual([{ to: [{ ipBlock: { cidr: '0.0.0.0/0', except: [...EGRESS_EXCEPT] } }] }]);
    expect(EGRESS_EXCEPT).toEqual(['10.0.0.0/8', '100.64.0.0/10', '172.16.0.0/12', '192.0.0.0/24', '198.18.0.0/15', '192.168.0.0/16']);
  });

  it("makes the ResourceQuota from the tenant's policy totals, and the LimitRange's defaults within its per-kernel maximum", () => {
    const policy = parsePolicy(
      'tenants:\n  acme:\n    max_kernels: 4\n    egress: true\n    resources: { cpu: "8", memory: 16Gi, nvidia.com/mig-3g.20gb: 2 }\n    max_per_kernel: { cpu: "0.5", memory: 4Gi }\n',
    );
    const limits = policy.limitsFor('acme')!.limits;
    expect(limits.egress).toBe(true);
    expect(tenantResourceQuota('kgate-acme', limits)?.spec?.hard).toEqual({
      pods: '4',
      'requests.cpu': '8000m',
      'limits.cpu': '8000m',
      'requests.memory': '16Gi',
      'limits.memory': '16Gi',
      'requests.nvidia.com/mig-3g.20gb': '2',
    });
    expect(tenantResourceQuota('kgate-acme', undefined)).toBeUndefined();
    const lr = ObjectSerializer.serialize(tenantLimitRange('kgate-acme', limits), 'V1LimitRange') as Wire;
    expect(lr['spec']['limits'][0]).toEqual({
      type: 'Container',
      default: { cpu: '500m', memory: '1Gi' },
      defaultRequest: { cpu: '500m', memory: '1Gi' },
      max: { cpu: '500m', memory: '4Gi' },
    });
  });
});
