#!/usr/bin/env node
/**
 * `node dist/bench-kernel/main.js CONNECTION_FILE`: runs kgate's bench kernel
 * (see kernel.ts) on the ports of a Jupyter connection file.
 *
 * With `BENCH_KERNEL_EXIT_WITH_PARENT=1` in its environment it also exits when
 * the process that started it goes away, so a benchmark that dies leaves no
 * kernel behind. (Off by default: a gateway that restarts adopts its kernels.)
 */
import { readFileSync } from 'node:fs';
import type { ConnectionInfo } from '../provisioner/types.js';
import { BenchKernel } from './kernel.js';

const PARENT_POLL_MS = 1000;

async function main(): Promise<void> {
  const file = process.argv[2];
  if (file === undefined || file === '--help') {
    process.stderr.write('usage: main.js CONNECTION_FILE\n');
    process.exit(2);
  }
  const conn = JSON.parse(readFileSync(file, 'utf8')) as ConnectionInfo;
  const kernel = new BenchKernel(conn);
  // interrupt_mode "signal" gateways send SIGINT: stop a flood, do not die.
  process.on('SIGINT', () => kernel.interrupt());
  if (process.env['BENCH_KERNEL_EXIT_WITH_PARENT'] === '1') {
    const parent = process.ppid;
    setInterval(() => {
      if (process.ppid !== parent) {
        kernel.close();
        process.exit(0);
      }
    }, PARENT_POLL_MS).unref();
  }
  await kernel.start();
}

main().catch((e: unknown) => {
  process.stderr.write(`bench kernel: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
