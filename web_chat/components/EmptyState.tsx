import type { ModelInfo } from "@/lib/api-types";
import { formatCount } from "@/lib/format";
import { LogoIcon } from "./icons";

const SUGGESTIONS = [
  "Explain what a state space model is, in two sentences.",
  "Write a short poem about a very small computer.",
  "What is 17 × 23? Show your steps.",
  "Give me three names for a friendly robot.",
];

/** A new chat: what the model is, and a few things to try. */
export function EmptyState({ model, onPick }: { model: ModelInfo | null; onPick: (text: string) => void }) {
  return (
    <div
      className="flex min-h-0 flex-1 flex-col items-center justify-center overflow-y-auto px-4 py-8"
      data-testid="empty-state"
    >
      <LogoIcon size={36} className="text-accent" />
      <h2 className="mt-4 text-center text-2xl font-semibold tracking-tight">How can I help?</h2>
      {model && (
        <p className="mt-2 text-center text-sm text-fg-soft">
          {model.name} · {formatCount(model.parameters)} parameters · {model.context_length.toLocaleString("en-US")}
          -token context
        </p>
      )}
      <div className="mt-8 grid w-full max-w-2xl grid-cols-1 gap-2 sm:grid-cols-2">
        {SUGGESTIONS.map((text) => (
          <button
            key={text}
            type="button"
            onClick={() => onPick(text)}
            className="rounded-2xl border border-line px-4 py-3 text-left text-sm text-fg-soft transition-colors hover:bg-hover hover:text-fg"
          >
            {text}
          </button>
        ))}
      </div>
    </div>
  );
}
