import { describe, expect, it } from "vitest";
import { groupConversations, groupLabel } from "@/lib/history";

// Local-time dates, so the tests mean the same in every time zone.
const NOW = new Date(2025, 5, 15, 10, 30); // 15 June 2025, 10:30
const at = (day: number, hour = 12, minute = 0, ms = 0) => new Date(2025, 5, day, hour, minute, 0, ms).toISOString();

describe("groupLabel", () => {
  it.each([
    ["the first second of today", at(15, 0, 0), "Today"],
    ["a moment ago", at(15, 10, 29), "Today"],
    ["a clock slightly ahead of ours", at(15, 10, 45), "Today"],
    ["one minute before midnight", at(14, 23, 59), "Yesterday"],
    ["yesterday's midnight", at(14, 0, 0), "Yesterday"],
    [
      "the last millisecond before yesterday",
      new Date(new Date(2025, 5, 14).getTime() - 1).toISOString(),
      "Previous 7 days",
    ],
    ["three days ago", at(12), "Previous 7 days"],
    ["seven days ago at midnight", at(8, 0, 0), "Previous 7 days"],
    ["just before that", new Date(new Date(2025, 5, 8).getTime() - 1).toISOString(), "Older"],
    ["last year", new Date(2024, 5, 15, 12).toISOString(), "Older"],
    ["an unreadable date", "not a date", "Older"],
  ])("%s", (_name, updatedAt, expected) => {
    expect(groupLabel(updatedAt, NOW)).toBe(expected);
  });

  it("counts calendar days across a month boundary", () => {
    const firstOfJuly = new Date(2025, 6, 1, 9);
    expect(groupLabel(new Date(2025, 5, 30, 22).toISOString(), firstOfJuly)).toBe("Yesterday");
    expect(groupLabel(new Date(2025, 5, 24, 9).toISOString(), firstOfJuly)).toBe("Previous 7 days");
    expect(groupLabel(new Date(2025, 5, 23, 23).toISOString(), firstOfJuly)).toBe("Older");
  });
});

describe("groupConversations", () => {
  const conversations = [
    { id: "old", updated_at: at(1) },
    { id: "today-early", updated_at: at(15, 8) },
    { id: "week", updated_at: at(11) },
    { id: "today-late", updated_at: at(15, 10) },
    { id: "yesterday", updated_at: at(14, 20) },
    { id: "week-newer", updated_at: at(13) },
  ];

  it("puts each conversation in its group, groups in order, newest first inside a group", () => {
    const groups = groupConversations(conversations, NOW);
    expect(groups.map((g) => [g.label, g.items.map((c) => c.id)])).toEqual([
      ["Today", ["today-late", "today-early"]],
      ["Yesterday", ["yesterday"]],
      ["Previous 7 days", ["week-newer", "week"]],
      ["Older", ["old"]],
    ]);
  });

  it("leaves out empty groups", () => {
    const groups = groupConversations([conversations[0], conversations[1]], NOW);
    expect(groups.map((g) => g.label)).toEqual(["Today", "Older"]);
    expect(groupConversations([], NOW)).toEqual([]);
  });

  it("keeps every conversation exactly once", () => {
    const ids = groupConversations(conversations, NOW).flatMap((g) => g.items.map((c) => c.id));
    expect(ids.sort()).toEqual(conversations.map((c) => c.id).sort());
  });
});
