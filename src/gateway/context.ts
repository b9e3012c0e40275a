import type { Logger } from 'pino';
import type { KernelSpecStore } from '../kernels/kernelspecs.js';
import type { KernelManager } from '../kernels/manager.js';
import type { SessionManager } from '../kernels/sessions.js';
import type { Identity, TokenAuth } from './auth.js';

/** What every route reads; built once when the gateway starts. */
export interface GatewayContext {
  kernels: KernelManager;
  sessions: SessionManager;
  specs: KernelSpecStore;
  auth: TokenAuth;
  /** Always starts and ends with "/". */
  baseUrl: string;
  startedAt: Date;
  log: Logger;
}

declare module 'fastify' {
  interface FastifyRequest {
    identity: Identity | null;
  }
}
