/**
 * The Kubernetes objects kgate makes, built as typed objects (never from a
 * text template): a kernel's Pod and its connection Secret, and a tenant's
 * Namespace, NetworkPolicy, ResourceQuota and LimitRange. Every value that
 * came from a client or a token (a user, a tenant, a kernelspec name) lands
 * only in a value (an annotation's, or a label's once it is a valid label
 * value, else its hash), never in a key, a name or anything parsed again:
 * Enterprise Gateway's Jinja pod template let clients inject YAML and template
 * code (GHSA-cfw7-6c5v-2wjq, enterprise_gateway issue 1412).
 *
 * The kernelspec's provisioner config (the operator's) is checked whole with
 * bounded schemas before any of it reaches a pod spec.
 */
import { createHash } from 'node:crypto';
import type {
  V1Affinity,
  V1EnvVar,
  V1LimitRange,
  V1Namespace,
  V1NetworkPolicy,
  V1NetworkPolicyEgressRule,
  V1Pod,
  V1ResourceQuota,
  V1ResourceRequirements,
  V1Secret,
  V1Toleration,
} from '@kubernetes/client-node';
import { z } from 'zod';
import { kernelStartFailed } from '../errors.js';
import { EXTENDED_RESOURCE } from '../kernels/resources.js';
import { parseMemory } from '../kernels/quantity.js';
import type { TenantLimits } from '../kernels/policy.js';
import { formatArgv } from './local.js';
import type { ConnectionInfo, KernelPorts, LaunchRequest, ResourceRequest } from './types.js';

/** The labels and annotations kgate sets (fixed keys: no key is ever made from a value). */
export const LABELS = {
  managedBy: 'app.kubernetes.io/managed-by',
  component: 'app.kubernetes.io/component',
  /** What kgate's own pods carry (deploy/): the kernels' NetworkPolicy admits them. */
  name: 'app.kubernetes.io/name',
  kernelId: 'kgate.jupyter.org/kernel-id',
  kernelspec: 'kgate.jupyter.org/kernelspec',
  tenant: 'kgate.jupyter.org/tenant',
} as const;
export const ANNOTATIONS = {
  user: 'kgate.jupyter.org/user',
  tenant: 'kgate.jupyter.org/tenant',
  kernelspec: 'kgate.jupyter.org/kernelspec',
} as const;
export const MANAGED_BY = 'kgate';
export const KERNEL_COMPONENT = 'kernel';
/** Selects every kernel pod kgate made (adoption, sweeps). */
export const KERNEL_SELECTOR = `${LABELS.managedBy}=${MANAGED_BY},${LABELS.component}=${KERNEL_COMPONENT}`;

/** Fixed ports: each pod has an IP of its own, so every kernel can listen on the same ones. */
export const KERNEL_PORTS: Omit<KernelPorts, 'transport' | 'ip'> = { shell_port: 52000, iopub_port: 52001, stdin_port: 52002, control_port: 52003, hb_port: 52004 };
/** Where the Secret is mounted in the pod (read-only), and its one file. */
export const CONNECTION_DIR = '/run/kgate';
export const CONNECTION_KEY = 'connection.json';
export const CONNECTION_FILE = `${CONNECTION_DIR}/${CONNECTION_KEY}`;
/** Where the Secret is mounted when the kernel gets a writable copy (`connection_file: copy`). */
export const SECRET_DIR = '/run/kgate-secret';
/**
 * ipykernel before 6.26 (Debian bookworm's 6.20 among them) rewrites its
 * connection file at start, which a Secret volume (always read-only) refuses;
 * so by default the file is copied into a tmpfs first. The script is a
 * constant: the paths and the kernelspec's argv reach it as positional
 * parameters, never as shell text.
 */
export const COPY_SCRIPT = 'umask 077 && cp -- "$1" "$2" && shift 2 && exec "$@"';
export const KERNEL_HOME = '/home/kernel';
export const KERNEL_UID = 1000;
export const CONTAINER_NAME = 'kernel';
/** Holds the pod back from the scheduler until its Secret exists (kgate removes it then): no node ever starts it without its connection file. */
export const SECRET_GATE = 'kgate.jupyter.org/connection-secret';

/** Kubernetes' own name rules. */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE = /^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const LABEL_KEY = /^((?=.{1,253}\/)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
/** An image reference: never an option, nothing but a name, tag and digest (as the container provisioner takes it). */
const IMAGE_REF = /^(?=.{1,255}$)[A-Za-z0-9][A-Za-z0-9._/:@+-]*$/;
/** kgate's kernel ids are UUIDs; anything else never becomes a name. */
const KERNEL_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function isDnsLabel(s: string): boolean {
  return DNS_LABEL.test(s);
}

/**
 * A value as a label may hold it: itself when it is a valid label value, else
 * `h.` and the start of its SHA-256 (the whole value is in an annotation).
 */
export function labelValue(raw: string): string {
  return LABEL_VALUE.test(raw) ? raw : `h.${createHash('sha256').update(raw).digest('hex').slice(0, 40)}`;
}

/** The pod's and Secret's name for a kernel. */
export function kernelObjectName(kernelId: string): string {
  if (!KERNEL_ID.test(kernelId)) throw kernelStartFailed(`kernel id ${JSON.stringify(kernelId.slice(0, 64))} is not a UUID; it cannot name a pod`);
  return `kgate-kernel-${kernelId}`;
}

const labelKey = z.string().regex(LABEL_KEY, 'is not a label key');
const labelVal = z.union([z.literal(''), z.string().regex(LABEL_VALUE, 'is not a label value')]);
const quantity = z.union([z.string().max(32), z.number()]).refine((v) => parseMemory(v) !== undefined, 'is not a quantity (such as "512Mi")');

const toleration = z
  .object({
    key: labelKey.optional(),
    operator: z.enum(['Exists', 'Equal']).optional(),
    value: labelVal.optional(),
    effect: z.enum(['NoSchedule', 'PreferNoSchedule', 'NoExecute']).optional(),
    tolerationSeconds: z.number().int().min(0).max(31_536_000).optional(),
  })
  .strict();

const requirement = z
  .object({
    key: labelKey,
    operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist', 'Gt', 'Lt']),
    values: z.array(labelVal).max(64).optional(),
  })
  .strict();
const selectorTerm = z.object({ matchExpressions: z.array(requirement).max(32).optional(), matchFields: z.array(requirement).max(8).optional() }).strict();
const nodeAffinity = z
  .object({
    requiredDuringSchedulingIgnoredDuringExecution: z
      .object({ nodeSelectorTerms: z.array(selectorTerm).min(1).max(16) })
      .strict()
      .optional(),
    preferredDuringSchedulingIgnoredDuringExecution: z
      .array(z.object({ weight: z.number().int().min(1).max(100), preference: selectorTerm }).strict())
      .max(16)
      .optional(),
  })
  .strict();

/** What a kernelspec's `metadata.kernel_provisioner.config` may say for the kubernetes provisioner (the operator's, never a client's). */
const specConfigSchema = z
  .object({
    image: z.string().regex(IMAGE_REF, 'must be an image reference (registry.example/kgate-kernel-python3:1)').optional(),
    image_pull_policy: z.enum(['Always', 'IfNotPresent', 'Never']).optional(),
    node_selector: z
      .record(labelKey, labelVal)
      .refine((m) => Object.keys(m).length <= 32, 'has more than 32 entries')
      .optional(),
    tolerations: z.array(toleration).max(32).optional(),
    affinity: z.object({ nodeAffinity: nodeAffinity.optional() }).strict().optional(),
    runtime_class: z.string().regex(DNS_SUBDOMAIN, 'is not a RuntimeClass name').optional(),
    priority_class: z.string().regex(DNS_SUBDOMAIN, 'is not a PriorityClass name').optional(),
    /** The size of the kernel's tmpfs /tmp and of its tmpfs home, each (they count against its memory). */
    tmp_size: quantity.optional(),
    /** Seconds between SIGTERM and SIGKILL when the pod is deleted (terminationGracePeriodSeconds). */
    stop_timeout: z.number().int().min(0).max(300).optional(),
    /** `copy` (default): a writable copy of the Secret's file, made by /bin/sh and cp in the image; `mount`: the Secret's file itself (ipykernel 6.26 or later, an image without a shell). */
    connection_file: z.enum(['copy', 'mount']).optional(),
  })
  .strict();

export interface KubernetesSpecConfig {
  image: string;
  imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
  nodeSelector: Record<string, string> | undefined;
  tolerations: V1Toleration[] | undefined;
  affinity: V1Affinity | undefined;
  runtimeClass: string | undefined;
  priorityClass: string | undefined;
  tmpSizeBytes: number;
  stopTimeout: number;
  connectionFile: 'copy' | 'mount';
}

const DEFAULT_TMP_BYTES = 512 * 2 ** 20;

/** Reads the kernelspec's config; a mistake is the operator's, named as such, every one on its own. */
export function kubernetesSpecConfig(specName: string, raw: Record<string, unknown>, defaults: { image?: string | undefined } = {}): KubernetesSpecConfig {
  const where = `kernelspec ${specName}: metadata.kernel_provisioner.config`;
  const r = specConfigSchema.safeParse(raw);
  if (!r.success) throw kernelStartFailed(r.error.issues.map((i) => `${where}${i.path.length > 0 ? `.${i.path.join('.')}` : ''}: ${i.message}`).join('; '));
  const c = r.data;
  const image = c.image ?? defaults.image;
  if (image === undefined || !IMAGE_REF.test(image)) throw kernelStartFailed(`${where}.image is not set, and kgate has no --k8s-kernel-image`);
  return {
    image,
    imagePullPolicy: c.image_pull_policy ?? 'IfNotPresent',
    nodeSelector: c.node_selector,
    tolerations: c.tolerations,
    affinity: c.affinity as V1Affinity | undefined,
    runtimeClass: c.runtime_class,
    priorityClass: c.priority_class,
    tmpSizeBytes: c.tmp_size === undefined ? DEFAULT_TMP_BYTES : parseMemory(c.tmp_size)!,
    stopTimeout: c.stop_timeout ?? 5,
    connectionFile: c.connection_file ?? 'copy',
  };
}

/** CPU as Kubernetes writes it, in millicores (the finest grain it has). */
export function cpuQuantity(cores: number): string {
  return `${Math.max(1, Math.round(cores * 1000))}m`;
}

/** Memory as a person reads it in a pod spec: the largest binary unit that divides it exactly, else bytes. */
export function memoryQuantity(bytes: number): string {
  const n = Math.ceil(bytes);
  for (const [unit, f] of [
    ['Ti', 2 ** 40],
    ['Gi', 2 ** 30],
    ['Mi', 2 ** 20],
    ['Ki', 2 ** 10],
  ] as const)
    if (n >= f && n % f === 0) return `${n / f}${unit}`;
  return String(n);
}

/**
 * A request's resources as a container's: CPU and memory both requested and
 * limited (a kernel gets what it asked for, and no more); GPUs and MIG slices
 * (extended resources) in limits, where Kubernetes wants them (their requests
 * default to the limits).
 */
export function podResources(r: ResourceRequest): V1ResourceRequirements {
  const requests: Record<string, string> = {};
  const limits: Record<string, string> = {};
  if (r.cpu) requests['cpu'] = limits['cpu'] = cpuQuantity(r.cpu);
  if (r.memory) requests['memory'] = limits['memory'] = memoryQuantity(r.memory);
  for (const [name, n] of Object.entries(r.extended ?? {})) {
    if (!EXTENDED_RESOURCE.test(name) || name.startsWith('kubernetes.io/')) throw kernelStartFailed(`${JSON.stringify(name.slice(0, 64))} is not an extended resource name`);
    if (!Number.isSafeInteger(n) || n < 0) throw kernelStartFailed(`the amount of ${name} must be a whole count`);
    if (n > 0) limits[name] = String(n);
  }
  return { ...(Object.keys(requests).length > 0 ? { requests } : {}), ...(Object.keys(limits).length > 0 ? { limits } : {}) };
}

/** The labels every object of a kernel carries. */
export function kernelLabels(req: Pick<LaunchRequest, 'kernelId' | 'principal'> & { spec: { name: string } }): Record<string, string> {
  return {
    [LABELS.managedBy]: MANAGED_BY,
    [LABELS.component]: KERNEL_COMPONENT,
    [LABELS.kernelId]: req.kernelId,
    [LABELS.kernelspec]: labelValue(req.spec.name),
    [LABELS.tenant]: labelValue(req.principal.tenant),
  };
}

/** The connection file as the kernel reads it in its pod: listening on every address of the pod, on the fixed ports. */
export function podConnection(req: Pick<LaunchRequest, 'key'> & { spec: { name: string } }, ip: string): ConnectionInfo {
  return { transport: 'tcp', ip, ...KERNEL_PORTS, key: req.key, signature_scheme: 'hmac-sha256', kernel_name: req.spec.name };
}

/** The kernel's environment as a pod's: name and value objects, HOME on its tmpfs. */
function podEnv(env: Record<string, string>): V1EnvVar[] {
  const merged: Record<string, string> = { ...env, HOME: KERNEL_HOME };
  return Object.keys(merged)
    .sort()
    .map((name) => ({ name, value: merged[name]! }));
}

export interface PodInput {
  req: LaunchRequest;
  namespace: string;
  config: KubernetesSpecConfig;
}

/**
 * The kernel's pod: the kernelspec's argv in its image, the connection file
 * from the Secret of the same name (mounted read-only), hardened as the
 * restricted Pod Security Standard asks and further: non-root, a read-only
 * root with tmpfs /tmp and home, no capabilities, no privilege escalation,
 * seccomp RuntimeDefault, no service account token, no service links.
 */
export function kernelPod({ req, namespace, config }: PodInput): V1Pod {
  const name = kernelObjectName(req.kernelId);
  const argv = formatArgv(req.spec.spec.argv, { connection_file: CONNECTION_FILE, resource_dir: CONNECTION_DIR });
  if (argv.length === 0 || argv[0] === '') throw kernelStartFailed(`kernelspec ${req.spec.name} has an empty argv`);
  const annotations: Record<string, string> = { [ANNOTATIONS.tenant]: req.principal.tenant, [ANNOTATIONS.kernelspec]: req.spec.name };
  if (req.principal.user !== undefined) annotations[ANNOTATIONS.user] = req.principal.user;
  const copy = config.connectionFile === 'copy';
  const secretVolume = copy ? 'connection-secret' : 'connection';
  const seccomp = { type: 'RuntimeDefault' };
  const tmpfs = { medium: 'Memory', sizeLimit: memoryQuantity(config.tmpSizeBytes) };
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels: kernelLabels(req), annotations },
    spec: {
      restartPolicy: 'Never',
      schedulingGates: [{ name: SECRET_GATE }],
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: config.stopTimeout,
      hostname: 'kernel',
      securityContext: { runAsNonRoot: true, runAsUser: KERNEL_UID, runAsGroup: KERNEL_UID, fsGroup: KERNEL_UID, seccompProfile: seccomp },
      containers: [
        {
          name: CONTAINER_NAME,
          image: config.image,
          imagePullPolicy: config.imagePullPolicy,
          command: copy ? ['/bin/sh', '-c', COPY_SCRIPT, 'kgate-kernel', `${SECRET_DIR}/${CONNECTION_KEY}`, CONNECTION_FILE, ...argv] : argv,
          workingDir: KERNEL_HOME,
          // A kernel that fails says why in its last output: the kubelet puts its tail in the terminated state's message.
          terminationMessagePolicy: 'FallbackToLogsOnError',
          env: podEnv(req.env),
          ports: [
            { name: 'shell', containerPort: KERNEL_PORTS.shell_port, protocol: 'TCP' },
            { name: 'iopub', containerPort: KERNEL_PORTS.iopub_port, protocol: 'TCP' },
            { name: 'stdin', containerPort: KERNEL_PORTS.stdin_port, protocol: 'TCP' },
            { name: 'control', containerPort: KERNEL_PORTS.control_port, protocol: 'TCP' },
            { name: 'hb', containerPort: KERNEL_PORTS.hb_port, protocol: 'TCP' },
          ],
          resources: podResources(req.resources),
          securityContext: {
            runAsNonRoot: true,
            runAsUser: KERNEL_UID,
            runAsGroup: KERNEL_UID,
            privileged: false,
            allowPrivilegeEscalation: false,
            readOnlyRootFilesystem: true,
            capabilities: { drop: ['ALL'] },
            seccompProfile: seccomp,
          },
          volumeMounts: [
            ...(copy
              ? [
                  { name: secretVolume, mountPath: SECRET_DIR, readOnly: true },
                  { name: 'connection', mountPath: CONNECTION_DIR },
                ]
              : [{ name: secretVolume, mountPath: CONNECTION_DIR, readOnly: true }]),
            { name: 'tmp', mountPath: '/tmp' },
            { name: 'home', mountPath: KERNEL_HOME },
          ],
        },
      ],
      volumes: [
        // Readable by the kernel's group only (fsGroup), never by other users in the pod.
        { name: secretVolume, secret: { secretName: name, defaultMode: 0o440, items: [{ key: CONNECTION_KEY, path: CONNECTION_KEY }] } },
        ...(copy ? [{ name: 'connection', emptyDir: { medium: 'Memory', sizeLimit: '1Mi' } }] : []),
        { name: 'tmp', emptyDir: tmpfs },
        { name: 'home', emptyDir: tmpfs },
      ],
      ...(config.nodeSelector ? { nodeSelector: config.nodeSelector } : {}),
      ...(config.tolerations ? { tolerations: config.tolerations } : {}),
      ...(config.affinity ? { affinity: config.affinity } : {}),
      ...(config.runtimeClass ? { runtimeClassName: config.runtimeClass } : {}),
      ...(config.priorityClass ? { priorityClassName: config.priorityClass } : {}),
    },
  };
}

/**
 * The Secret with the kernel's connection file, owned by its pod (`owner`:
 * the pod as the API server answered it), so the garbage collector removes it
 * with the pod whatever happens to the gateway.
 */
export function connectionSecret(req: LaunchRequest, namespace: string, owner: { name: string; uid: string }): V1Secret {
  const file = JSON.stringify(podConnection(req, '0.0.0.0'));
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    type: 'Opaque',
    immutable: true,
    metadata: {
      name: kernelObjectName(req.kernelId),
      namespace,
      labels: kernelLabels(req),
      ownerReferences: [{ apiVersion: 'v1', kind: 'Pod', name: owner.name, uid: owner.uid }],
    },
    data: { [CONNECTION_KEY]: Buffer.from(file).toString('base64') },
  };
}

// Tenants.

export const NETWORK_POLICY_NAME = 'kgate-kernels';
export const RESOURCE_QUOTA_NAME = 'kgate-tenant';
export const LIMIT_RANGE_NAME = 'kgate-defaults';
/** Where a kernel may not reach when its tenant may reach the internet: private, shared, benchmarking and link ranges (the seed systems' list). */
export const EGRESS_EXCEPT = ['10.0.0.0/8', '100.64.0.0/10', '172.16.0.0/12', '192.0.0.0/24', '198.18.0.0/15', '192.168.0.0/16'] as const;

const managed = { [LABELS.managedBy]: MANAGED_BY };

/** A tenant's namespace, labelled for the restricted Pod Security Standard, which kgate's pods meet (the API server enforces it). */
export function tenantNamespace(name: string, tenant: string): V1Namespace {
  if (!DNS_LABEL.test(name)) throw kernelStartFailed(`${JSON.stringify(name.slice(0, 64))} is not a namespace name`);
  return {
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: {
      name,
      labels: { ...managed, [LABELS.tenant]: labelValue(tenant), 'pod-security.kubernetes.io/enforce': 'restricted' },
      annotations: { [ANNOTATIONS.tenant]: tenant },
    },
  };
}

/**
 * The kernels' NetworkPolicy: no ingress but from kgate's pods (in
 * `gatewayNamespace` when known, else any namespace's pods labelled as
 * kgate's) to the kernel ports; egress nowhere, or when the tenant may
 * (`egress`) to the internet but not to private ranges. NetworkPolicies add
 * up: an operator allows DNS (or more) with one of their own.
 */
export function kernelNetworkPolicy(namespace: string, o: { egress: boolean; gatewayNamespace?: string | undefined }): V1NetworkPolicy {
  const egress: V1NetworkPolicyEgressRule[] = o.egress ? [{ to: [{ ipBlock: { cidr: '0.0.0.0/0', except: [...EGRESS_EXCEPT] } }] }] : [];
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: NETWORK_POLICY_NAME, namespace, labels: managed },
    spec: {
      podSelector: { matchLabels: { [LABELS.managedBy]: MANAGED_BY, [LABELS.component]: KERNEL_COMPONENT } },
      policyTypes: ['Ingress', 'Egress'],
      ingress: [
        {
          // client-node's name for `from` (a keyword in its generator); its serializer writes `from`.
          _from: [
            {
              podSelector: { matchLabels: { [LABELS.name]: 'kgate' } },
              namespaceSelector: o.gatewayNamespace ? { matchLabels: { 'kubernetes.io/metadata.name': o.gatewayNamespace } } : {},
            },
          ],
          ports: [{ protocol: 'TCP', port: KERNEL_PORTS.shell_port, endPort: KERNEL_PORTS.hb_port }],
        },
      ],
      egress,
    },
  };
}

/** A policy amount as a quota's: CPU in millicores, memory in bytes, counts as counts. */
function quotaAmount(name: string, n: number): string {
  return name === 'cpu' ? `${Math.round(n * 1000)}m` : name === 'memory' ? memoryQuantity(n) : String(Math.ceil(n));
}

/**
 * The tenant's policy totals as a ResourceQuota, so the API server enforces
 * them across every gateway replica: `max_kernels` as pods, CPU and memory as
 * both requests and limits (kgate's pods set both alike), an extended
 * resource (a GPU, a MIG slice) as `requests.<name>` (the only form a quota
 * takes for them). Undefined when the policy sets no total.
 */
export function tenantResourceQuota(namespace: string, limits: TenantLimits | undefined): V1ResourceQuota | undefined {
  const hard: Record<string, string> = {};
  if (limits?.maxKernels !== undefined) hard['pods'] = String(limits.maxKernels);
  for (const [name, n] of limits?.resources ?? []) {
    if (name === 'cpu' || name === 'memory') {
      hard[`requests.${name}`] = hard[`limits.${name}`] = quotaAmount(name, n);
    } else if (EXTENDED_RESOURCE.test(name)) {
      hard[`requests.${name}`] = quotaAmount(name, n);
    }
  }
  if (Object.keys(hard).length === 0) return undefined;
  return { apiVersion: 'v1', kind: 'ResourceQuota', metadata: { name: RESOURCE_QUOTA_NAME, namespace, labels: managed }, spec: { hard } };
}

/** What a kernel that asks for nothing gets, so a quota on CPU and memory never refuses it for asking nothing. */
export const DEFAULT_KERNEL_CPU = 1;
export const DEFAULT_KERNEL_MEMORY = 2 ** 30;

/** Defaults (and the tenant's per-kernel maximum, `max_per_kernel`) for every container in the namespace. */
export function tenantLimitRange(namespace: string, limits: TenantLimits | undefined): V1LimitRange {
  const maxCpu = limits?.maxPerKernel?.get('cpu');
  const maxMemory = limits?.maxPerKernel?.get('memory');
  const cpu = cpuQuantity(Math.min(DEFAULT_KERNEL_CPU, maxCpu || DEFAULT_KERNEL_CPU));
  const memory = memoryQuantity(Math.min(DEFAULT_KERNEL_MEMORY, maxMemory || DEFAULT_KERNEL_MEMORY));
  const max: Record<string, string> = {};
  if (maxCpu) max['cpu'] = cpuQuantity(maxCpu);
  if (maxMemory) max['memory'] = memoryQuantity(maxMemory);
  return {
    apiVersion: 'v1',
    kind: 'LimitRange',
    metadata: { name: LIMIT_RANGE_NAME, namespace, labels: managed },
    // `_default`: client-node's name for `default`; its serializer writes `default`.
    spec: { limits: [{ type: 'Container', _default: { cpu, memory }, defaultRequest: { cpu, memory }, ...(Object.keys(max).length > 0 ? { max } : {}) }] },
  };
}
