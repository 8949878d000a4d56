/**
 * The open conversation as a reducer: every stream event is one action, so the order in which events arrive is
 * the only thing that decides what the page shows, and the logic is testable without a browser or a server.
 */

import type { Conversation, FinishReason, Id, Message, StreamEventMap } from "./api-types";

/** A message plus what only the browser knows while it streams. */
export interface ChatMessage extends Message {
  /** Client clock (ms) of the first thinking delta and of the end of thinking, for "Thought for N s". */
  thinkingStartedAt?: number;
  thinkingEndedAt?: number;
  /** Not stored yet: ids are local until the stream's meta event names the stored ones. */
  local?: boolean;
}

export interface TurnError {
  message: string;
  /** The stored user message exists (meta was received): retrying means regenerating. */
  stored: boolean;
}

export interface ChatState {
  conversationId: Id | null;
  title: string | null;
  messages: ChatMessage[];
  loading: boolean;
  loadError: string | null;
  streaming: boolean;
  error: TurnError | null;
}

export const EMPTY_CHAT: ChatState = {
  conversationId: null,
  title: null,
  messages: [],
  loading: false,
  loadError: null,
  streaming: false,
  error: null,
};

export type TurnKind =
  { kind: "send"; content: string } | { kind: "regenerate" } | { kind: "edit"; messageId: Id; content: string };

export type ChatAction =
  | { type: "reset"; conversationId: Id | null }
  | { type: "loading"; conversationId: Id }
  | { type: "loaded"; conversation: Conversation }
  | { type: "load_failed"; message: string }
  | { type: "renamed"; title: string }
  | { type: "turn_started"; turn: TurnKind; userTempId: Id; assistantTempId: Id; at: string }
  | { type: "meta"; data: StreamEventMap["meta"] }
  | { type: "thinking"; delta: string; at: number }
  | { type: "token"; delta: string; at: number }
  | { type: "done"; data: StreamEventMap["done"]; at: number }
  | { type: "stream_error"; message: string; at: number }
  | { type: "stopped"; at: number }
  | { type: "interrupted"; message: string; at: number }
  | { type: "request_failed"; message: string }
  | { type: "drop_local" };

export function emptyMessage(id: Id, role: Message["role"], content: string, createdAt: string): ChatMessage {
  return {
    id,
    role,
    content,
    thinking: "",
    status: role === "assistant" ? "streaming" : "complete",
    prompt_tokens: null,
    completion_tokens: null,
    thinking_tokens: null,
    ttft_ms: null,
    tokens_per_s: null,
    total_ms: null,
    thinking_ms: null,
    cache_bytes: null,
    created_at: createdAt,
    local: true,
  };
}

/** The assistant message being written: the last one, while streaming. */
function updateStreaming(state: ChatState, update: (m: ChatMessage) => ChatMessage): ChatState {
  const last = state.messages[state.messages.length - 1];
  if (!last || last.role !== "assistant" || last.status !== "streaming") return state;
  return { ...state, messages: [...state.messages.slice(0, -1), update(last)] };
}

function endThinking(m: ChatMessage, at: number): ChatMessage {
  return m.thinkingStartedAt !== undefined && m.thinkingEndedAt === undefined ? { ...m, thinkingEndedAt: at } : m;
}

function statusFor(reason: FinishReason): Message["status"] {
  if (reason === "cancelled") return "stopped";
  if (reason === "error") return "error";
  return "complete";
}

/** Messages shown once a turn starts: the user's message and an empty answer to stream into. */
function startTurn(state: ChatState, turn: TurnKind, userTempId: Id, assistantTempId: Id, at: string): ChatMessage[] {
  const assistant = emptyMessage(assistantTempId, "assistant", "", at);
  if (turn.kind === "send") {
    return [...state.messages, emptyMessage(userTempId, "user", turn.content, at), assistant];
  }
  if (turn.kind === "edit") {
    const index = state.messages.findIndex((m) => m.id === turn.messageId);
    if (index === -1) return state.messages;
    const edited = { ...state.messages[index], content: turn.content };
    return [...state.messages.slice(0, index), edited, assistant];
  }
  // regenerate: drop the last answer (if any) after the last user message
  let end = state.messages.length;
  while (end > 0 && state.messages[end - 1].role === "assistant") end--;
  return [...state.messages.slice(0, end), assistant];
}

export function chatReducer(state: ChatState, action: ChatAction): ChatState {
  switch (action.type) {
    case "reset":
      return { ...EMPTY_CHAT, conversationId: action.conversationId };
    case "loading":
      return { ...EMPTY_CHAT, conversationId: action.conversationId, loading: true };
    case "loaded": {
      const messages = action.conversation.messages;
      return {
        ...state,
        conversationId: action.conversation.id,
        title: action.conversation.title,
        messages,
        loading: false,
        loadError: null,
        error: messages[messages.length - 1]?.role === "user" ? UNANSWERED : null,
      };
    }
    case "load_failed":
      return { ...state, loading: false, loadError: action.message };
    case "renamed":
      return { ...state, title: action.title };
    case "turn_started":
      return {
        ...state,
        messages: startTurn(state, action.turn, action.userTempId, action.assistantTempId, action.at),
        streaming: true,
        error: null,
      };
    case "meta": {
      const { user_message_id, assistant_message_id } = action.data;
      const messages = [...state.messages];
      const last = messages.length - 1;
      if (last >= 0 && messages[last].role === "assistant") {
        messages[last] = { ...messages[last], id: assistant_message_id, local: false };
      }
      for (let i = last - 1; i >= 0; i--) {
        if (messages[i].role === "user") {
          messages[i] = { ...messages[i], id: user_message_id, local: false };
          break;
        }
      }
      return { ...state, conversationId: action.data.conversation_id, messages };
    }
    case "thinking":
      return updateStreaming(state, (m) => ({
        ...m,
        thinking: m.thinking + action.delta,
        thinkingStartedAt: m.thinkingStartedAt ?? action.at,
      }));
    case "token":
      return updateStreaming(state, (m) => ({ ...endThinking(m, action.at), content: m.content + action.delta }));
    case "done": {
      const { usage, timings, finish_reason } = action.data;
      const next = updateStreaming(state, (m) => {
        const ended = endThinking(m, action.at);
        const measured =
          ended.thinkingStartedAt !== undefined && ended.thinkingEndedAt !== undefined
            ? ended.thinkingEndedAt - ended.thinkingStartedAt
            : null;
        return {
          ...ended,
          status: action.data.status ?? statusFor(finish_reason),
          finish_reason,
          prompt_tokens: usage.prompt_tokens,
          completion_tokens: usage.completion_tokens,
          thinking_tokens: usage.thinking_tokens,
          ttft_ms: timings.ttft_ms,
          tokens_per_s: timings.tokens_per_s,
          total_ms: timings.total_ms,
          thinking_ms: timings.thinking_ms ?? measured,
          cache_bytes: timings.cache_bytes ?? null,
        };
      });
      return { ...next, streaming: false };
    }
    case "stream_error": {
      const next = updateStreaming(state, (m) => ({
        ...endThinking(m, action.at),
        status: "error",
        error: action.message,
      }));
      const stored = !next.messages.some((m) => m.local);
      return { ...next, streaming: false, error: { message: action.message, stored } };
    }
    case "stopped":
      return {
        ...updateStreaming(state, (m) => ({ ...endThinking(m, action.at), status: "stopped" })),
        streaming: false,
      };
    case "interrupted": {
      const next = updateStreaming(state, (m) => ({ ...endThinking(m, action.at), status: "interrupted" }));
      const stored = !next.messages.some((m) => m.local);
      return { ...next, streaming: false, error: { message: action.message, stored } };
    }
    case "request_failed": {
      // Nothing streamed: the empty answer goes away; the user's text stays on screen next to the error.
      const last = state.messages[state.messages.length - 1];
      const messages =
        last && last.role === "assistant" && last.status === "streaming" ? state.messages.slice(0, -1) : state.messages;
      return { ...state, messages, streaming: false, error: { message: action.message, stored: false } };
    }
    case "drop_local":
      return { ...state, messages: state.messages.filter((m) => !m.local), error: null };
    default:
      return state;
  }
}

/** True while the server is still writing this conversation's last answer (the page was reloaded mid-answer). */
export function awaitingServer(messages: Message[]): boolean {
  const last = messages[messages.length - 1];
  return !!last && last.role === "assistant" && last.status === "streaming";
}

/** A stored conversation that ends with a question and no answer (the server failed before it could start one). */
export const UNANSWERED: TurnError = { message: "This message has no answer. Retry to generate one.", stored: true };
