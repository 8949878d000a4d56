import type { Message } from "@/lib/api-types";
import { formatBytes, formatCount, formatMs, formatRate } from "@/lib/format";

/** What an answer cost: tokens, speed, time to first token, thinking tokens, and the model's cache memory. */
export function AnswerStats({ message }: { message: Message }) {
  const items: { key: string; text: string; title: string }[] = [];
  if (message.completion_tokens !== null) {
    items.push({
      key: "tokens",
      text: `${formatCount(message.completion_tokens)} tokens`,
      title: "Tokens generated (thinking and answer)",
    });
  }
  if (message.tokens_per_s !== null) {
    items.push({ key: "rate", text: `${formatRate(message.tokens_per_s)} tok/s`, title: "Decode speed" });
  }
  if (message.ttft_ms !== null) {
    items.push({ key: "ttft", text: `TTFT ${formatMs(message.ttft_ms)}`, title: "Time to first token" });
  }
  if (message.thinking_tokens !== null && message.thinking_tokens > 0) {
    items.push({
      key: "thinking",
      text: `${formatCount(message.thinking_tokens)} thinking`,
      title: "Tokens spent thinking",
    });
  }
  if (message.cache_bytes !== null) {
    items.push({
      key: "cache",
      text: `cache ${formatBytes(message.cache_bytes)}`,
      title: "The model's cache memory for this conversation (latent attention cache + Mamba state)",
    });
  }
  if (items.length === 0) return null;
  return (
    <ul
      data-testid="answer-stats"
      aria-label="Answer statistics"
      className="flex flex-wrap items-center gap-x-1 text-xs text-fg-faint"
    >
      {items.map((item, i) => (
        <li key={item.key} title={item.title} className="whitespace-nowrap">
          {i > 0 && (
            <span aria-hidden="true" className="mr-1">
              ·
            </span>
          )}
          {item.text}
        </li>
      ))}
    </ul>
  );
}
