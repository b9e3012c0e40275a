#!/usr/bin/env node
/**
 * `kgate`: runs the gateway in the foreground. The first stdout line after
 * listening is `kgate listening on http://HOST:PORT/`; logs go to stderr.
 */
import type { Logger } from 'pino';
import { ConfigError, helpText, loadConfig } from './config.js';
import { DemoNotBuiltError, startDemoServer, type DemoServer } from './demo-server.js';
import { createServer, httpLimits } from './gateway/app.js';
import { jwtConfigured } from './gateway/options.js';
import { tokenDigest } from './gateway/token-file.js';
import { createLogger } from './log.js';
import { statusCommand } from './status-cli.js';
import { VERSION } from './version.js';

/**
 * Once kgate serves, a fault that escapes a request or socket handler (an
 * exception thrown in a listener or timer, a promise rejected with no handler)
 * is logged and kgate goes on. Ending the process instead would run the exit
 * handler, which kills every kernel of every user: one client's fault, or one
 * bug on one client's path, would cost everyone their kernels and their unsaved
 * state. What the fault interrupted is lost (that client's request or socket,
 * which its own handler no longer drives and the socket timeouts and pings then
 * close); the kernels, their links and the registry are driven by their own
 * events and timers and go on. A fault that left shared state wrong shows in
 * the log at error level with its stack, for the operator to restart kgate when
 * convenient (with --state-dir and --keep-kernels the kernels survive that).
 * Before the gateway listens, a fault still ends the start (exit code 1).
 */
function keepRunningOnFaults(log: Logger): void {
  let faults = 0;
  const report = (err: unknown, kind: string): void => {
    faults++;
    try {
      log.error({ err, faults }, `${kind}: kgate keeps running (a bug; please report it with this line)`);
    } catch {
      // The logger itself failing must not turn a logged fault into an exit.
    }
  };
  process.on('uncaughtException', (err, origin) => report(err, origin === 'unhandledRejection' ? 'unhandled rejection' : 'uncaught exception'));
  process.on('unhandledRejection', (reason) => report(reason, 'unhandled rejection'));
}

/**
 * `kgate hash-token`: the digest a --token-file entry stores, of the token read
 * from stdin (not from an argument, which other local users could read in
 * /proc); one trailing newline is dropped, as `echo` adds one.
 */
async function hashToken(): Promise<void> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of process.stdin as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > 64 * 1024) {
      process.stderr.write('kgate hash-token: the token on stdin is longer than 64 KiB\n');
      process.exit(2);
    }
    chunks.push(c);
  }
  const token = Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
  if (token === '') {
    process.stderr.write('kgate hash-token: give the token on stdin, e.g. printf %s "$TOKEN" | kgate hash-token\n');
    process.exit(2);
  }
  process.stdout.write(`${tokenDigest(token).toString('hex')}\n`);
}

async function main(): Promise<void> {
  if (process.argv[2] === 'hash-token') {
    await hashToken();
    return;
  }
  // `kgate status`: the status page's table in a terminal (src/status-cli.ts).
  if (process.argv[2] === 'status') {
    process.exitCode = await statusCommand(process.argv.slice(3));
    return;
  }
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
      demo = await startDemoServer({ ip: config.ip, port: config.demoPort, frameAncestors: config.frameAncestors, limits: httpLimits(config), log });
    } catch (e) {
      if (!(e instanceof DemoNotBuiltError)) throw e;
      process.stderr.write(`kgate: ${e.message}\n`);
      process.exit(2);
    }
    config = { ...config, demoPort: demo.port };
  }
  let gateway;
  try {
    gateway = await createServer(config, { log });
  } catch (e) {
    // A file the config names (--token-file, --jwt-secret-file, --jwks-file, --policy) that is missing or wrong.
    if (e instanceof ConfigError) {
      process.stderr.write(`kgate: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const { host, port } = await gateway.listen();
  keepRunningOnFaults(log);
  const shown = host.includes(':') ? `[${host}]` : host;
  const url = `http://${shown}:${port}${gateway.ctx.baseUrl}`;
  const lines = [`kgate listening on ${url}`];
  // Only a token kgate made is shown (as jupyter_server does): one the operator gave is theirs already, and would
  // land in every log collector that reads stdout (a pod's logs).
  const shownToken = config.authToken === undefined ? gateway.token : undefined;
  const credentials = [
    gateway.token && !shownToken ? 'the token given (not shown)' : undefined,
    config.tokenFile && 'the token file',
    jwtConfigured(config) ? 'JWTs' : undefined,
  ].filter((c): c is string => !!c);
  if (shownToken) lines.push(`token: ${shownToken}`, `try: curl -H 'Authorization: token ${shownToken}' ${url}api/kernelspecs`);
  if (credentials.length > 0) lines.push(`auth: ${credentials.join(', ')}`);
  else if (!gateway.token) lines.push('auth: off (no token)');
  if (demo) {
    // The fragment carries the gateway and token to the page without sending them to any server.
    const pageHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : shown;
    const kgateUrl = `http://${pageHost}:${port}/`;
    const enc = (s: string): string => encodeURIComponent(s).replace(/%3A/g, ':').replace(/%2F/g, '/');
    lines.push(`demo page: http://${pageHost}:${demo.port}/#kgate=${enc(kgateUrl)}${shownToken ? `&token=${enc(shownToken)}` : ''}`);
  }

  let stopping = false;
  const drainS = config.shutdownDrain;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      // A second signal means now: kill what is left and go.
      gateway.ctx.kernels.killAllNow();
      process.exit(130);
    }
    stopping = true;
    // Readiness fails now; new connections are refused after the drain (docs/operations.md, "Graceful shutdown").
    log.info({ signal, drainS }, 'shutting down: not ready from now on; new connections are refused after the drain, then every kernel stops');
    gateway
      .drain(drainS * 1000)
      .then(() => Promise.all([gateway.close(), demo?.close()]))
      .then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err }, 'shutdown failed');
          gateway.ctx.kernels.killAllNow();
          process.exit(1);
        },
      );
  };
  // SIGHUP: the token file, the JWKS file and the tenant policy are read again; a bad one keeps the old.
  let reloading = false;
  process.on('SIGHUP', () => {
    if (reloading) return;
    reloading = true;
    gateway
      .reload()
      .then(
        () => log.info('reloaded the token file, JWKS file and policy (SIGHUP)'),
        (err: unknown) => log.error({ reason: err instanceof Error ? err.message : String(err) }, 'reload failed (SIGHUP); the settings in force stay'),
      )
      .finally(() => (reloading = false));
  });
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('exit', () => gateway.ctx.kernels.killAllNow());
  // Printed once the signal handlers are in place: whoever waits for this line may stop kgate at once.
  process.stdout.write(`${lines.join('\n')}\n`);
}

main().catch((e: unknown) => {
  // A setting found wrong while building the gateway (a policy or token file): said as at parse time.
  if (e instanceof ConfigError) {
    process.stderr.write(`kgate: ${e.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`kgate: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
