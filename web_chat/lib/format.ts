/** Number formatting for stats and model info: short, with units people read at a glance. */

export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

/** 142_000_000 -> "142M", 1_500_000_000 -> "1.5B". */
export function formatCount(n: number): string {
  if (!Number.isFinite(n)) return "–";
  const abs = Math.abs(n);
  const scaled = (value: number, suffix: string) =>
    `${value >= 100 ? Math.round(value) : Number(value.toFixed(1))}${suffix}`;
  if (abs >= 1e9) return scaled(n / 1e9, "B");
  if (abs >= 1e6) return scaled(n / 1e6, "M");
  if (abs >= 1e4) return scaled(n / 1e3, "K");
  return n.toLocaleString("en-US");
}

/** Seconds for "Thought for N s": one decimal below 10 s, whole seconds above. */
export function formatSeconds(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  return s < 10 ? s.toFixed(1) : String(Math.round(s));
}

export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return "–";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

export function formatRate(tokensPerS: number): string {
  if (!Number.isFinite(tokensPerS)) return "–";
  return tokensPerS >= 100 ? `${Math.round(tokensPerS)}` : tokensPerS.toFixed(1);
}
