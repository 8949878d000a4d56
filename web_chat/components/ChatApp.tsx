"use client";

import { useCallback, useEffect, useRef, useState } from "react";
import { useChat } from "@/hooks/useChat";
import { useConversations } from "@/hooks/useConversations";
import { useSettings } from "@/hooks/useSettings";
import { api } from "@/lib/api";
import type { ConversationSummary, Id, ModelInfo } from "@/lib/api-types";
import { generationSettings } from "@/lib/settings";
import { readConversationId, writeConversationId } from "@/lib/url";
import { Composer, type ComposerHandle } from "./Composer";
import { ConfirmDelete } from "./ConfirmDelete";
import { EmptyState } from "./EmptyState";
import { Header } from "./Header";
import { MessageList } from "./MessageList";
import { SettingsDialog } from "./SettingsDialog";
import { Sidebar } from "./Sidebar";

/** The app: history on the left, the open conversation on the right, settings in a dialog. */
export function ChatApp() {
  const [urlReady, setUrlReady] = useState(false);
  const [conversationId, setConversationId] = useState<Id | null>(null);
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const [settingsOpen, setSettingsOpen] = useState(false);
  const [toDelete, setToDelete] = useState<ConversationSummary | null>(null);
  const [model, setModel] = useState<ModelInfo | null>(null);
  const [modelError, setModelError] = useState<string | null>(null);
  const [announcement, setAnnouncement] = useState("");
  const composer = useRef<ComposerHandle>(null);

  const { settings, ready: settingsReady, update, resetGeneration, latest } = useSettings();
  const conversations = useConversations();
  const { refresh, addLocal } = conversations;

  const navigate = useCallback((id: Id | null, replace = false) => {
    writeConversationId(id, replace);
    setConversationId(id);
    setSidebarOpen(false);
  }, []);

  const loadModel = useCallback((signal?: AbortSignal) => {
    api
      .models(signal)
      .then((res) => {
        setModel(res.models[0] ?? null);
        setModelError(null);
      })
      .catch((err: unknown) => {
        if (!signal?.aborted) setModelError(err instanceof Error ? err.message : String(err));
      });
  }, []);

  useEffect(() => {
    const controller = new AbortController();
    loadModel(controller.signal);
    return () => controller.abort();
  }, [loadModel]);

  // A server that was down or still loading at first will be asked again after the next turn.
  const modelKnown = useRef(false);
  modelKnown.current = model !== null;
  const onTurnEnded = useCallback(() => {
    refresh();
    if (!modelKnown.current) loadModel();
  }, [refresh, loadModel]);

  const chat = useChat({
    conversationId,
    settings: () => generationSettings(latest()),
    onCreated: (id, firstMessage) => {
      const now = new Date().toISOString();
      addLocal({ id, title: firstMessage.split("\n")[0].slice(0, 80), created_at: now, updated_at: now });
      navigate(id);
    },
    onTurnEnded,
  });
  const { state } = chat;

  // The URL names the open conversation; back and forward move between them.
  useEffect(() => {
    setConversationId(readConversationId());
    setUrlReady(true);
    const onPop = () => setConversationId(readConversationId());
    window.addEventListener("popstate", onPop);
    return () => window.removeEventListener("popstate", onPop);
  }, []);

  const serverBusy = chat.following && !state.streaming;

  // Esc stops an answer (and closes the drawer); dialogs handle their own Esc.
  const { stop } = chat;
  const streaming = state.streaming || serverBusy;
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.key !== "Escape" || e.defaultPrevented || document.querySelector("dialog[open]")) return;
      if (streaming) stop();
      else setSidebarOpen(false);
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [streaming, stop]);

  // Tell screen readers when an answer is complete (the streaming text itself is not announced token by token).
  const wasStreaming = useRef(false);
  useEffect(() => {
    if (wasStreaming.current && !streaming) setAnnouncement("Answer complete.");
    if (streaming) setAnnouncement("");
    wasStreaming.current = streaming;
  }, [streaming]);

  const listed = conversations.items.find((c) => c.id === conversationId);
  const title = conversationId ? (listed?.title ?? state.title ?? "") : "";
  useEffect(() => {
    document.title = title ? `${title} · NanoPrime` : "NanoPrime";
  }, [title]);

  const newChat = () => {
    navigate(null);
    composer.current?.focus();
  };

  const showEmpty = urlReady && conversationId === null && state.messages.length === 0;

  return (
    <div className="flex h-dvh overflow-hidden bg-bg text-fg">
      <a
        href="#composer"
        className="sr-only focus:not-sr-only focus:absolute focus:left-3 focus:top-3 focus:z-50 focus:rounded-lg focus:bg-raised focus:px-3 focus:py-2 focus:text-sm focus:shadow-lg"
      >
        Skip to the message box
      </a>
      <Sidebar
        conversations={conversations}
        activeId={conversationId}
        open={sidebarOpen}
        onClose={() => setSidebarOpen(false)}
        onSelect={(id) => navigate(id)}
        onNewChat={newChat}
        onRequestDelete={setToDelete}
        onRenamed={(id, newTitle) => id === conversationId && chat.renamed(newTitle)}
      />
      <main className="flex min-w-0 flex-1 flex-col">
        <Header
          title={title}
          conversationId={conversationId}
          model={model}
          modelError={modelError}
          theme={settings.theme}
          onToggleTheme={() =>
            update({ theme: document.documentElement.classList.contains("dark") ? "light" : "dark" })
          }
          onOpenSidebar={() => setSidebarOpen(true)}
          onOpenSettings={() => setSettingsOpen(true)}
          onNewChat={newChat}
        />
        {!urlReady ? (
          <div className="flex-1" />
        ) : showEmpty ? (
          <EmptyState model={model} onPick={(text) => composer.current?.setText(text)} />
        ) : state.loading ? (
          <div
            className="flex flex-1 items-center justify-center text-sm text-fg-faint"
            data-testid="conversation-loading"
          >
            <span className="np-pulse">Loading conversation…</span>
          </div>
        ) : state.loadError ? (
          <div className="flex flex-1 flex-col items-center justify-center gap-3 px-6 text-center" role="alert">
            <p className="text-sm text-fg-soft">{state.loadError}</p>
            <button
              type="button"
              onClick={newChat}
              className="rounded-full border border-line px-4 py-1.5 text-sm hover:bg-hover"
            >
              Start a new chat
            </button>
          </div>
        ) : (
          <MessageList
            messages={state.messages}
            streaming={state.streaming}
            serverBusy={serverBusy}
            error={state.error}
            onRetry={() => void chat.retry()}
            onRegenerate={() => void chat.regenerate()}
            onEdit={(id, content) => void chat.edit(id, content)}
          />
        )}
        <div className="mx-auto w-full max-w-3xl px-3 pb-3 sm:px-6">
          <Composer
            ref={composer}
            streaming={streaming}
            disabled={!settingsReady || state.loading || !!state.loadError}
            thinking={settings.thinking}
            onToggleThinking={() => update({ thinking: !settings.thinking })}
            onSend={(text) => {
              if (streaming) return false;
              void chat.send(text);
            }}
            onStop={chat.stop}
          />
          <p className="mt-2 text-center text-xs text-fg-faint">
            NanoPrime is a small model and makes mistakes. Enter sends, Shift+Enter adds a line.
          </p>
        </div>
      </main>
      <div aria-live="polite" className="sr-only" data-testid="announcer">
        {announcement}
      </div>
      <SettingsDialog
        open={settingsOpen}
        onClose={() => setSettingsOpen(false)}
        settings={settings}
        onChange={update}
        onReset={resetGeneration}
        model={model}
        modelError={modelError}
      />
      <ConfirmDelete
        conversation={toDelete}
        onCancel={() => setToDelete(null)}
        onConfirm={async (conversation) => {
          await conversations.remove(conversation.id);
          setToDelete(null);
          if (conversation.id === conversationId) navigate(null, true);
        }}
      />
    </div>
  );
}
