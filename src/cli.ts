#!/usr/bin/env node
/**
 * `kgate`: runs the gateway in the foreground. The first stdout line after
 * listening is `kgate listening on http://HOST:PORT/`; logs go to stderr.
 */
import { ConfigError, helpText, loadConfig } from './config.js';
import { DemoNotBuiltError, startDemoServer, type DemoServer } from './demo-server.js';
import { createGateway } from './gateway/app.js';
import { createLogger } from './log.js';
import { VERSION } from './version.js';

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.argv.slice(2));
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`kgate: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  if (config.help) {
    process.stdout.write(`${helpText()}\n`);
    return;
  }
  if (config.version) {
    process.stdout.write(`${VERSION}\n`);
    return;
  }
  const log = createLogger(config.logLevel);
  let demo: DemoServer | undefined;
  if (config.demoPort !== undefined) {
    // Listening first, so the gateway knows the demo page's port (for --demo-port 0) and allows its origin.
    try {
      demo = await startDemoServer({ ip: config.ip, port: config.demoPort, frameAncestors: config.frameAncestors });
    } catch (e) {
      if (!(e instanceof DemoNotBuiltError)) throw e;
      process.stderr.write(`kgate: ${e.message}\n`);
      process.exit(2);
    }
    config = { ...config, demoPort: demo.port };
  }
  const gateway = await createGateway(config, log);
  const { host, port } = await gateway.listen();
  const shown = host.includes(':') ? `[${host}]` : host;
  const url = `http://${shown}:${port}${gateway.ctx.baseUrl}`;
  const lines = [`kgate listening on ${url}`];
  if (gateway.token) lines.push(`token: ${gateway.token}`, `try: curl -H 'Authorization: token ${gateway.token}' ${url}api/kernelspecs`);
  else lines.push('auth: off (no token)');
  if (demo) {
    // The fragment carries the gateway and token to the page without sending them to any server.
    const pageHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : shown;
    const kgateUrl = `http://${pageHost}:${port}/`;
    const enc = (s: string): string => encodeURIComponent(s).replace(/%3A/g, ':').replace(/%2F/g, '/');
    lines.push(`demo page: http://${pageHost}:${demo.port}/#kgate=${enc(kgateUrl)}${gateway.token ? `&token=${enc(gateway.token)}` : ''}`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      // A second signal means now: kill what is left and go.
      gateway.ctx.kernels.killAllNow();
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, 'shutting down: stopping every kernel');
    Promise.all([gateway.close(), demo?.close()]).then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        gateway.ctx.kernels.killAllNow();
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('exit', () => gateway.ctx.kernels.killAllNow());
}

main().catch((e: unknown) => {
  process.stderr.write(`kgate: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
