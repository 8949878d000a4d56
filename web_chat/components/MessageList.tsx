"use client";

import { useCallback, useEffect, useLayoutEffect, useRef, useState } from "react";
import type { Id } from "@/lib/api-types";
import type { ChatMessage, TurnError } from "@/lib/chat-state";
import { AssistantMessage } from "./AssistantMessage";
import { AlertIcon, ArrowDownIcon } from "./icons";
import { UserMessage } from "./UserMessage";

interface Props {
  messages: ChatMessage[];
  streaming: boolean;
  /** Reloaded while the server was still answering: what is stored is shown and followed. */
  serverBusy: boolean;
  error: TurnError | null;
  onRetry: () => void;
  onRegenerate: () => void;
  onEdit: (messageId: Id, content: string) => void;
}

const STICK_PX = 80;

/** The conversation, kept scrolled to the newest text unless the reader scrolled up to read. */
export function MessageList({ messages, streaming, serverBusy, error, onRetry, onRegenerate, onEdit }: Props) {
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const [showJump, setShowJump] = useState(false);

  const onScroll = useCallback(() => {
    const el = scroller.current;
    if (!el) return;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < STICK_PX;
    stick.current = atBottom;
    setShowJump(!atBottom);
  }, []);

  const jump = useCallback((smooth: boolean) => {
    const el = scroller.current;
    if (!el) return;
    el.scrollTo({ top: el.scrollHeight, behavior: smooth ? "smooth" : "auto" });
    stick.current = true;
    setShowJump(false);
  }, []);

  // A new turn always brings the view down to it.
  const count = messages.length;
  useEffect(() => {
    stick.current = true;
  }, [count]);

  useLayoutEffect(() => {
    if (stick.current) jump(false);
  });

  // A resized window or a rotated phone keeps the newest text in view too. (Content growing by itself, like a
  // thinking block opened by the reader, does not scroll: the reader is looking at it.)
  useEffect(() => {
    const el = scroller.current;
    if (!el || typeof ResizeObserver === "undefined") return;
    const observer = new ResizeObserver(() => {
      if (stick.current) el.scrollTop = el.scrollHeight;
    });
    observer.observe(el);
    return () => observer.disconnect();
  }, []);

  const last = messages[messages.length - 1];
  const lastAssistant = [...messages].reverse().find((m) => m.role === "assistant");

  return (
    <div className="relative min-h-0 flex-1">
      <div
        ref={scroller}
        onScroll={onScroll}
        className="h-full overflow-y-auto overflow-x-hidden"
        data-testid="message-scroller"
      >
        <section aria-label="Messages" className="mx-auto flex w-full max-w-3xl flex-col gap-6 px-4 pb-6 pt-6 sm:px-6">
          {messages.map((message) =>
            message.role === "user" ? (
              <UserMessage
                key={message.id}
                message={message}
                onEdit={streaming || serverBusy || message.local ? null : (content) => onEdit(message.id, content)}
              />
            ) : message.role === "assistant" ? (
              <AssistantMessage
                key={message.id}
                message={message}
                onRegenerate={
                  !streaming && !serverBusy && message === lastAssistant && message === last ? onRegenerate : null
                }
              />
            ) : null,
          )}
          {serverBusy && (
            <p className="text-sm text-fg-soft" data-testid="server-pending">
              The server is still writing this answer; it shows here once it is stored.
            </p>
          )}
          {error && (
            <div
              role="alert"
              data-testid="turn-error"
              className="flex flex-wrap items-center gap-3 rounded-2xl border border-danger/30 bg-danger-soft px-4 py-3 text-sm"
            >
              <AlertIcon size={18} className="shrink-0 text-danger" />
              <span className="min-w-0 flex-1 [overflow-wrap:anywhere]">{error.message}</span>
              <button
                type="button"
                data-testid="error-retry"
                onClick={onRetry}
                className="rounded-full border border-line bg-raised px-3.5 py-1 text-sm font-medium hover:bg-hover"
              >
                Retry
              </button>
            </div>
          )}
        </section>
      </div>
      {showJump && (
        <button
          type="button"
          aria-label="Scroll to the latest message"
          onClick={() => jump(true)}
          className="absolute bottom-3 left-1/2 -translate-x-1/2 rounded-full border border-line bg-raised p-2 text-fg-soft shadow-md hover:text-fg"
        >
          <ArrowDownIcon size={16} />
        </button>
      )}
    </div>
  );
}
