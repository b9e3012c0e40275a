/**
 * GET /metrics on the main port, in the Prometheus text format: for the
 * holder of --metrics-token (let through the auth hook for this route only),
 * the operator and admins. Served outside the Jupyter API's scope, so it is
 * not part of the OpenAPI description (src/gateway/openapi.ts) either.
 */
import type { FastifyInstance } from 'fastify';
import { ErrorCodes, KgateError } from '../../errors.js';
import type { GatewayMetrics } from '../../metrics.js';

export function metricsRoutes(app: FastifyInstance, metrics: GatewayMetrics): void {
  app.get('/metrics', async (req, reply) => {
    if (!metrics.mayScrape(req.principal)) throw new KgateError(ErrorCodes.FORBIDDEN, 'GET /metrics needs the metrics token (--metrics-token) or the operator token');
    return reply
      .header('Content-Type', metrics.contentType)
      .header('Cache-Control', 'no-store')
      .send(await metrics.text());
  });
}
