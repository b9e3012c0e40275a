/**
 * What the Kubernetes end-to-end tests (kubernetes-provisioner, kubernetes-kubelet, k8s-replicas)
 * share: a kgate gateway in this process with pod kernelspecs and the tenant policy, reading a
 * kernel's objects, running code, and timing POST → the first kernel_info_reply.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { expect } from 'vitest';
import { KernelClient, startGateway, stdout, type GatewayClient, type TestGateway } from './gateway.js';
import type { Cluster } from './k8s-cluster.js';
import { writeKernelspec, type SpecOptions } from './provisioner-specs.js';

export const KERNEL_IMAGE = 'localhost/kgate-kernel-python3:bookworm';
/** Tenant "default"'s namespace (the operator's token is tenant default). */
export const KERNEL_NAMESPACE = 'kgate-default';
export const MIG = 'nvidia.com/mig-1g.5gb';
export const IPYKERNEL_POD_ARGV = ['python3', '-m', 'ipykernel_launcher', '-f', '{connection_file}'];

/** A pod kernelspec: its provisioner config and resources, the argv ipykernel's. */
export interface PodSpec {
  name: string;
  config: Record<string, unknown>;
  resources?: SpecOptions['resources'];
}

/**
 * kgate with the kubernetes provisioner on `cluster`, making tenant namespaces, and a policy whose
 * totals become tenant default's ResourceQuota (egress allowed, one MIG slice).
 */
export async function startKubernetesGateway(cluster: Cluster, specs: readonly PodSpec[], launchTimeoutS: number): Promise<{ gateway: TestGateway; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'kgate-k8s-specs-'));
  for (const s of specs)
    writeKernelspec(dir, s.name, { provisioner: 'kubernetes', config: s.config, argv: IPYKERNEL_POD_ARGV, ...(s.resources ? { resources: s.resources } : {}) });
  const policy = join(dir, 'policy.yaml');
  writeFileSync(policy, `tenants:\n  default:\n    max_kernels: 20\n    egress: true\n    resources: { cpu: "8", memory: 16Gi, ${MIG}: 1 }\n`);
  const gateway = await startGateway([
    '--kernelspec-dir',
    dir,
    '--kubeconfig',
    cluster.kubeconfigPath,
    '--k8s-create-namespaces',
    '--policy',
    policy,
    '--launch-timeout',
    String(launchTimeoutS),
    '--shutdown-wait',
    '2',
  ]);
  return { gateway, dir };
}

/** The object, or undefined when the API server answers 404. */
export async function orAbsent<T>(read: Promise<T>): Promise<T | undefined> {
  return read.catch((e: unknown) => {
    if (e instanceof k8s.ApiException && e.code === 404) return undefined;
    throw e;
  });
}

/** Runs `code`, which must succeed; answers its result's text/plain, else what it printed. */
export async function execute(c: KernelClient, code: string, timeoutMs = 60_000): Promise<string> {
  const id = c.execute(code);
  const reply = await c.reply(id, timeoutMs);
  expect(reply.content['status']).toBe('ok');
  const result = c.outputs(id).find((m) => m.header.msg_type === 'execute_result');
  return result ? String((result.content['data'] as Record<string, unknown>)['text/plain']) : stdout(c.outputs(id));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** POST a kernel, then kernel_info over its WebSocket: the time a client waits for its first answer. */
export async function timeToKernelInfo(g: GatewayClient, name: string): Promise<{ ms: number; id: string }> {
  const t0 = performance.now();
  const id = await g.startKernel(name);
  const c = await KernelClient.connect(g, id);
  const msgId = c.request('kernel_info_request', {});
  await c.next((m) => m.parent_header.msg_id === msgId && m.header.msg_type === 'kernel_info_reply', 60_000);
  const ms = performance.now() - t0;
  c.close();
  return { ms, id };
}
