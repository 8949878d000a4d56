/**
 * A Server-Sent Events parser following the WHATWG event-stream rules, written for fetch() bodies:
 * EventSource cannot POST, so the chat reads the stream itself. Network chunks split anywhere — inside a
 * line, between "\r" and "\n", inside a UTF-8 character — so the parser keeps the unfinished tail between feeds.
 */

export interface SSEMessage {
  event: string;
  data: string;
  id: string | null;
}

export interface SSEParser {
  /** Feed decoded text; calls onMessage for every event completed by it. */
  feed(text: string): void;
  /** The stream ended: an event without its closing blank line is dropped, as the spec says. */
  end(): void;
}

export function createSSEParser(onMessage: (message: SSEMessage) => void): SSEParser {
  let buffer = "";
  let atStart = true;
  let pendingCR = false; // the last chunk ended in "\r": a following "\n" belongs to the same line break
  let eventName = "";
  let dataLines: string[] = [];
  let hasData = false;
  let lastId: string | null = null;

  function dispatch(): void {
    if (hasData) {
      onMessage({ event: eventName || "message", data: dataLines.join("\n"), id: lastId });
    }
    eventName = "";
    dataLines = [];
    hasData = false;
  }

  function processLine(line: string): void {
    if (line === "") {
      dispatch();
      return;
    }
    if (line.startsWith(":")) return; // comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") eventName = value;
    else if (field === "data") {
      dataLines.push(value);
      hasData = true;
    } else if (field === "id") {
      if (!value.includes("\0")) lastId = value;
    }
    // "retry" and unknown fields are ignored: the chat never reconnects on its own.
  }

  return {
    feed(text: string): void {
      if (text === "") return;
      if (atStart) {
        if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
        atStart = false;
      }
      if (pendingCR && text.startsWith("\n")) text = text.slice(1);
      pendingCR = false;
      buffer += text;
      let start = 0;
      for (let i = 0; i < buffer.length; i++) {
        const ch = buffer[i];
        if (ch !== "\n" && ch !== "\r") continue;
        processLine(buffer.slice(start, i));
        if (ch === "\r") {
          if (i + 1 < buffer.length) {
            if (buffer[i + 1] === "\n") i++;
          } else {
            pendingCR = true;
          }
        }
        start = i + 1;
      }
      buffer = buffer.slice(start);
    },
    end(): void {
      buffer = "";
      eventName = "";
      dataLines = [];
      hasData = false;
    },
  };
}

/** Reads a byte stream as SSE messages, decoding UTF-8 across chunk boundaries. */
export async function* readSSE(body: ReadableStream<Uint8Array>, signal?: AbortSignal): AsyncGenerator<SSEMessage> {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  const queue: SSEMessage[] = [];
  const parser = createSSEParser((message) => queue.push(message));
  try {
    while (true) {
      if (signal?.aborted) return;
      const { value, done } = await reader.read();
      if (done) {
        parser.feed(decoder.decode());
        parser.end();
        return;
      }
      parser.feed(decoder.decode(value, { stream: true }));
      while (queue.length > 0) yield queue.shift() as SSEMessage;
    }
  } finally {
    // Stopping early (break, abort) must close the connection, or the server keeps generating.
    await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
