"use client";

import { forwardRef, useImperativeHandle, useLayoutEffect, useRef, useState } from "react";
import { ArrowUpIcon, SparkIcon, StopIcon } from "./icons";

export interface ComposerHandle {
  focus(): void;
  setText(text: string): void;
}

interface Props {
  streaming: boolean;
  disabled: boolean;
  thinking: boolean;
  onToggleThinking: () => void;
  onSend: (text: string) => boolean | void;
  onStop: () => void;
}

const MAX_HEIGHT_PX = 220;

/** The message box: Enter sends, Shift+Enter adds a line; while an answer streams its button stops it. */
export const Composer = forwardRef<ComposerHandle, Props>(function Composer(
  { streaming, disabled, thinking, onToggleThinking, onSend, onStop },
  ref,
) {
  const [text, setText] = useState("");
  const area = useRef<HTMLTextAreaElement>(null);

  useImperativeHandle(ref, () => ({
    focus: () => area.current?.focus(),
    setText: (value: string) => {
      setText(value);
      area.current?.focus();
    },
  }));

  // Grow with the text up to a limit, then scroll inside.
  useLayoutEffect(() => {
    const el = area.current;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = `${Math.min(el.scrollHeight, MAX_HEIGHT_PX)}px`;
  }, [text]);

  const canSend = !streaming && !disabled && text.trim().length > 0;
  const submit = () => {
    if (!canSend) return;
    if (onSend(text.trim()) !== false) setText("");
  };

  return (
    <form
      onSubmit={(e) => {
        e.preventDefault();
        submit();
      }}
      className="rounded-[26px] border border-line bg-raised p-2 shadow-[0_2px_12px_rgba(0,0,0,0.06)] transition-colors focus-within:border-fg-faint dark:shadow-none"
    >
      <label htmlFor="composer" className="sr-only">
        Message NanoPrime
      </label>
      <textarea
        id="composer"
        ref={area}
        data-testid="composer-input"
        rows={1}
        value={text}
        placeholder="Message NanoPrime"
        onChange={(e) => setText(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
            e.preventDefault();
            submit();
          }
        }}
        className="block max-h-[220px] w-full resize-none bg-transparent px-3 pb-1 pt-2 text-[15px] leading-relaxed placeholder:text-fg-faint focus:outline-none"
      />
      <div className="flex items-center justify-between gap-2 pl-1">
        <button
          type="button"
          data-testid="thinking-switch"
          aria-pressed={thinking}
          onClick={onToggleThinking}
          title={thinking ? "Thinking is on: the model reasons before answering" : "Thinking is off"}
          className={`inline-flex items-center gap-1.5 rounded-full border px-3 py-1.5 text-[13px] transition-colors ${
            thinking
              ? "border-accent/40 bg-accent-soft text-accent"
              : "border-line text-fg-soft hover:bg-hover hover:text-fg"
          }`}
        >
          <SparkIcon size={14} />
          Think
        </button>
        {streaming ? (
          <button
            key="stop"
            type="button"
            data-testid="stop-button"
            aria-label="Stop answering (Esc)"
            title="Stop (Esc)"
            onClick={onStop}
            className="grid h-9 w-9 place-items-center rounded-full bg-fg text-bg transition-opacity hover:opacity-85"
          >
            <StopIcon size={16} />
          </button>
        ) : (
          <button
            key="send"
            type="submit"
            data-testid="send-button"
            aria-label="Send message"
            title="Send (Enter)"
            disabled={!canSend}
            className="grid h-9 w-9 place-items-center rounded-full bg-fg text-bg transition-opacity hover:opacity-85 disabled:cursor-not-allowed disabled:opacity-25"
          >
            <ArrowUpIcon size={18} />
          </button>
        )}
      </div>
    </form>
  );
});
