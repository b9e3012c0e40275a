/** The kubernetes provisioner's options (src/provisioner/kubernetes.ts): its cluster, its namespaces and its default kernel image. */
import { z } from 'zod';
import { bool, opt, slice, type ConfigOf } from '../options.js';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const IMAGE_REF = /^(?=.{1,255}$)[A-Za-z0-9][A-Za-z0-9._/:@+-]*$/;

/** A namespace, or a template of one whose only placeholder is `{tenant}`, once. */
const namespaceTemplate = z
  .string()
  .refine(
    (s) => (s.match(/\{tenant\}/g) ?? []).length <= 1 && DNS_LABEL.test(s.replace('{tenant}', 'x')),
    'must be a namespace name, or one with {tenant} in it once (kgate-{tenant})',
  );

const OPTIONS = {
  kubeconfig: opt(
    'kubeconfig',
    'string',
    "a kubeconfig file for the kubernetes provisioner's cluster (default: the service account of the pod kgate runs in)",
    z.string().min(1).optional(),
  ),
  k8sNamespace: opt(
    'k8s-namespace',
    'string',
    "namespace of the kernel pods: one for all, or a template whose {tenant} is the kernel's tenant, which must then be a DNS label (default kgate-{tenant})",
    namespaceTemplate.default('kgate-{tenant}'),
  ),
  k8sCreateNamespaces: opt(
    'k8s-create-namespaces',
    'boolean',
    "create a tenant's namespace when it is missing (needs the right to create namespaces); the NetworkPolicy, ResourceQuota and LimitRange in it are kgate's either way (default false)",
    bool.default(false),
  ),
  k8sKernelImage: opt(
    'k8s-kernel-image',
    'string',
    'image of kernel pods whose kernelspec names none (metadata.kernel_provisioner.config.image) (default: none, the kernelspec must name one)',
    z.string().regex(IMAGE_REF, 'must be an image reference').optional(),
  ),
} as const;

export type KubernetesConfig = ConfigOf<typeof OPTIONS>;

export const KUBERNETES_OPTIONS = slice('Kubernetes provisioner', OPTIONS);
