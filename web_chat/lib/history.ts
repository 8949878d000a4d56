/**
 * Groups the sidebar's conversations by the calendar day of their last activity, in the browser's time zone:
 * a conversation from 23:59 yesterday is "Yesterday" even one minute later, which is how people read dates.
 */

import type { ConversationSummary } from "./api-types";

export type HistoryGroupLabel = "Today" | "Yesterday" | "Previous 7 days" | "Older";

export interface HistoryGroup<T> {
  label: HistoryGroupLabel;
  items: T[];
}

const ORDER: HistoryGroupLabel[] = ["Today", "Yesterday", "Previous 7 days", "Older"];

function startOfDay(date: Date, daysBack = 0): number {
  // Built from calendar fields, so days that are 23 or 25 hours long (DST) still land on midnight.
  return new Date(date.getFullYear(), date.getMonth(), date.getDate() - daysBack).getTime();
}

export function groupLabel(updatedAt: string, now: Date): HistoryGroupLabel {
  const time = new Date(updatedAt).getTime();
  if (Number.isNaN(time)) return "Older";
  if (time >= startOfDay(now)) return "Today"; // includes a clock slightly ahead of ours
  if (time >= startOfDay(now, 1)) return "Yesterday";
  if (time >= startOfDay(now, 7)) return "Previous 7 days"; // the week back from today, yesterday aside
  return "Older";
}

/** Newest first inside each group; empty groups are left out. */
export function groupConversations<T extends Pick<ConversationSummary, "updated_at">>(
  conversations: T[],
  now: Date,
): HistoryGroup<T>[] {
  const buckets = new Map<HistoryGroupLabel, T[]>(ORDER.map((label) => [label, []]));
  const sorted = [...conversations].sort((a, b) => (Date.parse(b.updated_at) || 0) - (Date.parse(a.updated_at) || 0));
  for (const conversation of sorted) {
    buckets.get(groupLabel(conversation.updated_at, now))?.push(conversation);
  }
  return ORDER.filter((label) => (buckets.get(label)?.length ?? 0) > 0).map((label) => ({
    label,
    items: buckets.get(label) ?? [],
  }));
}
