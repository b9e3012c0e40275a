/** The KernelStore contract (test/helpers/store-contract.ts) against the state dir. */
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe } from 'vitest';
import { KernelStateStore } from '../../src/kernels/state.js';
import type { KernelRecord } from '../../src/kernels/store.js';
import { storeContract } from '../helpers/store-contract.js';

describe('KernelStore contract: state dir', () => {
  let dir = '';
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  storeContract({
    async stores() {
      dir = mkdtempSync(join(tmpdir(), 'kgate-store-contract-'));
      dirs.push(dir);
      const stores = [new KernelStateStore(dir), new KernelStateStore(dir), new KernelStateStore(dir)] as const;
      for (const s of stores) await s.init();
      return [...stores];
    },
    async lapse(id) {
      const file = join(dir, `${id}.json`);
      const r = JSON.parse(await readFile(file, 'utf8')) as KernelRecord;
      r.lease = { holder: 'gone', host: 'elsewhere', pid: 1, expiresAt: Date.now() - 60_000 };
      await writeFile(file, JSON.stringify(r));
    },
  });
});
