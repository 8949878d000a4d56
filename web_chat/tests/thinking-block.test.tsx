// @vitest-environment happy-dom
import { act, cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { AssistantMessage } from "@/components/AssistantMessage";
import { ThinkingBlock } from "@/components/ThinkingBlock";
import { chatReducer, EMPTY_CHAT, type ChatState } from "@/lib/chat-state";

afterEach(cleanup);

const toggle = () => screen.getByTestId("thinking-toggle");
const text = () => screen.queryByTestId("thinking-text");

describe("ThinkingBlock", () => {
  it("streams live and open under 'Thinking…'", () => {
    const { rerender } = render(<ThinkingBlock thinking="First," live durationMs={null} />);
    expect(toggle().textContent).toBe("Thinking…");
    expect(toggle().getAttribute("aria-expanded")).toBe("true");
    expect(text()?.textContent).toBe("First,");
    rerender(<ThinkingBlock thinking="First, then second." live durationMs={null} />);
    expect(text()?.textContent).toBe("First, then second.");
  });

  it("collapses to 'Thought for N s' when thinking ends, and opens and closes on click", () => {
    const { rerender } = render(<ThinkingBlock thinking="Working it out" live durationMs={null} />);
    rerender(<ThinkingBlock thinking="Working it out" live={false} durationMs={2340} />);
    expect(toggle().textContent).toBe("Thought for 2.3 s");
    expect(toggle().getAttribute("aria-expanded")).toBe("false");
    expect(text()).toBeNull();

    fireEvent.click(toggle());
    expect(toggle().getAttribute("aria-expanded")).toBe("true");
    expect(text()?.textContent).toBe("Working it out");

    fireEvent.click(toggle());
    expect(text()).toBeNull();
  });

  it("folds away when thinking ends even if the reader closed and reopened it meanwhile", () => {
    const { rerender } = render(<ThinkingBlock thinking="a" live durationMs={null} />);
    fireEvent.click(toggle());
    expect(text()).toBeNull();
    fireEvent.click(toggle());
    expect(text()).not.toBeNull();
    rerender(<ThinkingBlock thinking="ab" live={false} durationMs={800} />);
    expect(text()).toBeNull();
    expect(toggle().textContent).toBe("Thought for 0.8 s");
  });

  it("shows whole seconds from 10 s on, and no duration when none is known", () => {
    const { rerender } = render(<ThinkingBlock thinking="x" live={false} durationMs={12_600} />);
    expect(toggle().textContent).toBe("Thought for 13 s");
    rerender(<ThinkingBlock thinking="x" live={false} durationMs={null} />);
    expect(toggle().textContent).toBe("Thoughts");
  });
});

describe("thinking in a streamed answer", () => {
  function run(actions: Parameters<typeof chatReducer>[1][]): ChatState {
    return actions.reduce(chatReducer, EMPTY_CHAT);
  }
  const start = {
    type: "turn_started",
    turn: { kind: "send", content: "hi" },
    userTempId: "u",
    assistantTempId: "a",
    at: "2025-01-01T00:00:00Z",
  } as const;
  const answer = (state: ChatState) => state.messages[state.messages.length - 1];

  it("is live while only thinking has arrived, then collapses with the time it took once the answer starts", () => {
    let state = run([
      start,
      { type: "thinking", delta: "Hmm, ", at: 1000 },
      { type: "thinking", delta: "let me think.", at: 1400 },
    ]);
    const { rerender } = render(<AssistantMessage message={answer(state)} onRegenerate={null} />);
    expect(toggle().textContent).toBe("Thinking…");
    expect(text()?.textContent).toBe("Hmm, let me think.");
    expect(screen.queryByTestId("answer-stats")).toBeNull();

    state = chatReducer(state, { type: "token", delta: "Hello", at: 4200 });
    act(() => rerender(<AssistantMessage message={answer(state)} onRegenerate={null} />));
    expect(toggle().textContent).toBe("Thought for 3.2 s");
    expect(text()).toBeNull();
    expect(screen.getByTestId("answer-text").textContent).toBe("Hello");

    state = chatReducer(state, {
      type: "done",
      data: {
        finish_reason: "stop",
        usage: { prompt_tokens: 5, completion_tokens: 12, thinking_tokens: 7 },
        timings: { ttft_ms: 85, total_ms: 640, tokens_per_s: 21.4, cache_bytes: 3 * 1024 * 1024 },
      },
      at: 4800,
    });
    act(() => rerender(<AssistantMessage message={answer(state)} onRegenerate={null} />));
    expect(toggle().textContent).toBe("Thought for 3.2 s");
    const stats = [...screen.getByTestId("answer-stats").querySelectorAll("li")].map((li) =>
      (li.textContent ?? "").replace("·", ""),
    );
    expect(stats).toEqual(["12 tokens", "21.4 tok/s", "TTFT 85 ms", "7 thinking", "cache 3.00 MB"]);
  });

  it("prefers the server's thinking time when the done event has one", () => {
    const state = run([
      start,
      { type: "thinking", delta: "x", at: 0 },
      { type: "token", delta: "y", at: 9000 },
      {
        type: "done",
        data: {
          finish_reason: "stop",
          usage: { prompt_tokens: 1, completion_tokens: 2, thinking_tokens: 1 },
          timings: { ttft_ms: 1, total_ms: 2, tokens_per_s: 3, thinking_ms: 1500 },
        },
        at: 9100,
      },
    ]);
    render(<AssistantMessage message={answer(state)} onRegenerate={null} />);
    expect(toggle().textContent).toBe("Thought for 1.5 s");
  });
});
