"use client";

import { useEffect, useId, useState } from "react";
import type { ModelInfo } from "@/lib/api-types";
import { formatBytes, formatCount } from "@/lib/format";
import { LIMITS, type Settings, type ThemePreference } from "@/lib/settings";
import { Modal } from "./Modal";

interface Props {
  open: boolean;
  onClose: () => void;
  settings: Settings;
  onChange: (patch: Partial<Settings>) => void;
  onReset: () => void;
  model: ModelInfo | null;
  modelError: string | null;
}

function Field({
  label,
  hint,
  htmlFor,
  children,
}: {
  label: string;
  hint?: string;
  htmlFor: string;
  children: React.ReactNode;
}) {
  return (
    <div className="py-2.5">
      <label htmlFor={htmlFor} className="block text-sm font-medium">
        {label}
      </label>
      {hint && <p className="text-xs text-fg-faint">{hint}</p>}
      <div className="mt-1.5">{children}</div>
    </div>
  );
}

/** A number box that lets people type freely and only applies values inside the limits. */
function NumberInput({
  id,
  value,
  min,
  max,
  allowEmpty = false,
  placeholder,
  testId,
  onCommit,
}: {
  id: string;
  value: number | null;
  min: number;
  max: number;
  allowEmpty?: boolean;
  placeholder?: string;
  testId: string;
  onCommit: (value: number | null) => void;
}) {
  const [draft, setDraft] = useState(value === null ? "" : String(value));
  useEffect(() => setDraft(value === null ? "" : String(value)), [value]);
  const parsed = draft.trim() === "" ? null : Number(draft);
  const valid = parsed === null ? allowEmpty : Number.isInteger(parsed) && parsed >= min && parsed <= max;
  return (
    <>
      <input
        id={id}
        data-testid={testId}
        type="number"
        inputMode="numeric"
        min={min}
        max={max}
        step={1}
        value={draft}
        placeholder={placeholder}
        aria-invalid={!valid}
        onChange={(e) => {
          setDraft(e.target.value);
          const next = e.target.value.trim() === "" ? null : Number(e.target.value);
          const ok = next === null ? allowEmpty : Number.isInteger(next) && next >= min && next <= max;
          if (ok) onCommit(next);
        }}
        className="w-36 rounded-lg border border-line bg-bg px-2.5 py-1.5 text-sm aria-[invalid=true]:border-danger focus:border-accent focus:outline-none"
      />
      {!valid && (
        <p className="mt-1 text-xs text-danger">
          A whole number from {min} to {max}
          {allowEmpty ? ", or empty for no limit" : ""}.
        </p>
      )}
    </>
  );
}

function Slider({
  id,
  value,
  min,
  max,
  step,
  testId,
  onChange,
}: {
  id: string;
  value: number;
  min: number;
  max: number;
  step: number;
  testId: string;
  onChange: (value: number) => void;
}) {
  return (
    <div className="flex items-center gap-3">
      <input
        id={id}
        data-testid={testId}
        type="range"
        min={min}
        max={max}
        step={step}
        value={value}
        onChange={(e) => onChange(Number(e.target.value))}
        className="h-1.5 flex-1 cursor-pointer accent-[var(--accent)]"
      />
      <output htmlFor={id} className="w-10 text-right text-sm tabular-nums text-fg-soft">
        {value.toFixed(2)}
      </output>
    </div>
  );
}

const THEMES: { value: ThemePreference; label: string }[] = [
  { value: "system", label: "System" },
  { value: "light", label: "Light" },
  { value: "dark", label: "Dark" },
];

function ModelCard({ model, error }: { model: ModelInfo | null; error: string | null }) {
  if (error) return <p className="text-sm text-danger">{error}</p>;
  if (!model) return <p className="text-sm text-fg-faint">Loading…</p>;
  const rows: [string, string][] = [
    ["Name", model.name],
    ["Parameters", formatCount(model.parameters)],
    ["Context length", `${model.context_length.toLocaleString("en-US")} tokens`],
    ["Cache per token", formatBytes(model.cache_bytes_per_token)],
  ];
  if (model.weights_sha256) rows.push(["Weights", model.weights_sha256.slice(0, 12)]);
  for (const [key, value] of Object.entries(model.card ?? {})) {
    if (value !== null && value !== "") rows.push([key.replace(/_/g, " "), String(value)]);
  }
  return (
    <dl data-testid="model-info" className="grid grid-cols-[auto_1fr] gap-x-4 gap-y-1.5 text-sm">
      {rows.map(([key, value]) => (
        <div key={key} className="contents">
          <dt className="text-fg-soft first-letter:uppercase">{key}</dt>
          <dd className="min-w-0 text-right font-medium tabular-nums [overflow-wrap:anywhere]">{value}</dd>
        </div>
      ))}
    </dl>
  );
}

/** Generation settings, theme and API key (kept in this browser), and what the server's model is. */
export function SettingsDialog({ open, onClose, settings, onChange, onReset, model, modelError }: Props) {
  const ids = useId();
  const id = (name: string) => `${ids}-${name}`;

  return (
    <Modal open={open} onClose={onClose} title="Settings" testId="settings-dialog" wide>
      <section aria-labelledby={id("gen")}>
        <h3 id={id("gen")} className="text-xs font-semibold uppercase tracking-wide text-fg-faint">
          Generation
        </h3>
        <Field label="Temperature" hint="Higher is more varied; 0 always picks the likeliest token." htmlFor={id("t")}>
          <Slider
            id={id("t")}
            testId="setting-temperature"
            value={settings.temperature}
            {...LIMITS.temperature}
            onChange={(temperature) => onChange({ temperature })}
          />
        </Field>
        <Field label="Top-p" hint="Sample only from the most likely tokens that make up this share." htmlFor={id("p")}>
          <Slider
            id={id("p")}
            testId="setting-top-p"
            value={settings.top_p}
            {...LIMITS.top_p}
            onChange={(top_p) => onChange({ top_p })}
          />
        </Field>
        <Field label="Max tokens" hint="The longest answer, thinking included." htmlFor={id("max")}>
          <NumberInput
            id={id("max")}
            testId="setting-max-tokens"
            value={settings.max_tokens}
            {...LIMITS.max_tokens}
            onCommit={(v) => v !== null && onChange({ max_tokens: v })}
          />
        </Field>
        <div className="flex items-center justify-between gap-4 py-2.5">
          <div>
            <label htmlFor={id("think")} className="block text-sm font-medium">
              Thinking
            </label>
            <p className="text-xs text-fg-faint">The model reasons before it answers.</p>
          </div>
          <button
            id={id("think")}
            type="button"
            role="switch"
            data-testid="setting-thinking"
            aria-checked={settings.thinking}
            onClick={() => onChange({ thinking: !settings.thinking })}
            className={`relative h-6 w-11 shrink-0 rounded-full transition-colors ${
              settings.thinking ? "bg-accent" : "bg-line"
            }`}
          >
            <span
              className={`absolute top-0.5 h-5 w-5 rounded-full bg-white shadow transition-all ${
                settings.thinking ? "left-[22px]" : "left-0.5"
              }`}
            />
          </button>
        </div>
        {settings.thinking && (
          <Field
            label="Thinking budget"
            hint="Most thinking tokens before the model must answer."
            htmlFor={id("budget")}
          >
            <NumberInput
              id={id("budget")}
              testId="setting-thinking-budget"
              value={settings.thinking_budget}
              {...LIMITS.thinking_budget}
              allowEmpty
              placeholder="No limit"
              onCommit={(thinking_budget) => onChange({ thinking_budget })}
            />
          </Field>
        )}
        <Field label="System prompt" hint="Instructions the model reads before the conversation." htmlFor={id("sys")}>
          <textarea
            id={id("sys")}
            data-testid="setting-system-prompt"
            rows={3}
            value={settings.system_prompt}
            onChange={(e) => onChange({ system_prompt: e.target.value })}
            placeholder="You are a helpful assistant."
            className="w-full resize-y rounded-lg border border-line bg-bg px-2.5 py-2 text-sm focus:border-accent focus:outline-none"
          />
        </Field>
      </section>

      <section aria-labelledby={id("look")} className="mt-4 border-t border-line pt-4">
        <h3 id={id("look")} className="text-xs font-semibold uppercase tracking-wide text-fg-faint">
          Appearance and access
        </h3>
        <div className="py-2.5">
          <span className="block text-sm font-medium" id={id("theme")}>
            Theme
          </span>
          <div role="radiogroup" aria-labelledby={id("theme")} className="mt-1.5 inline-flex rounded-lg bg-muted p-0.5">
            {THEMES.map((theme) => (
              <button
                key={theme.value}
                type="button"
                role="radio"
                aria-checked={settings.theme === theme.value}
                data-testid={`theme-${theme.value}`}
                onClick={() => onChange({ theme: theme.value })}
                className={`rounded-md px-3 py-1 text-sm ${
                  settings.theme === theme.value ? "bg-raised font-medium shadow-sm" : "text-fg-soft"
                }`}
              >
                {theme.label}
              </button>
            ))}
          </div>
        </div>
        <Field label="API key" hint="Only if the server requires one; stored in this browser." htmlFor={id("key")}>
          <input
            id={id("key")}
            type="password"
            autoComplete="off"
            value={settings.apiKey}
            onChange={(e) => onChange({ apiKey: e.target.value })}
            className="w-full rounded-lg border border-line bg-bg px-2.5 py-1.5 text-sm focus:border-accent focus:outline-none"
          />
        </Field>
      </section>

      <section aria-labelledby={id("model")} className="mt-4 border-t border-line pt-4">
        <h3 id={id("model")} className="mb-2.5 text-xs font-semibold uppercase tracking-wide text-fg-faint">
          Model
        </h3>
        <ModelCard model={model} error={modelError} />
      </section>

      <div className="mt-5 flex justify-between border-t border-line pt-4">
        <button
          type="button"
          onClick={onReset}
          className="rounded-full px-3 py-1.5 text-sm text-fg-soft hover:bg-hover"
        >
          Reset to defaults
        </button>
        <button
          type="button"
          onClick={onClose}
          className="rounded-full bg-fg px-4 py-1.5 text-sm font-medium text-bg hover:opacity-90"
        >
          Done
        </button>
      </div>
    </Modal>
  );
}
