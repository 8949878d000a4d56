import { describe, expect, it } from "vitest";
import type { Conversation, Message } from "@/lib/api-types";
import { awaitingServer, chatReducer, EMPTY_CHAT, UNANSWERED, type ChatAction, type ChatState } from "@/lib/chat-state";

const T = "2025-01-01T00:00:00Z";

function stored(id: string, role: Message["role"], content: string, extra: Partial<Message> = {}): Message {
  return {
    id,
    role,
    content,
    thinking: "",
    status: "complete",
    prompt_tokens: null,
    completion_tokens: null,
    thinking_tokens: null,
    ttft_ms: null,
    tokens_per_s: null,
    total_ms: null,
    thinking_ms: null,
    cache_bytes: null,
    created_at: T,
    ...extra,
  };
}

const conversation: Conversation = {
  id: "c1",
  title: "Numbers",
  created_at: T,
  updated_at: T,
  messages: [
    stored("u1", "user", "one"),
    stored("a1", "assistant", "first answer"),
    stored("u2", "user", "two"),
    stored("a2", "assistant", "second answer"),
  ],
};

const run = (state: ChatState, ...actions: ChatAction[]) => actions.reduce(chatReducer, state);
const loaded = run(EMPTY_CHAT, { type: "loaded", conversation });
const summary = (s: ChatState) => s.messages.map((m) => `${m.id}:${m.role}:${m.status}:${m.content}`);

describe("chatReducer", () => {
  it("sends: shows the message and an empty answer, takes the stored ids from meta, streams, ends complete", () => {
    const state = run(
      loaded,
      {
        type: "turn_started",
        turn: { kind: "send", content: "three" },
        userTempId: "tu",
        assistantTempId: "ta",
        at: T,
      },
      { type: "meta", data: { conversation_id: "c1", user_message_id: "u3", assistant_message_id: "a3" } },
      { type: "token", delta: "thi", at: 1 },
      { type: "token", delta: "rd", at: 2 },
      {
        type: "done",
        data: {
          finish_reason: "stop",
          usage: { prompt_tokens: 9, completion_tokens: 2, thinking_tokens: 0 },
          timings: { ttft_ms: 5, total_ms: 9, tokens_per_s: 200 },
        },
        at: 3,
      },
    );
    expect(summary(state).slice(4)).toEqual(["u3:user:complete:three", "a3:assistant:complete:third"]);
    expect(state.messages.some((m) => m.local)).toBe(false);
    expect(state.streaming).toBe(false);
    expect(state.messages[5].completion_tokens).toBe(2);
  });

  it("regenerates: replaces the last answer only", () => {
    const state = run(loaded, {
      type: "turn_started",
      turn: { kind: "regenerate" },
      userTempId: "x",
      assistantTempId: "ta",
      at: T,
    });
    expect(summary(state)).toEqual([
      "u1:user:complete:one",
      "a1:assistant:complete:first answer",
      "u2:user:complete:two",
      "ta:assistant:streaming:",
    ]);
  });

  it("edits: rewrites the message and drops everything after it", () => {
    const state = run(loaded, {
      type: "turn_started",
      turn: { kind: "edit", messageId: "u1", content: "uno" },
      userTempId: "x",
      assistantTempId: "ta",
      at: T,
    });
    expect(summary(state)).toEqual(["u1:user:complete:uno", "ta:assistant:streaming:"]);
  });

  it("stopping keeps the partial answer", () => {
    const state = run(
      loaded,
      {
        type: "turn_started",
        turn: { kind: "send", content: "count" },
        userTempId: "tu",
        assistantTempId: "ta",
        at: T,
      },
      { type: "token", delta: "1 2 3", at: 1 },
      { type: "stopped", at: 2 },
    );
    expect(summary(state).at(-1)).toBe("ta:assistant:stopped:1 2 3");
    expect(state.streaming).toBe(false);
  });

  it("a done event for a cancelled answer marks it stopped", () => {
    const state = run(
      loaded,
      {
        type: "turn_started",
        turn: { kind: "send", content: "count" },
        userTempId: "tu",
        assistantTempId: "ta",
        at: T,
      },
      { type: "token", delta: "1 2", at: 1 },
      {
        type: "done",
        data: {
          finish_reason: "cancelled",
          usage: { prompt_tokens: 1, completion_tokens: 2, thinking_tokens: 0 },
          timings: { ttft_ms: 1, total_ms: 2, tokens_per_s: 3 },
        },
        at: 2,
      },
    );
    expect(state.messages.at(-1)?.status).toBe("stopped");
  });

  it("a request refused before streaming removes the empty answer, keeps the text and says it is not stored", () => {
    const state = run(
      loaded,
      {
        type: "turn_started",
        turn: { kind: "send", content: "three" },
        userTempId: "tu",
        assistantTempId: "ta",
        at: T,
      },
      { type: "request_failed", message: "The server is busy. Try again in 2 s." },
    );
    expect(summary(state).at(-1)).toBe("tu:user:complete:three");
    expect(state.error).toEqual({ message: "The server is busy. Try again in 2 s.", stored: false });
    expect(run(state, { type: "drop_local" }).messages).toHaveLength(4);
  });

  it("an error event after meta keeps the partial answer and says the turn is stored (retry regenerates)", () => {
    const state = run(
      loaded,
      {
        type: "turn_started",
        turn: { kind: "send", content: "three" },
        userTempId: "tu",
        assistantTempId: "ta",
        at: T,
      },
      { type: "meta", data: { conversation_id: "c1", user_message_id: "u3", assistant_message_id: "a3" } },
      { type: "token", delta: "par", at: 1 },
      { type: "stream_error", message: "engine failed", at: 2 },
    );
    expect(summary(state).at(-1)).toBe("a3:assistant:error:par");
    expect(state.error).toEqual({ message: "engine failed", stored: true });
  });

  it("ignores stream events when no answer is streaming", () => {
    expect(run(loaded, { type: "token", delta: "stray", at: 1 })).toBe(loaded);
  });
});

describe("awaitingServer", () => {
  it("is true only while the stored conversation ends in an answer the server is still writing", () => {
    expect(awaitingServer(conversation.messages)).toBe(false);
    expect(awaitingServer(conversation.messages.slice(0, 3))).toBe(false);
    expect(
      awaitingServer([...conversation.messages.slice(0, 3), stored("a", "assistant", "pa", { status: "streaming" })]),
    ).toBe(true);
    expect(awaitingServer([])).toBe(false);
  });
});

describe("a loaded conversation", () => {
  it("that ends in an unanswered message offers a retry that regenerates", () => {
    const state = run(EMPTY_CHAT, {
      type: "loaded",
      conversation: { ...conversation, messages: conversation.messages.slice(0, 3) },
    });
    expect(state.error).toEqual(UNANSWERED);
    expect(state.error?.stored).toBe(true);
    expect(run(EMPTY_CHAT, { type: "loaded", conversation }).error).toBeNull();
  });
});
