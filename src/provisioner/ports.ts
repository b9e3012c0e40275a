/**
 * The gateway's ports for kernels that bind them (local, sandbox): probed
 * free by binding port 0, then handed to the kernel, which binds them itself.
 * Another process can take one in between (the port race): the local
 * provisioner then asks for fresh ones and starts again.
 */
import { createServer } from 'node:net';
import type { KernelPorts, PortSource } from './types.js';

/** Ports handed out recently, so two kernels starting at once never get the same one. */
const RECENT_MAX = 4096;

export class FreePorts implements PortSource {
  private readonly recent = new Set<number>();

  async take(ip: string): Promise<KernelPorts> {
    return {
      transport: 'tcp',
      ip,
      shell_port: await this.one(ip),
      iopub_port: await this.one(ip),
      stdin_port: await this.one(ip),
      control_port: await this.one(ip),
      hb_port: await this.one(ip),
    };
  }

  private async one(ip: string): Promise<number> {
    for (;;) {
      const port = await new Promise<number>((resolve, reject) => {
        const srv = createServer();
        srv.unref();
        srv.once('error', reject);
        srv.listen(0, ip, () => {
          const addr = srv.address();
          srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
        });
      });
      if (port !== 0 && !this.recent.has(port)) {
        this.recent.add(port);
        if (this.recent.size > RECENT_MAX) this.recent.delete(this.recent.values().next().value!);
        return port;
      }
    }
  }
}
