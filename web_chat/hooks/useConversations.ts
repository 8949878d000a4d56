"use client";

/** The sidebar's conversation list: first page, more pages, search, rename and delete against the API. */

import { useCallback, useEffect, useRef, useState } from "react";
import { api, ApiError } from "@/lib/api";
import type { ConversationSummary, Id } from "@/lib/api-types";

const PAGE = 30;

export function useConversations() {
  const [items, setItems] = useState<ConversationSummary[]>([]);
  const [total, setTotal] = useState(0);
  const [query, setQuery] = useState("");
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const request = useRef(0);
  const loaded = useRef(0);
  loaded.current = items.length;

  const fetchPage = useCallback(async (q: string, offset: number, limit: number) => {
    const ticket = ++request.current;
    setLoading(true);
    try {
      const page = await api.listConversations({ q, offset, limit });
      if (ticket !== request.current) return; // a newer search replaced this one
      setItems((prev) =>
        offset === 0 ? page.items : [...prev, ...page.items.filter((c) => !prev.some((p) => p.id === c.id))],
      );
      setTotal(page.total);
      setError(null);
    } catch (err) {
      if (ticket === request.current) setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      if (ticket === request.current) setLoading(false);
    }
  }, []);

  useEffect(() => {
    void fetchPage(query, 0, PAGE);
  }, [query, fetchPage]);

  /** Reload what is shown (after a turn: new titles, new order), keeping as many rows as were loaded. */
  const refresh = useCallback(() => {
    void fetchPage(query, 0, Math.max(PAGE, loaded.current));
  }, [query, fetchPage]);

  const loadMore = useCallback(() => {
    void fetchPage(query, loaded.current, PAGE);
  }, [query, fetchPage]);

  const rename = useCallback(async (id: Id, title: string) => {
    const updated = await api.renameConversation(id, title);
    setItems((prev) => prev.map((c) => (c.id === id ? { ...c, ...updated, title: updated.title ?? title } : c)));
    return updated;
  }, []);

  const remove = useCallback(async (id: Id) => {
    await api.deleteConversation(id);
    setItems((prev) => prev.filter((c) => c.id !== id));
    setTotal((t) => Math.max(0, t - 1));
  }, []);

  /** Show a just-created conversation at once, before the list is fetched again. */
  const addLocal = useCallback((conversation: ConversationSummary) => {
    setItems((prev) => (prev.some((c) => c.id === conversation.id) ? prev : [conversation, ...prev]));
  }, []);

  return {
    items,
    total,
    hasMore: items.length < total,
    query,
    setQuery,
    loading,
    error,
    refresh,
    loadMore,
    rename,
    remove,
    addLocal,
  };
}

export type ConversationsState = ReturnType<typeof useConversations>;
