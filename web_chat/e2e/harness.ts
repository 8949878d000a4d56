/**
 * Browser-test harness: the built UI, served by the real backend with a tiny random-weight model, driven by
 * Debian's chromium through playwright-core. Nothing is faked: the page talks to `nanoprime serve` over HTTP.
 */

import { execFileSync, execSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type BrowserContext } from "playwright-core";

export const WEB_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const REPO_DIR = path.resolve(WEB_DIR, "..");
export const RESULTS_DIR = path.join(WEB_DIR, "test-results");
const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Debian's chromium, installed on first use (`npx playwright install` cannot download browsers here). */
export function ensureChromium(): void {
  if (existsSync(CHROMIUM)) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`${CHROMIUM} is missing: install it with "apt-get update && apt-get install -y chromium"`);
  }
  execSync("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium", {
    stdio: "inherit",
  });
  if (!existsSync(CHROMIUM)) throw new Error(`installing chromium did not provide ${CHROMIUM}`);
}

function newestMtime(entry: string): number {
  if (!existsSync(entry)) return 0;
  const stat = statSync(entry);
  if (!stat.isDirectory()) return stat.mtimeMs;
  return Math.max(stat.mtimeMs, ...readdirSync(entry).map((name) => newestMtime(path.join(entry, name))));
}

/** Builds the static export unless web_chat/out is newer than every source file. */
export function ensureBuild(): void {
  const index = path.join(WEB_DIR, "out", "index.html");
  const sources = [
    "app",
    "components",
    "hooks",
    "lib",
    "next.config.ts",
    "postcss.config.mjs",
    "package.json",
    "package-lock.json",
  ];
  const newest = Math.max(...sources.map((s) => newestMtime(path.join(WEB_DIR, s))));
  if (existsSync(index) && statSync(index).mtimeMs > newest) return;
  execFileSync("npm", ["run", "build"], { cwd: WEB_DIR, stdio: "inherit" });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface Backend {
  url: string;
  logs(): string;
  stop(): Promise<void>;
}

/** A tiny model directory and `nanoprime serve` on a free port with a fresh SQLite file; resolves when healthy. */
export async function startBackend(): Promise<Backend> {
  const python = path.join(REPO_DIR, ".venv", "bin", "python");
  const nanoprime = path.join(REPO_DIR, ".venv", "bin", "nanoprime");
  for (const tool of [python, nanoprime]) {
    if (!existsSync(tool)) throw new Error(`${tool} is missing: run "make setup" in ${REPO_DIR} first`);
  }
  const tmp = mkdtempSync(path.join(tmpdir(), "nanoprime-e2e-"));
  const modelDir = path.join(tmp, "model");
  execFileSync(python, ["-m", "tests.fixtures", modelDir], { cwd: REPO_DIR, stdio: "pipe" });

  const port = await freePort();
  let output = "";
  const child: ChildProcess = spawn(nanoprime, ["serve"], {
    cwd: REPO_DIR,
    env: {
      ...process.env,
      NANOPRIME_MODEL_DIR: modelDir,
      NANOPRIME_DATABASE_URL: `sqlite:///${path.join(tmp, "db.sqlite")}`,
      NANOPRIME_HOST: "127.0.0.1",
      NANOPRIME_PORT: String(port),
      NANOPRIME_WEB_DIR: path.join(WEB_DIR, "out"),
      NANOPRIME_API_KEY: "",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));

  const url = `http://127.0.0.1:${port}`;
  const backend: Backend = {
    url,
    logs: () => output,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(killer);
      }
      rmSync(tmp, { recursive: true, force: true });
    },
  };

  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`nanoprime serve exited with ${child.exitCode}:\n${output}`);
    try {
      const res = await fetch(`${url}/health`);
      if (res.ok) return backend;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  await backend.stop();
  throw new Error(`nanoprime serve was not healthy within 90 s:\n${output}`);
}

/** Chromium with a fresh profile directory, so no state leaks between runs. */
export async function launchBrowser(): Promise<{ context: BrowserContext; close(): Promise<void> }> {
  const profile = mkdtempSync(path.join(tmpdir(), "nanoprime-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

export function resultsPath(name: string): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  return path.join(RESULTS_DIR, name);
}
