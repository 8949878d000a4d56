"use client";

import type { ChatMessage } from "@/lib/chat-state";
import { AnswerStats } from "./AnswerStats";
import { CopyButton } from "./CopyButton";
import { RefreshIcon } from "./icons";
import { Markdown } from "./Markdown";
import { ThinkingBlock } from "./ThinkingBlock";

interface Props {
  message: ChatMessage;
  /** Regenerating replaces this answer; offered on the last answer only, and not while one streams. */
  onRegenerate: (() => void) | null;
}

const STATUS_NOTE: Partial<Record<ChatMessage["status"], string>> = {
  stopped: "Stopped",
  interrupted: "Interrupted",
  error: "Failed",
};

function thinkingDuration(message: ChatMessage): number | null {
  if (message.thinking_ms !== null) return message.thinking_ms;
  if (message.thinkingStartedAt !== undefined && message.thinkingEndedAt !== undefined) {
    return message.thinkingEndedAt - message.thinkingStartedAt;
  }
  return null;
}

/** One answer: its thinking, its Markdown, and underneath what it cost and what can be done with it. */
export function AssistantMessage({ message, onRegenerate }: Props) {
  const streaming = message.status === "streaming";
  const thinkingLive = streaming && message.content === "" && message.thinkingEndedAt === undefined;
  const note = STATUS_NOTE[message.status];

  return (
    <article
      data-testid="message-assistant"
      data-id={message.id}
      data-status={message.status}
      aria-label="NanoPrime's answer"
      aria-busy={streaming}
      className="group"
    >
      {message.thinking ? (
        <ThinkingBlock thinking={message.thinking} live={thinkingLive} durationMs={thinkingDuration(message)} />
      ) : null}
      {message.content ? (
        <div data-testid="answer-text">
          <Markdown text={message.content} />
        </div>
      ) : streaming && !message.thinking ? (
        <div aria-label="Waiting for the answer" className="flex h-7 items-center gap-1" data-testid="answer-pending">
          <span className="np-pulse h-2 w-2 rounded-full bg-fg-soft" />
          <span className="np-pulse h-2 w-2 rounded-full bg-fg-soft [animation-delay:200ms]" />
          <span className="np-pulse h-2 w-2 rounded-full bg-fg-soft [animation-delay:400ms]" />
        </div>
      ) : !streaming && message.status === "complete" ? (
        <p className="text-sm italic text-fg-faint">(no answer text)</p>
      ) : null}
      {!streaming && (
        <div className="mt-2 flex flex-wrap items-center gap-x-3 gap-y-1">
          <div className="flex items-center gap-0.5">
            {message.content && <CopyButton text={message.content} label="Copy answer" className="p-1.5" />}
            {onRegenerate && (
              <button
                type="button"
                data-testid="regenerate"
                aria-label="Regenerate answer"
                title="Regenerate answer"
                onClick={onRegenerate}
                className="rounded-md p-1.5 text-fg-soft hover:text-fg"
              >
                <RefreshIcon size={15} />
              </button>
            )}
          </div>
          {note && (
            <span
              data-testid="answer-status"
              className="rounded-full bg-muted px-2 py-0.5 text-xs font-medium text-fg-soft"
            >
              {note}
            </span>
          )}
          <AnswerStats message={message} />
        </div>
      )}
    </article>
  );
}
