/**
 * The open conversation lives in the query string (`/?c=<id>`): the static export has no dynamic routes,
 * and a plain query keeps links shareable and reloads on the same conversation.
 */

import type { Id } from "./api-types";

export function readConversationId(): Id | null {
  const id = new URLSearchParams(window.location.search).get("c");
  return id && id.trim() ? id : null;
}

export function conversationHref(id: Id | null): string {
  return id === null ? "/" : `/?c=${encodeURIComponent(id)}`;
}

export function writeConversationId(id: Id | null, replace = false): void {
  const href = conversationHref(id);
  if (window.location.pathname + window.location.search === href) return;
  if (replace) window.history.replaceState(null, "", href);
  else window.history.pushState(null, "", href);
}
