// Type declarations of edgenode.js 1.x (the ES module edgenode.mjs and the
// classic script's global `edgenode`).

/** A channel's position: opaque; send back the last one received. */
export interface Position {
  epoch: string;
  offset: number;
}

export type State = "connecting" | "connected" | "disconnected" | "closed";
export type Transport = "websocket" | "sse";

export interface StateEvent {
  state: State;
  previous: State;
  transport: Transport;
  reason: string;
  /** ms until the next attempt (on "disconnected" with a retry scheduled) */
  delay?: number;
}

export interface ErrorEvent {
  /** the node's error code (token_expired, rate_limited, ...) or token_refresh */
  code: string;
  reason: string;
}

export type GetToken = (ctx: { channel: string }) => string | Promise<string>;

/** The environment the client uses; every field defaults to the browser's. */
export interface Env {
  WebSocket: { new (url: string): WebSocket };
  EventSource: { new (url: string, init?: EventSourceInit): EventSource };
  setTimeout(f: () => void, ms: number): unknown;
  clearTimeout(t: unknown): void;
  now(): number;
  random(): number;
  online(): boolean;
  hidden(): boolean;
  listen(event: "online" | "offline" | "visibilitychange", fn: () => void): () => void;
}

export interface ClientOptions {
  /** the node's origin, e.g. "https://live.example.com" (DNS picks the node) */
  url: string;
  /** a token for every private channel */
  token?: string;
  /** fetches a channel's token: before one expires, and when the node refuses one; "" for none */
  getToken?: GetToken;
  /** first retry window in ms (full jitter; doubles per failed retry); default 2000 */
  minReconnectDelay?: number;
  /** cap of the retry window in ms; default 30000 */
  maxReconnectDelay?: number;
  /** ms on SSE (websockets found blocked) before websockets are tried again; default 300000 */
  websocketRetryAfter?: number;
  /** websocket ping interval in ms; no answer within one more interval: reconnect; default 20000 */
  pingInterval?: number;
  /** ms before a token's exp at which getToken is called; default 60000 */
  tokenRefreshMargin?: number;
  /** tests and non-browser runtimes */
  env?: Partial<Env>;
}

export interface MessageContext {
  channel: string;
  position: Position;
}

export interface SubscribeOptions<T = unknown> {
  /** resume from this position (e.g. the one the app server stored with the state it rendered) */
  since?: Position;
  token?: string;
  getToken?: GetToken;
  onMessage?(data: T, ctx: MessageContext): void;
  onSubscribed?(e: { position: Position; recovered: number }): void;
  /** the messages since the last position cannot be replayed: fetch the state again (the subscription goes on) */
  onMustReload?(e: { reason: string }): void;
  onError?(e: ErrorEvent): void;
}

export class Subscription {
  readonly channel: string;
  readonly state: "subscribing" | "subscribed" | "failed" | "unsubscribed";
  /** the last position received */
  readonly position: Position | null;
  /**
   * The channel's subscriptions in the whole cluster (a count, never who).
   * Since 1.1.0. Websocket only; rejected with an Error whose `code` is
   * not_subscribed, sse, disconnected, unsubscribed or the node's error code.
   */
  presence(): Promise<{ count: number }>;
  unsubscribe(): void;
}

export class Client {
  readonly state: State;
  readonly transport: Transport;
  constructor(options: ClientOptions);
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions<T>): Subscription;
  on(event: "state", fn: (e: StateEvent) => void): () => void;
  on(event: "error", fn: (e: ErrorEvent) => void): () => void;
  off(event: "state" | "error", fn: (...args: any[]) => void): void;
  close(): void;
}

export function connect(options: ClientOptions): Client;
export const version: string;

declare global {
  /** the classic script's global */
  const edgenode: {
    connect: typeof connect;
    Client: typeof Client;
    Subscription: typeof Subscription;
    version: string;
  };
}
