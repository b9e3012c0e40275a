/**
 * Loaded into a kgate process by process-faults.test.ts (NODE_OPTIONS=--import):
 * stands for a bug on one client's path. A request carrying
 * `X-Kgate-Test-Fault` makes kgate's event loop meet the fault it names:
 *   throw          an exception thrown from a timer
 *   reject         a promise rejected with no handler
 *   socket-throw   an exception thrown by a listener of that client's socket, when it closes
 */
import http from 'node:http';

const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function patchedEmit(event, ...args) {
  if (event === 'request' || event === 'upgrade') {
    const req = args[0];
    const fault = req.headers['x-kgate-test-fault'];
    if (fault === 'throw') setImmediate(() => { throw new Error('injected fault: thrown from a timer'); });
    else if (fault === 'reject') void Promise.reject(new Error('injected fault: rejected with no handler'));
    else if (fault === 'socket-throw') req.socket.once('close', () => { throw new Error('injected fault: thrown by a socket listener'); });
  }
  return emit.call(this, event, ...args);
};
