"use client";

import { useEffect, useMemo, useRef, useState } from "react";
import type { ConversationSummary, Id } from "@/lib/api-types";
import { groupConversations } from "@/lib/history";
import { conversationHref } from "@/lib/url";
import type { ConversationsState } from "@/hooks/useConversations";
import { CloseIcon, LogoIcon, PencilIcon, PlusIcon, SearchIcon, TrashIcon } from "./icons";

interface Props {
  conversations: ConversationsState;
  activeId: Id | null;
  open: boolean;
  onClose: () => void;
  onSelect: (id: Id) => void;
  onNewChat: () => void;
  onRequestDelete: (conversation: ConversationSummary) => void;
  onRenamed: (id: Id, title: string) => void;
}

const SEARCH_DEBOUNCE_MS = 250;

function ConversationItem({
  conversation,
  active,
  onSelect,
  onRequestDelete,
  onRename,
}: {
  conversation: ConversationSummary;
  active: boolean;
  onSelect: (id: Id) => void;
  onRequestDelete: (conversation: ConversationSummary) => void;
  onRename: (title: string) => Promise<void>;
}) {
  const [renaming, setRenaming] = useState(false);
  const [draft, setDraft] = useState(conversation.title);
  const [error, setError] = useState<string | null>(null);
  const input = useRef<HTMLInputElement>(null);

  useEffect(() => {
    if (renaming) input.current?.select();
  }, [renaming]);

  const commit = async () => {
    const title = draft.trim();
    if (!title || title === conversation.title) {
      setRenaming(false);
      setError(null);
      return;
    }
    try {
      await onRename(title);
      setRenaming(false);
      setError(null);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };

  if (renaming) {
    return (
      <li className="px-1 py-0.5">
        <input
          ref={input}
          data-testid="rename-input"
          aria-label="Conversation title"
          aria-invalid={!!error}
          value={draft}
          maxLength={200}
          onChange={(e) => setDraft(e.target.value)}
          onBlur={() => void commit()}
          onKeyDown={(e) => {
            if (e.key === "Enter") {
              e.preventDefault();
              void commit();
            } else if (e.key === "Escape") {
              e.stopPropagation();
              setDraft(conversation.title);
              setRenaming(false);
              setError(null);
            }
          }}
          className="w-full rounded-lg border border-accent bg-raised px-2.5 py-1.5 text-sm outline-none"
        />
        {error && <p className="px-1 pt-1 text-xs text-danger">{error}</p>}
      </li>
    );
  }

  return (
    <li
      data-testid="conversation-item"
      data-id={conversation.id}
      data-active={active}
      className={`group relative flex items-center rounded-lg transition-colors ${
        active ? "bg-hover" : "hover:bg-hover/70"
      }`}
    >
      <a
        href={conversationHref(conversation.id)}
        aria-current={active ? "page" : undefined}
        onClick={(e) => {
          if (e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return; // new tab/window: let it be
          e.preventDefault();
          onSelect(conversation.id);
        }}
        className="min-w-0 flex-1 px-2.5 py-2 text-sm"
      >
        <span className="block truncate" data-testid="conversation-title">
          {conversation.title || "New chat"}
        </span>
        {conversation.snippet && (
          <span className="mt-0.5 block truncate text-xs text-fg-faint" data-testid="conversation-snippet">
            {conversation.snippet}
          </span>
        )}
      </a>
      <div
        className={`flex shrink-0 items-center pr-1 opacity-0 transition-opacity group-focus-within:opacity-100 group-hover:opacity-100 pointer-coarse:opacity-100 ${
          active ? "opacity-100" : ""
        }`}
      >
        <button
          type="button"
          data-testid="rename"
          aria-label={`Rename “${conversation.title}”`}
          title="Rename"
          onClick={() => {
            setDraft(conversation.title);
            setRenaming(true);
          }}
          className="rounded-md p-1.5 text-fg-faint hover:text-fg"
        >
          <PencilIcon size={14} />
        </button>
        <button
          type="button"
          data-testid="delete"
          aria-label={`Delete “${conversation.title}”`}
          title="Delete"
          onClick={() => onRequestDelete(conversation)}
          className="rounded-md p-1.5 text-fg-faint hover:text-danger"
        >
          <TrashIcon size={14} />
        </button>
      </div>
    </li>
  );
}

/** History: new chat, search, and the conversations grouped by day; a drawer on narrow screens. */
export function Sidebar({
  conversations,
  activeId,
  open,
  onClose,
  onSelect,
  onNewChat,
  onRequestDelete,
  onRenamed,
}: Props) {
  const [search, setSearch] = useState(conversations.query);
  const { setQuery } = conversations;

  useEffect(() => {
    const timer = setTimeout(() => setQuery(search.trim()), SEARCH_DEBOUNCE_MS);
    return () => clearTimeout(timer);
  }, [search, setQuery]);

  // The drawer (narrow screens) takes the focus when it opens, so keyboard and screen-reader users land in it.
  const closeButton = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    if (open) closeButton.current?.focus();
  }, [open]);

  const groups = useMemo(() => groupConversations(conversations.items, new Date()), [conversations.items]);
  const searching = conversations.query !== "";

  return (
    <>
      {open && <div aria-hidden="true" onClick={onClose} className="fixed inset-0 z-30 bg-black/40 md:hidden" />}
      <aside
        aria-label="Conversations"
        data-testid="sidebar"
        className={`${
          open ? "fixed inset-y-0 left-0 z-40 flex shadow-xl" : "hidden"
        } w-[280px] max-w-[85vw] shrink-0 flex-col border-r border-line bg-panel md:static md:z-auto md:flex md:shadow-none`}
      >
        <div className="flex items-center gap-2 px-3 pb-2 pt-3">
          <div className="flex min-w-0 flex-1 items-center gap-2 px-1.5 font-semibold tracking-tight">
            <LogoIcon size={20} className="text-accent" />
            <span>NanoPrime</span>
          </div>
          <button
            ref={closeButton}
            type="button"
            aria-label="Close sidebar"
            onClick={onClose}
            className="rounded-lg p-2 text-fg-soft hover:bg-hover hover:text-fg md:hidden"
          >
            <CloseIcon size={18} />
          </button>
        </div>
        <div className="px-3">
          <button
            type="button"
            data-testid="new-chat"
            onClick={onNewChat}
            className="flex w-full items-center gap-2 rounded-lg border border-line bg-raised px-3 py-2 text-sm font-medium shadow-sm transition-colors hover:bg-hover"
          >
            <PlusIcon size={16} />
            New chat
          </button>
          <div className="relative mt-2">
            <SearchIcon
              size={15}
              className="pointer-events-none absolute left-2.5 top-1/2 -translate-y-1/2 text-fg-faint"
            />
            <input
              type="search"
              data-testid="search-input"
              aria-label="Search conversations"
              placeholder="Search"
              value={search}
              onChange={(e) => setSearch(e.target.value)}
              className="w-full rounded-lg border border-transparent bg-muted py-1.5 pl-8 pr-2.5 text-sm placeholder:text-fg-faint focus:border-line focus:bg-raised focus:outline-none"
            />
          </div>
        </div>
        <nav aria-label="Conversation history" className="mt-2 min-h-0 flex-1 overflow-y-auto px-2 pb-3">
          {conversations.error && (
            <p role="alert" className="px-2 py-2 text-xs text-danger">
              {conversations.error}
            </p>
          )}
          {!conversations.loading && !conversations.error && conversations.items.length === 0 && (
            <p className="px-2.5 py-3 text-sm text-fg-faint" data-testid="history-empty">
              {searching ? "No conversation matches." : "No conversations yet."}
            </p>
          )}
          {groups.map((group) => (
            <section key={group.label} className="mt-3 first:mt-1" aria-label={group.label}>
              <h2 className="px-2.5 pb-1 text-xs font-medium text-fg-faint">{group.label}</h2>
              <ul className="flex flex-col gap-px">
                {group.items.map((conversation) => (
                  <ConversationItem
                    key={conversation.id}
                    conversation={conversation}
                    active={conversation.id === activeId}
                    onSelect={onSelect}
                    onRequestDelete={onRequestDelete}
                    onRename={async (title) => {
                      const updated = await conversations.rename(conversation.id, title);
                      onRenamed(conversation.id, updated.title ?? title);
                    }}
                  />
                ))}
              </ul>
            </section>
          ))}
          {conversations.hasMore && (
            <button
              type="button"
              onClick={conversations.loadMore}
              disabled={conversations.loading}
              className="mt-2 w-full rounded-lg px-2.5 py-2 text-left text-sm text-fg-soft hover:bg-hover disabled:opacity-50"
            >
              {conversations.loading ? "Loading…" : "Show more"}
            </button>
          )}
        </nav>
      </aside>
    </>
  );
}
