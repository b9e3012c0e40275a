import type { Logger } from 'pino';
import type { KernelSpecStore } from '../kernels/kernelspecs.js';
import type { KernelManager } from '../kernels/manager.js';
import type { SessionManager } from '../kernels/sessions.js';
import type { Principal } from '../principal.js';
import type { Authenticator } from './auth.js';

/** What every route reads; built once when the gateway starts. */
export interface GatewayContext {
  kernels: KernelManager;
  sessions: SessionManager;
  specs: KernelSpecStore;
  auth: Authenticator;
  /** Always starts and ends with "/". */
  baseUrl: string;
  startedAt: Date;
  log: Logger;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The caller, set by the auth hook before any route runs. */
    principal: Principal;
  }
}
