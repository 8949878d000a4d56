/**
 * The backend's native API as the UI relies on it: the one place its shapes are written down.
 * README.md ("API contract the UI relies on") mirrors this file for the backend's engineers; change both together.
 *
 * Ids are opaque strings (UUIDs from the backend); timestamps are ISO 8601 strings with a time zone.
 * Fields marked optional (`?`) are ones the UI copes without.
 */

export type Id = string;

export type Role = "system" | "user" | "assistant";

/** How a stored message ended; "streaming" while the server is still writing it. */
export type MessageStatus = "complete" | "stopped" | "error" | "interrupted" | "streaming";

export interface Message {
  id: Id;
  role: Role;
  content: string;
  /** The reasoning between <think> and </think>; "" when there was none. */
  thinking: string;
  status: MessageStatus;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  thinking_tokens: number | null;
  ttft_ms: number | null;
  tokens_per_s: number | null;
  total_ms: number | null;
  thinking_ms: number | null;
  /** The model's cache memory for the conversation when this answer ended. */
  cache_bytes: number | null;
  created_at: string;
  finish_reason?: FinishReason | null;
  /** Why an answer failed, when status is "error" or "interrupted". */
  error?: string | null;
  conversation_id?: Id;
  position?: number;
  answer_tokens?: number | null;
  queue_ms?: number | null;
  updated_at?: string;
  /** The generation settings, seed and model identity this answer was made with. */
  settings?: Record<string, unknown> | null;
  seed?: number | null;
  model_name?: string | null;
  weights_hash?: string | null;
}

/** One row of the conversation list. */
export interface ConversationSummary {
  id: Id;
  title: string;
  created_at: string;
  updated_at: string;
  model?: string | null;
  /** A short excerpt of the text that matched `?q=`, when searching. */
  snippet?: string | null;
}

export interface Conversation extends ConversationSummary {
  system_prompt?: string;
  settings?: Record<string, unknown>;
  messages: Message[];
}

/** GET /api/conversations?q=&limit=&offset= */
export interface ConversationPage {
  items: ConversationSummary[];
  total: number;
  limit: number;
  offset: number;
}

/** POST /api/conversations */
export interface CreateConversationRequest {
  title?: string;
}

/** PATCH /api/conversations/{id} */
export interface RenameConversationRequest {
  title: string;
}

/** The generation settings sent with every turn (send, regenerate, edit). */
export interface GenerationSettings {
  temperature: number;
  top_p: number;
  max_tokens: number;
  thinking: boolean;
  /** Most thinking tokens before the model is made to answer; null = no limit. */
  thinking_budget: number | null;
  system_prompt: string;
}

/** POST /api/conversations/{id}/messages and POST /api/conversations/{id}/messages/{message_id}/edit */
export interface SendMessageRequest extends GenerationSettings {
  content: string;
}

/** POST /api/conversations/{id}/regenerate */
export type RegenerateRequest = GenerationSettings;

export type FinishReason = "stop" | "stop_string" | "length" | "cancelled" | "error";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  thinking_tokens: number;
  answer_tokens?: number;
}

export interface Timings {
  queue_ms?: number;
  ttft_ms: number;
  total_ms: number;
  tokens_per_s: number;
  thinking_ms?: number | null;
  cache_bytes?: number | null;
}

/** The SSE events of a streamed turn, by event name. */
export interface StreamEventMap {
  meta: {
    conversation_id: Id;
    user_message_id: Id;
    assistant_message_id: Id;
    model?: string | null;
    seed?: number | null;
    settings?: Record<string, unknown> | null;
  };
  thinking: { delta: string };
  token: { delta: string };
  done: {
    finish_reason: FinishReason;
    usage: Usage;
    timings: Timings;
    /** The stored status of the answer ("complete", or "stopped" when cancelled). */
    status?: MessageStatus;
    message_id?: Id;
  };
  error: { message: string };
}

export type StreamEvent = {
  [K in keyof StreamEventMap]: { event: K; data: StreamEventMap[K] };
}[keyof StreamEventMap];

/** One entry of GET /api/models. */
export interface ModelInfo {
  name: string;
  parameters: number;
  context_length: number;
  cache_bytes_per_token: number;
  /** Mamba state per conversation: fixed, whatever its length. */
  state_bytes_per_sequence?: number | null;
  weights_sha256?: string | null;
  /** Figures from the model card (loss, evaluation scores, steps …), shown as they are. */
  card?: Record<string, string | number | boolean | null>;
}

/** GET /api/models */
export interface ModelsResponse {
  models: ModelInfo[];
}

/** GET /health (200 when ready, 503 while loading or when the database is down). */
export interface Health {
  status: "ok" | "loading" | "unavailable";
  model?: string | null;
  database?: string | null;
  model_name?: string | null;
  message?: string;
}

/** Error bodies: FastAPI's `{detail: string}` or its validation list. */
export interface ValidationIssue {
  loc: (string | number)[];
  msg: string;
  type?: string;
}

export interface ErrorBody {
  detail: string | ValidationIssue[];
}

export type ExportFormat = "json" | "markdown";
