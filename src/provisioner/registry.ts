/**
 * Picks a kernel's provisioner from its kernelspec, as jupyter_client does:
 * `metadata.kernel_provisioner.provisioner_name`, else the default; the
 * factory gets the spec's `metadata.kernel_provisioner.config`.
 */
import type { Logger } from 'pino';
import { kernelStartFailed } from '../errors.js';
import { provisionerMetadata, type KernelSpec, type Provisioner, type ProvisionerFactory } from './types.js';
import { sandboxProvisionerFactory } from './sandbox.js';
import { containerProvisionerFactory } from './container.js';

/** jupyter_client's names for the same thing. */
const ALIASES: Record<string, string> = { 'local-provisioner': 'local' };

export class ProvisionerRegistry {
  private readonly factories = new Map<string, ProvisionerFactory>();

  constructor(
    factories: ProvisionerFactory[],
    private readonly defaultName: string,
    private readonly log: Logger,
  ) {
    // Built in, before the given ones (a factory of the same name replaces it): the gateway may pass one configured with its own paths to hide.
    for (const f of [sandboxProvisionerFactory(), containerProvisionerFactory(), ...factories]) this.factories.set(f.name, f);
  }

  /** The provisioners this gateway has, by name (what `--default-provisioner` may name). */
  names(): string[] {
    return [...this.factories.keys()].sort();
  }

  /** Whether `name` (or jupyter_client's name for it) is one of them. */
  has(name: string): boolean {
    return this.factories.has(ALIASES[name] ?? name);
  }

  nameFor(spec: KernelSpec): string {
    const asked = provisionerMetadata(spec).name ?? this.defaultName;
    return ALIASES[asked] ?? asked;
  }

  create(spec: KernelSpec): Provisioner {
    const name = this.nameFor(spec);
    const f = this.factories.get(name);
    if (!f) throw kernelStartFailed(`kernelspec ${spec.name} asks for the provisioner ${JSON.stringify(name)}, which this gateway does not have`);
    return f.create(spec, { log: this.log.child({ provisioner: name }), config: provisionerMetadata(spec).config });
  }
}
