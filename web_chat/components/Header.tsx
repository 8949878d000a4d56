"use client";

import { useEffect, useRef, useState } from "react";
import { api } from "@/lib/api";
import type { ExportFormat, Id, ModelInfo } from "@/lib/api-types";
import { formatCount } from "@/lib/format";
import type { ThemePreference } from "@/lib/settings";
import { DownloadIcon, GearIcon, MenuIcon, MoonIcon, PlusIcon, SunIcon } from "./icons";

interface Props {
  title: string;
  conversationId: Id | null;
  model: ModelInfo | null;
  modelError: string | null;
  theme: ThemePreference;
  onToggleTheme: () => void;
  onOpenSidebar: () => void;
  onOpenSettings: () => void;
  onNewChat: () => void;
}

const iconButton = "rounded-lg p-2 text-fg-soft transition-colors hover:bg-hover hover:text-fg";

function fileName(title: string, format: ExportFormat): string {
  const base =
    title
      .replace(/[^\p{L}\p{N}]+/gu, "-")
      .replace(/^-+|-+$/g, "")
      .slice(0, 60) || "conversation";
  return `${base}.${format === "markdown" ? "md" : "json"}`;
}

/** Downloads an export through fetch (so an API key goes with it) and a temporary object URL. */
async function download(id: Id, title: string, format: ExportFormat): Promise<void> {
  const blob = await api.exportConversation(id, format);
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = fileName(title, format);
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function ExportMenu({ id, title }: { id: Id; title: string }) {
  const [open, setOpen] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const root = useRef<HTMLDivElement>(null);

  useEffect(() => {
    if (!open) return;
    const onDown = (e: MouseEvent) => {
      if (!root.current?.contains(e.target as Node)) setOpen(false);
    };
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") {
        e.preventDefault();
        setOpen(false);
      }
    };
    document.addEventListener("mousedown", onDown);
    document.addEventListener("keydown", onKey);
    return () => {
      document.removeEventListener("mousedown", onDown);
      document.removeEventListener("keydown", onKey);
    };
  }, [open]);

  const choose = async (format: ExportFormat) => {
    setOpen(false);
    try {
      await download(id, title, format);
      setError(null);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };

  return (
    <div ref={root} className="relative">
      <button
        type="button"
        data-testid="export-button"
        aria-label="Export conversation"
        aria-haspopup="menu"
        aria-expanded={open}
        title={error ?? "Export"}
        onClick={() => setOpen(!open)}
        className={`${iconButton} ${error ? "text-danger" : ""}`}
      >
        <DownloadIcon size={18} />
      </button>
      {open && (
        <div
          role="menu"
          className="absolute right-0 top-full z-20 mt-1 w-48 overflow-hidden rounded-xl border border-line bg-raised py-1 text-sm shadow-lg"
        >
          <button
            type="button"
            role="menuitem"
            onClick={() => void choose("markdown")}
            className="block w-full px-3.5 py-2 text-left hover:bg-hover"
          >
            Export as Markdown
          </button>
          <button
            type="button"
            role="menuitem"
            onClick={() => void choose("json")}
            className="block w-full px-3.5 py-2 text-left hover:bg-hover"
          >
            Export as JSON
          </button>
        </div>
      )}
    </div>
  );
}

/** The bar over the conversation: its title, the model, and the page's actions. */
export function Header({
  title,
  conversationId,
  model,
  modelError,
  theme,
  onToggleTheme,
  onOpenSidebar,
  onOpenSettings,
  onNewChat,
}: Props) {
  return (
    <header className="flex h-14 shrink-0 items-center gap-1 border-b border-line/70 px-2 sm:px-3">
      <button
        type="button"
        aria-label="Open conversations"
        onClick={onOpenSidebar}
        className={`${iconButton} md:hidden`}
      >
        <MenuIcon size={20} />
      </button>
      <div className="flex min-w-0 flex-1 items-center gap-2 px-1">
        <h1 className="truncate text-[15px] font-medium" data-testid="conversation-heading">
          {title || "New chat"}
        </h1>
        <button
          type="button"
          onClick={onOpenSettings}
          data-testid="model-chip"
          title={modelError ?? "Model information"}
          className="hidden shrink-0 items-center gap-1.5 rounded-full border border-line px-2.5 py-0.5 text-xs text-fg-soft hover:bg-hover sm:inline-flex"
        >
          <span
            aria-hidden="true"
            className={`h-1.5 w-1.5 rounded-full ${modelError ? "bg-danger" : model ? "bg-emerald-500" : "bg-fg-faint"}`}
          />
          {modelError
            ? "Server unreachable"
            : model
              ? `${model.name} · ${formatCount(model.parameters)}`
              : "Connecting…"}
        </button>
      </div>
      {conversationId && <ExportMenu id={conversationId} title={title} />}
      <button
        type="button"
        data-testid="theme-toggle"
        aria-label="Switch between light and dark theme"
        title={`Theme: ${theme}`}
        onClick={onToggleTheme}
        className={iconButton}
      >
        <SunIcon size={18} className="hidden dark:block" />
        <MoonIcon size={18} className="dark:hidden" />
      </button>
      <button
        type="button"
        data-testid="settings-button"
        aria-label="Settings"
        title="Settings"
        onClick={onOpenSettings}
        className={iconButton}
      >
        <GearIcon size={18} />
      </button>
      <button
        type="button"
        aria-label="New chat"
        title="New chat"
        onClick={onNewChat}
        className={`${iconButton} md:hidden`}
      >
        <PlusIcon size={20} />
      </button>
    </header>
  );
}
