import type { ScenarioId } from '../lib/config.js';
import { execute } from './execute.js';
import { floodLarge, floodSmall } from './flood.js';
import { parallel } from './parallel.js';
import { idle, manyKernels } from './scale.js';
import { slowClient } from './slow-client.js';
import { sockets } from './sockets.js';
import { start } from './start.js';
import type { Scenario } from './types.js';

export const SCENARIOS: Record<ScenarioId, Scenario> = {
  execute,
  'flood-small': floodSmall,
  'flood-large': floodLarge,
  parallel,
  sockets,
  'slow-client': slowClient,
  start,
  'many-kernels': manyKernels,
  idle,
};
