/**
 * Chat settings live in the browser (localStorage), not on the server: they are a person's preferences for
 * this device. Whatever is stored is checked field by field, so an old or hand-edited value never breaks a send.
 */

import type { GenerationSettings } from "./api-types";

export type ThemePreference = "system" | "light" | "dark";

export interface Settings extends GenerationSettings {
  theme: ThemePreference;
  apiKey: string;
}

export const DEFAULT_SETTINGS: Settings = {
  temperature: 0.7,
  top_p: 1.0,
  max_tokens: 512,
  thinking: true,
  thinking_budget: null,
  system_prompt: "",
  theme: "system",
  apiKey: "",
};

export const SETTINGS_KEY = "nanoprime.settings.v1";

export const LIMITS = {
  temperature: { min: 0, max: 2, step: 0.05 },
  top_p: { min: 0.05, max: 1, step: 0.05 },
  max_tokens: { min: 1, max: 32768 },
  thinking_budget: { min: 1, max: 32768 },
} as const;

function clamp(value: unknown, min: number, max: number, fallback: number): number {
  return typeof value === "number" && Number.isFinite(value) ? Math.min(max, Math.max(min, value)) : fallback;
}

/** Keeps the valid fields of a stored object and fills the rest from the defaults. */
export function normalizeSettings(raw: unknown): Settings {
  const s = (raw && typeof raw === "object" ? raw : {}) as Record<string, unknown>;
  const d = DEFAULT_SETTINGS;
  const budget = s.thinking_budget;
  return {
    temperature: clamp(s.temperature, LIMITS.temperature.min, LIMITS.temperature.max, d.temperature),
    top_p: clamp(s.top_p, LIMITS.top_p.min, LIMITS.top_p.max, d.top_p),
    max_tokens: Math.round(clamp(s.max_tokens, LIMITS.max_tokens.min, LIMITS.max_tokens.max, d.max_tokens)),
    thinking: typeof s.thinking === "boolean" ? s.thinking : d.thinking,
    thinking_budget:
      budget === null || budget === undefined
        ? null
        : Math.round(clamp(budget, LIMITS.thinking_budget.min, LIMITS.thinking_budget.max, 256)),
    system_prompt: typeof s.system_prompt === "string" ? s.system_prompt : d.system_prompt,
    theme: s.theme === "light" || s.theme === "dark" || s.theme === "system" ? s.theme : d.theme,
    apiKey: typeof s.apiKey === "string" ? s.apiKey : d.apiKey,
  };
}

export function loadSettings(): Settings {
  try {
    const stored = window.localStorage.getItem(SETTINGS_KEY);
    return normalizeSettings(stored ? JSON.parse(stored) : null);
  } catch {
    return { ...DEFAULT_SETTINGS };
  }
}

export function saveSettings(settings: Settings): void {
  try {
    window.localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  } catch {
    // Private mode or a full quota: the settings still apply for this visit.
  }
}

/** The part of the settings that goes with each turn. */
export function generationSettings(settings: Settings): GenerationSettings {
  return {
    temperature: settings.temperature,
    top_p: settings.top_p,
    max_tokens: settings.max_tokens,
    thinking: settings.thinking,
    thinking_budget: settings.thinking ? settings.thinking_budget : null,
    system_prompt: settings.system_prompt,
  };
}
