/**
 * The API client: thin fetch wrappers over the backend's native API (shapes in api-types.ts).
 * Every failure becomes an ApiError whose message a person can read, because the chat shows it inline.
 */

import type {
  Conversation,
  ConversationPage,
  ConversationSummary,
  ErrorBody,
  ExportFormat,
  GenerationSettings,
  Health,
  Id,
  ModelsResponse,
  SendMessageRequest,
  StreamEvent,
} from "./api-types";
import { readSSE } from "./sse";

export type ApiErrorKind = "network" | "busy" | "validation" | "not_found" | "auth" | "server" | "protocol";

export class ApiError extends Error {
  readonly kind: ApiErrorKind;
  readonly status: number | null;
  /** Seconds the server asked us to wait (429 Retry-After). */
  readonly retryAfterS: number | null;

  constructor(kind: ApiErrorKind, message: string, status: number | null = null, retryAfterS: number | null = null) {
    super(message);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.retryAfterS = retryAfterS;
  }
}

let apiKey = "";

/** The optional Bearer key (settings); sent on every call when set. */
export function setApiKey(key: string): void {
  apiKey = key.trim();
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  return apiKey ? { ...extra, Authorization: `Bearer ${apiKey}` } : extra;
}

/** Turns FastAPI's error body into one line, naming the fields a validation error is about. */
export function describeErrorBody(body: unknown): string | null {
  if (!body || typeof body !== "object" || !("detail" in body)) return null;
  const detail = (body as ErrorBody).detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    const parts = detail.map((issue) => {
      const loc = (issue.loc ?? []).filter((part) => part !== "body" && part !== "query" && part !== "path");
      return loc.length > 0 ? `${loc.join(".")}: ${issue.msg}` : issue.msg;
    });
    return parts.length > 0 ? parts.join("; ") : null;
  }
  return null;
}

/** The error a failed response stands for, with a message fit to show inline. */
export async function errorFromResponse(res: Response): Promise<ApiError> {
  let detail: string | null = null;
  try {
    detail = describeErrorBody(await res.json());
  } catch {
    detail = null;
  }
  const status = res.status;
  if (status === 429) {
    const header = Number(res.headers.get("Retry-After"));
    const retryAfter = Number.isFinite(header) && header > 0 ? header : null;
    const wait = retryAfter ? ` Try again in ${retryAfter} s.` : " Try again in a moment.";
    return new ApiError("busy", `The server is busy.${wait}`, status, retryAfter);
  }
  if (status === 401 || status === 403) {
    return new ApiError("auth", detail ?? "The server refused the API key (set it in Settings).", status);
  }
  if (status === 404) return new ApiError("not_found", detail ?? "Not found.", status);
  if (status >= 400 && status < 500) {
    return new ApiError("validation", detail ?? `The server rejected the request (${status}).`, status);
  }
  return new ApiError("server", detail ?? `The server failed (${status}).`, status);
}

async function send(path: string, init: RequestInit = {}): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers: headers(init.headers as Record<string, string> | undefined) });
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") throw err;
    throw new ApiError("network", "Can't reach the server. Check that it is running.");
  }
  if (!res.ok) throw await errorFromResponse(res);
  return res;
}

async function json<T>(path: string, init: RequestInit = {}): Promise<T> {
  const res = await send(path, init);
  try {
    return (await res.json()) as T;
  } catch {
    throw new ApiError("protocol", `The server sent an unreadable answer for ${path}.`, res.status);
  }
}

function jsonBody(body: unknown): RequestInit {
  return { body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
}

const STREAM_EVENTS = new Set<string>(["meta", "thinking", "token", "done", "error"]);

/** Parses a streamed turn; unknown event names are skipped so the server can add new ones. */
async function* stream(path: string, body: unknown, signal: AbortSignal): AsyncGenerator<StreamEvent> {
  const init = jsonBody(body);
  const res = await send(path, {
    method: "POST",
    body: init.body,
    headers: { ...(init.headers as Record<string, string>), Accept: "text/event-stream" },
    signal,
  });
  if (!res.body) throw new ApiError("protocol", "The server sent no stream.", res.status);
  for await (const message of readSSE(res.body, signal)) {
    if (!STREAM_EVENTS.has(message.event)) continue;
    let data: unknown;
    try {
      data = JSON.parse(message.data);
    } catch {
      throw new ApiError("protocol", `The server sent a malformed "${message.event}" event.`);
    }
    yield { event: message.event, data } as StreamEvent;
  }
}

const enc = encodeURIComponent;

export const api = {
  listConversations(
    params: { q?: string; limit?: number; offset?: number },
    signal?: AbortSignal,
  ): Promise<ConversationPage> {
    const query = new URLSearchParams();
    if (params.q) query.set("q", params.q);
    query.set("limit", String(params.limit ?? 30));
    query.set("offset", String(params.offset ?? 0));
    return json<ConversationPage>(`/api/conversations?${query}`, { signal });
  },
  getConversation(id: Id, signal?: AbortSignal): Promise<Conversation> {
    return json<Conversation>(`/api/conversations/${enc(id)}`, { signal });
  },
  createConversation(): Promise<ConversationSummary> {
    return json<ConversationSummary>("/api/conversations", { method: "POST", ...jsonBody({}) });
  },
  renameConversation(id: Id, title: string): Promise<ConversationSummary> {
    return json<ConversationSummary>(`/api/conversations/${enc(id)}`, { method: "PATCH", ...jsonBody({ title }) });
  },
  async deleteConversation(id: Id): Promise<void> {
    await send(`/api/conversations/${enc(id)}`, { method: "DELETE" });
  },
  async stop(id: Id): Promise<void> {
    await send(`/api/conversations/${enc(id)}/stop`, { method: "POST" });
  },
  async exportConversation(id: Id, format: ExportFormat): Promise<Blob> {
    const res = await send(`/api/conversations/${enc(id)}/export?format=${format}`);
    return res.blob();
  },
  models(signal?: AbortSignal): Promise<ModelsResponse> {
    return json<ModelsResponse>("/api/models", { signal });
  },
  health(signal?: AbortSignal): Promise<Health> {
    return json<Health>("/health", { signal });
  },
  sendMessage(id: Id, body: SendMessageRequest, signal: AbortSignal): AsyncGenerator<StreamEvent> {
    return stream(`/api/conversations/${enc(id)}/messages`, body, signal);
  },
  regenerate(id: Id, body: GenerationSettings, signal: AbortSignal): AsyncGenerator<StreamEvent> {
    return stream(`/api/conversations/${enc(id)}/regenerate`, body, signal);
  },
  editMessage(id: Id, messageId: Id, body: SendMessageRequest, signal: AbortSignal): AsyncGenerator<StreamEvent> {
    return stream(`/api/conversations/${enc(id)}/messages/${enc(messageId)}/edit`, body, signal);
  },
};
