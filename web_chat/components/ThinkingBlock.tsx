"use client";

import { useEffect, useId, useRef, useState } from "react";
import { formatSeconds } from "@/lib/format";
import { ChevronIcon, SparkIcon } from "./icons";

interface Props {
  thinking: string;
  /** The model is still thinking: the text streams in, open, under "Thinking…". */
  live: boolean;
  /** How long it thought, once it is done; null when not known (an old stored answer). */
  durationMs: number | null;
}

/**
 * The model's reasoning. Open while it streams so people can watch it think; once the answer starts it folds
 * away to one line ("Thought for N s") and opens again on click.
 */
export function ThinkingBlock({ thinking, live, durationMs }: Props) {
  const [toggled, setToggled] = useState<boolean | null>(null);
  const wasLive = useRef(live);
  const body = useRef<HTMLDivElement>(null);
  const panelId = useId();

  // When thinking ends, fold it away (whatever the reader did while it streamed).
  useEffect(() => {
    if (wasLive.current && !live) setToggled(null);
    wasLive.current = live;
  }, [live]);

  const open = toggled ?? live;

  // Follow the newest reasoning while it streams.
  useEffect(() => {
    if (live && open && body.current) body.current.scrollTop = body.current.scrollHeight;
  }, [thinking, live, open]);

  const label = live ? "Thinking…" : durationMs !== null ? `Thought for ${formatSeconds(durationMs)} s` : "Thoughts";

  return (
    <div data-testid="thinking-block" data-state={live ? "live" : "done"} className="mb-3">
      <button
        type="button"
        data-testid="thinking-toggle"
        aria-expanded={open}
        aria-controls={panelId}
        onClick={() => setToggled(!open)}
        className="group inline-flex items-center gap-1.5 rounded-lg py-1 pr-2 text-sm text-fg-soft transition-colors hover:text-fg"
      >
        <SparkIcon size={15} className={live ? "np-pulse text-accent" : ""} />
        <span className={live ? "np-pulse" : ""}>{label}</span>
        <ChevronIcon size={14} className={`transition-transform ${open ? "rotate-90" : ""}`} />
      </button>
      {open && (
        <div
          id={panelId}
          ref={body}
          data-testid="thinking-text"
          className={`mt-1.5 whitespace-pre-wrap border-l-2 border-line pl-4 text-sm leading-relaxed text-fg-soft [overflow-wrap:anywhere] ${
            live ? "max-h-48 overflow-y-auto" : ""
          }`}
        >
          {thinking}
        </div>
      )}
    </div>
  );
}
