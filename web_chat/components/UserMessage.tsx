"use client";

import { useEffect, useRef, useState } from "react";
import type { ChatMessage } from "@/lib/chat-state";
import { CopyButton } from "./CopyButton";
import { PencilIcon } from "./icons";

interface Props {
  message: ChatMessage;
  /** Editing re-runs the conversation from this message; null while an answer streams. */
  onEdit: ((content: string) => void) | null;
}

/** The person's message: plain text exactly as typed (never Markdown, never HTML), editable and re-runnable. */
export function UserMessage({ message, onEdit }: Props) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(message.content);
  const area = useRef<HTMLTextAreaElement>(null);

  useEffect(() => {
    if (!editing || !area.current) return;
    area.current.focus();
    area.current.setSelectionRange(area.current.value.length, area.current.value.length);
  }, [editing]);

  const save = () => {
    const text = draft.trim();
    if (!text || !onEdit) return;
    setEditing(false);
    onEdit(text);
  };

  if (editing) {
    return (
      <div className="flex justify-end">
        <div className="w-full max-w-[85%] rounded-3xl border border-line bg-raised p-3 shadow-sm">
          <label className="sr-only" htmlFor={`edit-${message.id}`}>
            Edit your message
          </label>
          <textarea
            id={`edit-${message.id}`}
            ref={area}
            data-testid="edit-input"
            value={draft}
            rows={Math.min(10, Math.max(2, draft.split("\n").length))}
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
                e.preventDefault();
                save();
              } else if (e.key === "Escape") {
                e.stopPropagation();
                setEditing(false);
              }
            }}
            className="w-full resize-none bg-transparent px-1 leading-relaxed outline-none"
          />
          <div className="mt-2 flex justify-end gap-2">
            <button
              type="button"
              onClick={() => setEditing(false)}
              className="rounded-full px-3.5 py-1.5 text-sm text-fg-soft hover:bg-hover"
            >
              Cancel
            </button>
            <button
              type="button"
              data-testid="edit-save"
              onClick={save}
              disabled={!draft.trim()}
              className="rounded-full bg-fg px-3.5 py-1.5 text-sm font-medium text-bg disabled:opacity-40"
            >
              Send
            </button>
          </div>
        </div>
      </div>
    );
  }

  return (
    <article
      data-testid="message-user"
      data-id={message.id}
      aria-label="Your message"
      className="group flex flex-col items-end"
    >
      <div className="max-w-[85%] whitespace-pre-wrap rounded-3xl bg-muted px-4 py-2.5 leading-relaxed [overflow-wrap:anywhere]">
        {message.content}
      </div>
      <div className="mt-1 flex gap-1 opacity-0 transition-opacity group-focus-within:opacity-100 group-hover:opacity-100 pointer-coarse:opacity-100">
        <CopyButton text={message.content} label="Copy message" className="p-1.5" />
        {onEdit && (
          <button
            type="button"
            data-testid="edit-message"
            aria-label="Edit message"
            title="Edit message"
            onClick={() => {
              setDraft(message.content);
              setEditing(true);
            }}
            className="rounded-md p-1.5 text-fg-soft hover:text-fg"
          >
            <PencilIcon size={15} />
          </button>
        )}
      </div>
    </article>
  );
}
