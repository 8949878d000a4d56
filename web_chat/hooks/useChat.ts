"use client";

/**
 * Drives one open conversation: loads it, runs turns (send, regenerate, edit) over SSE into the chat reducer,
 * stops them, and retries failures. Deltas are batched for a few milliseconds so a fast model re-renders the
 * Markdown at screen rate, not once per token.
 */

import { useCallback, useEffect, useReducer, useRef, useState } from "react";
import { api, ApiError } from "@/lib/api";
import type { GenerationSettings, Id, StreamEvent } from "@/lib/api-types";
import { awaitingServer, chatReducer, EMPTY_CHAT, type TurnKind } from "@/lib/chat-state";

const FLUSH_MS = 24;
const STOP_GRACE_MS = 1500;
const POLL_MS = 1500;
const POLL_LIMIT = 80;

interface ActiveTurn {
  conversationId: Id;
  controller: AbortController;
  stopRequested: boolean;
}

interface Options {
  conversationId: Id | null;
  settings: () => GenerationSettings;
  /** A first message created the conversation: the page puts its id in the URL. */
  onCreated: (id: Id, firstMessage: string) => void;
  /** A turn ended (titles and order in the sidebar may have changed). */
  onTurnEnded: () => void;
}

let localIds = 0;
const localId = (prefix: string) => `local-${prefix}-${Date.now()}-${++localIds}`;

function messageOf(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}

export function useChat({ conversationId, settings, onCreated, onTurnEnded }: Options) {
  const [state, dispatch] = useReducer(chatReducer, { ...EMPTY_CHAT, conversationId });
  /** Following an answer the server is writing for another connection (this page was reloaded mid-answer). */
  const [following, setFollowing] = useState(false);
  const active = useRef<ActiveTurn | null>(null);
  const lastTurn = useRef<TurnKind | null>(null);
  /** The conversation the page shows. */
  const shown = useRef<Id | null>(conversationId);
  /**
   * Each opening of a conversation is a new view. A turn draws only into the view it started in: once the
   * reader opens another conversation (or this one again, loaded fresh), its remaining events drain silently
   * while the server finishes and stores the answer.
   */
  const view = useRef(0);
  const createdHere = useRef<Id | null>(null);
  const callbacks = useRef({ settings, onCreated, onTurnEnded });
  callbacks.current = { settings, onCreated, onTurnEnded };

  const load = useCallback(async (id: Id, quiet = false) => {
    if (!quiet) dispatch({ type: "loading", conversationId: id });
    try {
      const conversation = await api.getConversation(id);
      if (shown.current === id) dispatch({ type: "loaded", conversation });
      return conversation;
    } catch (err) {
      if (shown.current === id && !quiet) {
        const message =
          err instanceof ApiError && err.kind === "not_found" ? "This conversation does not exist." : messageOf(err);
        dispatch({ type: "load_failed", message });
      }
      return null;
    }
  }, []);

  // Open the conversation named by the URL. A conversation this hook just created is already on screen.
  useEffect(() => {
    shown.current = conversationId;
    if (conversationId !== null && createdHere.current === conversationId) {
      createdHere.current = null; // the same view goes on; opening it again later loads it like any other
      return;
    }
    view.current++;
    if (conversationId === null) {
      dispatch({ type: "reset", conversationId: null });
      return;
    }
    let polls = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const poll = async (quiet: boolean) => {
      const conversation = await load(conversationId, quiet);
      if (shown.current !== conversationId) return;
      // Reloaded mid-answer: show what is stored now and follow it until the server finishes.
      const again = !!conversation && awaitingServer(conversation.messages) && ++polls < POLL_LIMIT;
      setFollowing(again);
      if (again) timer = setTimeout(() => void poll(true), POLL_MS);
    };
    void poll(false);
    return () => {
      clearTimeout(timer);
      setFollowing(false);
    };
  }, [conversationId, load]);

  const run = useCallback(async (turn: TurnKind) => {
    if (active.current && active.current.conversationId === shown.current) return;
    lastTurn.current = turn;
    const myView = view.current;
    const visible = () => view.current === myView;
    const now = new Date().toISOString();
    dispatch({ type: "turn_started", turn, userTempId: localId("u"), assistantTempId: localId("a"), at: now });

    let id = shown.current;
    if (id === null) {
      try {
        id = (await api.createConversation()).id;
      } catch (err) {
        if (visible()) dispatch({ type: "request_failed", message: messageOf(err) });
        return;
      }
      if (visible()) {
        createdHere.current = id;
        shown.current = id;
        callbacks.current.onCreated(id, turn.kind === "send" ? turn.content : "");
      }
    }
    const conversationId = id;
    const controller = new AbortController();
    const turnState: ActiveTurn = { conversationId, controller, stopRequested: false };
    active.current = turnState;

    let pending: { thinking: string; token: string } = { thinking: "", token: "" };
    let firstThinkingAt: number | null = null;
    let firstTokenAt: number | null = null;
    let flushTimer: ReturnType<typeof setTimeout> | undefined;
    const flush = () => {
      clearTimeout(flushTimer);
      flushTimer = undefined;
      if (visible() && pending.thinking) {
        dispatch({ type: "thinking", delta: pending.thinking, at: firstThinkingAt ?? Date.now() });
      }
      if (visible() && pending.token) dispatch({ type: "token", delta: pending.token, at: firstTokenAt ?? Date.now() });
      pending = { thinking: "", token: "" };
      firstThinkingAt = null;
      firstTokenAt = null;
    };
    const schedule = () => {
      if (flushTimer === undefined) flushTimer = setTimeout(flush, FLUSH_MS);
    };

    const body = callbacks.current.settings();
    let events: AsyncGenerator<StreamEvent>;
    if (turn.kind === "send")
      events = api.sendMessage(conversationId, { ...body, content: turn.content }, controller.signal);
    else if (turn.kind === "edit")
      events = api.editMessage(conversationId, turn.messageId, { ...body, content: turn.content }, controller.signal);
    else events = api.regenerate(conversationId, body, controller.signal);

    let started = false;
    let ended = false;
    try {
      for await (const event of events) {
        started = true;
        if (event.event === "thinking") {
          firstThinkingAt ??= Date.now();
          pending.thinking += event.data.delta;
          schedule();
          continue;
        }
        if (event.event === "token") {
          firstTokenAt ??= Date.now();
          pending.token += event.data.delta;
          schedule();
          continue;
        }
        flush();
        if (!visible()) {
          if (event.event === "done" || event.event === "error") ended = true;
          continue;
        }
        if (event.event === "meta") dispatch({ type: "meta", data: event.data });
        else if (event.event === "done") {
          ended = true;
          dispatch({ type: "done", data: event.data, at: Date.now() });
        } else if (event.event === "error") {
          ended = true;
          dispatch({ type: "stream_error", message: event.data.message, at: Date.now() });
        }
      }
      flush();
      if (!ended && visible()) {
        if (turnState.stopRequested) dispatch({ type: "stopped", at: Date.now() });
        else
          dispatch({
            type: "interrupted",
            message: "The answer was cut off: the connection closed early.",
            at: Date.now(),
          });
      }
    } catch (err) {
      flush();
      if (visible()) {
        const aborted = err instanceof DOMException && err.name === "AbortError";
        if (aborted || turnState.stopRequested) dispatch({ type: "stopped", at: Date.now() });
        else if (!started && err instanceof ApiError) dispatch({ type: "request_failed", message: err.message });
        else dispatch({ type: "interrupted", message: `The answer was cut off: ${messageOf(err)}`, at: Date.now() });
      }
    } finally {
      if (active.current === turnState) active.current = null;
      callbacks.current.onTurnEnded();
    }
  }, []);

  const send = useCallback((content: string) => run({ kind: "send", content }), [run]);
  const regenerate = useCallback(() => run({ kind: "regenerate" }), [run]);
  const edit = useCallback((messageId: Id, content: string) => run({ kind: "edit", messageId, content }), [run]);

  /**
   * Ask the server to stop (it stores the partial answer), then hang up if it does not end the stream soon.
   * An answer this page is not streaming (reopened while the server writes it) is stopped on the server alone.
   */
  const stop = useCallback(() => {
    const turn = active.current;
    if (!turn || turn.conversationId !== shown.current) {
      if (shown.current !== null) api.stop(shown.current).catch(() => undefined);
      return;
    }
    if (turn.stopRequested) return;
    turn.stopRequested = true;
    const hangUp = setTimeout(() => turn.controller.abort(), STOP_GRACE_MS);
    api.stop(turn.conversationId).catch(() => {
      clearTimeout(hangUp);
      turn.controller.abort();
    });
  }, []);

  /**
   * Retry the failed turn. Once the server stored the user's message, the retry regenerates the answer; before
   * that it re-sends — unless the server kept the message after all, which the stored conversation tells.
   */
  const retry = useCallback(async () => {
    const turn = lastTurn.current;
    const id = shown.current;
    if (!turn || state.error?.stored || turn.kind === "regenerate") return run({ kind: "regenerate" });
    if (id !== null && turn.kind === "send") {
      const conversation = await api.getConversation(id).catch(() => null);
      const last = conversation?.messages[conversation.messages.length - 1];
      if (conversation) dispatch({ type: "loaded", conversation });
      if (conversation && last?.role === "user" && last.content === turn.content) return run({ kind: "regenerate" });
    }
    dispatch({ type: "drop_local" });
    return run(turn);
  }, [run, state.error]);

  const renamed = useCallback((title: string) => dispatch({ type: "renamed", title }), []);

  return { state, following, send, regenerate, edit, stop, retry, renamed };
}
