/**
 * The provisioners' options: which one runs a kernel whose kernelspec names
 * none, and what the sandbox gives kernels by default. The default's name is
 * checked against the provisioners the gateway has when it starts
 * (src/provisioner/registry.ts), since a test or an embedder may add some.
 */
import { z } from 'zod';
import { bool, opt, slice, type ConfigOf } from '../options.js';
import { DEFAULT_EGRESS_NET, parseCidr } from './egress.js';

const OPTIONS = {
  defaultProvisioner: opt(
    'default-provisioner',
    'string',
    'provisioner for kernelspecs that name none in metadata.kernel_provisioner (local, sandbox, container, kubernetes, or one the gateway was given); an unknown name stops the start (default local)',
    z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be a provisioner name ([A-Za-z0-9._-], at most 64)')
      .default('local'),
  ),
  sandboxEgress: opt(
    'sandbox-egress',
    'boolean',
    "give sandboxed kernels whose kernelspec does not say (metadata.kernel_provisioner.config.egress) egress to public addresses only, never loopback, private, link-local, 100.64.0.0/10, 192.0.0.0/24, 198.18.0.0/15 or the host's own; needs root, iproute2 and nftables; see docs/operations.md (default false)",
    bool.default(false),
  ),
  egressNet: opt(
    'egress-net',
    'string',
    `IPv4 pool of the /30 links between the host and the sandboxed or containerised kernels with egress, one per kernel; pick one no network of the host uses (default ${DEFAULT_EGRESS_NET})`,
    z
      .string()
      .refine((s) => (parseCidr(s)?.prefix ?? 99) <= 28, 'must be an IPv4 CIDR of /28 or larger')
      .default(DEFAULT_EGRESS_NET),
  ),
} as const;

export type ProvisionerConfig = ConfigOf<typeof OPTIONS>;

export const PROVISIONER_OPTIONS = slice('Provisioners', OPTIONS);
