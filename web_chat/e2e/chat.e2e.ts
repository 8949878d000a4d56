/**
 * The chat in a real browser against the real backend (tiny random-weight model): streaming, thinking,
 * history, stop, search, sanitising, errors and the phone layout. Screenshots go to web_chat/test-results/.
 */

import { readFile } from "node:fs/promises";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Conversation } from "../lib/api-types";
import { SETTINGS_KEY } from "../lib/settings";
import { ensureBuild, ensureChromium, launchBrowser, resultsPath, startBackend, type Backend } from "./harness";

let backend: Backend;
let browser: Awaited<ReturnType<typeof launchBrowser>>;

beforeAll(async () => {
  ensureChromium();
  ensureBuild();
  backend = await startBackend();
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
  await backend?.stop();
});

/** Short answers keep the suite fast; a small thinking budget makes the random model close its thinking. */
const FAST = { thinking: false, max_tokens: 48, temperature: 0.8 };

interface Sample {
  status: string | null;
  answer: number;
  thinking: string | null;
  label: string | null;
}

async function openApp(settings: Record<string, unknown>, path = "/"): Promise<Page> {
  const page = await browser.context.newPage();
  const failures: string[] = [];
  page.on("pageerror", (err) => failures.push(err.message));
  await page.goto(`${backend.url}/`);
  await page.evaluate(([key, value]) => localStorage.setItem(key, value), [SETTINGS_KEY, JSON.stringify(settings)]);
  await page.goto(`${backend.url}${path}`);
  await page.getByTestId("composer-input").waitFor();
  (page as Page & { failures: string[] }).failures = failures;
  return page;
}

const assistants = (page: Page) => page.getByTestId("message-assistant");

/** Types and sends a message, once the composer takes one: right after an answer's last token the page may
 * still be closing the stream, and an Enter pressed then would send nothing. */
async function send(page: Page, text: string): Promise<void> {
  await page.getByTestId("composer-input").fill(text);
  await page.waitForFunction(() => document.querySelector('[data-testid="send-button"]:not([disabled])') !== null);
  await page.getByTestId("composer-input").press("Enter");
}

/** Waits until there are `count` answers and the last one is no longer streaming. */
async function waitForAnswers(page: Page, count: number, timeout = 45_000): Promise<void> {
  await page.waitForFunction(
    (n) => {
      const all = document.querySelectorAll<HTMLElement>('[data-testid="message-assistant"]');
      return all.length === n && all[n - 1].dataset.status !== "streaming";
    },
    count,
    { timeout },
  );
}

/** Records what the last answer looks like every few milliseconds, to see it change while it streams. */
async function startRecording(page: Page): Promise<void> {
  await page.evaluate(() => {
    const w = window as unknown as { __samples: Sample[]; __rec: number };
    w.__samples = [];
    w.__rec = window.setInterval(() => {
      const all = document.querySelectorAll<HTMLElement>('[data-testid="message-assistant"]');
      const last = all[all.length - 1];
      if (!last) return;
      const block = last.querySelector<HTMLElement>('[data-testid="thinking-block"]');
      w.__samples.push({
        status: last.dataset.status ?? null,
        answer: last.querySelector('[data-testid="answer-text"]')?.textContent?.length ?? 0,
        thinking: block?.dataset.state ?? null,
        label: block?.querySelector('[data-testid="thinking-toggle"]')?.textContent ?? null,
      });
    }, 4);
  });
}

async function stopRecording(page: Page): Promise<Sample[]> {
  return page.evaluate(() => {
    const w = window as unknown as { __samples: Sample[]; __rec: number };
    clearInterval(w.__rec);
    return w.__samples;
  });
}

/**
 * The tiny model has random weights, so now and then it ends an answer after a token or two. A test that needs
 * a real stream asks again in the same conversation until an answer qualifies (a few tries at most).
 */
async function sendUntil(
  page: Page,
  text: string,
  qualifies: (samples: Sample[], answer: string) => boolean,
  tries = 4,
): Promise<{ samples: Sample[]; answer: string }> {
  for (let attempt = 1; attempt <= tries; attempt++) {
    const before = await assistants(page).count();
    await startRecording(page);
    await send(page, attempt === 1 ? text : `${text} (try ${attempt})`);
    await waitForAnswers(page, before + 1);
    const samples = await stopRecording(page);
    const answer =
      (await assistants(page)
        .last()
        .getByTestId("answer-text")
        .textContent()
        .catch(() => "")) ?? "";
    if (qualifies(samples, answer)) return { samples, answer };
  }
  throw new Error(`no answer to "${text}" qualified in ${tries} tries`);
}

/**
 * Sends, lets the answer run past `minChars`, then stops it with `stop`; again if it ended on its own first.
 * The random model writes an end of turn now and then, and at its speed a whole answer can take less than a
 * stop's round trip: a try is a race that the stop wins about half the time, so it gets ten tries.
 */
async function stopMidAnswer(page: Page, text: string, stop: () => Promise<unknown>, minChars = 20): Promise<void> {
  for (let attempt = 1; attempt <= 10; attempt++) {
    const n = await assistants(page).count();
    await send(page, attempt === 1 ? text : `${text} (try ${attempt})`);
    const running = await page.waitForFunction(
      ([index, min]) => {
        const last = document.querySelectorAll<HTMLElement>('[data-testid="message-assistant"]')[index];
        if (!last) return null;
        if (last.dataset.status !== "streaming") return "ended";
        return (last.querySelector('[data-testid="answer-text"]')?.textContent?.length ?? 0) > min ? "long" : null;
      },
      [n, minChars] as const,
      { timeout: 30_000 },
    );
    // The answer may end on its own between the check and the stop: then the stop finds nothing to stop,
    // and the next attempt asks again.
    if ((await running.jsonValue()) === "long") await stop().catch(() => undefined);
    await waitForAnswers(page, n + 1, 15_000);
    if ((await assistants(page).last().getAttribute("data-status")) === "stopped") return;
  }
  throw new Error("every answer ended on its own before it could be stopped");
}

const conversationIdOf = (page: Page) => new URL(page.url()).searchParams.get("c");

async function getConversation(id: string): Promise<Conversation> {
  const res = await fetch(`${backend.url}/api/conversations/${id}`);
  expect(res.status).toBe(200);
  return (await res.json()) as Conversation;
}

describe("web chat in a browser", () => {
  let firstId = "";
  let firstAnswers: string[] = [];

  it("streams an answer token by token, with its stats", async () => {
    const page = await openApp({ ...FAST, max_tokens: 160 });
    // Seen growing: at least two different partial lengths on screen before the answer was complete. (A page
    // that showed the answer only at the end fails every try; a random answer that ends at once gets retried.)
    const partialLengths = (samples: Sample[], answer: string) =>
      new Set(
        samples
          .filter((s) => s.status === "streaming" && s.answer > 0 && s.answer < answer.length)
          .map((s) => s.answer),
      );
    const { samples, answer } = await sendUntil(
      page,
      "Tell me about a small robot",
      (samples, text) => text.length >= 30 && partialLengths(samples, text).size > 1,
      10, // decoding is fast enough now that a short random answer can arrive within one frame: more tries
    );
    expect(partialLengths(samples, answer).size).toBeGreaterThan(1);
    await expect
      .poll(() => assistants(page).last().getByTestId("answer-stats").textContent())
      .toMatch(/tokens.*tok\/s.*TTFT.*cache/);

    firstId = conversationIdOf(page) ?? "";
    firstAnswers = await assistants(page).getByTestId("answer-text").allTextContents();
    expect(firstId).not.toBe("");
    const stored = await getConversation(firstId);
    expect(stored.messages.map((m) => [m.role, m.status])).toEqual(
      firstAnswers.flatMap(() => [
        ["user", "complete"],
        ["assistant", "complete"],
      ]),
    );
    expect((page as Page & { failures: string[] }).failures).toEqual([]);
    await page.close();
  });

  it("shows the conversation in the sidebar and again after a reload", async () => {
    const page = await openApp(FAST, `/?c=${firstId}`);
    const item = page.locator(`[data-testid="conversation-item"][data-id="${firstId}"]`);
    await expect.poll(() => item.textContent()).toContain("Tell me about a small robot");
    expect(await item.getAttribute("data-active")).toBe("true");
    await expect.poll(() => assistants(page).getByTestId("answer-text").allTextContents()).toEqual(firstAnswers);
    expect((await page.getByTestId("message-user").allTextContents())[0]).toBe("Tell me about a small robot");

    await page.reload();
    await expect.poll(() => assistants(page).getByTestId("answer-text").allTextContents()).toEqual(firstAnswers);
    expect((await page.getByTestId("message-user").allTextContents())[0]).toBe("Tell me about a small robot");
    await page.close();
  });

  it("streams thinking under 'Thinking…', then collapses it to 'Thought for N s' that opens on click", async () => {
    const page = await openApp({ thinking: true, thinking_budget: 24, max_tokens: 64 });
    // an answer whose thinking streamed long enough to be seen live (the random model may stop at once)
    await sendUntil(page, "Think first, then answer", (samples) =>
      samples.some((s) => s.thinking === "live" && s.label === "Thinking…"),
    );
    const toggle = assistants(page).last().getByTestId("thinking-toggle");
    expect(await toggle.textContent()).toMatch(/^Thought for \d+(\.\d)? s$/);
    expect(await toggle.getAttribute("aria-expanded")).toBe("false");
    expect(await page.getByTestId("thinking-text").count()).toBe(0);

    await toggle.click();
    expect(await toggle.getAttribute("aria-expanded")).toBe("true");
    const thinking = (await page.getByTestId("thinking-text").textContent()) ?? "";
    expect(thinking.length).toBeGreaterThan(0);
    const stored = await getConversation(conversationIdOf(page) ?? "");
    expect(stored.messages[stored.messages.length - 1].thinking).toBe(thinking);
    await page.close();
  });

  it("stop keeps the partial answer, on screen and stored", async () => {
    const page = await openApp({ thinking: false, max_tokens: 2000 });
    await stopMidAnswer(page, "Count as far as you can", () =>
      page.getByTestId("stop-button").click({ timeout: 5_000 }),
    );
    await page.getByTestId("send-button").waitFor();
    const last = assistants(page).last();
    const shown = (await last.getByTestId("answer-text").textContent()) ?? "";
    expect(shown.length).toBeGreaterThan(20);
    expect(await last.getByTestId("answer-status").textContent()).toBe("Stopped");

    const stored = await getConversation(conversationIdOf(page) ?? "");
    const answer = stored.messages[stored.messages.length - 1];
    expect(answer.status).toBe("stopped");
    expect(answer.content.length).toBeGreaterThan(0);
    expect(answer.completion_tokens ?? 0).toBeLessThan(2000);

    // What was stored, rendered fresh, is exactly what the stopped stream had shown.
    await page.reload();
    await page.waitForSelector('[data-testid="message-assistant"][data-status="stopped"]');
    expect(await assistants(page).last().getByTestId("answer-text").textContent()).toBe(shown);
    await page.close();
  });

  it("reloading during an answer shows what was stored, not a blank page", async () => {
    const page = await openApp({ thinking: false, max_tokens: 2000 });
    await stopMidAnswer(page, "Keep going for a while", () => page.reload());
    // the reload closed the stream: the server kept the partial answer as stopped, and the page shows it
    expect((await page.getByTestId("message-user").allTextContents()).at(-1)).toMatch(/^Keep going for a while/);
    const answer = (await assistants(page).last().getByTestId("answer-text").textContent()) ?? "";
    expect(answer.length).toBeGreaterThan(0);
    const stored = await getConversation(conversationIdOf(page) ?? "");
    expect(stored.messages.slice(-2).map((m) => [m.role, m.status])).toEqual([
      ["user", "complete"],
      ["assistant", "stopped"],
    ]);
    await page.close();
  });

  it("Esc stops an answer too", async () => {
    const page = await openApp({ thinking: false, max_tokens: 2000 });
    await stopMidAnswer(page, "Another long one", () => page.keyboard.press("Escape"), 5);
    expect(await assistants(page).last().getAttribute("data-status")).toBe("stopped");
    await page.close();
  });

  it("search finds a conversation by a word in its text, not only its title", async () => {
    const page = await openApp(FAST);
    await send(page, "Hello again");
    await waitForAnswers(page, 1);
    await send(page, "What about pineapples?");
    await waitForAnswers(page, 2);
    const id = conversationIdOf(page);

    // moving between conversations shows each one's own messages, the one created here included
    await page.locator(`[data-testid="conversation-item"][data-id="${firstId}"]`).click();
    await expect.poll(() => page.getByTestId("message-user").first().textContent()).toBe("Tell me about a small robot");
    await page.locator(`[data-testid="conversation-item"][data-id="${id}"]`).click();
    await expect
      .poll(() => page.getByTestId("message-user").allTextContents())
      .toEqual(["Hello again", "What about pineapples?"]);
    await page.goBack();
    await expect.poll(() => conversationIdOf(page)).toBe(firstId);
    await expect.poll(() => page.getByTestId("message-user").first().textContent()).toBe("Tell me about a small robot");

    await page.getByTestId("search-input").fill("pineapples");
    await expect
      .poll(async () =>
        page.getByTestId("conversation-item").evaluateAll((items) => items.map((i) => i.getAttribute("data-id"))),
      )
      .toEqual([id]);
    expect(await page.getByTestId("conversation-item").textContent()).toContain("Hello again");

    await page.getByTestId("search-input").fill("zzzz-no-such-word");
    await page.getByTestId("history-empty").waitFor();
    await page.getByTestId("search-input").fill("");
    await expect.poll(() => page.getByTestId("conversation-item").count()).toBeGreaterThan(3);
    await page.close();
  });

  it("shows <img onerror> and <script> in a message as text and runs nothing", async () => {
    const page = await openApp(FAST);
    const dialogs: string[] = [];
    page.on("dialog", (dialog) => {
      dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    const hostile = '<img src=x onerror=alert(1)> and <script>alert(2)</script> <img src=y onerror="window.__pwned=1">';
    await send(page, hostile);
    await waitForAnswers(page, 1);

    const check = async () => {
      expect(await page.getByTestId("message-user").textContent()).toBe(hostile);
      expect(await page.locator("main img, main script, aside img, aside script").count()).toBe(0);
      await page.waitForTimeout(300); // give a broken image's onerror the time to fire, were there one
      expect(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned)).toBeUndefined();
      expect(dialogs).toEqual([]);
    };
    await check();
    await page.reload(); // the stored text, rendered fresh, and its title in the sidebar
    await page.getByTestId("message-user").waitFor();
    await check();
    expect(await page.locator('[data-testid="conversation-item"][data-active="true"]').textContent()).toContain(
      "<img src=x",
    );
    await page.close();
  });

  it("shows a refused request inline and retries it", async () => {
    // 3000 passes the UI's own check but not the server's limit (2048), so the server answers 422.
    const page = await openApp({ ...FAST, max_tokens: 3000 });
    await send(page, "This first try is refused");
    const error = page.getByTestId("turn-error");
    await error.waitFor();
    expect(await error.textContent()).toContain("max_tokens");
    expect(await assistants(page).count()).toBe(0);

    await page.getByTestId("settings-button").click();
    await page.getByTestId("setting-max-tokens").fill("32");
    await page.getByTestId("settings-dialog-close").click();
    await page.getByTestId("error-retry").click();
    await waitForAnswers(page, 1);
    expect(await page.getByTestId("turn-error").count()).toBe(0);
    const stored = await getConversation(conversationIdOf(page) ?? "");
    expect(stored.messages.map((m) => m.role)).toEqual(["user", "assistant"]);
    await page.close();
  });

  it("says so inline when the server cannot be reached, and the retry sends the message once", async () => {
    const page = await openApp(FAST);
    // the connection to the chat endpoint is refused, as when the server is down
    await page.route("**/api/conversations/*/messages", (route) => route.abort("connectionrefused"));
    await send(page, "Are you there?");
    const error = page.getByTestId("turn-error");
    await error.waitFor();
    expect(await error.textContent()).toContain("Can't reach the server");
    expect(await page.getByTestId("message-user").allTextContents()).toEqual(["Are you there?"]);

    await page.unroute("**/api/conversations/*/messages");
    await page.getByTestId("error-retry").click();
    await waitForAnswers(page, 1);
    expect(await page.getByTestId("message-user").allTextContents()).toEqual(["Are you there?"]);
    const stored = await getConversation(conversationIdOf(page) ?? "");
    expect(stored.messages.map((m) => m.role)).toEqual(["user", "assistant"]);
    expect(stored.messages[0].content).toBe("Are you there?");
    await page.close();
  });

  it("regenerates the last answer and re-runs an edited message", async () => {
    const page = await openApp(FAST);
    await send(page, "First question");
    await waitForAnswers(page, 1);
    await send(page, "Second question");
    await waitForAnswers(page, 2);
    const id = conversationIdOf(page) ?? "";
    const before = await getConversation(id);

    const oldId = await assistants(page).last().getAttribute("data-id");
    await page.getByTestId("regenerate").click();
    await page.waitForFunction((old) => {
      const all = document.querySelectorAll<HTMLElement>('[data-testid="message-assistant"]');
      const last = all[all.length - 1];
      return all.length === 2 && last.dataset.id !== old && last.dataset.status !== "streaming";
    }, oldId);
    const regenerated = await getConversation(id);
    expect(regenerated.messages).toHaveLength(4);
    expect(regenerated.messages[3].id).not.toBe(before.messages[3].id);
    expect(regenerated.messages[1].id).toBe(before.messages[1].id);

    await page.getByTestId("message-user").first().hover();
    await page.getByTestId("edit-message").first().click();
    await page.getByTestId("edit-input").fill("First question, edited");
    await page.getByTestId("edit-save").click();
    await waitForAnswers(page, 1);
    expect(await page.getByTestId("message-user").allTextContents()).toEqual(["First question, edited"]);
    const edited = await getConversation(id);
    expect(edited.messages.map((m) => m.role)).toEqual(["user", "assistant"]);
    expect(edited.messages[0].content).toBe("First question, edited");
    await page.close();
  });

  it("renames and deletes a conversation with confirmation", async () => {
    const page = await openApp(FAST, `/?c=${firstId}`);
    const item = page.locator(`[data-testid="conversation-item"][data-id="${firstId}"]`);
    await item.getByTestId("rename").click();
    await page.getByTestId("rename-input").fill("Robots, renamed");
    await page.getByTestId("rename-input").press("Enter");
    await expect.poll(() => item.textContent()).toContain("Robots, renamed");
    expect((await getConversation(firstId)).title).toBe("Robots, renamed");
    expect(await page.getByTestId("conversation-heading").textContent()).toBe("Robots, renamed");

    // export downloads the stored conversation
    await page.getByTestId("export-button").click();
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("menuitem", { name: "Export as Markdown" }).click(),
    ]);
    expect(download.suggestedFilename()).toBe("Robots-renamed.md");
    const exported = await readFile((await download.path()) ?? "", "utf8");
    expect(exported).toContain("Tell me about a small robot");

    await item.getByTestId("delete").click();
    await page.getByTestId("confirm-delete").click();
    await expect.poll(() => item.count()).toBe(0);
    expect(new URL(page.url()).search).toBe("");
    expect((await fetch(`${backend.url}/api/conversations/${firstId}`)).status).toBe(404);
    await page.close();
  });

  it("fits a 375 px phone without horizontal scrolling; screenshots desktop and mobile", async () => {
    const page = await openApp({ thinking: true, thinking_budget: 16, max_tokens: 64 });
    const long = `A long word: ${"x".repeat(160)} and a long link https://example.com/${"path/".repeat(30)}`;
    await send(page, long);
    await waitForAnswers(page, 1);
    await page.screenshot({ path: resultsPath("desktop-light.png") });
    await page.emulateMedia({ colorScheme: "dark" });
    await page.getByTestId("settings-button").click();
    await page.getByTestId("theme-dark").click();
    await page.getByTestId("settings-dialog-close").click();
    await page.screenshot({ path: resultsPath("desktop-dark.png") });
    await page.getByTestId("theme-toggle").click();

    await page.setViewportSize({ width: 375, height: 740 });
    const overflow = () =>
      page.evaluate(() => ({
        doc: document.documentElement.scrollWidth,
        body: document.body.scrollWidth,
        width: window.innerWidth,
      }));
    const measured = await overflow();
    expect(measured.doc).toBeLessThanOrEqual(measured.width);
    expect(measured.body).toBeLessThanOrEqual(measured.width);
    expect(await page.getByTestId("sidebar").isVisible()).toBe(false);
    expect(await page.getByTestId("composer-input").isVisible()).toBe(true);
    await page.screenshot({ path: resultsPath("mobile.png") });

    await page.getByRole("button", { name: "Open conversations" }).click();
    await page.getByTestId("sidebar").waitFor();
    const withDrawer = await overflow();
    expect(withDrawer.doc).toBeLessThanOrEqual(withDrawer.width);
    await page.screenshot({ path: resultsPath("mobile-sidebar.png") });
    await page.keyboard.press("Escape");
    await expect.poll(() => page.getByTestId("sidebar").isVisible()).toBe(false);
    await page.close();
  });
});
