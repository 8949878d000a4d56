import { describe, expect, it } from "vitest";
import { describeErrorBody, errorFromResponse } from "@/lib/api";
import { DEFAULT_SETTINGS, generationSettings, normalizeSettings } from "@/lib/settings";

describe("normalizeSettings", () => {
  it("fills what is missing from the defaults", () => {
    expect(normalizeSettings(null)).toEqual(DEFAULT_SETTINGS);
    expect(normalizeSettings({ temperature: 0.2 })).toEqual({ ...DEFAULT_SETTINGS, temperature: 0.2 });
  });

  it("clamps numbers into their range and drops values of the wrong type", () => {
    const s = normalizeSettings({
      temperature: 9,
      top_p: 0,
      max_tokens: "many",
      thinking: "yes",
      theme: "pink",
      thinking_budget: 12.6,
    });
    expect(s.temperature).toBe(2);
    expect(s.top_p).toBe(0.05);
    expect(s.max_tokens).toBe(DEFAULT_SETTINGS.max_tokens);
    expect(s.thinking).toBe(true);
    expect(s.theme).toBe("system");
    expect(s.thinking_budget).toBe(13);
  });

  it("sends no thinking budget when thinking is off, and never the UI-only fields", () => {
    const sent = generationSettings({ ...DEFAULT_SETTINGS, thinking: false, thinking_budget: 64, apiKey: "k" });
    expect(sent.thinking_budget).toBeNull();
    expect(Object.keys(sent).sort()).toEqual([
      "max_tokens",
      "system_prompt",
      "temperature",
      "thinking",
      "thinking_budget",
      "top_p",
    ]);
  });
});

describe("describeErrorBody", () => {
  it("names the fields of a FastAPI validation error", () => {
    const body = {
      detail: [
        { loc: ["body", "temperature"], msg: "Input should be greater than or equal to 0", type: "greater_than_equal" },
        { loc: ["body", "content"], msg: "Value error, content must not be empty", type: "value_error" },
      ],
    };
    expect(describeErrorBody(body)).toBe(
      "temperature: Input should be greater than or equal to 0; content: Value error, content must not be empty",
    );
  });

  it("passes a plain detail through and refuses other shapes", () => {
    expect(describeErrorBody({ detail: "conversation not found" })).toBe("conversation not found");
    expect(describeErrorBody({ error: "x" })).toBeNull();
    expect(describeErrorBody("text")).toBeNull();
  });
});

describe("errorFromResponse", () => {
  const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
    new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });

  it("says the server is busy and for how long (429 Retry-After)", async () => {
    const err = await errorFromResponse(json(429, { detail: "queue full" }, { "Retry-After": "3" }));
    expect([err.kind, err.status, err.retryAfterS, err.message]).toEqual([
      "busy",
      429,
      3,
      "The server is busy. Try again in 3 s.",
    ]);
    const noHeader = await errorFromResponse(json(429, {}));
    expect(noHeader.message).toBe("The server is busy. Try again in a moment.");
  });

  it("names the field of a validation error and keeps the server's words otherwise", async () => {
    const invalid = await errorFromResponse(json(422, { detail: [{ loc: ["body", "top_p"], msg: "must be > 0" }] }));
    expect([invalid.kind, invalid.message]).toEqual(["validation", "top_p: must be > 0"]);
    const missing = await errorFromResponse(json(404, { detail: "conversation abc not found" }));
    expect([missing.kind, missing.message]).toEqual(["not_found", "conversation abc not found"]);
    const refused = await errorFromResponse(json(401, { detail: "missing API key" }));
    expect(refused.kind).toBe("auth");
  });

  it("copes with a body that is not JSON", async () => {
    const err = await errorFromResponse(new Response("<html>Bad Gateway</html>", { status: 502 }));
    expect([err.kind, err.message]).toEqual(["server", "The server failed (502)."]);
  });
});
