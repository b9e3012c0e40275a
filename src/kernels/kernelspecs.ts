/**
 * Kernelspec discovery as Jupyter does it: each `JUPYTER_PATH` entry's
 * `kernels/`, the user data dir, `/usr/local/share/jupyter/kernels`,
 * `/usr/share/jupyter/kernels`, then kgate's own `kernelspecs/`. The first
 * directory that holds a name wins.
 */
import { readdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import type { KernelSpec } from '../provisioner/types.js';

export const KERNEL_NAME = /^[A-Za-z0-9._-]{1,128}$/;

const kernelJson = z.object({
  argv: z.array(z.string()).min(1),
  display_name: z.string(),
  language: z.string().default(''),
  interrupt_mode: z.enum(['signal', 'message']).optional(),
  env: z.record(z.string(), z.string()).optional(),
  metadata: z.record(z.string(), z.unknown()).optional(),
});

/** The kernelspecs kgate ships, next to `src/` and `dist/`. */
export const BUILTIN_KERNELSPECS = fileURLToPath(new URL('../../kernelspecs', import.meta.url));

export function jupyterKernelDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  const dirs: string[] = [];
  for (const p of (env['JUPYTER_PATH'] ?? '').split(':')) if (p) dirs.push(join(p, 'kernels'));
  const dataHome = env['XDG_DATA_HOME'] || join(homedir(), '.local', 'share');
  dirs.push(join(env['JUPYTER_DATA_DIR'] || join(dataHome, 'jupyter'), 'kernels'));
  dirs.push('/usr/local/share/jupyter/kernels', '/usr/share/jupyter/kernels');
  return dirs;
}

export interface KernelSpecModel {
  name: string;
  spec: {
    argv: string[];
    display_name: string;
    language: string;
    interrupt_mode: 'signal' | 'message';
    metadata: Record<string, unknown>;
  };
  resources: Record<string, string>;
}

interface Entry {
  spec: KernelSpec;
  files: string[];
}

const CACHE_MS = 2000;

export class KernelSpecStore {
  private entries = new Map<string, Entry>();
  private scannedAt = 0;
  private scanning: Promise<void> | undefined;

  constructor(
    private readonly dirs: string[],
    private readonly configuredDefault: string | undefined,
    private readonly onSkip: (dir: string, reason: string) => void = () => undefined,
  ) {}

  /** Re-reads the directories if the last read is older than a moment. */
  async refresh(force = false): Promise<void> {
    if (!force && Date.now() - this.scannedAt < CACHE_MS) return;
    this.scanning ??= this.scan().finally(() => {
      this.scanning = undefined;
    });
    await this.scanning;
  }

  private async scan(): Promise<void> {
    const found = new Map<string, Entry>();
    for (const dir of this.dirs) {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch {
        continue;
      }
      for (const name of names.sort()) {
        if (found.has(name) || !KERNEL_NAME.test(name)) continue;
        const resourceDir = join(dir, name);
        try {
          const raw: unknown = JSON.parse(await readFile(join(resourceDir, 'kernel.json'), 'utf8'));
          const spec = kernelJson.parse(raw);
          const files = (await readdir(resourceDir)).filter((f) => f.startsWith('logo-') || f === 'kernel.js' || f === 'kernel.css');
          found.set(name, { spec: { name, resourceDir, spec }, files });
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT' && (e as NodeJS.ErrnoException).code !== 'ENOTDIR') {
            this.onSkip(resourceDir, e instanceof Error ? e.message : String(e));
          }
        }
      }
    }
    this.entries = found;
    this.scannedAt = Date.now();
  }

  get(name: string): KernelSpec | undefined {
    return this.entries.get(name)?.spec;
  }

  names(): string[] {
    return [...this.entries.keys()].sort();
  }

  get defaultName(): string {
    if (this.configuredDefault) return this.configuredDefault;
    if (this.entries.has('python3')) return 'python3';
    return this.names()[0] ?? 'python3';
  }

  model(name: string, baseUrl: string): KernelSpecModel | undefined {
    const e = this.entries.get(name);
    if (!e) return undefined;
    const resources: Record<string, string> = {};
    for (const f of e.files) {
      resources[f.startsWith('logo-') ? f.replace(/\.[^.]+$/, '') : f] = `${baseUrl}kernelspecs/${encodeURIComponent(name)}/${encodeURIComponent(f)}`;
    }
    const s = e.spec.spec;
    // The spec's env is left out: it may hold settings meant for the kernel only.
    return {
      name,
      spec: {
        argv: s.argv,
        display_name: s.display_name,
        language: s.language,
        interrupt_mode: s.interrupt_mode ?? 'signal',
        metadata: s.metadata ?? {},
      },
      resources,
    };
  }

  /** The absolute path of a resource file of a kernelspec, or undefined; never outside its directory. */
  resourcePath(name: string, file: string): string | undefined {
    const e = this.entries.get(name);
    if (!e || !e.files.includes(file)) return undefined;
    const p = resolve(e.spec.resourceDir, file);
    return p.startsWith(resolve(e.spec.resourceDir) + sep) ? p : undefined;
  }
}
