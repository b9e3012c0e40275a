/**
 * The ClientSocket of the `ws` engine (kgate's): a thin adapter over a ws
 * WebSocket. Sending goes through ws-send.ts, which corks the net.Socket for
 * the rest of the event-loop turn so that a burst leaves in one writev.
 */
import { WebSocket, type RawData } from 'ws';
import type { ClientSocket, ClientSocketEvents } from './client-socket.js';
import { sendPrepared, type PreparedFrame } from './ws-send.js';

export class WsClientSocket implements ClientSocket {
  private events: ClientSocketEvents | undefined;

  constructor(readonly ws: WebSocket) {
    this.onMessage = this.onMessage.bind(this);
    this.onClose = this.onClose.bind(this);
    this.onError = this.onError.bind(this);
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  send(frame: PreparedFrame): void {
    sendPrepared(this.ws, frame);
  }

  pause(): void {
    this.ws.pause();
  }

  resume(): void {
    this.ws.resume();
  }

  close(code: number, reason: string): void {
    const state = this.ws.readyState;
    if (state === WebSocket.OPEN || state === WebSocket.CONNECTING) this.ws.close(code, reason);
  }

  terminate(): void {
    this.ws.terminate();
  }

  listen(events: ClientSocketEvents): void {
    this.events = events;
    this.ws.on('message', this.onMessage);
    this.ws.on('close', this.onClose);
    // ws reports protocol faults (an oversize frame: 1009, bad UTF-8: 1007) here and
    // closes the socket itself; without a listener they would take the process down.
    this.ws.on('error', this.onError);
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    // With the default binaryType, ws hands a Buffer (fragments already joined).
    this.events!.socketMessage(data as Buffer, isBinary);
  }

  private onClose(code: number): void {
    this.events!.socketClose(code);
  }

  private onError(err: Error): void {
    this.events!.socketError(err);
  }
}
