/**
 * The ZeroMQ context every kernel link shares, sized for a big gateway:
 * libzmq's default of 1023 sockets caps one process at 204 kernels (a link
 * and its heartbeat are 5 sockets), and a slot costs only a pointer, so take
 * the most libzmq allows. Imported (for its effect) by every module that makes
 * sockets, so it runs before the first one: libzmq reads the value then.
 * File descriptors are the next bound: about 10 per kernel, under `ulimit -n`.
 */
import { context } from 'zeromq';

context.maxSockets = context.maxSocketsLimit;
